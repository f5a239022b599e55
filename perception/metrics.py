"""Detection and lane metrics, written out so they can be read and checked by hand.

- `detection_map`: COCO-style mAP (greedy matching by score, 101-point interpolated AP,
  IoU thresholds 0.50:0.05:0.95, averaged over the classes that have ground truth).
  Ground truth marked `ignore` (the dataset's ignore rule; objects outside a scored
  bucket) neither counts as missed nor makes a detection of it a false positive. A
  detection is "of" an ignored object when their IoU is >= 0.5 at every threshold, so an
  ignored object detected a little loosely is no false positive at 0.75 either (COCO and
  pycocotools match ignored regions at each threshold). Predictions may carry an
  `ignore` flag too, COCO's area-range rule: a flagged detection (one outside the scored
  bucket, by its own size or estimated distance) is not counted when it matches no
  object.
- `tusimple_lane_metrics`: TuSimple accuracy, FP and FN rates (points within 20 px at
  1280 px width, scaled to the image; a lane matches at >= 85 % of its points).
- `culane_f1`: CULane F1 (lanes drawn 30 px wide at 1640 px width, scaled; IoU >= 0.5,
  one-to-one matching by the Hungarian method).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from sim.types import ABSENT

IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def average_precision(tp: np.ndarray, scores: np.ndarray, n_gt: int) -> float:
    """COCO 101-point interpolated AP of detections (tp flags, scores) against n_gt."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="stable")
    return ranked_ap(np.asarray(tp, bool)[order], n_gt)


