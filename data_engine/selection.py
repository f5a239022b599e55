"""Which mined frames go into a dataset version: those where the offboard labels and the
online detector disagree most (no ground truth read).

The triggers choose clips, not frames: in turn 9 the mined clips' frames held as many
online-detector errors (against the ground truth) as random clips' frames, 1.63 and 1.64
a frame, and the mined frames gained no more than random ones. Inside the clips the
auto-labels say, frame by frame, where the online detector was wrong: an auto-labelled
object with no online box over it (a miss, often one the labeler carried back in time
from later frames), or an online box over no label and no ignore region (a ghost). Their
sum ranks the frames; the top ones are the mined version's frames ("disagreement"
selection, the offboard-versus-onboard discrepancy that fleet data engines mine). On turn
9's clips, the 940 top frames held 2.27 online errors a frame against 1.63 for all, and
their fine-tune gained hard-set mAP50-95 +0.018 [+0.002, +0.029] against +0.012 for a
seeded sample of the same clips (docs/data_engine.md).

Ground truth is read only to report how good the choice was (`online_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perception.metrics import box_iou

MATCH_IOU = 0.5
"""IoU at which an online box covers a label."""
ONLINE_CONF = 0.25
"""The online detector's boxes counted (the score the planner acts on)."""


def _centre_in(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    if not len(boxes) or not len(regions):
        return np.zeros(len(boxes), bool)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    r = regions
    return np.asarray(((cx[:, None] >= r[None, :, 0]) & (cx[:, None] <= r[None, :, 2])
                       & (cy[:, None] >= r[None, :, 1]) & (cy[:, None] <= r[None, :, 3])
                       ).any(1))


def disagreement(labels: np.ndarray, online: np.ndarray,
                 ignore: np.ndarray | None = None) -> tuple[int, int]:
    """(misses, ghosts) of the `online` boxes (N, 4) against the `labels` (M, 4): labels no
    online box covers at IoU `MATCH_IOU`, and online boxes that cover no label and whose
    centre lies in no `ignore` region (K, 4). Classes are not compared."""
    labels = np.asarray(labels, np.float64).reshape(-1, 4)
    online = np.asarray(online, np.float64).reshape(-1, 4)
    ignore = np.zeros((0, 4)) if ignore is None else np.asarray(ignore).reshape(-1, 4)
    if not len(online):
        return len(labels), 0
    if not len(labels):
        return 0, int((~_centre_in(online, ignore)).sum())
    m = box_iou(labels, online)
    misses = int((m.max(1) < MATCH_IOU).sum())
    ghosts = int(((m.max(0) < MATCH_IOU) & ~_centre_in(online, ignore)).sum())
    return misses, ghosts


def select_top(scores: Sequence[float], n: int, seed: int = 0) -> list[int]:
    """Indices of the `n` highest `scores`, ties broken by a seeded shuffle; sorted."""
    s = np.asarray(scores, np.float64)
    if not 0 < n <= len(s):
        raise ValueError(f"cannot select {n} of {len(s)} frames")
    if not np.isfinite(s).all():
        raise ValueError("frame scores must be finite")
    tie = np.random.default_rng(seed).random(len(s))
    order = np.lexsort((tie, -s))
    return sorted(order[:n].tolist())


def online_errors(truth: np.ndarray, online: np.ndarray) -> int:
    """Misses plus ghosts of the online boxes against the ground truth (report only)."""
    return sum(disagreement(truth, online))
