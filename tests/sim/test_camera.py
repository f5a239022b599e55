"""Pinhole camera: intrinsics, projection of known points, horizon, near clipping and
CameraSpec validation."""

from __future__ import annotations

import numpy as np
import pytest

from sim.render.camera import Camera
from sim.render.kernels import SHIFT, clip_project
from sim.types import CameraSpec, EgoState


@pytest.mark.parametrize("width,height,fov", [(320, 192, 70.0), (160, 96, 90.0), (640, 480, 40.0)])
def test_intrinsics_match_fov(width: int, height: int, fov: float) -> None:
    spec = CameraSpec(width=width, height=height, fov_deg=fov)
    K = spec.K  # noqa: N806
    f = 0.5 * width / np.tan(np.radians(fov) / 2)
    assert K == pytest.approx(np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]))
    assert spec.focal_px == pytest.approx(f)
    # a ray at half the field of view lands on the image's side edge
    edge = K @ np.array([np.tan(np.radians(fov) / 2), 0.0, 1.0])
    assert edge[0] / edge[2] == pytest.approx(width)


def _camera(pitch: float = 0.0, **kw: float) -> Camera:
    return Camera(CameraSpec(width=320, height=192, fov_deg=70.0, pitch_deg=pitch, **kw))


@pytest.mark.parametrize("yaw", [0.0, np.pi / 2, -2.2])
def test_known_points_project_to_the_expected_pixels(yaw: float) -> None:
    cam = _camera(0.0)
    ego = EgoState(x=5.0, y=-7.0, yaw=yaw, speed=0.0)
    cam.set_pose(ego)
    spec, f = cam.spec, cam.spec.focal_px
    fwd, left = np.array([np.cos(yaw), np.sin(yaw), 0.0]), np.array([-np.sin(yaw),
                                                                      np.cos(yaw), 0.0])
    origin = np.array([ego.x, ego.y, spec.mount_height]) + spec.mount_forward * fwd
    assert cam.position == pytest.approx(origin)
    pts = np.stack([
        origin + 10.0 * fwd,                                      # straight ahead
        origin + 10.0 * fwd + 2.0 * left,                         # 2 m to the left
        origin + 20.0 * fwd - 1.0 * left,                         # 1 m to the right
        origin + 10.0 * fwd - np.array([0.0, 0.0, spec.mount_height]),  # ground, 10 m
    ])
    pc = cam.to_camera(pts)
    assert pc[:, 2] == pytest.approx([10.0, 10.0, 20.0, 10.0])
    uv = cam.project(pc)
    cx, cy = spec.width / 2, spec.height / 2
    expected = np.array([
        [cx, cy],
        [cx - f * 2.0 / 10.0, cy],
        [cx + f * 1.0 / 20.0, cy],
        [cx, cy + f * spec.mount_height / 10.0],
    ])
    assert uv == pytest.approx(expected)


@pytest.mark.parametrize("pitch", [-10.0, 0.0, 4.0, 12.0])
def test_pitch_moves_ground_points_and_horizon_consistently(pitch: float) -> None:
    cam = _camera(pitch)
    cam.set_pose(EgoState(x=0.0, y=0.0, yaw=0.3, speed=0.0))
    spec = cam.spec
    assert spec.horizon_y == pytest.approx(spec.height / 2 - spec.focal_px *
                                           np.tan(np.radians(pitch)))
    fwd = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    # a very distant point at camera height sits on the horizon
    far = cam.position + 1e7 * fwd
    assert cam.project(cam.to_camera(far[None]))[0, 1] == pytest.approx(spec.horizon_y, abs=1e-3)
    # a ground point D metres ahead is seen atan(h / D) below the horizon direction
    ground = cam.position + 15.0 * fwd - np.array([0.0, 0.0, spec.mount_height])
    v = cam.project(cam.to_camera(ground[None]))[0, 1]
    angle = np.arctan(spec.mount_height / 15.0) - np.radians(pitch)
    assert v == pytest.approx(spec.height / 2 + spec.focal_px * np.tan(angle))
    if pitch > 0:
        assert spec.horizon_y < spec.height / 2, "pitching down raises the horizon"


def _clip(poly: np.ndarray, near: float, f: float = 100.0) -> np.ndarray:
    """clip_project with centre (0, 0): pixel vertices as floats."""
    out = np.zeros((2 * len(poly), 2), np.int32)
    m = clip_project(poly, len(poly), near, f, 0.0, 0.0, out, 0, np.zeros((2 * len(poly), 3)))
    return out[:m] / float(1 << SHIFT)


def test_clip_project_clips_a_polygon_crossing_the_near_plane() -> None:
    near = 0.5
    square = np.array([[-1.0, 0.0, 0.1], [1.0, 0.0, 0.1], [1.0, 0.0, 4.0], [-1.0, 0.0, 4.0]])
    out = _clip(square, near)
    assert len(out) == 4
    # the cut points lie on the original edges at z = near: x = f * (+-1) / near
    assert sorted(out[:, 0].tolist()) == pytest.approx([-200.0, -25.0, 25.0, 200.0])
    tri = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 2.0], [-1.0, 0.0, 2.0]])  # one vertex behind
    out = _clip(tri, near)
    assert len(out) == 4
    assert out[:, 0].min() == pytest.approx(-50.0) and out[:, 0].max() == pytest.approx(50.0)


def test_clip_project_keeps_polygons_in_front_and_drops_those_behind() -> None:
    front = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 2.0], [0.0, 1.0, 4.0]])
    assert _clip(front, 0.5) == pytest.approx(np.array([[0.0, 0.0], [50.0, 0.0], [0.0, 25.0]]))
    assert len(_clip(front - np.array([0.0, 0.0, 5.0]), 0.5)) == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"width": 8}, "width, height"),
        ({"height": 5000}, "width, height"),
        ({"fov_deg": 5.0}, "fov_deg"),
        ({"fov_deg": 170.0}, "fov_deg"),
        ({"pitch_deg": 60.0}, "pitch_deg"),
        ({"pitch_deg": -40.0}, "pitch_deg"),
        ({"mount_height": 0.1}, "mount_height"),
    ],
)
def test_camera_spec_rejects_bad_values(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CameraSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs,match",
    [({"near": 0.0}, "near"), ({"near": -1.0}, "near"), ({"far": 0.3}, "far")],
)
def test_camera_spec_rejects_bad_clip_distances(kwargs: dict[str, float], match: str) -> None:
    """near must be > 0 (projection divides by z >= near) and far > near."""
    with pytest.raises(ValueError, match=match):
        CameraSpec(**kwargs)  # type: ignore[arg-type]
