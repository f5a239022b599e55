"""Named reward terms and their weighted sum (`info["rewards"]` holds the raw terms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.types import Events, check_number
from sim.world.world import World, min_headway, min_side_gap

TTC_WARNING = 2.0
"""Time to collision below which the `ttc` term fires [s]."""
HEADWAY_TARGET = 1.0
"""Time gap to what is ahead in the ego's path below which the `headway` term grows
from 0 (at the target) to 1 (touching) [s]."""
SIDE_TARGET = 0.5
"""Lateral clearance to an actor beside the ego below which the `side` term grows from 0
(at the target) to 1 (touching) [m]. Two cars centred in neighbouring 3 m lanes keep
about 1 m."""
MAX_WEIGHT = 1e6
"""Largest magnitude of a reward weight (terms are about [-1, 1.2])."""


@dataclass(frozen=True)
class RewardWeights:
    """Weight of each term; the reward is sum(weight * term)."""

    progress: float = 1.0
    collision: float = -10.0
    off_road: float = -10.0
    lane_center: float = -0.2
    overspeed: float = -1.0
    comfort: float = -0.05
    ttc: float = -0.3
    headway: float = 0.0
    """Tailgating (time gap under HEADWAY_TARGET); off by default, the planner recipes
    weigh it."""
    side: float = 0.0
    """Crowding an actor beside the ego (lateral clearance under SIDE_TARGET: a lane
    change into a car alongside, squeezing past a stalled car); off by default."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            check_number(f"reward_weights.{name}", getattr(self, name), -MAX_WEIGHT, MAX_WEIGHT)

    @classmethod
    def from_dict(cls, values: dict[str, float] | None) -> RewardWeights:
        if values is not None and not isinstance(values, dict):
            raise TypeError(f"reward_weights must be a dict of term -> weight or None, "
                            f"got {type(values).__name__}")
        values = dict(values or {})
        allowed = set(cls.__dataclass_fields__)
        bad = sorted(map(str, set(values) - allowed))
        if bad:
            raise ValueError(f"unknown reward term(s) {bad}; allowed: {sorted(allowed)}")
        for k, v in values.items():
            check_number(f"reward_weights.{k}", v, -MAX_WEIGHT, MAX_WEIGHT)
        return cls(**{k: float(v) for k, v in values.items()})


def reward_terms(world: World, events: Events, prev_accel: float) -> dict[str, float]:
    """Raw terms, each in about [-1, 1.2], computed after a step."""
    road, ego = world.road, world.state.ego
    lane = road.lane_of(ego.d)
    terms = term_arrays(
        speed=np.asarray(ego.speed), yaw=np.asarray(ego.yaw),
        heading=np.asarray(road.heading_at(ego.s)), d=np.asarray(ego.d),
        lane_center=np.asarray(road.lane_center(lane)),
        lane_width=np.asarray(road.lane_width), accel=np.asarray(ego.accel),
        prev_accel=np.asarray(prev_accel), dt=world.dt,
        limit=np.asarray(world.scenario.speed_limit), collision=np.asarray(events.collision),
        off_road=np.asarray(events.off_road), min_ttc=np.asarray(events.min_ttc),
        min_headway=np.asarray(min_headway(world.state.actors, ego)),
        min_side_gap=np.asarray(min_side_gap(world.state.actors, ego)))
    return {k: float(v) for k, v in terms.items()}


def term_arrays(*, speed: np.ndarray, yaw: np.ndarray, heading: np.ndarray, d: np.ndarray,
                lane_center: np.ndarray, lane_width: np.ndarray, accel: np.ndarray,
                prev_accel: np.ndarray, dt: float, limit: np.ndarray, collision: np.ndarray,
                off_road: np.ndarray, min_ttc: np.ndarray, min_headway: np.ndarray,
                min_side_gap: np.ndarray) -> dict[str, np.ndarray]:
    """The terms of `reward_terms` for arrays of egos (one world each), element-wise."""
    herr = np.angle(np.exp(1j * (yaw - heading)))
    v_along = speed * np.cos(herr)
    offset = np.abs(d - lane_center) / (0.5 * lane_width)
    jerk = np.abs(accel - prev_accel) / dt
    return {
        "progress": np.minimum(np.maximum(v_along / limit, -1.0), 1.2),
        "collision": collision.astype(np.float64),
        "off_road": off_road.astype(np.float64),
        "lane_center": np.minimum(offset, 1.0),
        "overspeed": np.maximum(0.0, speed - limit) / limit,
        "comfort": np.minimum(jerk / 10.0, 1.0),
        "ttc": (min_ttc < TTC_WARNING).astype(np.float64),
        "headway": np.maximum(0.0, 1.0 - min_headway / HEADWAY_TARGET),
        "side": np.clip(1.0 - min_side_gap / SIDE_TARGET, 0.0, 1.0),
    }


def total_reward(terms: dict[str, Any], weights: RewardWeights) -> Any:
    """sum(weight * term): a float for one env's terms, an array for arrays of terms."""
    total = sum(getattr(weights, k) * v for k, v in terms.items())
    return total if isinstance(total, np.ndarray) else float(total)
