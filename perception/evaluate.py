"""Held-out detection metrics of a detector on a `drivestack dataset` split, overall and
per condition, distance, size and visibility bucket. The dataset's ignore rule applies:
objects under it (COCO `ignore`/`iscrowd` annotations) are don't-care regions, as are the
objects outside a bucket when a bucket is scored. As with COCO's area ranges, a detection
that matches no object is left out of a distance or size bucket it is not in itself: by
the distance of its box's foot on the ground (the camera of the dataset's summary.json)
or by its own smaller side."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.detector import load_detector, model_imgsz, result_rows
from perception.geometry import ground_distance
from perception.metrics import ImageBoxes, detection_map
from perception.raw_detector import check_imgsz, check_trained_imgsz
from perception.refine import Refiner
from sim.types import CLASS_NAMES, check_number

DISTANCE_BUCKETS = {"0-20m": (0.0, 20.0), "20-40m": (20.0, 40.0), "40m+": (40.0, np.inf)}
SIZE_BUCKETS = {"0-6px": (0.0, 6.0), "6-10px": (6.0, 10.0), "10-20px": (10.0, 20.0),
                "20px+": (20.0, np.inf)}
"""Buckets of a box's smaller side [px] (half the labelled objects are under 8 px)."""
BoxRule = Callable[[np.ndarray], np.ndarray]
"""Boxes (N, 4) -> (N,) bool: the detections outside a bucket."""
VISIBILITY_BUCKETS = {"vis<0.5": (0.0, 0.5), "vis>=0.5": (0.5, 1.01)}


def _load_split(data: Path, split: str) -> tuple[list[dict[str, Any]], dict[int, list[dict]]]:
    from perception.datasets import read_coco

    doc = read_coco(data / "annotations" / f"{split}.json")
    anns: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    return doc["images"], anns


def is_ignored(ann: dict[str, Any]) -> bool:
    """A COCO annotation of an object under the dataset's ignore rule (a don't-care
    region: `ignore` or `iscrowd`)."""
    return bool(ann.get("ignore", ann.get("iscrowd", 0)))


def _gt(anns: list[dict], keep: Callable[[dict], bool]) -> ImageBoxes:
    """Ground truth of one image; annotations under the ignore rule or outside the bucket
    become `ignore`."""
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                       a["bbox"][1] + a["bbox"][3]] for a in anns], float).reshape(-1, 4)
    classes = np.array([a["category_id"] - 1 for a in anns], int)
    ignore = np.array([is_ignored(a) or not keep(a) for a in anns], bool)
    return ImageBoxes(boxes, classes, ignore=ignore)


def predict_split(weights: Path, data: Path, split: str, imgsz: int | None = None,
                  device: str = "cpu", conf: float = 0.001, refiner: Refiner | None = None
                  ) -> dict[int, ImageBoxes]:
    """Predictions of the detector for every image of a split, by COCO image id, at
    `imgsz` (default: the size the weights were trained at), through `refiner` if
    given. `imgsz`: an integer multiple of 32 in 32..4096 px (`check_imgsz`)."""
    return predict_split_refined(weights, data, split, [refiner], imgsz, device, conf)[0]


def predict_split_refined(weights: Path, data: Path, split: str,
                          refiners: Sequence[Refiner | None], imgsz: int | None = None,
                          device: str = "cpu", conf: float = 0.001, raw: bool = False
                          ) -> list[dict[int, ImageBoxes]]:
    """`predict_split` through each of `refiners` (None: none), the detector run once: one
    prediction dict per refiner, in order (e.g. one refiner at several score exponents).
    `raw`: the detector as the Perceiver runs it (`RawDetector`: on the CPU the cached ONNX
    export at the size it was trained at, about 3x faster than ultralytics' predict here),
    for frames that scale to sides of multiples of 32; not with `imgsz`."""
    check_number("conf", conf, 0.0, 1.0)
    if imgsz is not None:
        check_imgsz(imgsz)
    if raw:
        if imgsz is not None:
            raise ValueError("raw: the detector runs at the size it was trained at; no imgsz")
        images, _ = _load_split(data, split)
        if not images:
            return [{} for _ in refiners]
        return _predict_raw(weights, data, images, refiners, device, conf)
    model = load_detector(weights)  # a file that is not a detector is refused first
    imgsz = imgsz or check_trained_imgsz(model_imgsz(model), weights)
    images, _ = _load_split(data, split)
    out: list[dict[int, ImageBoxes]] = [{} for _ in refiners]
    for chunk in range(0, len(images), 32):
        batch = images[chunk: chunk + 32]
        frames = []
        for im in batch:  # BGR, as ultralytics reads files
            img = cv2.imread(str(data / im["file_name"]), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"{data / im['file_name']}: not a readable image")
            frames.append(img)
        results = model.predict(frames, imgsz=imgsz, conf=conf, device=device, verbose=False)
        found = [result_rows(r) for r in results]
        rgb = [np.ascontiguousarray(f[..., ::-1]) for f in frames]
        for preds, refiner in zip(out, refiners, strict=True):
            dets = found if refiner is None else refiner(rgb, found)
            for im, d in zip(batch, dets, strict=True):
                preds[im["id"]] = ImageBoxes(d[:, :4], d[:, 5].astype(int), d[:, 4])
    return out


