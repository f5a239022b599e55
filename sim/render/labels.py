"""Exact ground truth of a rendered frame, from the id buffer and the road geometry."""

from __future__ import annotations

import numpy as np

from sim.render.camera import Camera
from sim.render.kernels import id_stats, lane_points
from sim.render.raster import ID_CLUTTER, ID_MARKING, ID_RAIL, MARKING_RANGE, RenderOutput
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
    """Boxes of the visible pixels of every actor, with its visible fraction (visible
    pixels over its unoccluded, untruncated silhouette) and truncation (silhouette
    pixels outside the image over all of them). Fully hidden actors get no label."""
    h, w = out.ids.shape
    a = world.state.actors
    total, inside = out.silhouette_px, out.silhouette_in_image
    seen, box = id_stats(out.ids, a.active.size)
    idx = np.flatnonzero((seen > 0) & (total > 0))
    total, inside, seen = total[idx], inside[idx], seen[idx]
    x, y, yaw = (v[idx] for v in out.poses)
    c, s = np.cos(yaw), np.sin(yaw)
    rx, ry = camera.position[0] - x, camera.position[1] - y
    lx, ly = np.abs(c * rx + s * ry), np.abs(-s * rx + c * ry)
    dist = np.hypot(np.maximum(lx - a.length[idx] / 2, 0.0), np.maximum(ly - a.width[idx] / 2, 0.0))
    return {
        "boxes_xyxy": box[idx].astype(np.float32).reshape(-1, 4),
        "class_ids": a.cls[idx].astype(np.int64),
        "track_ids": a.track_id[idx].astype(np.int64),
        "distance": dist.astype(np.float32),
        "visible_fraction": (seen / total).astype(np.float32),
        "truncation": (1.0 - inside / total).astype(np.float32),
        "occluded": seen < 0.5 * inside,
    }


def _lanes(world: World, out: RenderOutput, camera: Camera, rows: np.ndarray) -> LaneLabels:
    road, ego = world.road, world.state.ego
    h, w = out.ids.shape
    n_b = road.n_lanes + 1
    xs, painted = lane_points(
        float(road.s[0]), road.x, road.y, road.heading, road.s_max, ego.s,
        road.boundary_d(np.arange(n_b)).astype(np.float64), np.array(road.markings, np.int64),
        road.dash_length, road.dash_period, camera.position, camera.R, camera.f, camera.cx,
        camera.cy, camera.spec.near, w, rows, LANE_RANGE)
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
