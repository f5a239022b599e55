"""Ego kinematic bicycle and oriented-box collision (separating-axis test)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.types import EgoState
from sim.world.actors import (
    MAX_ACCEL,
    MAX_BRAKE,
    MAX_STEER,
    ActorTable,
    box_corners,
    boxes_overlap,
    step_bicycle,
)

DT = 1.0 / 15.0


def _ego(speed: float = 10.0, yaw: float = 0.0) -> EgoState:
    return EgoState(x=0.0, y=0.0, yaw=yaw, speed=speed)


@pytest.mark.parametrize("yaw", [0.0, 0.7, -2.5])
def test_straight_line_distance_is_v_times_t(yaw: float) -> None:
    ego = _ego(12.0, yaw)
    for _ in range(45):
        step_bicycle(ego, 0.0, 0.0, DT)
    t = 45 * DT
    assert ego.x == pytest.approx(12.0 * t * np.cos(yaw))
    assert ego.y == pytest.approx(12.0 * t * np.sin(yaw))
    assert ego.yaw == pytest.approx(yaw)
    assert ego.speed == pytest.approx(12.0)


def test_constant_acceleration_gives_v0_t_plus_half_a_t2() -> None:
    ego = _ego(5.0)
    for _ in range(30):
        step_bicycle(ego, 0.0, 2.0, DT)
    t = 30 * DT
    assert ego.speed == pytest.approx(5.0 + 2.0 * t)
    assert ego.x == pytest.approx(5.0 * t + 0.5 * 2.0 * t * t)
    assert ego.accel == pytest.approx(2.0)


@pytest.mark.parametrize("steer", [0.05, 0.2, -0.4])
def test_constant_steer_drives_a_circle_of_radius_L_over_tan_delta(steer: float) -> None:  # noqa: N802
    ego = _ego(8.0)
    radius = ego.wheelbase / np.tan(abs(steer))
    centre = np.array([0.0, np.sign(steer) * radius])  # to the left for steer > 0
    pts = []
    for _ in range(300):
        step_bicycle(ego, steer, 0.0, 0.01)
        pts.append((ego.x, ego.y))
    r = np.hypot(*(np.array(pts) - centre).T)
    assert r == pytest.approx(np.full(r.size, radius), rel=1e-3)
    assert ego.yaw == pytest.approx(8.0 * 3.0 / radius * np.sign(steer), rel=1e-9)


def test_speed_never_negative_under_braking() -> None:
    ego = _ego(3.0)
    xs = []
    for _ in range(40):
        step_bicycle(ego, 0.0, -1.0e3, DT)
        assert ego.speed >= 0.0
        xs.append(ego.x)
    assert ego.speed == 0.0
    assert np.all(np.diff(xs) >= 0.0), "braking never drives the car backwards"
    # stopping distance with the clipped brake: v^2 / (2 * MAX_BRAKE)
    assert xs[-1] == pytest.approx(3.0**2 / (2 * MAX_BRAKE), rel=0.05)


def test_controls_are_clipped_to_the_limits() -> None:
    ego = _ego(10.0)
    step_bicycle(ego, 5.0, 100.0, DT)
    assert ego.steer == MAX_STEER
    assert ego.accel == pytest.approx(MAX_ACCEL)
    step_bicycle(ego, -5.0, -100.0, DT)
    assert ego.steer == -MAX_STEER
    assert ego.accel == pytest.approx(-MAX_BRAKE)
    # a full-lock turn has the radius of MAX_STEER, not of the requested angle
    ego2 = _ego(10.0)
    step_bicycle(ego2, 5.0, 0.0, DT)
    assert ego2.yaw == pytest.approx(10.0 / ego2.wheelbase * np.tan(MAX_STEER) * DT)


def _box(x: float, y: float, yaw_deg: float, length: float = 4.0, width: float = 2.0
         ) -> np.ndarray:
    return box_corners(np.array([x]), np.array([y]), np.radians(np.array([yaw_deg])),
                       np.array([length]), np.array([width]))


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    ab, ba = bool(boxes_overlap(a, b)[0]), bool(boxes_overlap(b, a)[0])
    assert ab == ba, "the test is symmetric"
    return ab


def test_box_corners_are_counter_clockwise_from_front_left() -> None:
    c = _box(1.0, 2.0, 0.0)[0]
    assert c == pytest.approx(np.array([[3.0, 3.0], [-1.0, 3.0], [-1.0, 1.0], [3.0, 1.0]]))
    c90 = _box(0.0, 0.0, 90.0)[0]
    assert c90[0] == pytest.approx([-1.0, 2.0])  # front-left points up and to the left


def test_axis_aligned_overlap_and_separation() -> None:
    a = _box(0.0, 0.0, 0.0)
    assert _overlap(a, _box(3.9, 0.0, 0.0))
    assert not _overlap(a, _box(4.01, 0.0, 0.0))
    assert _overlap(a, _box(0.0, 1.99, 0.0))
    assert not _overlap(a, _box(0.0, 2.01, 0.0))
    assert _overlap(a, _box(0.0, 0.0, 0.0)), "identical boxes overlap"
    assert _overlap(a, _box(0.0, 0.0, 0.0, 1.0, 0.5)), "a box inside another overlaps"
    assert not _overlap(a, _box(4.001, 2.001, 0.0)), "corner to corner, just apart"


def test_rotated_45_degrees() -> None:
    a = _box(0.0, 0.0, 0.0, 2.0, 2.0)  # unit half-size square
    reach = 1.0 + np.sqrt(2.0)  # a 45 deg square of half-size 1 reaches sqrt(2) along x
    assert _overlap(a, _box(reach - 0.05, 0.0, 45.0, 2.0, 2.0))
    assert not _overlap(a, _box(reach + 0.05, 0.0, 45.0, 2.0, 2.0))
    # diagonal approach: corners of the rotated square point at the face of the other
    assert _overlap(a, _box(0.0, reach - 0.05, 45.0, 2.0, 2.0))
    assert not _overlap(a, _box(0.0, reach + 0.05, 45.0, 2.0, 2.0))


def test_bounding_boxes_overlap_but_oriented_boxes_do_not() -> None:
    """Two long thin boxes side by side at 45 deg: their axis-aligned bounds overlap
    a lot, only the boxes' own axes separate them."""
    a = _box(0.0, 0.0, 45.0, 10.0, 1.0)
    b = _box(1.5, -1.5, 45.0, 10.0, 1.0)
    lo_a, hi_a = a[0].min(0), a[0].max(0)
    lo_b, hi_b = b[0].min(0), b[0].max(0)
    assert np.all(lo_a < hi_b) and np.all(lo_b < hi_a)
    assert not _overlap(a, b)
    assert _overlap(a, _box(0.5, -0.5, 45.0, 10.0, 1.0))


