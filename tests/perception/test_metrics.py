"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.metrics import (
    IOU_THRESHOLDS,
    ImageBoxes,
    average_precision,
    box_iou,
    culane_f1,
    detection_map,
    match_detections,
    match_detections_at,
    tusimple_lane_metrics,
)


def _img(boxes, classes, scores=None, ignore=None) -> ImageBoxes:
    return ImageBoxes(np.array(boxes, float).reshape(-1, 4), np.array(classes, int),
                      None if scores is None else np.array(scores, float),
                      None if ignore is None else np.array(ignore, bool))


def test_box_iou_hand_values() -> None:
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_ap_of_perfect_and_of_a_higher_scored_false_positive() -> None:
    assert average_precision(np.array([True, True]), np.array([0.9, 0.8]), 2) == 1.0
    # FP first, then the TP: precision 0.5 at recall 1 everywhere -> AP 0.5
    assert average_precision(np.array([False, True]), np.array([0.9, 0.8]), 1) == 0.5
    # one of two objects found: precision 1 up to recall 0.5 -> 51 of 101 points
    assert average_precision(np.array([True]), np.array([0.9]), 2) == pytest.approx(51 / 101)


def test_map_over_images_and_thresholds() -> None:
    gt = [_img([[0, 0, 10, 10]], [0]), _img([[0, 0, 10, 10]], [1])]
    exact = [_img([[0, 0, 10, 10]], [0], [0.9]), _img([[0, 0, 10, 10]], [1], [0.9])]
    r = detection_map(exact, gt, n_classes=3)
    assert r["mAP50"] == 1.0 and r["mAP50-95"] == 1.0 and r["ap50_per_class"][2] is None
    # a box of IoU 0.8 counts at thresholds 0.50..0.80 (7 of 10) for class 0
    shifted = [_img([[0, 0, 10, 8]], [0], [0.9]), _img([[0, 0, 10, 10]], [1], [0.9])]
    r = detection_map(shifted, gt, n_classes=2)
    assert r["mAP50"] == 1.0
    assert r["ap50_95_per_class"][0] == pytest.approx(0.7)
    assert r["mAP50-95"] == pytest.approx((0.7 + 1.0) / 2)


def test_ignored_objects_are_neither_missed_nor_false_positives() -> None:
    gt = [_img([[0, 0, 10, 10], [50, 50, 52, 52]], [0, 0], ignore=[False, True])]
    found_both = [_img([[0, 0, 10, 10], [50, 50, 52, 52]], [0, 0], [0.9, 0.95])]
    assert detection_map(found_both, gt, 1)["mAP50"] == 1.0
    found_one = [_img([[0, 0, 10, 10]], [0], [0.9])]
    assert detection_map(found_one, gt, 1)["mAP50"] == 1.0
    wrong_class = [_img([[0, 0, 10, 10]], [1], [0.9])]
    assert detection_map(wrong_class, gt, 2)["mAP50"] == 0.0


def test_a_loose_detection_of_an_ignored_object_is_no_false_positive() -> None:
    """IoU >= 0.5 with an ignored object makes a detection its, at every threshold; at
    IoU 0.4 it is a false positive everywhere. Hand case: the stray detection scores
    above the one real object, so as a false positive it halves the precision."""
    gt = [_img([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], ignore=[False, True])]
    loose = [_img([[0, 0, 10, 10], [50, 50, 60, 66]], [0, 0], [0.9, 0.95])]  # IoU 0.625
    assert detection_map(loose, gt, 1)["mAP50-95"] == 1.0
    off = [_img([[0, 0, 10, 10], [50, 50, 60, 75]], [0, 0], [0.9, 0.95])]  # IoU 0.4
    r = detection_map(off, gt, 1)
    assert r["mAP50"] == pytest.approx(0.5) and r["mAP50-95"] == pytest.approx(0.5)


def test_a_detection_outside_the_bucket_counts_only_when_it_matches() -> None:
    """COCO's area-range rule: a flagged detection that matches nothing is left out; one
    that matches an object is a true positive all the same."""
    gt = [_img([[0, 0, 10, 10]], [0])]
    stray = _img([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0], [0.9, 0.95])
    assert detection_map([stray], gt, 1)["mAP50"] == pytest.approx(0.5)
    flagged = ImageBoxes(stray.boxes, stray.classes, stray.scores, np.array([False, True]))
    assert detection_map([flagged], gt, 1)["mAP50"] == 1.0
    both = ImageBoxes(stray.boxes, stray.classes, stray.scores, np.array([True, True]))
    assert detection_map([both], gt, 1)["mAP50"] == 1.0, "a match counts though flagged"


