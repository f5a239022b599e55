"""Detector ceiling: where the detector's COCO mAP50-95 is lost on a held-out split, by
box size.

    python bench/detector_ceiling.py [--data data/perception_large_v3] [--split test]
        [--weights perception/weights/detector.pt | --no-detector] [--limit N]
        [--sigmas 0,0.25,0.5,0.75,1] [--seed 0] [--scores random|iou]

Two parts, on a dataset made by `drivestack dataset` (COCO file annotations/{split}.json;
objects under the dataset's ignore rule, `ignore`/`iscrowd` = 1, are don't-care regions,
as in `perception.evaluate`):

1. Localization ceiling. "Oracle" predictions are every ground-truth box that is not
   ignored, with its true class, each of its four edges moved by independent Gaussian
   noise of sigma px (one draw of unit noise from `numpy.random.default_rng(seed)`, scaled
   by each sigma, so the sigmas differ only in scale; an edge pair that crosses is
   swapped back; boxes are not clipped to the frame). Scores are uniform in [0.5, 1)
   (`--scores random`, the default) or the box's own IoU with its ground truth
   (`--scores iou`: a perfect ranking, the upper bound). They are scored by
   `perception.evaluate.evaluate_detections`: perfect recall, no false positives, so the
   only loss is the box edges. With random scores a threshold at which a share p of the
   boxes reach the IoU gives AP of about p^2 (precision about p up to recall p); with
   IoU-ranked scores about p.
2. The real detector's edge errors (unless `--no-detector`): predictions of
   `perception.evaluate.predict_split` (the weights' training input size, conf 0.001),
   scored the same way, then, on nominal images (day, clear) and non-ignored ground truth,
   each object is matched to the prediction (score >= 0.25, any class) of highest IoU;
   IoU < 0.3 counts as missed. Per bucket of the object's smaller side in px: count,
   missed share, mean and std of each edge's error (pred - gt, x0 y0 x1 y1), mean IoU of
   the matched and the share of them whose prediction has another class. A prediction
   may be the best match of more than one object.

Both parts give mAP50-95 per distance bucket and per bucket of the smaller side
("side ..."), as `perception.evaluate` scores them: objects of the other buckets are
don't-care and, as in COCO's area ranges, a detection that matches nothing and whose own
smaller side (or the distance of its foot on the ground) lies outside the bucket is not
counted.
`--limit N` keeps the first N images of the split (both parts), for quick runs: the
subset is written to a temporary folder (annotations only; image paths made absolute).
On 2,400 images and 2 CPU cores (one busy with training) scoring takes about 45 s per
sigma, predicting about 30 s, so about 5 minutes in all. Prints tables and, last, one
JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from perception.detector import DEFAULT_WEIGHTS
from perception.evaluate import (
    SIZE_BUCKETS,
    evaluate_detections,
    is_ignored,
    is_nominal,
    predict_split,
)
from perception.metrics import ImageBoxes, box_iou

KEYS = ("all", "nominal (day, clear)", "distance 0-20m", "distance 20-40m", "distance 40m+",
        *(f"size {k}" for k in SIZE_BUCKETS))
EDGES = ("x0", "y0", "x1", "y1")
CONF = 0.25
MIN_IOU = 0.3


def _xyxy(anns: list[dict]) -> np.ndarray:
    return np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                      a["bbox"][1] + a["bbox"][3]] for a in anns], float).reshape(-1, 4)


def _min_side(a: dict) -> float:
    return float(min(a["bbox"][2], a["bbox"][3]))


def load(data: Path, split: str, limit: int | None
         ) -> tuple[dict[str, Any], dict[int, list[dict]]]:
    """The split's COCO document (its first `limit` images and their annotations) and the
    annotations by image id."""
    path = data / "annotations" / f"{split}.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --data must be a folder made by "
                         f"`drivestack dataset` with a '{split}' split")
    doc = json.loads(path.read_text())
    if limit is not None:
        doc["images"] = doc["images"][:limit]
        ids = {im["id"] for im in doc["images"]}
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in ids]
    anns: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    return doc, anns


def oracle(images: list[dict], anns: dict[int, list[dict]], sigma: float, seed: int,
           scores: str) -> tuple[dict[int, ImageBoxes], int]:
    """Noisy copies of the non-ignored ground truth; also the count of edge pairs that
    crossed and were swapped back."""
    rng = np.random.default_rng(seed)
    preds: dict[int, ImageBoxes] = {}
    crossed = 0
    for im in images:  # same draws for every sigma: the rng restarts from the seed
        real = [a for a in anns.get(im["id"], []) if not is_ignored(a)]
        gt = _xyxy(real)
        noisy = gt + sigma * rng.standard_normal(gt.shape)
        u = rng.uniform(0.5, 1.0, len(real))
        crossed += int((noisy[:, 2] < noisy[:, 0]).sum() + (noisy[:, 3] < noisy[:, 1]).sum())
        noisy = np.concatenate([np.minimum(noisy[:, :2], noisy[:, 2:]),
                                np.maximum(noisy[:, :2], noisy[:, 2:])], axis=1)
        s = np.diag(box_iou(noisy, gt)) if scores == "iou" else u
        preds[im["id"]] = ImageBoxes(noisy, np.array([a["category_id"] - 1 for a in real],
                                                     int).reshape(-1), np.asarray(s, float))
    return preds, crossed


def edge_errors(preds: dict[int, ImageBoxes], images: list[dict],
                anns: dict[int, list[dict]]) -> dict[str, dict[str, Any]]:
    """Per smaller-side bucket, on nominal images and non-ignored objects: count, missed
    share, edge errors (pred - gt) of the matched, their mean IoU and wrong-class share."""
    rows: dict[str, list[tuple[np.ndarray, float, bool]]] = {k: [] for k in SIZE_BUCKETS}
    counts = dict.fromkeys(SIZE_BUCKETS, 0)
    for im in images:
        if not is_nominal(im):
            continue
        real = [a for a in anns.get(im["id"], []) if not is_ignored(a)]
        if not real:
            continue
        p = preds[im["id"]]
        keep = (p.scores if p.scores is not None else np.ones(len(p.boxes))) >= CONF
        boxes, classes = p.boxes[keep], p.classes[keep]
        gt = _xyxy(real)
        iou = box_iou(gt, boxes)
        for i, a in enumerate(real):
            side = _min_side(a)
            name = next(k for k, (lo, hi) in SIZE_BUCKETS.items() if lo <= side < hi)
            counts[name] += 1
            if iou.shape[1] == 0 or iou[i].max() < MIN_IOU:
                continue
            j = int(np.argmax(iou[i]))
            rows[name].append((boxes[j] - gt[i], float(iou[i, j]),
                               bool(classes[j] != a["category_id"] - 1)))
    out: dict[str, dict[str, Any]] = {}
    for name, got in rows.items():
        n = counts[name]
        r: dict[str, Any] = {"objects": n, "matched": len(got),
                             "missed_share": round(1 - len(got) / n, 4) if n else None}
        if got:
            err = np.stack([g[0] for g in got])
            for k, edge in enumerate(EDGES):
                r[f"{edge}_mean"] = round(float(err[:, k].mean()), 3)
                r[f"{edge}_std"] = round(float(err[:, k].std()), 3)
            r["mean_iou"] = round(float(np.mean([g[1] for g in got])), 4)
            r["wrong_class_share"] = round(float(np.mean([g[2] for g in got])), 4)
        out[name] = r
    return out


def _fmt(v: float | None) -> str:
    return "   -  " if v is None or np.isnan(v) else f"{v:6.3f}"


def _maps(report: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {k: report[k].get("mAP50-95") for k in KEYS}
    return {k: None if v is None or np.isnan(v) else round(float(v), 4)
            for k, v in out.items()}


def _table(title: str, rows: dict[str, dict[str, float | None]]) -> None:
    cols = list(next(iter(rows.values())))
    short = [c.replace("distance ", "").replace("size ", "side ")
             .replace("nominal (day, clear)", "nominal") for c in cols]
    print(f"\n{title}")
    print(f"{'':>10} " + " ".join(f"{c:>11}" for c in short))
    for name, r in rows.items():
        print(f"{name:>10} " + " ".join(f"{_fmt(r[c]):>11}" for c in cols))


def _edge_table(errs: dict[str, dict[str, Any]]) -> None:
    print("\ndetector edge errors (pred - gt, px), nominal images, non-ignored objects, "
          f"score >= {CONF}, IoU < {MIN_IOU} = missed")
    head = ["objects", "missed", *(f"{e} mean/std" for e in EDGES), "mean IoU", "wrong cls"]
    print(f"{'min side':>9} " + " ".join(f"{h:>13}" for h in head))
    for name, r in errs.items():
        if not r["matched"]:
            print(f"{name:>9} {r['objects']:>13} {_fmt(r['missed_share']):>13}")
            continue
        cells = [f"{r['objects']}", f"{r['missed_share']:.3f}",
                 *(f"{r[e + '_mean']:+.2f}/{r[e + '_std']:.2f}" for e in EDGES),
                 f"{r['mean_iou']:.3f}", f"{r['wrong_class_share']:.3f}"]
        print(f"{name:>9} " + " ".join(f"{c:>13}" for c in cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/perception_large_v3"))
    p.add_argument("--split", default="test")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--no-detector", action="store_true", help="only the oracle part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigmas", default="0,0.25,0.5,0.75,1.0",
                   help="comma list of edge noise sigmas in px")
    p.add_argument("--scores", choices=("random", "iou"), default="random",
                   help="oracle scores: uniform in [0.5, 1) or the box's IoU (best ranking)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = p.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    doc, anns = load(args.data, args.split, args.limit)
    images = doc["images"]
    real = [a for a in doc["annotations"] if not is_ignored(a)]
    print(f"{args.data} split {args.split}: {len(images)} images "
          f"({sum(map(is_nominal, images))} nominal), {len(real)} objects not ignored, "
          f"{len(doc['annotations']) - len(real)} ignored")
    sides = np.array([_min_side(a) for a in real])
    print("objects by smaller side: " + ", ".join(
        f"{k} {int(((sides >= lo) & (sides < hi)).sum())}"
        for k, (lo, hi) in SIZE_BUCKETS.items()))
    fig: dict[str, Any] = {"data": str(args.data), "split": args.split,
                           "images": len(images), "objects": len(real), "seed": args.seed,
                           "oracle_scores": args.scores}
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.limit is not None:  # a folder holding only the subset's annotations
            data = Path(tmp)
            (data / "annotations").mkdir()
            for im in images:
                im["file_name"] = str((args.data / im["file_name"]).resolve())
            (data / "annotations" / f"{args.split}.json").write_text(json.dumps(doc))
            if (args.data / "summary.json").is_file():  # the camera of the distance buckets
                (data / "summary.json").write_text((args.data / "summary.json").read_text())
        rows: dict[str, dict[str, float | None]] = {}
        crossed: dict[str, int] = {}
        for sigma in sigmas:
            start = time.perf_counter()
            preds, crossed[f"{sigma:g}"] = oracle(images, anns, sigma, args.seed, args.scores)
            rows[f"sigma {sigma:g}"] = _maps(evaluate_detections(preds, data, args.split))
            print(f"oracle sigma {sigma:g} px: scored in {time.perf_counter() - start:.0f} s")
        _table(f"oracle mAP50-95 (ground truth + edge noise, {args.scores} scores)", rows)
        fig["oracle_mAP50-95"] = rows
        fig["oracle_crossed_edges"] = crossed
        if not args.no_detector:
            start = time.perf_counter()
            preds = predict_split(args.weights, data, args.split)
            print(f"\npredicted {len(preds)} images in {time.perf_counter() - start:.0f} s "
                  f"({args.weights})")
            maps = _maps(evaluate_detections(preds, data, args.split))
            _table("detector mAP50-95", {"detector": maps})
            errs = edge_errors(preds, images, anns)
            _edge_table(errs)
            fig["detector"] = {"weights": str(args.weights), "mAP50-95": maps,
                               "edge_errors": errs}
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
