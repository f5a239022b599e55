"""Compiled frame drawing: the road, its markings and rails, shadows, every object's
faces, the polygon fill itself, and the counts the labels need.

Each kernel does for one frame what `Renderer` used to do in a few hundred small numpy
and OpenCV calls: sample the road (Frenet -> world), move points into the camera frame,
clip polygons at the near plane (Sutherland-Hodgman), project them to fixed-point pixels
(`SHIFT` fractional bits) and fill them in painter's order. The arithmetic is the numpy
version's, step for step, so frames and labels keep their meaning; numpy's per-call
cost, which was most of a frame's time, is gone.

Camera convention (`sim.render.camera`): x right, y down, z forward; `pos` (3,) and the
rotation `R` (3, 3) take world points into it as R @ (p - pos).

The fill. Pixel (x, y) has its centre at the point (x, y). Each polygon is filled by the
even-odd rule on its own edges (concave road strips work too), with a rule close to
OpenCV's `fillPoly`, whose calls this replaced (99.3 % of a frame's pixels come out the
same, boxes within a pixel), so frames and the models trained on them keep their look:
on each row from the one nearest the polygon's top to the one nearest its bottom, every
span between a pair of edge crossings covers the pixels from the one nearest its left
end to the one nearest its right end, both included. Thin far lines
stay visible, and polygons that share an edge overlap by at most a pixel (painter's
order decides). The silhouette counts of the labels use the same rule, so they match
the pixels of the frame exactly.

The kernels are compiled by numba on first use and cached on disk (`cache=True`); the
three drawing entry points release the GIL (`nogil=True`), so threads draw worlds side
by side (`sim.render.device.DeviceCamera(threads=...)`). A
coordinate's arithmetic is integer or IEEE double, so frames are the same on every
machine. Everything compiled lives in this one module: numba's cache checks only the
file of a function, so a kernel cached beside a changed callee in another file would
keep the old callee.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from sim.types import CAR, DASHED, DOUBLE, TRUCK
from sim.world.road import DS

# -- the rasterizer -------------------------------------------------------------------
SHIFT = 4
ONE = 1 << SHIFT
HALF = ONE // 2
MODE_IMAGE, MODE_IDS, MODE_BOTH = 1, 2, 3
MAX_CROSS = 64
DISPLAY_FIELDS = ("verts", "starts", "rows", "colors", "ids", "modes", "conds", "n")
"""A display list, the drawing kernels' other output (`rec`): the polygons they would
fill, in painter's order, for `sim.render.rowfill` to fill later (on the GPU, or on the
CPU by the same rule): verts (V, 2) int32 fixed-point pixels; starts (P + 1,) int64 (the
polygon p is verts[starts[p]:starts[p + 1]]); rows (P, 4) int64 (`_rows`: first row, end
row, fixed-point y min and max); colors (P, 3) uint8; ids (P,) int16 id values; modes
(P,) int8 (`MODE_*`); conds (P,) int16 (0, or the id value that every vertex's pixel must
hold in the finished id buffer: the taillights); n (3,) int64 (polygons, vertices, 1 once
a polygon did not fit)."""


@numba.njit(cache=True)
def _edges(verts: np.ndarray, lo: int, hi: int, et: np.ndarray) -> None:
    """Edge table of polygon verts[lo:hi] into et[:hi - lo]: per edge its y range
    [y_lo, y_hi) (fixed point), x at y_lo and dx/dy. Horizontal edges get an empty range."""
    m = hi - lo
    for k in range(m):
        j = lo + k + 1 if k + 1 < m else lo
        ax, ay, bx, by = verts[lo + k, 0], verts[lo + k, 1], verts[j, 0], verts[j, 1]
        if ay <= by:
            et[k, 0], et[k, 1], et[k, 2] = ay, by, ax
        else:
            et[k, 0], et[k, 1], et[k, 2] = by, ay, bx
        et[k, 3] = (bx - ax) / (by - ay) if ay != by else 0.0


@numba.njit(cache=True)
def _row_crossings(et: np.ndarray, m: int, yc: int, xs: np.ndarray) -> int:
    """x (fixed point, float) where the edges et[:m] cross the row centre yc, sorted."""
    n = 0
    for k in range(m):
        if et[k, 0] <= yc < et[k, 1] and n < xs.size:
            xs[n] = et[k, 2] + (yc - et[k, 0]) * et[k, 3]
            n += 1
    _sort(xs, n)
    return n


@numba.njit(cache=True, inline="always")
def _sort(xs: np.ndarray, n: int) -> None:
    """Insertion sort of xs[:n]: a handful of crossings."""
    for i in range(1, n):
        v = xs[i]
        j = i - 1
        while j >= 0 and xs[j] > v:
            xs[j + 1] = xs[j]
            j -= 1
        xs[j + 1] = v


@numba.njit(cache=True)
def _span(xa: float, xb: float, x_min: int, x_max: int) -> tuple[int, int]:
    """Pixel columns [c0, c1) from the pixel nearest xa to the pixel nearest xb, both
    included, clipped to [x_min, x_max)."""
    c0 = int(np.floor(xa / ONE + 0.5))
    c1 = int(np.floor(xb / ONE + 0.5)) + 1
    return max(c0, x_min), min(c1, x_max)


@numba.njit(cache=True)
def _rows(verts: np.ndarray, lo: int, hi: int, y_min: int, y_max: int
          ) -> tuple[int, int, int, int]:
    """Rows [r0, r1) from the row nearest the polygon's top to the row nearest its bottom,
    clipped to [y_min, y_max), and the y range [vmin, vmax) (fixed point) to sample in."""
    vmin = verts[lo, 1]
    vmax = verts[lo, 1]
    for k in range(lo + 1, hi):
        vmin = min(vmin, verts[k, 1])
        vmax = max(vmax, verts[k, 1])
    r0 = (vmin + HALF) // ONE
    r1 = (vmax + HALF) // ONE + 1
    return max(r0, y_min), min(r1, y_max), vmin, vmax


@numba.njit(cache=True, inline="always")
def _sample_y(y: int, vmin: int, vmax: int) -> int:
    """Where row y samples the edges: its centre, moved inside the polygon's y range for
    the first and last rows (whose centres may lie up to half a pixel outside)."""
    return min(max(y * ONE, vmin), vmax - 1)


@numba.njit(cache=True)
def fill_one(img: np.ndarray, ids: np.ndarray, verts: np.ndarray, lo: int, hi: int,
             color: np.ndarray, id_value: int, mode: int, xs: np.ndarray,
             et: np.ndarray) -> None:
    """Fill polygon `verts[lo:hi]` into `img` (mode bit 1) and `ids` (mode bit 2).
    `xs` and `et` (at least (hi - lo, 4)) are scratch space for the row crossings."""
    if hi - lo < 3:
        return
    h, w = ids.shape
    r0, r1, vmin, vmax = _rows(verts, lo, hi, 0, h)
    if r1 <= r0:
        return
    _edges(verts, lo, hi, et)
    m = hi - lo
    if m > 8:  # a long strip: track its active edges instead of testing them all
        _fill_big(img, ids, et, m, r0, r1, vmin, vmax, color, id_value, mode, xs)
        return
    c_r, c_g, c_b = color[0], color[1], color[2]
    for y in range(r0, r1):
        n = _row_crossings(et, m, _sample_y(y, vmin, vmax), xs)
        for k in range(0, n - 1, 2):
            c0, c1 = _span(xs[k], xs[k + 1], 0, w)
            for x in range(c0, c1):  # short spans: plain stores beat slice set-up
                if mode & 1:
                    img[y, x, 0] = c_r
                    img[y, x, 1] = c_g
                    img[y, x, 2] = c_b
                if mode & 2:
                    ids[y, x] = id_value


@numba.njit(cache=True)
def _fill_big(img: np.ndarray, ids: np.ndarray, et: np.ndarray, m: int, r0: int, r1: int,
              vmin: int, vmax: int, color: np.ndarray, id_value: int, mode: int,
              xs: np.ndarray) -> None:
    """`fill_one` for polygons with many edges: the same crossings and spans, from an
    active edge list (edges enter by their top, leave below their bottom)."""
    w = ids.shape[1]
    order = np.argsort(et[:m, 0], kind="mergesort")
    active = np.empty(m, np.int64)
    n_act = 0
    nxt = 0
    c_r, c_g, c_b = color[0], color[1], color[2]
    for y in range(r0, r1):
        yc = _sample_y(y, vmin, vmax)
        while nxt < m and et[order[nxt], 0] <= yc:
            active[n_act] = order[nxt]
            n_act += 1
            nxt += 1
        n = 0
        kept = 0
        for i in range(n_act):
            e = active[i]
            if et[e, 1] <= yc:
                continue  # ended above this row
            active[kept] = e
            kept += 1
            if n < xs.size:
                xs[n] = et[e, 2] + (yc - et[e, 0]) * et[e, 3]
                n += 1
        n_act = kept
        _sort(xs, n)
        for k in range(0, n - 1, 2):
            c0, c1 = _span(xs[k], xs[k + 1], 0, w)
            if c1 <= c0:
                continue
            if mode & 1:
                img[y, c0:c1, 0] = c_r
                img[y, c0:c1, 1] = c_g
                img[y, c0:c1, 2] = c_b
            if mode & 2:
                ids[y, c0:c1] = id_value


@numba.njit(cache=True)
def _record(rec: tuple, verts: np.ndarray, lo: int, hi: int, color: np.ndarray,
            id_value: int, mode: int, cond: int, h: int) -> None:
    """Append polygon verts[lo:hi] to the display list `rec` instead of filling it (see
    `DISPLAY_FIELDS`); polygons that `fill_one` would not touch (under 3 vertices, no row
    of an image of height h) are left out. A full list sets its overflow flag."""
    r_verts, r_starts, r_rows, r_colors, r_ids, r_modes, r_conds, r_n = rec
    m = hi - lo
    if m < 3:
        return
    r0, r1, vmin, vmax = _rows(verts, lo, hi, 0, h)
    if r1 <= r0:
        return
    p, v = r_n[0], r_n[1]
    if p >= r_ids.size or v + m > r_verts.shape[0]:
        r_n[2] = 1
        return
    for k in range(m):
        r_verts[v + k, 0] = verts[lo + k, 0]
        r_verts[v + k, 1] = verts[lo + k, 1]
    r_starts[p], r_starts[p + 1] = v, v + m
    r_rows[p, 0], r_rows[p, 1], r_rows[p, 2], r_rows[p, 3] = r0, r1, vmin, vmax
    r_colors[p, 0], r_colors[p, 1], r_colors[p, 2] = color[0], color[1], color[2]
    r_ids[p] = id_value
    r_modes[p] = mode
    r_conds[p] = cond
    r_n[0], r_n[1] = p + 1, v + m


@numba.njit(cache=True)
def _emit(img: np.ndarray, ids: np.ndarray, verts: np.ndarray, lo: int, hi: int,
          color: np.ndarray, id_value: int, mode: int, xs: np.ndarray, et: np.ndarray,
          rec: tuple | None) -> None:
    """`fill_one` when `rec` is None, else the polygon goes to the display list `rec`."""
    if rec is None:
        fill_one(img, ids, verts, lo, hi, color, id_value, mode, xs, et)
    else:
        _record(rec, verts, lo, hi, color, id_value, mode, 0, ids.shape[0])


@numba.njit(cache=True)
def _union_length(spans: np.ndarray, n: int, w: int) -> tuple[int, int]:
    """Columns covered by the union of spans[:n] (sorted by start), in all and in [0, w)."""
    t = 0
    i = 0
    k = 0
    while k < n:
        a, b = spans[k, 0], spans[k, 1]
        k += 1
        while k < n and spans[k, 0] <= b:
            b = max(b, spans[k, 1])
            k += 1
        t += b - a
        i += max(0, min(b, w) - max(a, 0))
    return t, i


@numba.njit(cache=True)
def silhouette_counts(verts: np.ndarray, starts: np.ndarray, owner: np.ndarray, n_owners: int,
                      h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of each owner's silhouette (the union of its polygons, unoccluded): in all
    (within two image sizes around the image) and inside the image.

    `owner` (P,) gives each polygon's owner in [0, n_owners); -1 skips it. Returns
    total (n,) and inside (n,) int64. Row by row, the spans of the owner's polygons are
    merged, so the union costs its rows times its polygons, not its area."""
    total = np.zeros(n_owners, np.int64)
    inside = np.zeros(n_owners, np.int64)
    xs = np.empty(MAX_CROSS, np.float64)
    x_lo, x_hi, y_lo, y_hi = -2 * w, 3 * w, -2 * h, 3 * h
    order = np.argsort(owner, kind="mergesort")
    n_poly = owner.size
    rng = np.empty((n_poly, 4), np.int64)  # r0, r1, vmin, vmax of each polygon
    et = np.empty((verts.shape[0], 4))  # the edges of polygon p at starts[p]:starts[p + 1]
    for p in range(n_poly):
        _edges(verts, starts[p], starts[p + 1], et[starts[p]:])
    p_end = 0
    while p_end < n_poly:
        p_start = p_end
        o = owner[order[p_start]]
        while p_end < n_poly and owner[order[p_end]] == o:
            p_end += 1
        if o < 0:
            continue
        y0, y1 = y_hi, y_lo
        for q in range(p_start, p_end):
            p = order[q]
            r0, r1, vmin, vmax = _rows(verts, starts[p], starts[p + 1], y_lo, y_hi)
            if starts[p + 1] - starts[p] < 3:
                r1 = r0
            rng[q, 0], rng[q, 1], rng[q, 2], rng[q, 3] = r0, r1, vmin, vmax
            if r1 > r0:
                y0, y1 = min(y0, r0), max(y1, r1)
        spans = np.empty(((p_end - p_start) * (MAX_CROSS // 2), 2), np.int64)
        t = 0
        i = 0
        for y in range(y0, y1):
            ns = 0
            for q in range(p_start, p_end):
                if not rng[q, 0] <= y < rng[q, 1]:
                    continue
                p = order[q]
                n = _row_crossings(et[starts[p]:], starts[p + 1] - starts[p],
                                   _sample_y(y, rng[q, 2], rng[q, 3]), xs)
                for k in range(0, n - 1, 2):
                    c0, c1 = _span(xs[k], xs[k + 1], x_lo, x_hi)
                    if c1 > c0:
                        j = ns  # insertion by start column
                        while j > 0 and spans[j - 1, 0] > c0:
                            spans[j, 0], spans[j, 1] = spans[j - 1, 0], spans[j - 1, 1]
                            j -= 1
                        spans[j, 0], spans[j, 1] = c0, c1
                        ns += 1
            dt, di = _union_length(spans, ns, w)
            t += dt
            if 0 <= y < h:
                i += di
        total[o] = t
        inside[o] = i
    return total, inside


@numba.njit(cache=True)
def object_labels(ids: np.ndarray, total: np.ndarray, inside: np.ndarray, boxes: np.ndarray,
                  x: np.ndarray, y: np.ndarray, yaw: np.ndarray, length: np.ndarray,
                  width: np.ndarray, cam_x: float, cam_y: float) -> tuple[np.ndarray, ...]:
    """Labels of the actors with visible pixels (id r + 1 for actor row r, searched in
    its box boxes[r] (x0, y0, x1, y1)): rows (k,), the box of their visible pixels (k, 4)
    float32 (x0, y0, x1, y1), visible fraction (visible pixels over the unoccluded
    silhouette `total`; -1: the visible pixels are the whole silhouette), truncation
    (silhouette pixels outside the image over all), occluded (under half of the in-image
    silhouette seen) and the distance from the camera to the nearest footprint point."""
    count, box = actor_pixels(ids, boxes, total.size)
    return labels_from_pixels(count, box, total, inside, x, y, yaw, length, width, cam_x,
                              cam_y)


@numba.njit(cache=True)
def actor_pixels(ids: np.ndarray, boxes: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The first half of `object_labels`: per actor row r < n, its pixels in `ids` (id
    r + 1, searched in boxes[r]) and their box (x0, y0, x1, y1; x1 <= x0 when none).
    (`sim.render.rowfill.actor_pixels` counts the same on a device.)"""
    count = np.zeros(n, np.int64)
    box = np.zeros((n, 4), np.int64)
    for r in range(n):
        v = r + 1
        bx0, by0, bx1, by1 = boxes[r, 2], boxes[r, 3], boxes[r, 0], boxes[r, 1]
        for yy in range(boxes[r, 1], boxes[r, 3]):
            for xx in range(boxes[r, 0], boxes[r, 2]):
                if ids[yy, xx] == v:
                    count[r] += 1
                    bx0, bx1 = min(bx0, xx), max(bx1, xx + 1)
                    by0, by1 = min(by0, yy), max(by1, yy + 1)
        box[r, 0], box[r, 1], box[r, 2], box[r, 3] = bx0, by0, bx1, by1
    return count, box


@numba.njit(cache=True)
def labels_from_pixels(count: np.ndarray, box: np.ndarray, total: np.ndarray,
                       inside: np.ndarray, x: np.ndarray, y: np.ndarray, yaw: np.ndarray,
                       length: np.ndarray, width: np.ndarray, cam_x: float, cam_y: float
                       ) -> tuple[np.ndarray, ...]:
    """The second half of `object_labels`, from each actor's pixel count and box."""
    n = total.size
    total, inside = total.copy(), inside.copy()
    for r in range(n):
        if total[r] < 0:
            total[r], inside[r] = count[r], count[r]
    rows = np.flatnonzero((count > 0) & (total > 0))
    k = rows.size
    labelled = np.empty((k, 4), np.float32)
    vis = np.empty(k, np.float32)
    trunc = np.empty(k, np.float32)
    occluded = np.empty(k, np.bool_)
    dist = np.empty(k, np.float32)
    for j in range(k):
        r = rows[j]
        for c in range(4):
            labelled[j, c] = box[r, c]
        vis[j] = count[r] / total[r]
        trunc[j] = 1.0 - inside[r] / total[r]
        occluded[j] = count[r] < 0.5 * inside[r]
        c, s = np.cos(yaw[r]), np.sin(yaw[r])
        rx, ry = cam_x - x[r], cam_y - y[r]
        lx, ly = abs(c * rx + s * ry), abs(-s * rx + c * ry)
        dist[j] = np.hypot(max(lx - length[r] / 2, 0.0), max(ly - width[r] / 2, 0.0))
    return rows, labelled, vis, trunc, occluded, dist


MARK_WIDTH = 0.15
"""Painted line width [m]."""
MARKING_RANGE = 110.0
"""Lane markings are drawn (and labelled) up to this far ahead [m]."""
CLUTTER_RANGE = 140.0
"""Clutter is drawn up to this far ahead [m]."""
RAIL_RANGE = 120.0
"""Guard rails are drawn up to this far ahead [m]."""
ID_ROAD, ID_SHOULDER, ID_RAIL, ID_CLUTTER = -2, -3, -4, -5
ID_MARKING = -100
_DOUBLE_OFFSETS = np.array([-0.19, -0.07, 0.05, 0.17])
_LAMP_LAT = np.array([0.3, 0.45, 0.45, 0.3])
"""A taillight's corners across the rear, in fractions of the width (mirrored)."""
_LAMP_Z = np.array([0.42, 0.42, 0.52, 0.52])
"""Their heights, in fractions of the body height (capped at 1.6 m) above 0.15 m."""
_LAMP_COLOR = np.array([255, 40, 30], np.uint8)


# -- small pieces ----------------------------------------------------------------------
@numba.njit(cache=True, inline="always")
def _road_at(s0: float, rx: np.ndarray, ry: np.ndarray, rh: np.ndarray, s: float, d: float
             ) -> tuple[float, float, float]:
    """`Road.to_world` for one point: world x, y at (s, d) and the heading at s."""
    f = (s - s0) / DS
    f = min(max(f, 0.0), rx.size - 1.000001)
    i = int(f)
    t = f - i
    x = rx[i] * (1.0 - t) + rx[i + 1] * t
    y = ry[i] * (1.0 - t) + ry[i + 1] * t
    h = rh[i] * (1.0 - t) + rh[i + 1] * t
    return x - d * np.sin(h), y + d * np.cos(h), h


@numba.njit(cache=True, inline="always")
def _to_cam(wx: float, wy: float, wz: float, pos: np.ndarray, R: np.ndarray
            ) -> tuple[float, float, float]:
    dx, dy, dz = wx - pos[0], wy - pos[1], wz - pos[2]
    return (dx * R[0, 0] + dy * R[0, 1] + dz * R[0, 2],
            dx * R[1, 0] + dy * R[1, 1] + dz * R[1, 2],
            dx * R[2, 0] + dy * R[2, 1] + dz * R[2, 2])


@numba.njit(cache=True)
def _centre(s0: float, rx: np.ndarray, ry: np.ndarray, rh: np.ndarray, s: np.ndarray
            ) -> np.ndarray:
    """(S, 4) centre line samples at arc lengths s: x, y, sin and cos of the heading."""
    out = np.empty((s.size, 4))
    for i in range(s.size):
        x, y, h = _road_at(s0, rx, ry, rh, s[i], 0.0)
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = x, y, np.sin(h), np.cos(h)
    return out


@numba.njit(cache=True)
def _line(centre: np.ndarray, d: float, z: float, pos: np.ndarray, R: np.ndarray
          ) -> np.ndarray:
    """Camera-frame points (S, 3) of the line at lateral offset d and height z."""
    out = np.empty((centre.shape[0], 3))
    for i in range(centre.shape[0]):
        c = centre[i]
        out[i, 0], out[i, 1], out[i, 2] = _to_cam(c[0] - d * c[2], c[1] + d * c[3], z, pos, R)
    return out


@numba.njit(cache=True)
def clip_project(pc: np.ndarray, n: int, near: float, f: float, cx: float, cy: float,
                 out: np.ndarray, at: int, tmp: np.ndarray) -> int:
    """Clip the camera-frame polygon pc[:n] to z >= near, project it and write its
    fixed-point pixel vertices to out[at:]; returns how many (0 when nothing is left).
    `tmp` is scratch space of at least 2 n rows."""
    n_in = 0
    for k in range(n):
        if pc[k, 2] >= near:
            n_in += 1
    if n_in == 0:
        return 0
    src = pc
    m = n
    if n_in < n:  # Sutherland-Hodgman against the near plane
        m = 0
        for k in range(n):
            a = pc[k]
            b = pc[(k + 1) % n]
            a_in, b_in = a[2] >= near, b[2] >= near
            if a_in:
                tmp[m, 0], tmp[m, 1], tmp[m, 2] = a[0], a[1], a[2]
                m += 1
            if a_in != b_in:
                t = (near - a[2]) / (b[2] - a[2])
                tmp[m, 0] = a[0] + t * (b[0] - a[0])
                tmp[m, 1] = a[1] + t * (b[1] - a[1])
                tmp[m, 2] = a[2] + t * (b[2] - a[2])
                m += 1
        if m < 3:
            return 0
        src = tmp
    for k in range(m):
        z = src[k, 2]
        out[at + k, 0] = np.int32(np.rint((f * src[k, 0] / z + cx) * ONE))
        out[at + k, 1] = np.int32(np.rint((f * src[k, 1] / z + cy) * ONE))
    return m


@numba.njit(cache=True)
def _fill_strip(img: np.ndarray, ids: np.ndarray, a: np.ndarray, b: np.ndarray,
                color: np.ndarray, id_value: int, near: float, f: float, cx: float,
                cy: float, xs: np.ndarray, rec: tuple | None) -> None:
    """Fill the polygon between two camera-frame polylines (S, 3): a, then b backwards,
    clipped at the near plane as one closed polygon."""
    n = a.shape[0] + b.shape[0]
    if n < 3:
        return
    pc = np.empty((n, 3))
    pc[:a.shape[0]] = a
    pc[a.shape[0]:] = b[::-1]
    verts = np.empty((2 * n, 2), np.int32)
    m = clip_project(pc, n, near, f, cx, cy, verts, 0, np.empty((2 * n, 3)))
    _emit(img, ids, verts, 0, m, color, id_value, MODE_BOTH, xs, np.empty((m, 4)), rec)


# -- the ground ------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def draw_ground(img: np.ndarray, ids: np.ndarray, cam: tuple, road: tuple, ego_s: float,
                ego_yaw: float, road_offsets: np.ndarray, colors: np.ndarray,
                rec: tuple | None) -> None:
    """Shoulders, road, every boundary's paint (strips, double lines, dashes) and the
    guard rails, in that order.

    cam: (pos, R, f, cx, cy, near, far, ...). road: (s0, x, y, heading, s_max, paved half
    width, half width, boundary offsets, marking kinds, dash length, dash period, rail
    sides). `road_offsets`: arc lengths ahead of the ego sampled for the road edges.
    `colors` (5, 3) uint8: shoulder, road, marking, yellow, rail. `rec`: None fills
    `img` and `ids`; a display list (`DISPLAY_FIELDS`) gets the polygons instead."""
    pos, R, f, cx, cy, near, far = cam[0], cam[1], cam[2], cam[3], cam[4], cam[5], cam[6]
    (s0, rx, ry, rh, s_max, paved_half, half, boundary_d, kinds, dash_length, dash_period,
     rail_sides) = road
    xs = np.empty(MAX_CROSS, np.float64)
    _, _, h_ego = _road_at(s0, rx, ry, rh, ego_s, 0.0)
    herr = ego_yaw - h_ego
    herr = np.arctan2(np.sin(herr), np.cos(herr))
    offsets = road_offsets[road_offsets < far]
    if abs(herr) > np.radians(40.0):  # turned across the road: draw behind too
        offsets = np.concatenate((-offsets[::-1][:-1], offsets[offsets > 8.0]))
    s = np.minimum(np.maximum(ego_s + offsets, s0), s_max)
    centre = _centre(s0, rx, ry, rh, s)
    # the shoulders as two strips beside the road, not one under it: the road's pixels
    # are written once (the shared edge pixels go to the road, drawn after them)
    right, left = _line(centre, -half, 0.0, pos, R), _line(centre, half, 0.0, pos, R)
    _fill_strip(img, ids, _line(centre, -paved_half, 0.0, pos, R), right, colors[0],
                ID_SHOULDER, near, f, cx, cy, xs, rec)
    _fill_strip(img, ids, left, _line(centre, paved_half, 0.0, pos, R), colors[0],
                ID_SHOULDER, near, f, cx, cy, xs, rec)
    _fill_strip(img, ids, right, left, colors[1], ID_ROAD, near, f, cx, cy, xs, rec)
    _draw_markings(img, ids, cam, road, ego_s, s, colors, xs, rec)
    rails = centre[s < ego_s + RAIL_RANGE]
    for side in rail_sides:
        d_rail = side * (paved_half + 0.6)
        lo = _line(rails, d_rail, 0.35, pos, R)
        hi = _line(rails, d_rail, 0.8, pos, R)
        _fill_strip(img, ids, lo, hi, colors[4], ID_RAIL, near, f, cx, cy, xs, rec)


@numba.njit(cache=True)
def _draw_markings(img: np.ndarray, ids: np.ndarray, cam: tuple, road: tuple, ego_s: float,
                   s: np.ndarray, colors: np.ndarray, xs: np.ndarray, rec: tuple | None
                   ) -> None:
    """Every boundary's paint up to MARKING_RANGE: solid strips, double yellow pairs,
    dashes (quads at multiples of the dash period; both ways when the road sampling `s`
    reaches behind the ego)."""
    pos, R, f, cx, cy, near = cam[0], cam[1], cam[2], cam[3], cam[4], cam[5]
    s0, rx, ry, rh, s_max, _, _, boundary_d, kinds, dash_length, dash_period, _ = road
    near_s = np.append(s[s < ego_s + MARKING_RANGE], ego_s + MARKING_RANGE)
    centre = _centre(s0, rx, ry, rh, near_s)
    back = MARKING_RANGE if s[0] < ego_s - 10.0 else 8.0  # turned across: both ways
    first = np.floor((ego_s - back) / dash_period) * dash_period
    n_dash = int((MARKING_RANGE + back) / dash_period) + 1
    starts = first + dash_period * np.arange(n_dash)
    starts = starts[(starts < ego_s + MARKING_RANGE) & (starts + dash_length < s_max)
                    & (starts >= s0)]
    quad = np.empty((4, 3))
    verts = np.empty((8, 2), np.int32)
    tmp = np.empty((8, 3))
    et = np.empty((8, 4))
    for j in range(boundary_d.size):
        d = boundary_d[j]
        value = ID_MARKING - j
        if kinds[j] == DASHED:
            for st in starts:
                for q in range(4):
                    sq = st + dash_length if q == 1 or q == 2 else st
                    dq = d + MARK_WIDTH / 2 if q >= 2 else d - MARK_WIDTH / 2
                    wx, wy, _ = _road_at(s0, rx, ry, rh, sq, dq)
                    quad[q, 0], quad[q, 1], quad[q, 2] = _to_cam(wx, wy, 0.0, pos, R)
                m = clip_project(quad, 4, near, f, cx, cy, verts, 0, tmp)
                _emit(img, ids, verts, 0, m, colors[2], value, MODE_BOTH, xs, et, rec)
            continue
        if kinds[j] == DOUBLE:
            sign = -1.0 if d < 0.0 else 1.0
            k_off = _DOUBLE_OFFSETS * sign + d
            color = colors[3]
        else:
            k_off = np.array([d - MARK_WIDTH / 2, d + MARK_WIDTH / 2])
            color = colors[2]
        for k in range(0, k_off.size, 2):
            a = _line(centre, k_off[k], 0.0, pos, R)
            b = _line(centre, k_off[k + 1], 0.0, pos, R)
            _fill_strip(img, ids, a, b, color, value, near, f, cx, cy, xs, rec)


# -- objects ---------------------------------------------------------------------------
@numba.njit(cache=True)
def _draw_shadows(img: np.ndarray, ids: np.ndarray, cam: tuple, ego_s: float,
                  actors: tuple, color: np.ndarray, xs: np.ndarray, rec: tuple | None
                  ) -> None:
    """Dark quads under the actors near the ego (`actors.box_corners`, widened)."""
    pos, R, f, cx, cy, near = cam[0], cam[1], cam[2], cam[3], cam[4], cam[5]
    active, _, a_s, a_x, a_y, a_yaw, length, width, _, _ = actors
    quad = np.empty((4, 3))
    qv = np.empty((4, 2), np.int32)
    tmp = np.empty((8, 3))
    et = np.empty((4, 4))
    for r in range(active.size):
        rel = a_s[r] - ego_s
        if not active[r] or rel <= -5.0 or rel >= 90.0:
            continue
        c, s = np.cos(a_yaw[r]), np.sin(a_yaw[r])
        hl, hw = 0.5 * (length[r] * 1.05 + 0.2), 0.5 * (width[r] * 1.1 + 0.2)
        ok = True
        for k in range(4):  # counter-clockwise from front-left
            lx = hl if k == 0 or k == 3 else -hl
            ly = hw if k < 2 else -hw
            quad[k, 0], quad[k, 1], quad[k, 2] = _to_cam(
                a_x[r] + 0.25 + lx * c - ly * s, a_y[r] + 0.2 + lx * s + ly * c, 0.01, pos, R)
            ok = ok and quad[k, 2] > near
        if ok:
            m = clip_project(quad, 4, near, f, cx, cy, qv, 0, tmp)
            _emit(img, ids, qv, 0, m, color, 0, MODE_IMAGE, xs, et, rec)


@numba.njit(cache=True, nogil=True)
def draw_taillights(img: np.ndarray, ids: np.ndarray, cam: tuple, rows: np.ndarray,
                    cls: np.ndarray, x: np.ndarray, y: np.ndarray, yaw: np.ndarray,
                    length: np.ndarray, width: np.ndarray, height: np.ndarray,
                    rec: tuple | None) -> None:
    """Red lamps on the rear of the cars and trucks among `rows` seen from behind (dusk
    and night), drawn into the image only: the id buffer keeps the vehicle there. A lamp
    is drawn where all four corners fall on the vehicle's own pixels. With a display list
    `rec` each lamp goes there with that condition (its `cond`: the vehicle's id value),
    for the fill to check against the finished id buffer."""
    pos, R, f, cx, cy, near = cam[0], cam[1], cam[2], cam[3], cam[4], cam[5]
    h, w = ids.shape
    xs = np.empty(MAX_CROSS, np.float64)
    quad = np.empty((4, 3))
    qv = np.empty((4, 2), np.int32)
    tmp = np.empty((8, 3))
    et = np.empty((4, 4))
    for r in rows:
        if cls[r] != CAR and cls[r] != TRUCK:
            continue
        c, s = np.cos(yaw[r]), np.sin(yaw[r])
        rx = x[r] - (0.5 * length[r] + 0.02) * c
        ry = y[r] - (0.5 * length[r] + 0.02) * s
        if (pos[0] - rx) * -c + (pos[1] - ry) * -s <= 0:
            continue  # seen from the front
        top = min(height[r], 1.6)
        for side in (1.0, -1.0):
            ok = True
            for k in range(4):
                lat = side * _LAMP_LAT[k] * width[r]
                quad[k, 0], quad[k, 1], quad[k, 2] = _to_cam(rx - lat * s, ry + lat * c,
                                                             _LAMP_Z[k] * top + 0.15, pos, R)
                ok = ok and quad[k, 2] > near
            if not ok:
                continue
            m = clip_project(quad, 4, near, f, cx, cy, qv, 0, tmp)
            if rec is not None:
                _record(rec, qv, 0, m, _LAMP_COLOR, 0, MODE_IMAGE, r + 1, h)
                continue
            for k in range(m):
                py = min(max(qv[k, 1] >> SHIFT, 0), h - 1)
                px = min(max(qv[k, 0] >> SHIFT, 0), w - 1)
                ok = ok and ids[py, px] == r + 1
            if ok:
                fill_one(img, ids, qv, 0, m, _LAMP_COLOR, 0, MODE_IMAGE, xs, et)


@numba.njit(cache=True)
def _in_view(cam: tuple, ego_s: float, cull_to_view: bool, actors: tuple, clutter: tuple
             ) -> tuple[np.ndarray, np.ndarray]:
    """Objects that may show, far to near: references (actor row r >= 0, clutter item i
    as -1 - i) and the camera depth of their centres."""
    pos, R, near, far, tan_half, tan_v = cam[0], cam[1], cam[5], cam[6], cam[7], cam[8]
    active, _, _, a_x, a_y, _, length, width, height, _ = actors
    c_s, _, c_x, c_y, _, c_size, _ = clutter
    c_lo = np.searchsorted(c_s, ego_s - 20.0)
    c_hi = np.searchsorted(c_s, ego_s + CLUTTER_RANGE)
    n = active.size + c_hi - c_lo
    ref = np.empty(n, np.int64)
    depth = np.empty(n)
    hyp_h, hyp_v = np.hypot(1.0, tan_half), np.hypot(1.0, tan_v)
    k = 0
    for r in range(n):
        if r < active.size:
            if not active[r]:
                continue
            x, y, sl, sw, sh = a_x[r], a_y[r], length[r], width[r], height[r]
            ref[k] = r
        else:
            i = c_lo + r - active.size
            x, y, sl, sw, sh = c_x[i], c_y[i], c_size[i, 0], c_size[i, 1], c_size[i, 2]
            ref[k] = -1 - i
        px, py, pz = _to_cam(x, y, 0.5 * sh, pos, R)
        rad = 0.5 * np.sqrt(sl * sl + sw * sw + sh * sh)
        keep = pz < far + rad
        if cull_to_view:
            keep = (keep and pz > near - rad and abs(px) < pz * tan_half + rad * hyp_h
                    and abs(py) < pz * tan_v + rad * hyp_v)
        if keep:
            depth[k] = pz
            k += 1
    order = np.argsort(-depth[:k], kind="mergesort")
    return ref[:k][order], depth[:k][order]


@numba.njit(cache=True)
def _part_vertices(bounds: np.ndarray, is_pyramid: bool, length: float, width: float,
                   height: float, x: float, y: float, c: float, s: float, cam: tuple,
                   wv: np.ndarray, pc: np.ndarray) -> float:
    """World (8, 3) and camera (8, 3) vertices of a part (`shapes.part_vertices` and
    `to_world` for one part); returns their mean camera depth. Vertex k sits at corner
    (k // 4, k // 2 % 2, k % 2) of the bounds."""
    pos, R = cam[0], cam[1]
    mx = 0.5 * (bounds[0] + bounds[1]) * length
    my = 0.5 * (bounds[2] + bounds[3]) * width
    zs = 0.0
    for v in range(8):
        lx = bounds[v // 4] * length
        ly = bounds[2 + (v // 2) % 2] * width
        if is_pyramid and v % 2 == 1:  # the four top corners meet at the centre
            lx, ly = mx, my
        wv[v, 0] = x + lx * c - ly * s
        wv[v, 1] = y + lx * s + ly * c
        wv[v, 2] = bounds[4 + v % 2] * height
        pc[v, 0], pc[v, 1], pc[v, 2] = _to_cam(wv[v, 0], wv[v, 1], wv[v, 2], pos, R)
        zs += pc[v, 2]
    return zs / 8.0


@numba.njit(cache=True)
def _face_shade(wv: np.ndarray, fv: np.ndarray, pos: np.ndarray, sun: np.ndarray,
                ambient: float, diffuse: float, top: bool) -> float:
    """Lambert shade of a face of a part if it faces the camera, else -1."""
    ax, ay, az = (wv[fv[2], 0] - wv[fv[0], 0], wv[fv[2], 1] - wv[fv[0], 1],
                  wv[fv[2], 2] - wv[fv[0], 2])
    bx, by, bz = (wv[fv[3], 0] - wv[fv[1], 0], wv[fv[3], 1] - wv[fv[1], 1],
                  wv[fv[3], 2] - wv[fv[1], 2])
    nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    fx = 0.25 * (wv[fv[0], 0] + wv[fv[1], 0] + wv[fv[2], 0] + wv[fv[3], 0])
    fy = 0.25 * (wv[fv[0], 1] + wv[fv[1], 1] + wv[fv[2], 1] + wv[fv[3], 1])
    fz = 0.25 * (wv[fv[0], 2] + wv[fv[1], 2] + wv[fv[2], 2] + wv[fv[3], 2])
    mx, my, mz = 0.0, 0.0, 0.0
    for v in range(8):
        mx += wv[v, 0] / 8.0
        my += wv[v, 1] / 8.0
        mz += wv[v, 2] / 8.0
    if nx * (fx - mx) + ny * (fy - my) + nz * (fz - mz) < 0:  # make it point outward
        nx, ny, nz = -nx, -ny, -nz
    norm = np.sqrt(nx * nx + ny * ny + nz * nz)
    facing = nx * (pos[0] - fx) + ny * (pos[1] - fy) + nz * (pos[2] - fz)
    if not (norm > 1e-9 and facing > 1e-9):
        return -1.0
    lam = (nx * sun[0] + ny * sun[1] + nz * sun[2]) / max(norm, 1e-12)
    return ambient + diffuse * min(max(lam, 0.0), 1.0) + (0.08 if top else 0.0)


@numba.njit(cache=True, inline="always")
def _face_color(base: np.ndarray, gain: float, fog_a: float, fog_color: np.ndarray,
                out: np.ndarray) -> None:
    """`Conditions.object_color`: base colour times shade (and headlights), into fog."""
    for ch in range(3):
        c = float(base[ch]) * gain * (1.0 - fog_a) + fog_color[ch] * fog_a
        out[ch] = np.uint8(np.rint(min(max(c, 0.0), 255.0)))


@numba.njit(cache=True, nogil=True)
def draw_objects(img: np.ndarray, ids: np.ndarray, cam: tuple, ego_s: float,
                 cull_to_view: bool, actors: tuple, clutter: tuple, tables: tuple,
                 look: tuple, rec: tuple | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shadows under the actors, then every object in view far to near, each object's
    parts far to near, each part's faces that face the camera, shaded.

    cam: (pos, R, f, cx, cy, near, far, tan_half, tan_v).
    actors: (active, shape, s, x, y, yaw, length, width, height, color (N, 3) uint8).
    clutter: (s sorted, shape, x, y, yaw, size (C, 3), color (C, 3) uint8).
    tables: (part prim, part bounds, part roles, shape start, shape count, role colours,
    faces, face is top, sun, PYRAMID, BODY).
    look: (ambient, diffuse, headlight, fog, fog colour, fog visibility, shadows,
    shadow colour). rec: None fills `img` and `ids`; a display list (`DISPLAY_FIELDS`)
    gets the polygons instead (the labels' counts come from the geometry either way).

    Returns, per actor row, the pixels of its unoccluded silhouette in all and inside the
    image (for visible fraction and truncation; -1 where they equal its pixels in the id
    buffer: inside the image and nothing nearer overlaps it), the actor rows drawn, in
    order, and per actor row the box (x0, y0, x1, y1) in the image outside which none of
    its pixels lies."""
    h, w = ids.shape
    pos, f, cx, cy, near = cam[0], cam[2], cam[3], cam[4], cam[5]
    active, a_shape, _, a_x, a_y, a_yaw, length, width, height, a_color = actors
    _, c_shape, c_x, c_y, c_yaw, c_size, c_color = clutter
    prim, bounds, roles, start, count, role_colors, faces, is_top, sun, pyramid, body = tables
    ambient, diffuse, headlight, fog, fog_color, fog_visibility, shadow, shadow_color = look
    xs = np.empty(MAX_CROSS, np.float64)
    if shadow:
        _draw_shadows(img, ids, cam, ego_s, actors, shadow_color, xs, rec)
    ref, depth = _in_view(cam, ego_s, cull_to_view, actors, clutter)
    n_parts = 0
    for r in ref:
        n_parts += count[a_shape[r] if r >= 0 else c_shape[-1 - r]]
    verts = np.empty((n_parts * 5 * 8, 2), np.int32)
    starts = np.zeros(n_parts * 5 + 1, np.int64)
    owner = np.empty(n_parts * 5, np.int64)
    n_poly = 0
    drawn = np.empty(ref.size, np.int64)
    n_drawn = 0
    max_parts = count.max()
    wv = np.empty((max_parts, 8, 3))
    pc = np.empty((max_parts, 8, 3))
    zmean = np.empty(max_parts)
    face_pc = np.empty((4, 3))
    tmp = np.empty((16, 3))
    et = np.empty((16, 4))
    color = np.empty(3, np.uint8)
    boxes = np.empty((ref.size, 4), np.int64)  # pixel box of each object's drawn faces
    boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3] = w + h, w + h, -1, -1
    for o in range(ref.size):
        r = ref[o]
        if r >= 0:
            sh, x, y, yaw, col, id_value = a_shape[r], a_x[r], a_y[r], a_yaw[r], a_color[r], r + 1
            sl, sw, sz = length[r], width[r], height[r]
        else:
            i = -1 - r
            sh, x, y, yaw, col, id_value = c_shape[i], c_x[i], c_y[i], c_yaw[i], c_color[i], \
                ID_CLUTTER
            sl, sw, sz = c_size[i, 0], c_size[i, 1], c_size[i, 2]
        dist = max(depth[o], 0.1)
        light = 0.35 + 1.6 * min(max(14.0 / max(dist, 1.0), 0.0), 1.2) if headlight else 1.0
        fog_a = 1.0 - np.exp(-dist / fog_visibility) if fog else 0.0
        cs, sn = np.cos(yaw), np.sin(yaw)
        p0, n_p = start[sh], count[sh]
        for q in range(n_p):
            zmean[q] = _part_vertices(bounds[p0 + q], prim[p0 + q] == pyramid, sl, sw, sz, x,
                                      y, cs, sn, cam, wv[q], pc[q])
        any_drawn = False
        for q in np.argsort(-zmean[:n_p], kind="mergesort"):  # parts far to near, stable
            part = p0 + q
            behind = True
            for v in range(8):
                behind = behind and pc[q, v, 2] < near
            if behind:
                continue
            for fc in range(5):
                top = is_top[fc]
                shade = _face_shade(wv[q], faces[fc], pos, sun, ambient, diffuse, top)
                if shade < 0.0:
                    continue
                role = roles[part, 1 if top else 0]
                if role == body:
                    _face_color(col, shade * light, fog_a, fog_color, color)
                else:
                    _face_color(role_colors[role], shade * light, fog_a, fog_color, color)
                for v in range(4):
                    face_pc[v] = pc[q, faces[fc, v]]
                at = starts[n_poly]
                m = clip_project(face_pc, 4, near, f, cx, cy, verts, at, tmp)
                if m < 3:
                    continue
                _emit(img, ids, verts, at, at + m, color, id_value, MODE_BOTH, xs, et, rec)
                owner[n_poly] = r if r >= 0 else -1
                starts[n_poly + 1] = at + m
                _grow_box(verts, at, at + m, boxes[o])
                n_poly += 1
                any_drawn = True
        if any_drawn and r >= 0:
            drawn[n_drawn] = r
            n_drawn += 1
    total, inside, actor_boxes = _silhouettes(ref, boxes, verts, starts[:n_poly + 1],
                                              owner[:n_poly], active.size, h, w)
    return total, inside, drawn[:n_drawn], actor_boxes


@numba.njit(cache=True, nogil=True)
def record_worlds(lo: int, hi: int, cam: tuple, cam_pos: np.ndarray, cam_r: np.ndarray,
                  ego_s: np.ndarray, ego_yaw: np.ndarray, statics: Any, look_f: np.ndarray,
                  look_b: np.ndarray, shadow_colors: np.ndarray, actors: tuple,
                  cls: np.ndarray, road_offsets: np.ndarray, tables: tuple,
                  fog: tuple, cull_to_view: bool, img: np.ndarray, ids: np.ndarray,
                  recs: tuple, out: tuple) -> int:
    """`Renderer.record` for worlds lo..hi-1 of a batch in one call (no Python between
    worlds, the GIL released): their polygons into the display lists recs (ground,
    objects, taillights), their label inputs into `out`.

    cam: (f, cx, cy, near, far, tan_half, tan_v) of the shared camera spec; cam_pos
    (B, 3) and cam_r (B, 3, 3) each world's camera pose; statics: a typed list of each
    world's (road, ground colours, clutter) as `draw_ground` / `draw_objects` take them;
    look_f (B, 2) ambient, diffuse; look_b (B, 4) headlight, fog, shadows, taillights;
    shadow_colors (B, 3); actors: the batch's (B, N) arrays (active, shape, s, x, y, yaw,
    length, width, height, color (B, N, 3)); cls (B, N); fog: (colour, visibility).
    out: (total (B, N), inside (B, N), boxes (B, N, 4), drawn (B, N), n_drawn (B,), ends
    (3, B): each list's polygon count after each world). Returns hi, or the first world
    whose polygons did not fit: the lists are then as before that world, for the caller
    to grow them and go on from there."""
    f, cx, cy, near, far, tan_half, tan_v = cam
    active, shape, a_s, x, y, yaw, length, width, height, color = actors
    total_out, inside_out, boxes_out, drawn_out, n_drawn_out, ends = out
    marks = np.zeros((3, 2), np.int64)
    for b in range(lo, hi):
        for j in range(3):
            marks[j, 0], marks[j, 1] = recs[j][7][0], recs[j][7][1]
        camb = (cam_pos[b], cam_r[b], f, cx, cy, near, far, tan_half, tan_v)
        road, colors, clutter = statics[b]
        draw_ground(img, ids, camb, road, ego_s[b], ego_yaw[b], road_offsets, colors, recs[0])
        act = (active[b], shape[b], a_s[b], x[b], y[b], yaw[b], length[b], width[b], height[b],
               color[b])
        look = (look_f[b, 0], look_f[b, 1], look_b[b, 0], look_b[b, 1], fog[0], fog[1],
                look_b[b, 2], shadow_colors[b])
        total, inside, drawn, boxes = draw_objects(img, ids, camb, ego_s[b], cull_to_view, act,
                                                   clutter, tables, look, recs[1])
        if look_b[b, 3] and drawn.size:
            draw_taillights(img, ids, camb, drawn, cls[b], x[b], y[b], yaw[b], length[b],
                            width[b], height[b], recs[2])
        full = False
        for j in range(3):
            full = full or recs[j][7][2] != 0
        if full:
            for j in range(3):
                recs[j][7][0], recs[j][7][1], recs[j][7][2] = marks[j, 0], marks[j, 1], 0
            return b
        n = total.size
        total_out[b, :n] = total
        inside_out[b, :n] = inside
        boxes_out[b, :n] = boxes
        drawn_out[b, :drawn.size] = drawn
        n_drawn_out[b] = drawn.size
        for j in range(3):
            ends[j, b] = recs[j][7][0]
    return hi


@numba.njit(cache=True)
def _silhouettes(ref: np.ndarray, boxes: np.ndarray, verts: np.ndarray, starts: np.ndarray,
                 owner: np.ndarray, n_act: int, h: int, w: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Silhouette pixels of every actor (see `draw_objects`) and the pixel box
    [x0, x1) x [y0, y1) in the image that holds each actor's pixels. An actor inside the
    image that nothing drawn after it overlaps has its whole silhouette in the id
    buffer: its count is left to the labels (-1)."""
    clear = _unobstructed(ref, boxes, w, h)
    owner = owner.copy()
    for p in range(owner.size):
        if owner[p] >= 0 and clear[owner[p]]:
            owner[p] = -1
    total, inside = silhouette_counts(verts, starts, owner, n_act, h, w)
    actor_boxes = np.zeros((n_act, 4), np.int64)  # empty: x1 <= x0
    for o in range(ref.size):
        r = ref[o]
        if r >= 0:
            if clear[r]:
                total[r] = -1
            b = boxes[o]
            actor_boxes[r, 0], actor_boxes[r, 1] = max(b[0], 0), max(b[1], 0)
            actor_boxes[r, 2], actor_boxes[r, 3] = min(b[2] + 1, w), min(b[3] + 1, h)
    return total, inside, actor_boxes


@numba.njit(cache=True, inline="always")
def _grow_box(verts: np.ndarray, lo: int, hi: int, box: np.ndarray) -> None:
    """Grow `box` (x0, y0, x1, y1 inclusive pixels) by every pixel a fill of verts[lo:hi]
    can touch (the nearest pixels of its extreme vertices)."""
    for k in range(lo, hi):
        px, py = (verts[k, 0] + HALF) // ONE, (verts[k, 1] + HALF) // ONE
        box[0], box[1] = min(box[0], px), min(box[1], py)
        box[2], box[3] = max(box[2], px), max(box[3], py)


@numba.njit(cache=True)
def _unobstructed(ref: np.ndarray, boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """Per actor row: drawn, inside the image, and no object drawn after it (nearer)
    overlaps its pixel box."""
    n = 0
    for r in ref:
        n = max(n, r + 1)
    clear = np.zeros(max(n, 1), np.bool_)
    for o in range(ref.size):
        r = ref[o]
        b = boxes[o]
        if r < 0 or b[2] < b[0] or b[0] < 0 or b[1] < 0 or b[2] >= w or b[3] >= h:
            continue
        ok = True
        for o2 in range(o + 1, ref.size):
            c = boxes[o2]
            if c[2] >= c[0] and c[0] <= b[2] and b[0] <= c[2] and c[1] <= b[3] and b[1] <= c[3]:
                ok = False
                break
        clear[r] = ok
    return clear


# -- conditions ------------------------------------------------------------------------
@numba.njit(cache=True)
def fog_blend(img: np.ndarray, alpha: np.ndarray, fog_color: np.ndarray) -> None:
    """img = img * (1 - alpha[row]) + fog_color * alpha[row], truncated to uint8, in
    float32 as numpy computes `img * (1 - a) + fog * a` with float32 a and fog."""
    h, w, _ = img.shape
    one = np.float32(1.0)
    for y in range(h):
        a = alpha[y]
        keep = one - a
        f0, f1, f2 = fog_color[0] * a, fog_color[1] * a, fog_color[2] * a
        for x in range(w):
            img[y, x, 0] = np.uint8(np.float32(img[y, x, 0]) * keep + f0)
            img[y, x, 1] = np.uint8(np.float32(img[y, x, 1]) * keep + f1)
            img[y, x, 2] = np.uint8(np.float32(img[y, x, 2]) * keep + f2)


# -- labels ----------------------------------------------------------------------------
@numba.njit(cache=True)
def lane_points(s0: float, rx: np.ndarray, ry: np.ndarray, rh: np.ndarray, s_max: float,
                ego_s: float, boundary_d: np.ndarray, kinds: np.ndarray, dash_length: float,
                dash_period: float, cam: tuple, ids: np.ndarray, rows: np.ndarray,
                lane_range: float, absent: float, hidden_ids: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image x of every lane boundary at the label rows (`absent` where it is not in
    view), whether it is visible there (not under an object: the id buffer there is no
    actor and none of `hidden_ids`) and whether its paint is there (dashes have gaps):
    (B, rows) float32, bool, bool. A boundary is followed from the camera while it climbs
    the image without a break."""
    pos, R, f, cx, cy, near = cam[0], cam[1], cam[2], cam[3], cam[4], cam[5]
    h, width = ids.shape
    s_all = ego_s + np.arange(-2.0, lane_range, 0.5)
    s = s_all[s_all < s_max]
    n_b = boundary_d.size
    u = np.empty((n_b, s.size))
    v = np.empty((n_b, s.size))
    sj = np.empty((n_b, s.size))
    n = np.zeros(n_b, np.int64)
    for i in range(s.size):  # the centre line once per sample, every boundary from it
        x0, y0, hd = _road_at(s0, rx, ry, rh, s[i], 0.0)
        sn, cs = np.sin(hd), np.cos(hd)
        for j in range(n_b):
            px, py, pz = _to_cam(x0 - boundary_d[j] * sn, y0 + boundary_d[j] * cs, 0.0, pos, R)
            if pz > near:
                u[j, n[j]] = f * px / pz + cx
                v[j, n[j]] = f * py / pz + cy
                sj[j, n[j]] = s[i]
                n[j] += 1
    xs = np.full((n_b, rows.size), absent, np.float32)
    visible = np.zeros((n_b, rows.size), np.bool_)
    painted = np.zeros((n_b, rows.size), np.bool_)
    fr = rows.astype(np.float64)
    for j in range(n_b):
        m = 1  # keep the points while they climb the image (v falls) without a break
        while m < n[j] and v[j, m] < v[j, m - 1]:
            m += 1
        if n[j] < 2 or m < 2:
            continue
        # rows rise and v falls along the points: walk both (np.interp on the reversed run)
        i = m - 1  # v[j, i] is the smallest v
        for k in range(rows.size):
            if fr[k] < v[j, m - 1] or fr[k] > v[j, 0]:
                continue
            while i > 0 and v[j, i - 1] < fr[k]:
                i -= 1
            if i == 0:  # fr[k] == v[j, 0]: the first point itself
                x, s_at = u[j, 0], sj[j, 0]
            else:
                t = (fr[k] - v[j, i]) / (v[j, i - 1] - v[j, i])
                x = u[j, i] + t * (u[j, i - 1] - u[j, i])
                s_at = sj[j, i] + t * (sj[j, i - 1] - sj[j, i])
            if not 0.0 <= x <= width - 1:
                continue
            xs[j, k] = x
            hit = ids[min(max(rows[k], 0), h - 1), min(max(int(np.rint(x)), 0), width - 1)]
            visible[j, k] = hit <= 0 and not (hit == hidden_ids).any()
            painted[j, k] = kinds[j] != DASHED or np.mod(s_at, dash_period) < dash_length
    return xs, visible, painted


__all__ = ["draw_ground", "draw_objects", "lane_points", "clip_project", "MARKING_RANGE",
           "CLUTTER_RANGE", "MARK_WIDTH"]
