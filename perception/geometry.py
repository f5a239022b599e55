"""Flat-ground geometry of the camera: image points to the road and back, shared by
detections (distance of a box's foot), lanes (polylines on the ground) and the planner's
scene. Camera frame conventions as in sim.render.camera (x right, y down, z forward,
pitched down by `pitch_deg`); pixel centres on integer coordinates (OpenCV)."""

from __future__ import annotations

import numpy as np

from sim.types import CameraSpec


def box_foot(boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image point (u, v) [px] of each box's bottom centre. Boxes have exclusive max
    corners and the renderer puts pixel centres on integer coordinates (OpenCV), so the
    lowest object pixel row is y1 - 1: that is where the object meets the ground."""
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    return (b[:, 0] + b[:, 2] - 1.0) / 2, b[:, 3] - 1.0


def to_ground(u: np.ndarray, v: np.ndarray, camera: CameraSpec) -> np.ndarray:
    """(N, 2) forward, left [m] from the camera where the rays through pixels (u, v) meet
    the flat ground; NaN for pixels at or above the horizon."""
    f = camera.focal_px
    a = (np.asarray(u, np.float64) - camera.width / 2) / f
    b = (np.asarray(v, np.float64) - camera.height / 2) / f
    pitch = np.radians(camera.pitch_deg)
    down = b * np.cos(pitch) + np.sin(pitch)  # ray component toward the ground
    t = np.where(down > 1e-3, camera.mount_height / np.maximum(down, 1e-3), np.nan)
    return np.stack([t * (np.cos(pitch) - b * np.sin(pitch)), -t * a], axis=-1)


def ground_distance(boxes_xyxy: np.ndarray, camera: CameraSpec) -> np.ndarray:
    """Distance [m] from the camera to where each box's bottom centre meets the ground;
    inf for boxes whose foot is at or above the horizon."""
    ground = to_ground(*box_foot(boxes_xyxy), camera)
    dist = np.hypot(ground[:, 0], ground[:, 1])
    return np.where(np.isfinite(dist), dist, np.inf).astype(np.float32)


def fit_boundary(points: np.ndarray, far: float) -> np.ndarray | None:
    """Polynomial left(forward) through ground points (K, 2) within `far` m (quadratic
    when they span 15 m or more, else linear); None with fewer than 2 points."""
    p = points[points[:, 0] <= far]
    if len(p) < 2:
        return None
    deg = 2 if np.ptp(p[:, 0]) >= 15.0 and len(p) >= 4 else 1
    return np.polyfit(p[:, 0], p[:, 1], deg)