def _predict_raw(weights: Path, data: Path, images: list[dict[str, Any]],
                 refiners: Sequence[Refiner | None], device: str, conf: float
                 ) -> list[dict[int, ImageBoxes]]:
    from perception.detector import cached_onnx

    h, w = int(images[0]["height"]), int(images[0]["width"])
    source = cached_onnx(weights, h, w) if device == "cpu" else weights
    stat = Path(source).stat()
    detector = _raw_detector(Path(source), (stat.st_mtime_ns, stat.st_size), device, h, w,
                             conf)
    out: list[dict[int, ImageBoxes]] = [{} for _ in refiners]
    for chunk in range(0, len(images), 32):
        batch = images[chunk: chunk + 32]
        frames = []
        for im in batch:
            img = cv2.imread(str(data / im["file_name"]), cv2.IMREAD_COLOR)
            if img is None or img.shape[:2] != (h, w):
                raise ValueError(f"{data / im['file_name']}: not a readable {w}x{h} image")
            frames.append(np.ascontiguousarray(img[..., ::-1]))
        dets = detector(frames)
        for preds, refiner in zip(out, refiners, strict=True):
            refined = dets if refiner is None else refiner(frames, dets)
            for im, d in zip(batch, refined, strict=True):
                preds[im["id"]] = ImageBoxes(d[:, :4], d[:, 5].astype(int), d[:, 4])
    return out


@functools.lru_cache(maxsize=2)
def _raw_detector(source: Path, stamp: tuple[int, int], device: str, height: int,
                  width: int, conf: float) -> Any:
    """One compiled detector for every split and set a report scores (building one is a
    model compile); `stamp` (mtime, size) makes a rewritten file a new detector."""
    from perception.raw_detector import RawDetector

    return RawDetector(source, device, height, width, conf)


def evaluate_detections(preds: dict[int, ImageBoxes], data: Path, split: str,
                        only: set[int] | None = None) -> dict[str, Any]:
    """mAP overall, per time of day and weather, per distance, size and visibility
    bucket (of the images whose ids are in `only`, default all)."""
    images, anns = _load_split(data, split)
    if only is not None:
        images = [im for im in images if im["id"] in only]
    n = len(CLASS_NAMES)
    from perception.datasets import dataset_camera

    camera = dataset_camera(data)

    def score(select_images: Callable[[dict], bool], keep: Callable[[dict], bool],
              outside: BoxRule | None = None) -> dict[str, Any]:
        chosen = [im for im in images if select_images(im)]
        if not chosen:
            return {"images": 0}
        gts = [_gt(anns.get(im["id"], []), keep) for im in chosen]
        ps = [preds[im["id"]] for im in chosen]
        if outside is not None:  # COCO's area-range rule, by the detection's own value
            ps = [ImageBoxes(p.boxes, p.classes, p.scores, ignore=outside(p.boxes))
                  for p in ps]
        r = detection_map(ps, gts, n)
        objects = sum(int((~g.ignore).sum()) for g in gts if g.ignore is not None)
        return {"images": len(chosen), "objects": objects,
                "mAP50": r["mAP50"], "mAP50-95": r["mAP50-95"]}

    def every(_: dict) -> bool:
        return True

    def far_from(lo: float, hi: float) -> BoxRule:
        return lambda b: ~((lo <= (d := ground_distance(b, camera))) & (d < hi))

    def sized_out(lo: float, hi: float) -> BoxRule:
        return lambda b: ~((lo <= (m := _min_side(b))) & (m < hi))

    report: dict[str, Any] = {"split": split, "all": score(every, every)}
    full = detection_map([preds[im["id"]] for im in images],
                         [_gt(anns.get(im["id"], []), every) for im in images], n)
    per_class: list[float | None] = list(full["ap50_95_per_class"])  # type: ignore[call-overload]
    report["per_class_mAP50-95"] = dict(zip(CLASS_NAMES, per_class, strict=True))
    report["nominal (day, clear)"] = score(is_nominal, every)
    for key in ("time_of_day", "weather", "family"):
        for value in sorted({im[key] for im in images}):
            report[f"{key}={value}"] = score(_equals(key, value), every)
    for name, (lo, hi) in DISTANCE_BUCKETS.items():
        report[f"distance {name}"] = score(every, _within("distance", lo, hi),
                                           far_from(lo, hi))
    for name, (lo, hi) in SIZE_BUCKETS.items():
        report[f"size {name}"] = score(every, _sized(lo, hi), sized_out(lo, hi))
    for name, (lo, hi) in VISIBILITY_BUCKETS.items():
        report[name] = score(every, _within("visible_fraction", lo, hi))
    return report


def is_nominal(item: dict) -> bool:
    """Nominal conditions, where the targets apply: day and clear weather."""
    return bool(item.get("time_of_day") == "day" and item.get("weather") == "clear")


def _equals(key: str, value: Any) -> Callable[[dict], bool]:
    return lambda item: bool(item[key] == value)


def _within(key: str, lo: float, hi: float) -> Callable[[dict], bool]:
    return lambda item: bool(lo <= item[key] < hi)


def _min_side(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])


def _sized(lo: float, hi: float) -> Callable[[dict], bool]:
    """Annotations whose box's smaller side is in [lo, hi) px."""
    return lambda a: bool(lo <= min(a["bbox"][2], a["bbox"][3]) < hi)
