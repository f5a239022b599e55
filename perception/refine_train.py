"""Training of the box refiner (perception/refine.py) on a `drivestack dataset` folder,
offline and seeded.

The detector (by default the shipped one) runs over the training split at a low
confidence; its boxes that match a labelled object, and the labelled boxes moved by
about a pixel, become 32x32 patches whose edge classes the refiner learns. The run
ends with the detector's validation-split mAP with and without the refiner (our COCO
metric, `perception.evaluate`), both written to out/results.json beside out/refiner.pt.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.detector import DEFAULT_WEIGHTS, cached_onnx, resolve_device, torch_device
from perception.evaluate import _load_split, evaluate_detections
from perception.metrics import ImageBoxes
from perception.perceiver import Perceiver
from perception.refine import (
    Refiner,
    RefinerData,
    RefinerSpec,
    build_data,
    fit_refiner,
    save_refiner,
)
from sim.types import CameraSpec, check_number


@dataclass(frozen=True)
class RefinerTraining:
    """One refiner training run."""

    data: Path
    """Dataset folder (from `drivestack dataset`)."""
    out: Path
    """Run folder: refiner.pt, results.json."""
    detector: Path | None = None
    """Detector whose boxes it learns to refine (default: the shipped one)."""
    epochs: int = 10
    batch: int = 256
    lr: float = 3e-3
    width: int = 16
    iou_weight: float = 0.5
    frames: int | None = None
    """Training frames used (the first ones of the split; None: all)."""
    val_frames: int | None = None
    """Validation frames scored at the end (None: all)."""
    min_conf: float = 0.01
    jitter: int = 1
    """Copies of each labelled box moved by about a pixel, per frame."""
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_number("epochs", self.epochs, 1, 100_000, integer=True)
        check_number("batch", self.batch, 1, 1 << 20, integer=True)
        check_number("lr", self.lr, 0.0, 1.0, open_lo=True)
        RefinerSpec(self.width, self.iou_weight)  # checks width and iou_weight
        check_number("min_conf", self.min_conf, 0.0, 1.0)
        check_number("jitter", self.jitter, 0, 1000, integer=True)
        for name in ("frames", "val_frames"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name), 1, 1 << 40, integer=True)


def _camera(data: Path) -> CameraSpec:
    from perception.datasets import dataset_camera

    return dataset_camera(Path(data))


def _detector(cfg: RefinerTraining, camera: CameraSpec, device: str) -> Perceiver:
    weights = Path(cfg.detector or DEFAULT_WEIGHTS)
    if not weights.is_file():
        raise FileNotFoundError(f"detector weights {weights} not found")
    if device == "cpu" and weights.suffix == ".pt":
        try:  # ONNX Runtime: about 2.5x ultralytics' predict on the CPU
            weights = cached_onnx(weights, camera.height, camera.width)
        except ValueError:  # frames that do not scale to multiples of 32
            pass
    return Perceiver(weights=weights, device=device, camera=camera, conf=cfg.min_conf,
                     lanes=False, refine=False)


def labelled_frames(data: Path, split: str, limit: int | None = None, chunk: int = 256
                    ) -> Iterator[tuple[list[dict], list[np.ndarray], list[np.ndarray]]]:
    """A split in chunks: image records, RGB frames, labelled boxes (m, 4) xyxy (every
    object, those under the ignore rule too)."""
    images, anns = _load_split(Path(data), split)
    images = images[:limit]
    for s in range(0, len(images), chunk):
        recs = images[s: s + chunk]
        frames, gts = [], []
        for im in recs:
            img = cv2.imread(str(Path(data) / im["file_name"]), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"{Path(data) / im['file_name']}: not a readable image")
            frames.append(np.ascontiguousarray(img[..., ::-1]))
            a = anns.get(im["id"], [])
            gts.append(np.array([[b[0], b[1], b[0] + b[2], b[1] + b[3]]
                                 for b in (x["bbox"] for x in a)], np.float32).reshape(-1, 4))
        yield recs, frames, gts


def _detect(perceiver: Perceiver, frames: list[np.ndarray], batch: int = 16
            ) -> list[np.ndarray]:
    out = []
    for s in range(0, len(frames), batch):
        out.extend(p.detections.rows() for p in perceiver(frames[s: s + batch]))
    return out


def _patches(cfg: RefinerTraining, perceiver: Perceiver, split: str, limit: int | None,
             seed: int, jitter: int) -> RefinerData | None:
    """Patches of a split (None when no box matches an object)."""
    parts = []
    for k, (_, frames, gts) in enumerate(labelled_frames(cfg.data, split, limit)):
        dets = _detect(perceiver, frames)
        try:
            parts.append(build_data(frames, dets, gts, seed=seed + k, min_conf=cfg.min_conf,
                                    jitter=jitter))
        except ValueError:  # a chunk without a single match
            continue
    if not parts:
        return None
    return RefinerData(np.concatenate([p.x for p in parts]),
                       np.concatenate([p.y for p in parts]))


def score_split(perceiver: Perceiver, refiner: Refiner | None, data: Path, split: str,
                limit: int | None = None) -> dict[str, Any]:
    """mAP (all, nominal and per bucket) of the detector on a split, refined or not."""
    preds: dict[int, ImageBoxes] = {}
    raw: dict[int, ImageBoxes] = {}
    for recs, frames, _ in labelled_frames(data, split, limit):
        dets = _detect(perceiver, frames)
        ref = refiner(frames, dets) if refiner is not None else dets
        for im, d, r in zip(recs, dets, ref, strict=True):
            raw[im["id"]] = ImageBoxes(d[:, :4], d[:, 5].astype(int), d[:, 4])
            preds[im["id"]] = ImageBoxes(r[:, :4], r[:, 5].astype(int), r[:, 4])
    keep = set(raw)

    def scored(p: dict[int, ImageBoxes]) -> dict[str, Any]:
        return _subset(evaluate_detections(p, data, split, only=keep))

    return {"detector": scored(raw), "refined": scored(preds)}


def _subset(report: dict[str, Any]) -> dict[str, Any]:
    keys = ["all", "nominal (day, clear)"] + [k for k in report if k.startswith("size ")]
    return {k: {m: report[k].get(m) for m in ("images", "objects", "mAP50", "mAP50-95")}
            for k in keys}


def train_refiner(cfg: RefinerTraining,
                  on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train, save out/refiner.pt and out/results.json; return the results."""

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    dev = torch_device(device)
    camera = _camera(cfg.data)
    perceiver = _detector(cfg, camera, device)
    train = _patches(cfg, perceiver, "train", cfg.frames, cfg.seed, cfg.jitter)
    if train is None:
        raise ValueError(f"{cfg.data}: no labelled object in the training split to learn")
    # edge accuracy each epoch on the detector's own boxes of the first val frames
    val = _patches(cfg, perceiver, "val", min(cfg.val_frames or 400, 400), cfg.seed, 0)
    spec = RefinerSpec(width=cfg.width, iou_weight=cfg.iou_weight)
    history: list[dict[str, Any]] = []

    def log(row: dict[str, Any]) -> None:
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)

    model = fit_refiner(train, spec, epochs=cfg.epochs, batch=cfg.batch, lr=cfg.lr,
                        seed=cfg.seed, val=val, on_epoch=log, device=dev)
    out = Path(cfg.out)
    weights = out / "refiner.pt"
    facts = {"config": {k: str(v) if isinstance(v, Path) else v
                        for k, v in asdict(cfg).items()},
             "train_patches": len(train.y), "history": history}
    save_refiner(model, spec, weights, facts)
    refiner = Refiner(model, spec, dev)
    results = {"weights": str(weights), "detector": str(cfg.detector or DEFAULT_WEIGHTS),
               "train_patches": len(train.y),
               "val_patches": 0 if val is None else len(val.y), "history": history,
               "val": score_split(perceiver, refiner, cfg.data, "val", cfg.val_frames),
               "seconds": round(time.perf_counter() - t0, 1)}
    _write_json(out / "results.json", results)
    return results


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
