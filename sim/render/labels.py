"""Exact ground truth of a rendered frame, from the id buffer and the road geometry."""

from __future__ import annotations

import numpy as np

from sim.render.camera import Camera
from sim.render.kernels import labels_from_pixels, lane_points, object_labels
from sim.render.raster import ID_CLUTTER, ID_MARKING, ID_RAIL, MARKING_RANGE, RenderOutput
from sim.types import ABSENT, GroundTruth, LaneLabels
from sim.world.world import World

LANE_RANGE = MARKING_RANGE
"""Lane boundaries are labelled as far ahead as markings are drawn [m]."""
_HIDING = np.array([ID_CLUTTER, ID_RAIL], np.int16)
"""Id values that hide a lane point, besides actors."""


def lane_rows(height: int, horizon_y: float) -> np.ndarray:
    """Fixed image rows at which lane boundaries are sampled (every H/48 px below the
    horizon, TuSimple style)."""
    step = max(1, height // 48)
    rows = np.arange(height - 1, horizon_y + 2, -step)[::-1]
    return rows.astype(np.int64)


def _objects(world: World, out: RenderOutput, camera: Camera,
             pixels: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Boxes of the visible pixels of every actor, with its visible fraction (visible
    pixels over its unoccluded, untruncated silhouette) and truncation (silhouette
    pixels outside the image over all of them). Fully hidden actors get no label.
    `pixels`: each actor row's pixel count and box in the id buffer, when counted
    already (on a device: `sim.render.rowfill.actor_pixels`)."""
    a = world.state.actors
    x, y, yaw = out.poses
    cam_x, cam_y = float(camera.position[0]), float(camera.position[1])
    if pixels is None:
        rows, boxes, vis, trunc, occluded, dist = object_labels(
            out.ids, out.silhouette_px, out.silhouette_in_image, out.actor_boxes, x, y, yaw,
            a.length, a.width, cam_x, cam_y)
    else:
        rows, boxes, vis, trunc, occluded, dist = labels_from_pixels(
            pixels[0], pixels[1], out.silhouette_px, out.silhouette_in_image, x, y, yaw,
            a.length, a.width, cam_x, cam_y)
    return {
        "boxes_xyxy": boxes,
        "class_ids": a.cls[rows].astype(np.int64),
        "track_ids": a.track_id[rows].astype(np.int64),
        "distance": dist,
        "visible_fraction": vis,
        "truncation": trunc,
        "occluded": occluded,
    }


def _lanes(world: World, out: RenderOutput, camera: Camera, rows: np.ndarray) -> LaneLabels:
    road, ego = world.road, world.state.ego
    n_b = road.n_lanes + 1
    cam = (camera.position, camera.R, camera.f, camera.cx, camera.cy, camera.spec.near)
    xs, visible, painted = lane_points(
        float(road.s[0]), road.x, road.y, road.heading, road.s_max, ego.s,
        road.boundary_d(np.arange(n_b)).astype(np.float64), np.array(road.markings, np.int64),
        road.dash_length, road.dash_period, cam, out.ids, rows, LANE_RANGE, ABSENT, _HIDING)
    lane = int(road.lane_of(ego.d))
    return LaneLabels(
        rows=rows, xs=xs, visible=visible, boundary_ids=np.arange(n_b),
        marking=np.array(road.markings, np.int64), ego_boundaries=(lane, lane + 1),
        painted=painted,
    )


def ground_truth(world: World, out: RenderOutput, camera: Camera,
                 pixels: tuple[np.ndarray, np.ndarray] | None = None) -> GroundTruth:
    """Labels for the frame in `out`, drawn from `world` by `camera`. With `pixels` (each
    actor row's pixel count and box, counted on a device), `out.ids` is read only at the
    lane label rows (`lane_rows`)."""
    road, ego = world.road, world.state.ego
    rows = lane_rows(camera.spec.height, camera.spec.horizon_y)
    lane = int(road.lane_of(ego.d))
    herr = float(np.angle(np.exp(1j * (ego.yaw - float(road.heading_at(ego.s))))))
    return GroundTruth(
        **_objects(world, out, camera, pixels),
        lanes=_lanes(world, out, camera, rows),
        ego_lane_offset=float(ego.d - road.lane_center(lane)),
        ego_heading_error=herr,
        ego_lane=lane,
    )


__all__ = ["ground_truth", "lane_rows", "LANE_RANGE", "ID_MARKING"]
