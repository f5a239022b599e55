"""3D shapes of actors and clutter as a few boxes and pyramids each.

A part is given in fractions of its object's (length, width, height): x in [-0.5, 0.5]
(forward), y in [-0.5, 0.5] (left), z in [0, 1] (up). `build_parts` turns objects
(pose + size + shape) into the world-space vertices of all their parts at once.
"""

from __future__ import annotations

import numpy as np

BOX, PYRAMID = 0, 1
BODY, GLASS, DARK, SKIN, WHITE, PANTS, BROWN, GREY = range(8)
ROLE_COLORS = np.array(
    [[0, 0, 0], [45, 55, 68], [28, 28, 30], [215, 175, 145], [228, 228, 222], [45, 50, 70],
     [95, 65, 40], [130, 130, 135]], np.float32,
)
"""Fixed colours of the roles other than BODY (row 0 is replaced by the object colour)."""

# (prim, x0, x1, y0, y1, z0, z1, side role, top role)
Part = tuple[int, float, float, float, float, float, float, int, int]
_UNDER = (BOX, -0.5, 0.5, -0.47, 0.47, 0.0, 0.2, DARK, DARK)
_PERSON = [
    (BOX, -0.5, 0.5, -0.35, 0.35, 0.0, 0.48, PANTS, PANTS),
    (BOX, -0.5, 0.5, -0.5, 0.5, 0.48, 0.86, BODY, BODY),
    (BOX, -0.3, 0.3, -0.25, 0.25, 0.86, 1.0, SKIN, DARK),
]
SHAPE_PARTS: dict[str, list[Part]] = {
    "sedan": [_UNDER, (BOX, -0.5, 0.5, -0.5, 0.5, 0.2, 0.62, BODY, BODY),
              (BOX, -0.32, 0.2, -0.44, 0.44, 0.62, 1.0, GLASS, BODY)],
    "suv": [_UNDER, (BOX, -0.5, 0.5, -0.5, 0.5, 0.2, 0.6, BODY, BODY),
            (BOX, -0.44, 0.25, -0.46, 0.46, 0.6, 1.0, GLASS, BODY)],
    "van": [(BOX, -0.5, 0.5, -0.47, 0.47, 0.0, 0.15, DARK, DARK),
            (BOX, -0.5, 0.5, -0.5, 0.5, 0.15, 0.55, BODY, BODY),
            (BOX, -0.5, 0.36, -0.49, 0.49, 0.55, 1.0, BODY, BODY),
            (BOX, 0.36, 0.44, -0.45, 0.45, 0.55, 0.92, GLASS, GLASS)],
    "box_truck": [(BOX, -0.5, 0.5, -0.45, 0.45, 0.0, 0.18, DARK, DARK),
                  (BOX, 0.22, 0.5, -0.5, 0.5, 0.18, 0.8, BODY, BODY),
                  (BOX, -0.5, 0.2, -0.5, 0.5, 0.18, 1.0, WHITE, WHITE)],
    "semi": [(BOX, -0.5, 0.5, -0.45, 0.45, 0.0, 0.26, DARK, DARK),
             (BOX, 0.3, 0.5, -0.5, 0.5, 0.22, 0.82, BODY, BODY),
             (BOX, -0.5, 0.27, -0.5, 0.5, 0.28, 1.0, WHITE, WHITE)],
    "adult": _PERSON,
    "child": _PERSON,
    "bicycle": [(BOX, -0.5, 0.5, -0.1, 0.1, 0.0, 0.42, DARK, DARK),
                (BOX, -0.1, 0.15, -0.3, 0.3, 0.3, 0.62, PANTS, PANTS),
                (BOX, -0.15, 0.15, -0.35, 0.35, 0.62, 0.88, BODY, BODY),
                (BOX, -0.08, 0.08, -0.22, 0.22, 0.88, 1.0, SKIN, DARK)],
    "cone": [(PYRAMID, -0.5, 0.5, -0.5, 0.5, 0.0, 1.0, BODY, BODY)],
    # clutter
    "tree": [(BOX, -0.05, 0.05, -0.05, 0.05, 0.0, 0.35, BROWN, BROWN),
             (PYRAMID, -0.5, 0.5, -0.5, 0.5, 0.2, 1.0, BODY, BODY)],
    "pole": [(BOX, -0.5, 0.5, -0.5, 0.5, 0.0, 1.0, BODY, BODY)],
    "building": [(BOX, -0.5, 0.5, -0.5, 0.5, 0.0, 1.0, BODY, GREY)],
    "sign": [(BOX, -0.5, 0.5, -0.06, 0.06, 0.0, 0.72, GREY, GREY),
             (BOX, -0.5, 0.5, -0.5, 0.5, 0.7, 1.0, BODY, BODY)],
    "bush": [(BOX, -0.5, 0.5, -0.5, 0.5, 0.0, 1.0, BODY, BODY)],
}

# Vertex k of a part sits at corner (ix, iy, iz) with k = 4 ix + 2 iy + iz.
FACES = np.array([[4, 6, 7, 5], [0, 1, 3, 2], [2, 3, 7, 6], [0, 4, 5, 1], [1, 5, 7, 3]])
"""Quads: front (+x), rear (-x), left (+y), right (-y), top (+z); the bottom is never seen."""
FACE_IS_TOP = np.array([False, False, False, False, True])

_SHAPE_CACHE: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def shape_table(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P,) prim, (P, 6) bounds, (P, 2) roles of a named shape."""
    if name not in _SHAPE_CACHE:
        parts = np.array(SHAPE_PARTS[name], dtype=np.float64)
        _SHAPE_CACHE[name] = (parts[:, 0].astype(int), parts[:, 1:7], parts[:, 7:9].astype(int))
    return _SHAPE_CACHE[name]


def part_vertices(bounds: np.ndarray, prim: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Local vertices (P, 8, 3) of parts with fractional bounds scaled by object size."""
    ix = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    iy = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    iz = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    x = bounds[:, [0, 1]][:, ix] * size[:, 0:1]
    y = bounds[:, [2, 3]][:, iy] * size[:, 1:2]
    z = bounds[:, [4, 5]][:, iz] * size[:, 2:3]
    apex = prim == PYRAMID
    if apex.any():  # pyramid: the four top corners meet at the centre
        top = iz == 1
        x[np.ix_(apex, top)] = x[apex][:, ~top].mean(axis=1, keepdims=True)
        y[np.ix_(apex, top)] = y[apex][:, ~top].mean(axis=1, keepdims=True)
    return np.stack([x, y, z], axis=-1)


def to_world(local: np.ndarray, x: np.ndarray, y: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Rotate (P, V, 3) local vertices by yaw and move them to (x, y) per part."""
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    wx = x[:, None] + local[..., 0] * c - local[..., 1] * s
    wy = y[:, None] + local[..., 0] * s + local[..., 1] * c
    return np.stack([wx, wy, local[..., 2]], axis=-1)