def test_corner_poking_into_a_face_needs_the_other_boxes_axes() -> None:
    a = _box(0.0, 0.0, 0.0, 4.0, 4.0)  # square [-2, 2]^2
    tip = 2.0 - 0.1  # the 45 deg square's left corner reaches x = cx - sqrt(2)
    assert _overlap(a, _box(tip + np.sqrt(2.0), 0.0, 45.0, 2.0, 2.0))
    assert not _overlap(a, _box(2.0 + 0.1 + np.sqrt(2.0), 0.0, 45.0, 2.0, 2.0))


def test_overlap_is_vectorized_over_pairs() -> None:
    a = np.concatenate([_box(0, 0, 0), _box(0, 0, 0), _box(10, 10, 30)])
    b = np.concatenate([_box(1, 0, 10), _box(6, 0, 0), _box(10, 11, -60)])
    assert boxes_overlap(a, b).tolist() == [True, False, True]


def test_actor_table_copy_is_deep_and_yaw_follows_lateral_speed() -> None:
    t = ActorTable.empty(3)
    t.speed[:] = [10.0, 10.0, 0.0]
    t.v_lat[:] = [0.0, 1.0, 0.0]
    c = t.copy()
    c.speed[0] = 99.0
    assert t.speed[0] == 10.0
    assert t.yaw_rel == pytest.approx([0.0, np.arctan2(1.0, 10.0), 0.0])
    assert not t.active.any() and len(t) == 3
