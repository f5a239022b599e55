"""Quality of a clip's auto-labels against its ground truth: for the report only (bench,
`drivestack relabel`); the labeler itself (`data_engine.autolabel`) never reads this.

    label_quality(labels, ground_truths)      # precision, recall, mean IoU, by size
    quality_of([frame_tally(...), ...])       # the same over the frames of many clips
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.metrics import box_iou
from sim.types import GroundTruth

if TYPE_CHECKING:
    from data_engine.autolabel import ClipLabels

SMALL_SIDE = 10.0
"""Size buckets of `label_quality`: a box's smaller side below this is small [px]."""
MATCH_IOU = 0.5
"""IoU at which a label matches a ground-truth object (`label_quality`)."""
COVER = 0.5
"""A box is inside the ignore regions when this share of its area is covered."""


def _covered(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(N,) bool: boxes with at least COVER of their area inside one of the regions."""
    if not len(boxes) or not len(regions):
        return np.zeros(len(boxes), bool)
    lt = np.maximum(boxes[:, None, :2], regions[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-9), 1)
    return (inter / area[:, None] >= COVER).any(1)


def _small(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) < SMALL_SIDE


def frame_tally(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                ignore: np.ndarray, truth: GroundTruth) -> dict[str, np.ndarray]:
    """One frame's matches, by size bucket (0: small, 1: large): "tp", "fp", "fn",
    "objects", "in_ignore" (counts of 2), and the IoUs of the matches ("iou", "iou_small").

    Objects that count follow the datasets' ignore rule (`perception.datasets.keep_mask`:
    both sides >= 4 px, visible fraction >= 0.25); a label of an object under that rule
    (IoU >= 0.5, same class) is no false positive, as in perception/evaluate.py. Labels
    match objects of their class greedily by score at IoU >= `MATCH_IOU`. A label inside
    the ignore regions that matches nothing is not counted; an object inside them that
    no label matches is no miss, but every counted object inside them is "in_ignore"."""
    from perception.datasets import keep_mask

    gb = np.asarray(truth.boxes_xyxy, np.float64).reshape(-1, 4)
    keep = keep_mask(truth)
    g_small = _small(gb)
    covered = _covered(gb, np.asarray(ignore, np.float64).reshape(-1, 4))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    outcome, match, iou = label_outcomes(boxes, classes, scores, ignore, truth)
    matched = np.zeros(len(gb), bool)
    matched[match[match >= 0]] = True
    p_small = _small(boxes)
    tally = {k: np.zeros(2, np.int64) for k in ("tp", "fp", "fn", "objects", "in_ignore")}
    ious: list[tuple[float, bool]] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if outcome[i] == 1:
            j = int(match[i])
            tally["tp"][int(not g_small[j])] += 1
            ious.append((float(iou[i, j]), bool(g_small[j])))
        elif outcome[i] == 0:
            tally["fp"][int(not p_small[i])] += 1
    for j in np.nonzero(keep)[0].tolist():
        size = int(not g_small[j])
        tally["objects"][size] += 1
        tally["in_ignore"][size] += int(covered[j])
        tally["fn"][size] += int(not matched[j] and not covered[j])
    return {**tally, "iou": np.array([v for v, _ in ious]),
            "iou_small": np.array([sm for _, sm in ious], bool)}


def label_outcomes(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                   ignore: np.ndarray, truth: GroundTruth
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each label of one frame against the ground truth, as `frame_tally` counts it:
    (outcome, match, iou): outcome (N,) 1 a match (true positive), 0 a false positive,
    -1 not counted (inside the ignore regions, or on an object the datasets ignore);
    match (N,) the index of the matched object (-1 none); iou (N, M) against the objects."""
    from perception.datasets import keep_mask

    gb = np.asarray(truth.boxes_xyxy, np.float64).reshape(-1, 4)
    gc = np.asarray(truth.class_ids, np.int64)
    keep = keep_mask(truth)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    iou = box_iou(boxes, gb)
    same = np.asarray(classes).reshape(-1)[:, None] == gc[None, :]
    free = keep.copy()
    p_in = _covered(boxes, np.asarray(ignore, np.float64).reshape(-1, 4))
    outcome = np.full(len(boxes), -1, np.int64)
    match = np.full(len(boxes), -1, np.int64)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        cand = np.where(free & same[i] & (iou[i] >= MATCH_IOU), iou[i], -1.0)
        if cand.size and cand.max() >= 0:
            j = int(cand.argmax())
            free[j] = False
            outcome[i], match[i] = 1, j
        elif not (p_in[i] or ((~keep) & same[i] & (iou[i] >= MATCH_IOU)).any()):
            outcome[i] = 0
    return outcome, match, iou


def label_quality(pred: ClipLabels, truth: Sequence[GroundTruth]) -> dict[str, Any]:
    """Precision, recall and mean IoU of matches at IoU 0.5 of a clip's labels against its
    ground truth, overall and by the objects' smaller side ("small" < 10 px, "large"),
    with the counts, and "ignored": the share of counted objects inside ignore regions
    (see `frame_tally`). For the report only: the labeler itself never reads this."""
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} labelled frames but {len(truth)} ground truths")
    return quality_of([frame_tally(pred.boxes[t], pred.classes[t], pred.scores[t],
                                   pred.ignore[t], truth[t]) for t in range(len(pred))])


def quality_of(tallies: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """`label_quality`'s figures from frame tallies (of one clip or many)."""
    keys = ("tp", "fp", "fn", "objects", "in_ignore")
    total = {k: sum((t[k] for t in tallies), np.zeros(2, np.int64)) for k in keys}
    iou = np.concatenate([t["iou"] for t in tallies]) if tallies else np.zeros(0)
    small = (np.concatenate([t["iou_small"] for t in tallies]) if tallies
             else np.zeros(0, bool))
    out: dict[str, Any] = {}
    for name, sel, m in (("overall", slice(None), np.ones(len(iou), bool)),
                         ("small", slice(0, 1), small), ("large", slice(1, 2), ~small)):
        c = {k: int(total[k][sel].sum()) for k in keys}
        out[name] = {
            "precision": c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan"),
            "recall": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan"),
            "mean_iou": float(iou[m].mean()) if m.any() else float("nan"),
            "ignored": c["in_ignore"] / c["objects"] if c["objects"] else float("nan"), **c}
    out["ignored"] = out["overall"]["ignored"]
    return out
