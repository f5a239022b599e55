"""Exact ground truth of a rendered frame, from the id buffer and the road geometry."""

from __future__ import annotations

import cv2
import numpy as np

from sim.render.camera import Camera
from sim.render.raster import ID_CLUTTER, ID_MARKING, ID_RAIL, MARKING_RANGE, SHIFT, RenderOutput
from sim.types import ABSENT, GroundTruth, LaneLabels
from sim.world.world import World

LANE_RANGE = MARKING_RANGE
"""Lane boundaries are labelled as far ahead as markings are drawn [m]."""


def lane_rows(height: int, horizon_y: float) -> np.ndarray:
    """Fixed image rows at which lane boundaries are sampled (every H/48 px below the
    horizon, TuSimple style)."""
    step = max(1, height // 48)
    rows = np.arange(height - 1, horizon_y + 2, -step)[::-1]
    return rows.astype(np.int64)


def _objects(world: World, out: RenderOutput, camera: Camera) -> dict[str, np.ndarray]:
    h, w = out.ids.shape
    a = world.state.actors
    cam_xy = camera.position[:2]
    x, y, yaw = out.poses
    rows, boxes, vis, trunc, occ, dist = [], [], [], [], [], []
    for r, parts in sorted(out.silhouettes.items()):
        pts = np.concatenate([p for polys in parts for p in polys]) >> SHIFT
        x0, y0 = pts.min(axis=0) - 1
        x1, y1 = pts.max(axis=0) + 2
        x0, y0 = max(x0, -2 * w), max(y0, -2 * h)
        x1, y1 = min(x1, 3 * w), min(y1, 3 * h)
        if x1 <= max(x0, 0) or y1 <= max(y0, 0) or x0 >= w or y0 >= h:
            continue  # entirely outside the image
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        off = (-x0 << SHIFT, -y0 << SHIFT)
        for polys in parts:
            shifted = [p + np.array(off, np.int32) for p in polys]
            cv2.fillPoly(mask, shifted, 1, cv2.LINE_8, SHIFT)
        total = int(mask.sum())
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if total == 0 or ix0 >= ix1 or iy0 >= iy1:
            continue
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            # cut by the image border: count what lies inside by drawing exactly as the
            # id buffer was drawn (OpenCV rasterizes clipped polygons a little differently)
            canvas = np.zeros((h, w), np.uint8)
            for polys in parts:
                cv2.fillPoly(canvas, polys, 1, cv2.LINE_8, SHIFT)
            in_img = int(canvas.sum())
            total = max(total, in_img)
        else:
            in_img = total
        seen = out.ids[iy0:iy1, ix0:ix1] == r + 1
        n_seen = int(seen.sum())
        if n_seen == 0:
            continue  # fully hidden: no pixel box to give
        cols = np.flatnonzero(seen.any(axis=0))
        rws = np.flatnonzero(seen.any(axis=1))
        boxes.append([ix0 + cols[0], iy0 + rws[0], ix0 + cols[-1] + 1, iy0 + rws[-1] + 1])
        rows.append(r)
        vis.append(n_seen / total)
        trunc.append(1.0 - in_img / total)
        occ.append(n_seen < 0.5 * in_img)
        c, s = np.cos(yaw[r]), np.sin(yaw[r])
        rel = cam_xy - np.array([x[r], y[r]])
        lx, ly = abs(c * rel[0] + s * rel[1]), abs(-s * rel[0] + c * rel[1])
        dist.append(np.hypot(max(lx - a.length[r] / 2, 0.0), max(ly - a.width[r] / 2, 0.0)))
    idx = np.array(rows, dtype=np.int64)
    return {
        "boxes_xyxy": np.array(boxes, np.float32).reshape(-1, 4),
        "class_ids": a.cls[idx].astype(np.int64),
        "track_ids": a.track_id[idx].astype(np.int64),
        "distance": np.array(dist, np.float32),
        "visible_fraction": np.array(vis, np.float32),
        "truncation": np.array(trunc, np.float32),
        "occluded": np.array(occ, bool),
    }


def _lanes(world: World, out: RenderOutput, camera: Camera, rows: np.ndarray) -> LaneLabels:
    road, ego = world.road, world.state.ego
    h, w = out.ids.shape
    n_b = road.n_lanes + 1
    s = ego.s + np.arange(-2.0, LANE_RANGE, 0.5)
    s = s[s < road.s_max]
    xs = np.full((n_b, rows.size), np.nan, np.float32)
    painted = np.zeros((n_b, rows.size), bool)
    px, py, _ = road.to_world(s[None, :], road.boundary_d(np.arange(n_b))[:, None])
    pcs = camera.to_camera(np.stack([px, py, np.zeros_like(px)], axis=-1))  # (B, S, 3)
    for j in range(n_b):
        pc = pcs[j]
        front = pc[:, 2] > camera.spec.near
        if front.sum() < 2:
            continue
        uv = camera.project(pc[front])
        sj = s[front]
        v = uv[:, 1]
        mono = np.concatenate([[True], np.diff(v) < 0]).cumprod().astype(bool)
        v, u, sj = v[mono], uv[mono, 0], sj[mono]
        if v.size < 2:
            continue
        inside = (rows >= v[-1]) & (rows <= v[0])
        xj = np.interp(rows[inside], v[::-1], u[::-1])
        sj_at = np.interp(rows[inside], v[::-1], sj[::-1])
        xj = np.where((xj >= 0) & (xj <= w - 1), xj, np.nan)
        xs[j, inside] = xj
        painted[j, inside] = road.painted(j, sj_at)
    finite = np.isfinite(xs)
    xs = np.where(finite, xs, ABSENT).astype(np.float32)
    col = np.clip(np.nan_to_num(np.round(xs), nan=0).astype(np.int64), 0, w - 1)
    hit = out.ids[np.broadcast_to(rows, xs.shape), col]
    hidden = (hit > 0) | (hit == ID_CLUTTER) | (hit == ID_RAIL)
    lane = int(road.lane_of(ego.d))
    return LaneLabels(
        rows=rows, xs=xs, visible=finite & ~hidden, boundary_ids=np.arange(n_b),
        marking=np.array(road.markings, np.int64), ego_boundaries=(lane, lane + 1),
        painted=painted & finite,
    )


def ground_truth(world: World, out: RenderOutput, camera: Camera) -> GroundTruth:
    """Labels for the frame in `out`, drawn from `world` by `camera`."""
    road, ego = world.road, world.state.ego
    rows = lane_rows(camera.spec.height, camera.spec.horizon_y)
    lane = int(road.lane_of(ego.d))
    herr = float(np.angle(np.exp(1j * (ego.yaw - float(road.heading_at(ego.s))))))
    return GroundTruth(
        **_objects(world, out, camera),
        lanes=_lanes(world, out, camera, rows),
        ego_lane_offset=float(ego.d - road.lane_center(lane)),
        ego_heading_error=herr,
        ego_lane=lane,
    )


__all__ = ["ground_truth", "lane_rows", "LANE_RANGE", "ID_MARKING"]
