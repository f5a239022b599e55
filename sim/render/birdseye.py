"""A human view: bird's-eye map around the ego with the camera frame inset."""

from __future__ import annotations

import cv2
import numpy as np

from sim.types import CAR, CONE, CYCLIST, DASHED, PEDESTRIAN, TRUCK
from sim.world.actors import box_corners
from sim.world.world import World

SIZE = 480
"""Side of the square view [px]."""
PX_PER_M = 5.0
EGO_ROW = 400
CLASS_COLORS = {CAR: (70, 130, 230), TRUCK: (150, 90, 220), PEDESTRIAN: (240, 200, 40),
                CYCLIST: (40, 200, 200), CONE: (250, 120, 20)}


def _to_view(world: World, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    ego = world.state.ego
    dx, dy = np.asarray(x) - ego.x, np.asarray(y) - ego.y
    c, s = np.cos(ego.yaw), np.sin(ego.yaw)
    fwd, left = c * dx + s * dy, -s * dx + c * dy
    return np.stack([SIZE / 2 - left * PX_PER_M, EGO_ROW - fwd * PX_PER_M], axis=-1)


def birdseye(world: World, camera_image: np.ndarray | None = None) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 RGB top view, ego pointing up, camera frame top-left."""
    road, ego = world.road, world.state.ego
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = (60, 100, 50)
    s = np.clip(ego.s + np.arange(-50.0, 150.0, 2.0), road.s[0], road.s_max)

    def band(d0: float, d1: float) -> np.ndarray:
        xa, ya, _ = road.to_world(s, d0)
        xb, yb, _ = road.to_world(s, d1)
        pts = np.concatenate([_to_view(world, xa, ya), _to_view(world, xb, yb)[::-1]])
        return np.round(pts).astype(np.int32)

    cv2.fillPoly(img, [band(-road.paved_half_width, road.paved_half_width)], (125, 120, 112))
    cv2.fillPoly(img, [band(-road.half_width, road.half_width)], (90, 90, 96))
    for j, kind in enumerate(road.markings):
        xb, yb, _ = road.to_world(s, road.boundary_d(j))
        pts = np.round(_to_view(world, xb, yb)).astype(np.int32)
        if kind == DASHED:
            keep = road.painted(j, s)
            for a, b in zip(pts[:-1][keep[:-1]], pts[1:][keep[:-1]], strict=True):
                cv2.line(img, tuple(map(int, a)), tuple(map(int, b)), (230, 230, 230), 1)
        else:
            cv2.polylines(img, [pts], False, (235, 235, 225), 1)
    a = world.state.actors
    x, y, yaw = world.actor_poses()
    for i in np.flatnonzero(a.active & (np.abs(a.s - ego.s) < 160.0)):
        c = box_corners(x[i:i + 1], y[i:i + 1], yaw[i:i + 1], a.length[i:i + 1],
                        a.width[i:i + 1])[0]
        pts = np.round(_to_view(world, c[:, 0], c[:, 1])).astype(np.int32)
        cv2.fillConvexPoly(img, pts, CLASS_COLORS[int(a.cls[i])])
    ec = world.ego_box()
    cv2.fillConvexPoly(img, np.round(_to_view(world, ec[:, 0], ec[:, 1])).astype(np.int32),
                       (60, 220, 90))
    if camera_image is not None:
        h, w = camera_image.shape[:2]
        scale = (SIZE * 0.5) / w
        inset = cv2.resize(camera_image, (int(w * scale), int(h * scale)),
                           interpolation=cv2.INTER_AREA)
        img[4:4 + inset.shape[0], 4:4 + inset.shape[1]] = inset
        cv2.rectangle(img, (3, 3), (4 + inset.shape[1], 4 + inset.shape[0]), (255, 255, 255), 1)
    return img
