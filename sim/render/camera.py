"""Pinhole camera on the ego: extrinsics from the ego pose, projection and near clipping.

Camera frame: x right, y down, z forward (OpenCV convention).
"""

from __future__ import annotations

import numpy as np

from sim.types import CameraSpec, EgoState


class Camera:
    """Projects world points for one `CameraSpec`; `set_pose(ego)` before each frame."""

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.f = spec.focal_px
        self.cx, self.cy = spec.width / 2.0, spec.height / 2.0
        self.tan_half = float(np.tan(np.radians(spec.fov_deg) / 2.0))
        pitch = np.radians(spec.pitch_deg)
        self._cp, self._sp = np.cos(pitch), np.sin(pitch)
        self.R = np.eye(3)
        self.position = np.zeros(3)

    def set_pose(self, ego: EgoState) -> None:
        c, s = np.cos(ego.yaw), np.sin(ego.yaw)
        fwd = np.array([c, s, 0.0])
        left = np.array([-s, c, 0.0])
        up = np.array([0.0, 0.0, 1.0])
        self.position = np.array([ego.x, ego.y, self.spec.mount_height]) + (
            self.spec.mount_forward * fwd)
        self.R = np.stack([
            -left,
            -(up * self._cp + fwd * self._sp),
            fwd * self._cp - up * self._sp,
        ])

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World (..., 3) -> camera (..., 3)."""
        return (points - self.position) @ self.R.T

    def project(self, pc: np.ndarray) -> np.ndarray:
        """Camera (..., 3) with z > 0 -> pixel (..., 2)."""
        z = pc[..., 2]
        return np.stack([self.f * pc[..., 0] / z + self.cx, self.f * pc[..., 1] / z + self.cy],
                        axis=-1)

    def in_frustum(self, pc: np.ndarray, radius: np.ndarray) -> np.ndarray:
        """Bounding spheres (centre in camera frame, radius) that may touch the image."""
        z = pc[..., 2]
        tan_v = self.tan_half * self.spec.height / self.spec.width
        # a sphere touches the view wedge |x| <= z tan while |x| < z tan + r sqrt(1 + tan^2)
        side = np.abs(pc[..., 0]) < z * self.tan_half + radius * np.hypot(1.0, self.tan_half)
        vert = np.abs(pc[..., 1]) < z * tan_v + radius * np.hypot(1.0, tan_v)
        return (z > self.spec.near - radius) & (z < self.spec.far + radius) & side & vert


def clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Clip a polygon (K, 3) in camera coordinates to z >= near (Sutherland-Hodgman)."""
    z = poly[:, 2]
    if (z >= near).all():
        return poly
    out = []
    n = len(poly)
    for k in range(n):
        a, b = poly[k], poly[(k + 1) % n]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 3))