def test_tusimple_accuracy_fp_fn() -> None:
    gt = [np.array([[100.0, 110, 120, 130], [200, 210, 220, 230]])]
    same = tusimple_lane_metrics(gt, gt, width=1280)
    assert same == {"accuracy": 1.0, "fp_rate": 0.0, "fn_rate": 0.0}
    # second lane 25 px off (threshold 20 px at 1280 wide); one extra lane
    pred = [np.array([[100.0, 110, 120, 130], [225, 235, 245, 255], [-2, -2, -2, -2]])]
    r = tusimple_lane_metrics(pred, gt, width=1280)
    assert r["accuracy"] == 0.5 and r["fn_rate"] == 0.5 and r["fp_rate"] == 0.5
    # at 320 px wide the threshold is 5 px: 4 px off still counts
    r = tusimple_lane_metrics([gt[0] + 4], gt, width=320)
    assert r["accuracy"] == 1.0


def test_culane_f1() -> None:
    rows = np.array([100, 120, 140, 160])
    gt = [np.array([[100.0, 110, 120, 130], [200, 210, 220, 230]])]
    assert culane_f1(gt, gt, rows, (192, 320))["f1"] == 1.0
    pred = [np.array([[100.0, 110, 120, 130], [260, 270, 280, 290]])]
    r = culane_f1(pred, gt, rows, (192, 320))
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1) and r["f1"] == 0.5


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 8), st.integers(0, 25))
def test_matching_every_threshold_at_once_equals_one_at_a_time(seed: int, n_gt: int,
                                                              n_pred: int) -> None:
    """`match_detections_at` (every threshold in one pass, detection_map's) against the
    greedy matching written one threshold at a time (`_greedy`, the implementation it
    replaced): the same true and false positives, skips and scores, with tied scores,
    ignored objects and predictions outside the bucket."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n_gt, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (n_gt, 2))], 1)
    near = gt_boxes[rng.integers(0, n_gt, n_pred)] if n_gt else np.zeros((n_pred, 4))
    pred_boxes = near + rng.normal(0, 2.0, (n_pred, 4))
    gt = ImageBoxes(gt_boxes, rng.integers(0, 2, n_gt), ignore=rng.random(n_gt) < 0.2)
    pred = ImageBoxes(pred_boxes, rng.integers(0, 2, n_pred),
                      np.round(rng.random(n_pred), 1), ignore=rng.random(n_pred) < 0.1)
    for cls in (0, 1):
        status, scores, count = match_detections_at(pred, gt, cls)
        for k, thr in enumerate(IOU_THRESHOLDS):
            tps, kept_scores, n = _greedy(pred, gt, cls, float(thr))
            assert match_detections(pred, gt, cls, float(thr)) == (tps, kept_scores, n)
            kept = status[k] >= 0
            assert n == count
            assert (status[k][kept] == 1).tolist() == tps
            assert scores[kept].tolist() == pytest.approx(kept_scores)


def _greedy(pred: ImageBoxes, gt: ImageBoxes, cls: int, thr: float
            ) -> tuple[list[bool], list[float], int]:
    """The reference: COCO greedy matching at one threshold, one prediction at a time."""
    pm, gm = pred.classes == cls, gt.classes == cls
    p_scores = pred.scores[pm]
    p_ign = pred.ignore[pm]
    g_ign = gt.ignore[gm]
    iou = box_iou(pred.boxes[pm], gt.boxes[gm])
    free = ~g_ign
    tps, scores = [], []
    for i in np.argsort(-p_scores, kind="stable"):
        cand = np.where(free & (iou[i] >= thr), iou[i], -1.0)
        if cand.size and cand.max() >= 0:
            free[int(np.argmax(cand))] = False
            tps.append(True)
        elif p_ign[i] or (g_ign & (iou[i] >= IOU_THRESHOLDS[0])).any():
            continue
        else:
            tps.append(False)
        scores.append(float(p_scores[i]))
    return tps, scores, int((~g_ign).sum())
