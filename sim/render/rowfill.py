"""Fill display lists row by row: how the GPU draws the kernels' polygons, with a CPU path
by the same rule.

`sim.render.kernels` fills each polygon as it makes it. With a display list (`rec`) the
same kernels record the polygons instead (`DisplayList`), and the fill happens here, for
a whole batch of frames at once: one worker per (frame, row), which walks that frame's
polygons in painter's order and fills its row of each. Rows are independent, so on a
GPU every row of every frame is a thread (`fill_rows(..., device arrays)`); on the CPU
the same function, compiled by numba for the CPU, loops over them (`fill_rows` with
numpy arrays). Crossings, spans and the sampled row are the arithmetic of `fill_one` and
`_fill_big`, so the CPU path gives the immediate kernels' frames byte for byte
(tests/sim/test_rowfill.py); on a GPU, the compiler may fuse a multiply and an add, which
can move a crossing that falls exactly on a pixel's half by one pixel.

A polygon with a condition (`conds[p] != 0`: the taillights) is filled only where every
vertex's pixel in the finished id buffer holds that id value; fill such a list in a
launch of its own, after the polygons whose ids it reads.

Everything compiled lives in this module (numba's cache checks only a function's own
file); the constants below are `kernels`' and are checked against them on import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from numba import cuda

from sim.render import kernels

SHIFT = 4
ONE = 1 << SHIFT
MAX_CROSS = 64
assert (SHIFT, ONE, MAX_CROSS) == (kernels.SHIFT, kernels.ONE, kernels.MAX_CROSS)


def _fill_row(img, ids, b, y, verts, starts, rows, colors, idv, modes, conds, p0, p1, xs):  # type: ignore[no-untyped-def]  # noqa: C901
    """Row y of frame b: every polygon p0 <= p < p1 that covers it, in order. Written
    once, compiled for the CPU and for CUDA (only scalar arithmetic, no allocation, and
    no calls: a helper would need a CPU and a CUDA build of its own, hence one body)."""
    h = ids.shape[1]
    w = ids.shape[2]
    for p in range(p0, p1):
        if y < rows[p, 0] or y >= rows[p, 1]:
            continue
        lo = starts[p]
        hi = starts[p + 1]
        m = hi - lo
        if conds[p] != 0:
            ok = True
            for k in range(lo, hi):
                py = min(max(verts[k, 1] >> SHIFT, 0), h - 1)
                px = min(max(verts[k, 0] >> SHIFT, 0), w - 1)
                if ids[b, py, px] != conds[p]:
                    ok = False
            if not ok:
                continue
        yc = min(max(y * ONE, rows[p, 2]), rows[p, 3] - 1)
        n = 0
        for k in range(m):
            j = lo + k + 1 if k + 1 < m else lo
            ax = verts[lo + k, 0]
            ay = verts[lo + k, 1]
            bx = verts[j, 0]
            by = verts[j, 1]
            if ay <= by:
                e0 = ay
                e1 = by
                e2 = ax
            else:
                e0 = by
                e1 = ay
                e2 = bx
            if e0 <= yc and yc < e1 and n < MAX_CROSS:
                slope = (bx - ax) / (by - ay)
                xs[n] = float(e2) + (yc - float(e0)) * slope
                n += 1
        for i in range(1, n):  # insertion sort: a handful of crossings
            v = xs[i]
            q = i - 1
            while q >= 0 and xs[q] > v:
                xs[q + 1] = xs[q]
                q -= 1
            xs[q + 1] = v
        mode = modes[p]
        for k in range(0, n - 1, 2):
            c0 = max(int(math.floor(xs[k] / ONE + 0.5)), 0)
            c1 = min(int(math.floor(xs[k + 1] / ONE + 0.5)) + 1, w)
            for x in range(c0, c1):
                if mode & 1:
                    img[b, y, x, 0] = colors[p, 0]
                    img[b, y, x, 1] = colors[p, 1]
                    img[b, y, x, 2] = colors[p, 2]
                if mode & 2:
                    ids[b, y, x] = idv[p]


_fill_row_cpu = numba.njit(cache=True)(_fill_row)
_fill_row_cuda = cuda.jit(device=True)(_fill_row)


@numba.njit(cache=True)
def _fill_rows_cpu(img, ids, verts, starts, rows, colors, idv, modes, conds, frame_poly):  # type: ignore[no-untyped-def]
    xs = np.empty(MAX_CROSS, np.float64)
    for b in range(ids.shape[0]):
        for y in range(ids.shape[1]):
            _fill_row_cpu(img, ids, b, y, verts, starts, rows, colors, idv, modes, conds,
                          frame_poly[b], frame_poly[b + 1], xs)


@cuda.jit
def _fill_rows_kernel(img, ids, verts, starts, rows, colors, idv, modes, conds, frame_poly):  # type: ignore[no-untyped-def]
    t = cuda.grid(1)
    n_rows = ids.shape[1]
    if t >= ids.shape[0] * n_rows:
        return
    b = t // n_rows
    y = t - b * n_rows
    xs = cuda.local.array(MAX_CROSS, numba.float64)
    _fill_row_cuda(img, ids, b, y, verts, starts, rows, colors, idv, modes, conds,
                   frame_poly[b], frame_poly[b + 1], xs)


def _actor_pixels(ids, b, r, boxes, count, vbox):  # type: ignore[no-untyped-def]
    """`kernels.actor_pixels` for actor row r of frame b: its pixels (id r + 1) in
    boxes[b, r] and their box, into count[b, r] and vbox[b, r]. One body for the CPU and
    CUDA, as `_fill_row`."""
    v = r + 1
    x0 = boxes[b, r, 0]
    y0 = boxes[b, r, 1]
    x1 = boxes[b, r, 2]
    y1 = boxes[b, r, 3]
    bx0 = x1
    by0 = y1
    bx1 = x0
    by1 = y0
    c = 0
    for yy in range(y0, y1):
        for xx in range(x0, x1):
            if ids[b, yy, xx] == v:
                c += 1
                bx0 = min(bx0, xx)
                bx1 = max(bx1, xx + 1)
                by0 = min(by0, yy)
                by1 = max(by1, yy + 1)
    count[b, r] = c
    vbox[b, r, 0] = bx0
    vbox[b, r, 1] = by0
    vbox[b, r, 2] = bx1
    vbox[b, r, 3] = by1


_actor_pixels_cpu = numba.njit(cache=True)(_actor_pixels)
_actor_pixels_cuda = cuda.jit(device=True)(_actor_pixels)


@numba.njit(cache=True)
def _actor_pixels_all_cpu(ids, boxes, count, vbox):  # type: ignore[no-untyped-def]
    for b in range(boxes.shape[0]):
        for r in range(boxes.shape[1]):
            _actor_pixels_cpu(ids, b, r, boxes, count, vbox)


@cuda.jit
def _actor_pixels_kernel(ids, boxes, count, vbox):  # type: ignore[no-untyped-def]
    t = cuda.grid(1)
    n = boxes.shape[1]
    if t >= boxes.shape[0] * n:
        return
    b = t // n
    _actor_pixels_cuda(ids, b, t - b * n, boxes, count, vbox)


def actor_pixels(ids, boxes, count, vbox) -> None:  # type: ignore[no-untyped-def]
    """Every frame's actors' pixels in the id buffers ids (B, H, W) int16: for actor row r
    of frame b, searched in boxes[b, r] ((B, N, 4) int64, x0, y0, x1, y1; empty for rows
    not drawn), the count into count (B, N) int64 and their box into vbox (B, N, 4)
    int64, as `kernels.actor_pixels`. numpy arrays: on the CPU; else CUDA arrays, one
    thread an actor row."""
    if not isinstance(ids, np.ndarray):
        n = int(boxes.shape[0]) * int(boxes.shape[1])
        if n:
            _actor_pixels_kernel[(n + THREADS - 1) // THREADS, THREADS](ids, boxes, count, vbox)
        return
    _actor_pixels_all_cpu(ids, boxes, count, vbox)


@dataclass
class DisplayArrays:
    """The arrays of a display list (`kernels.DISPLAY_FIELDS`), numpy or on a device."""

    verts: Any
    starts: Any
    rows: Any
    colors: Any
    ids: Any
    modes: Any
    conds: Any


THREADS = 128
"""CUDA threads a block (rows of frames)."""


def fill_rows(img, ids, display: DisplayArrays, frame_poly) -> None:  # type: ignore[no-untyped-def]
    """Fill the polygons of `display` into img (B, H, W, 3) uint8 and ids (B, H, W)
    int16: frame b gets polygons frame_poly[b]:frame_poly[b + 1] ((B + 1,) int64). numpy
    arrays fill on the CPU; anything else is taken for CUDA arrays (numba device arrays,
    or anything with `__cuda_array_interface__`, e.g. torch tensors on a GPU) and fills
    on the GPU, one thread a row."""
    if img.ndim != 4 or ids.ndim != 3 or tuple(img.shape[:3]) != tuple(ids.shape) \
            or img.shape[3] != 3:
        raise ValueError(f"img must be (B, H, W, 3) and ids (B, H, W), got {tuple(img.shape)} "
                         f"and {tuple(ids.shape)}")
    if len(frame_poly) != ids.shape[0] + 1:
        raise ValueError(f"frame_poly has {len(frame_poly)} entries for {ids.shape[0]} "
                         "frames (B + 1 needed)")
    args = (display.verts, display.starts, display.rows, display.colors, display.ids,
            display.modes, display.conds, frame_poly)
    if not isinstance(img, np.ndarray):
        n = int(ids.shape[0]) * int(ids.shape[1])
        if n:
            _fill_rows_kernel[(n + THREADS - 1) // THREADS, THREADS](img, ids, *args)
        return
    _fill_rows_cpu(img, ids, *args)


class DisplayList:
    """A growable display list on the host: the kernels append to `as_rec()`; call
    `commit()` after each kernel call to grow and redo the call when it overflowed."""

    def __init__(self, polygons: int = 1024, vertices: int = 8192) -> None:
        self._alloc(polygons, vertices)

    def _alloc(self, polygons: int, vertices: int) -> None:
        self.verts = np.zeros((vertices, 2), np.int32)
        self.starts = np.zeros(polygons + 1, np.int64)
        self.rows = np.zeros((polygons, 4), np.int64)
        self.colors = np.zeros((polygons, 3), np.uint8)
        self.ids = np.zeros(polygons, np.int16)
        self.modes = np.zeros(polygons, np.int8)
        self.conds = np.zeros(polygons, np.int16)
        self.n = np.zeros(3, np.int64)

    def as_rec(self) -> tuple:
        return (self.verts, self.starts, self.rows, self.colors, self.ids, self.modes,
                self.conds, self.n)

    def clear(self) -> None:
        self.n[:] = 0

    @property
    def polygons(self) -> int:
        return int(self.n[0])

    def mark(self) -> tuple[int, int]:
        """Where the list stands (polygons, vertices), to `rewind` to."""
        return int(self.n[0]), int(self.n[1])

    def rewind(self, mark: tuple[int, int], grow: bool) -> None:
        """Back to `mark`, and twice the room first when `grow` (after an overflow)."""
        if grow:
            keep = [a.copy() for a in self.as_rec()[:-1]]
            p, v = len(self.ids), len(self.verts)
            self._alloc(2 * p, 2 * v)
            for dst, src in zip(self.as_rec()[:-1], keep, strict=True):
                dst[:len(src)] = src
        self.n[0], self.n[1], self.n[2] = mark[0], mark[1], 0

    @property
    def overflowed(self) -> bool:
        return bool(self.n[2])

    def extend(self, other: DisplayList, vertex_offset: int) -> None:
        """Append `other`'s polygons (its vertex starts moved by `vertex_offset`, the
        vertices this list holds)."""
        p, v = self.polygons, int(self.n[1])
        if vertex_offset != v:
            raise ValueError(f"vertex_offset {vertex_offset} != the {v} vertices held")
        q, w = other.polygons, int(other.n[1])
        while p + q > len(self.ids) or v + w > len(self.verts):
            self.rewind((p, v), grow=True)
        self.verts[v:v + w] = other.verts[:w]
        self.starts[p:p + q + 1] = other.starts[:q + 1] + v
        for mine, theirs in ((self.rows, other.rows), (self.colors, other.colors),
                             (self.ids, other.ids), (self.modes, other.modes),
                             (self.conds, other.conds)):
            mine[p:p + q] = theirs[:q]
        self.n[0], self.n[1] = p + q, v + w

    def arrays(self) -> DisplayArrays:
        """Views of the filled part."""
        p, v = self.polygons, int(self.n[1])
        return DisplayArrays(self.verts[:v], self.starts[:p + 1], self.rows[:p],
                             self.colors[:p], self.ids[:p], self.modes[:p], self.conds[:p])


__all__ = ["DisplayList", "DisplayArrays", "fill_rows", "actor_pixels", "THREADS"]
