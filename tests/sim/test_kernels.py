"""The compiled fill, silhouette counts and fog pass of sim.render.kernels, on small
hand-checked cases and against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from sim.render.conditions import FOG_COLOR
from sim.render.kernels import (
    MAX_CROSS,
    MODE_BOTH,
    MODE_IDS,
    SHIFT,
    fill_one,
    fog_blend,
    silhouette_counts,
)

ONE = 1 << SHIFT


def _fill(ids: np.ndarray, poly: np.ndarray, value: int = 1) -> None:
    q = np.round(np.asarray(poly, float) * ONE).astype(np.int32)
    img = np.zeros(ids.shape + (3,), np.uint8)
    fill_one(img, ids, q, 0, len(q), np.array([9, 9, 9], np.uint8), value, MODE_IDS,
             np.empty(MAX_CROSS), np.empty((len(q), 4)))


def test_rectangle_covers_its_corner_pixels_inclusive() -> None:
    ids = np.zeros((12, 12), np.int16)
    _fill(ids, [[2, 3], [6, 3], [6, 8], [2, 8]])
    ys, xs = np.nonzero(ids)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 6, 3, 8)
    assert ids.sum() == 5 * 6


def test_thin_line_keeps_a_pixel_on_every_row_and_both_modes_write() -> None:
    ids = np.zeros((20, 20), np.int16)
    _fill(ids, [[5.0, 1.0], [5.1, 1.0], [12.1, 18.0], [12.0, 18.0]])
    assert (ids.sum(axis=1)[1:19] >= 1).all()
    img = np.zeros((4, 4, 3), np.uint8)
    both = np.zeros((4, 4), np.int16)
    q = np.array([[0, 0], [3, 0], [3, 3], [0, 3]], np.int32) * ONE
    fill_one(img, both, q, 0, 4, np.array([1, 2, 3], np.uint8), 7, MODE_BOTH,
             np.empty(MAX_CROSS), np.empty((4, 4)))
    assert (both == 7).all() and (img == [1, 2, 3]).all()


def test_polygons_sharing_an_edge_leave_no_gap() -> None:
    ids = np.zeros((30, 30), np.int16)
    _fill(ids, [[2.3, 2.2], [15.7, 4.1], [13.2, 25.6], [3.1, 27.4]], 1)
    _fill(ids, [[15.7, 4.1], [27.5, 3.3], [26.2, 26.9], [13.2, 25.6]], 2)
    for y in range(5, 25):
        row = np.flatnonzero(ids[y])
        assert row.size and (np.diff(row) == 1).all(), f"gap in row {y}"


def test_silhouette_counts_equal_brute_force_unions() -> None:
    rng = np.random.default_rng(3)
    h, w = 24, 32
    verts, starts, owner = [], [0], []
    for o in range(4):
        for _ in range(3):  # overlapping convex quads, some far outside the image
            c = rng.uniform([-20, -15], [w + 20, h + 15])
            ang = np.sort(rng.uniform(0, 2 * np.pi, 4))
            verts.append(c + rng.uniform(3, 12) * np.stack([np.cos(ang), np.sin(ang)], 1))
            starts.append(starts[-1] + 4)
            owner.append(o)
    owner.append(-1)  # a polygon that belongs to no one
    verts.append(np.array([[0, 0], [w, 0], [w, h], [0, h]], float))
    starts.append(starts[-1] + 4)
    q = np.round(np.concatenate(verts) * ONE).astype(np.int32)
    total, inside = silhouette_counts(q, np.array(starts), np.array(owner), 4, h, w)
    for o in range(4):  # brute force: fill each owner's polygons on a canvas 5x the image
        canvas = np.zeros((5 * h, 5 * w), np.int16)
        for p in np.flatnonzero(np.array(owner) == o):
            _fill(canvas, np.concatenate(verts)[starts[p]:starts[p + 1]] + [2 * w, 2 * h])
        assert total[o] == canvas.sum(), o
        assert inside[o] == canvas[2 * h:3 * h, 2 * w:3 * w].sum(), o
    assert total.sum() > inside.sum() > 0, "the case must cut some polygons at the border"


@pytest.mark.parametrize("seed", [0, 1])
def test_fog_blend_equals_the_numpy_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    alpha = rng.uniform(0, 1, 16).astype(np.float32)
    want = (img * (1.0 - alpha[:, None, None]) + FOG_COLOR * alpha[:, None, None])
    got = img.copy()
    fog_blend(got, alpha, FOG_COLOR)
    np.testing.assert_array_equal(got, want.astype(np.uint8))
