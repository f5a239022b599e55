"""Pinhole camera on the ego: extrinsics from the ego pose and projection. Near-plane
clipping and culling live in the compiled kernels (`sim.render.kernels`).

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


def camera_poses(spec: CameraSpec, x: np.ndarray, y: np.ndarray, yaw: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`Camera.set_pose` for B egos at once: positions (B, 3) and rotations (B, 3, 3),
    the same operations element by element."""
    c, s = np.cos(yaw), np.sin(yaw)
    zeros, ones = np.zeros_like(c), np.ones_like(c)
    pitch = np.radians(spec.pitch_deg)
    cp, sp = np.cos(pitch), np.sin(pitch)
    fwd = np.stack([c, s, zeros], 1)
    left = np.stack([-s, c, zeros], 1)
    up = np.stack([zeros, zeros, ones], 1)
    pos = np.stack([x, y, np.full_like(c, spec.mount_height)], 1) + spec.mount_forward * fwd
    rot = np.stack([-left, -(up * cp + fwd * sp), fwd * cp - up * sp], 1)
    return pos, rot