def ranked_ap(tp: np.ndarray, n_gt: float, weights: np.ndarray | None = None) -> float:
    """COCO 101-point interpolated AP of detections already sorted by falling score, each
    counted `weights[i]` times when given (a bootstrap resample: data_engine.evaluation)."""
    if np.size(tp) == 0:
        return 0.0
    tp = np.asarray(tp, bool)
    w = np.ones(tp.shape) if weights is None else np.asarray(weights, float)
    ctp, cfp = np.cumsum(w * tp), np.cumsum(w * ~tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(idx < envelope.size, envelope[np.minimum(idx, envelope.size - 1)], 0.0)
    return float(sampled.mean())


@dataclass
class ImageBoxes:
    """Boxes of one image: xyxy (N, 4), classes (N,), scores (N,) for predictions, and an
    ignore flag (N,): for ground truth a don't-care object, for a prediction one outside
    the scored bucket (not counted unless it matches an object)."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray | None = None
    ignore: np.ndarray | None = None


def match_detections(pred: ImageBoxes, gt: ImageBoxes, cls: int, thr: float
                     ) -> tuple[list[bool], list[float], int]:
    """Greedy COCO matching in one image and class at one IoU threshold: (tp flags,
    scores, gt count) of the predictions counted, by falling score."""
    status, scores, n = match_detections_at(pred, gt, cls, np.array([thr]))
    kept = status[0] >= 0
    return (status[0][kept] == 1).tolist(), scores[kept].astype(float).tolist(), n


def match_detections_at(pred: ImageBoxes, gt: ImageBoxes, cls: int,
                        thresholds: np.ndarray = IOU_THRESHOLDS
                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy COCO matching in one image and class at every IoU threshold in one pass (the
    IoUs computed once): status (T, P) int8 of the class's predictions in falling-score
    order (1 a true positive, 0 a false one, -1 not counted: outside the bucket, or of an
    ignored object), their scores (P,) and the gt count. Each prediction takes the best
    still-unmatched real object at or above the threshold."""
    pm = pred.classes == cls
    gm = gt.classes == cls
    p_boxes, p_scores = pred.boxes[pm], (pred.scores if pred.scores is not None
                                         else np.ones(len(pred.boxes)))[pm]
    p_ign = (pred.ignore if pred.ignore is not None else np.zeros(len(pred.boxes), bool))[pm]
    g_boxes = gt.boxes[gm]
    g_ign = (gt.ignore if gt.ignore is not None else np.zeros(len(gt.boxes), bool))[gm]
    thr = np.asarray(thresholds, float)[:, None]
    order = np.argsort(-p_scores, kind="stable")
    status = np.zeros((len(thr), len(order)), np.int8)
    if len(order):
        iou = box_iou(p_boxes, g_boxes)
        skip = p_ign | (g_ign[None, :] & (iou >= IOU_THRESHOLDS[0])).any(1)
        free = np.repeat(~g_ign[None, :], len(thr), 0)  # (T, G)
        rows = np.arange(len(thr))
        for j, i in enumerate(order):
            if free.shape[1]:
                cand = np.where(free & (iou[i] >= thr), iou[i], -1.0)
                best = cand.argmax(1)
                hit = cand[rows, best] >= 0  # best still-unmatched real object
                free[rows[hit], best[hit]] = False
                status[:, j] = np.where(hit, 1, -1 if skip[i] else 0)
            else:
                status[:, j] = -1 if skip[i] else 0
    return status, p_scores[order], int((~g_ign).sum())


def detection_map(preds: list[ImageBoxes], gts: list[ImageBoxes], n_classes: int
                  ) -> dict[str, object]:
    """mAP50, mAP50-95 and per-class AP over a set of images."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} prediction images for {len(gts)} ground-truth images")
    ap = np.full((n_classes, len(IOU_THRESHOLDS)), np.nan)
    for c in range(n_classes):
        matched = [match_detections_at(p, g, c) for p, g in zip(preds, gts, strict=True)]
        n_gt = sum(n for _, _, n in matched)
        for k in range(len(IOU_THRESHOLDS)):
            kept = [st[k] >= 0 for st, _, _ in matched]
            tps = np.concatenate([st[k][m] == 1 for (st, _, _), m in zip(matched, kept,
                                                                          strict=True)]
                                 ) if matched else np.zeros(0, bool)
            scores = np.concatenate([sc[m] for (_, sc, _), m in zip(matched, kept,
                                                                     strict=True)]
                                    ) if matched else np.zeros(0)
            ap[c, k] = average_precision(tps, scores, n_gt)
    has_gt = ~np.isnan(ap[:, 0])
    return {
        "mAP50": float(np.mean(ap[has_gt, 0])) if has_gt.any() else float("nan"),
        "mAP50-95": float(np.mean(ap[has_gt])) if has_gt.any() else float("nan"),
        "ap50_per_class": [None if np.isnan(v) else float(v) for v in ap[:, 0]],
        "ap50_95_per_class": [None if not h else float(np.mean(row))
                              for h, row in zip(has_gt, ap, strict=True)],
    }


# -- lanes --------------------------------------------------------------------------------
def tusimple_lane_metrics(pred: list[np.ndarray], gt: list[np.ndarray], width: int
                          ) -> dict[str, float]:
    """Accuracy, FP and FN rates over images; each entry is (lanes, rows) x positions with
    ABSENT (-2) where a lane is not present."""
    thr = 20.0 * width / 1280.0
    acc_sum, n_gt, n_pred, fp, fn = 0.0, 0, 0, 0, 0
    for p_img, g_img in zip(pred, gt, strict=True):
        g, p = _present(g_img), _present(p_img)
        matched = 0
        for lane in g:
            valid = lane != ABSENT
            best = 0.0
            for cand in p:
                hits = (cand != ABSENT) & (np.abs(cand - lane) < thr) & valid
                best = max(best, float(hits.sum() / valid.sum()))
            acc_sum += best
            matched += best >= 0.85
        n_gt += len(g)
        n_pred += len(p)
        fn += len(g) - matched
        fp += max(len(p) - matched, 0)
    return {"accuracy": acc_sum / max(n_gt, 1), "fp_rate": fp / max(n_pred, 1),
            "fn_rate": fn / max(n_gt, 1)}


def _present(lanes: np.ndarray) -> list[np.ndarray]:
    """The lanes (rows of x) that have at least one point."""
    arr = np.asarray(lanes, float)
    if arr.size == 0:
        return []
    return [lane for lane in arr.reshape(-1, arr.shape[-1]) if (lane != ABSENT).any()]


def _lane_mask(lane: np.ndarray, rows: np.ndarray, shape: tuple[int, int], thick: int
               ) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    ok = lane != ABSENT
    pts = np.stack([lane[ok], rows[ok]], axis=1).round().astype(np.int32)
    if len(pts) >= 2:
        cv2.polylines(mask, [pts], False, 1, thickness=max(thick, 1))
    elif len(pts) == 1:
        cv2.circle(mask, tuple(int(v) for v in pts[0]), max(thick // 2, 1), 1, -1)
    return mask.astype(bool)


def culane_f1(pred: list[np.ndarray], gt: list[np.ndarray], rows: np.ndarray,
              shape: tuple[int, int], iou_threshold: float = 0.5) -> dict[str, float]:
    """CULane F1 with lanes drawn 30 px wide at 1640 px width (scaled to `shape`)."""
    thick = int(round(30.0 * shape[1] / 1640.0))
    tp = fp = fn = 0
    for p, g in zip(pred, gt, strict=True):
        gm = [_lane_mask(lane, rows, shape, thick) for lane in _present(g)]
        pm = [_lane_mask(lane, rows, shape, thick) for lane in _present(p)]
        if gm and pm:
            iou = np.array([[np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)
                             for b in gm] for a in pm])
            r, c = linear_sum_assignment(-iou)
            hits = int((iou[r, c] >= iou_threshold).sum())
        else:
            hits = 0
        tp += hits
        fp += len(pm) - hits
        fn += len(gm) - hits
    denom = 2 * tp + fp + fn
    return {"f1": 2 * tp / denom if denom else float("nan"), "tp": tp, "fp": fp, "fn": fn}
