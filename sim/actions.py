"""Action spaces and the low-level controller that turns them into ego controls.

- continuous: Box([-1, 1]^2) = (steer, accel); steer * MAX_STEER is the wheel angle,
  accel > 0 scales MAX_ACCEL, accel < 0 scales MAX_BRAKE.
- meta: Discrete(5) = LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER (HighwayEnv order),
  tracked by pure pursuit on the target lane centre and a PI speed controller.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from sim.types import EgoState
from sim.world.actors import MAX_ACCEL, MAX_BRAKE, MAX_STEER
from sim.world.road import Road

META_ACTIONS: tuple[str, ...] = ("LANE_LEFT", "IDLE", "LANE_RIGHT", "FASTER", "SLOWER")
LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER = range(len(META_ACTIONS))
SPEED_STEP = 2.5
"""Target-speed change of one FASTER / SLOWER [m/s]."""
META_MIN_LOOKAHEAD = 4.0
"""Shortest pure-pursuit lookahead of the meta controller [m] (the lookahead is the speed
x 1 s above it): short enough to steer out from behind a stopped car at a crawl."""


def action_space(action_type: str) -> spaces.Space:
    if action_type == "continuous":
        return spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    if action_type == "meta":
        return spaces.Discrete(len(META_ACTIONS))
    raise ValueError(f"action_type={action_type!r}; allowed: 'continuous', 'meta'")


CONTINUOUS_SPACE = "Box(-1, 1, (2,)) = (steer, accel)"
META_SPACE = f"Discrete(5) = {', '.join(f'{i} {n}' for i, n in enumerate(META_ACTIONS))}"


def shown(value: object, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, for error messages."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still shown
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def continuous_action(action: object, shape: tuple[int, ...] = (2,)) -> np.ndarray:
    """`action` as a float64 array of `shape` (steer, accel on the last axis), or
    ValueError naming the action space: wrong shape, not numbers (bools, strings,
    objects, complex), NaN or inf."""
    try:
        raw = np.asarray(action)
    except (ValueError, TypeError):  # ragged nested lists
        raw = np.asarray(None)
    if raw.shape != shape:
        raise ValueError(f"continuous action must have shape {shape} (steer, accel) of "
                         f"{CONTINUOUS_SPACE}, got shape {raw.shape}: {shown(action)}")
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"continuous action must be numeric (of {CONTINUOUS_SPACE}), got "
                         f"dtype {raw.dtype}: {shown(action)}")
    a = raw.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"continuous action contains NaN or inf (of {CONTINUOUS_SPACE}): "
                         f"{shown(a.tolist())}")
    return a


def continuous_to_controls(action: np.ndarray) -> tuple[float, float]:
    """(steer, accel) in [-1, 1] -> (wheel angle [rad], acceleration [m/s^2]); values
    outside [-1, 1] are clipped."""
    steer, acc = np.clip(continuous_action(action), -1.0, 1.0)
    return float(steer * MAX_STEER), float(acc * (MAX_ACCEL if acc > 0 else MAX_BRAKE))


def meta_action(action: object) -> int:
    """`action` as an int in 0..4, or ValueError naming the action space.

    One integer: a Python or numpy int, a 0-d integer array, or a float holding a whole
    number; not a bool, a string, None, a list or an array with an axis."""
    value = action.item() if isinstance(action, np.ndarray) and action.shape == () else action
    ok = isinstance(value, int | np.integer | float | np.floating) and not isinstance(
        value, bool | np.bool_)
    if ok and isinstance(value, float | np.floating):
        ok = bool(np.isfinite(value)) and float(value).is_integer()
    if not ok or not 0 <= int(value) < len(META_ACTIONS):  # type: ignore[call-overload,arg-type]
        raise ValueError(f"meta action must be one integer in 0..{len(META_ACTIONS) - 1} "
                         f"of {META_SPACE}; got {shown(action)}")
    return int(value)  # type: ignore[call-overload,arg-type]


def pure_pursuit(ego: EgoState, road: Road, target_d: float, lookahead: float) -> float:
    """Wheel angle [rad] steering the rear axle toward the point `lookahead` m ahead
    on the line d = target_d."""
    px, py, _ = road.to_world(ego.s + lookahead, target_d)
    dx, dy = float(px) - ego.x, float(py) - ego.y
    c, s = np.cos(ego.yaw), np.sin(ego.yaw)
    lx, ly = c * dx + s * dy, -s * dx + c * dy
    dist2 = max(lx * lx + ly * ly, 1e-6)
    steer = float(np.arctan(2.0 * ego.wheelbase * ly / dist2))
    return min(max(steer, -MAX_STEER), MAX_STEER)


@dataclass
class SpeedController:
    """PI controller on speed; its memory is part of the episode state."""

    kp: float = 0.8
    ki: float = 0.1
    integral: float = 0.0

    def __call__(self, speed: float, target: float, dt: float) -> float:
        err = target - speed
        self.integral = min(max(self.integral + err * dt, -5.0), 5.0)
        return min(max(self.kp * err + self.ki * self.integral, -MAX_BRAKE), MAX_ACCEL)


@dataclass
class MetaController:
    """Tracks a target lane and a target speed chosen by meta-actions."""

    target_lane: int
    target_speed: float
    speed_pid: SpeedController

    def apply(self, action: int, road: Road, speed_limit: float) -> None:
        a = int(action)
        if not 0 <= a < len(META_ACTIONS):
            raise ValueError(f"meta action {action!r} out of range 0..{len(META_ACTIONS) - 1}")
        if a == LANE_LEFT:
            self.target_lane = min(self.target_lane + 1, road.n_lanes - 1)
        elif a == LANE_RIGHT:
            self.target_lane = max(self.target_lane - 1, 0)
        elif a == FASTER:
            self.target_speed = min(self.target_speed + SPEED_STEP, 1.2 * speed_limit)
        elif a == SLOWER:
            self.target_speed = max(self.target_speed - SPEED_STEP, 0.0)

    def controls(self, ego: EgoState, road: Road, dt: float) -> tuple[float, float]:
        lookahead = max(META_MIN_LOOKAHEAD, 1.0 * ego.speed)
        steer = pure_pursuit(ego, road, float(road.lane_center(self.target_lane)), lookahead)
        return steer, self.speed_pid(ego.speed, self.target_speed, dt)
