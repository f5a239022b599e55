"""Overlay drawing: pure functions that return new images."""

from __future__ import annotations

import numpy as np

from launch.overlays import (
    EGO_LANE_COLOR,
    LANE_COLOR,
    draw_boxes,
    draw_lanes,
    video_frame,
    video_frame_shape,
)
from sim.render.birdseye import CLASS_COLORS
from sim.types import ABSENT, CAR, PEDESTRIAN


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=-1)


def test_draw_boxes_outlines_the_border_in_the_class_color() -> None:
    img = np.zeros((60, 80, 3), np.uint8)
    out = draw_boxes(img, np.array([[10, 20, 40, 50]], np.float32), np.array([CAR]),
                     labels=False)
    assert not img.any(), "the input image is not modified"
    changed = _changed(img, out)
    # border rows/columns (x1, y1 exclusive) are drawn, inside and outside are not
    assert changed[20, 10:40].all() and changed[49, 10:40].all()
    assert changed[20:50, 10].all() and changed[20:50, 39].all()
    assert not changed[21:49, 11:39].any()
    assert changed.sum() == 2 * 30 + 2 * 28
    assert tuple(out[20, 25]) == CLASS_COLORS[CAR]


def test_draw_boxes_scales_and_labels() -> None:
    img = np.zeros((120, 160, 3), np.uint8)
    box = np.array([[10, 20, 40, 50]], np.float32)
    plain = draw_boxes(img, box, np.array([PEDESTRIAN]), scale=2.0, labels=False)
    assert tuple(plain[40, 50]) == CLASS_COLORS[PEDESTRIAN]  # top edge at y = 2 * 20
    assert tuple(plain[99, 50]) == CLASS_COLORS[PEDESTRIAN]  # bottom edge at 2 * 50 - 1
    labelled = draw_boxes(img, box, np.array([PEDESTRIAN]), scale=2.0)
    assert _changed(plain, labelled)[:40, 20:80].any(), "the class name sits above the box"


def test_draw_boxes_with_no_boxes_is_a_copy() -> None:
    img = np.full((10, 10, 3), 7, np.uint8)
    out = draw_boxes(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert np.array_equal(out, img) and out is not img


def test_draw_lanes_draws_only_visible_points() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    rows = np.arange(10, 100, 10)
    xs = np.array([np.full(rows.size, 20.0), np.full(rows.size, 70.0)], np.float32)
    xs[1, -2:] = ABSENT
    visible = np.ones_like(xs, dtype=bool)
    visible[0, 5:] = False  # boundary 0 hidden from row 60 down
    out = draw_lanes(img, rows, xs, visible, ego_boundaries=(0, 5))
    changed = _changed(img, out)
    assert changed[10:51, 20].all() and not changed[55:, 15:26].any()
    assert changed[10:71, 70].all() and not changed[75:, 65:76].any()
    assert tuple(out[30, 20]) == EGO_LANE_COLOR and tuple(out[30, 70]) == LANE_COLOR


def test_video_frame_layout_matches_its_shape() -> None:
    cam = np.zeros((96, 160, 3), np.uint8)
    human = np.zeros((480, 480, 3), np.uint8)
    gt = {"boxes_xyxy": np.array([[5, 5, 20, 20]], np.float32), "class_ids": np.array([0]),
          "lanes": {"rows": np.array([50, 60]), "xs": np.array([[10.0, 12.0]]),
                    "visible": np.array([[True, True]]), "ego_boundaries": (0, 1)}}
    frame = video_frame(cam, gt, human)
    assert frame.shape == video_frame_shape((96, 160), (480, 480)) == (192, 512, 3)
    assert frame[:, :320].any() and not video_frame(cam, gt, human, overlays=False).any()
    odd = video_frame(np.zeros((33, 50, 3), np.uint8), None, human, scale=1)
    assert odd.shape == video_frame_shape((33, 50), (480, 480), scale=1) == (34, 84, 3)
