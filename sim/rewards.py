"""Named reward terms and their weighted sum (`info["rewards"]` holds the raw terms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.types import Events
from sim.world.world import World

TTC_WARNING = 2.0
"""Time to collision below which the `ttc` term fires [s]."""


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

    @classmethod
    def from_dict(cls, values: dict[str, float] | None) -> RewardWeights:
        values = dict(values or {})
        allowed = set(cls.__dataclass_fields__)
        bad = sorted(set(values) - allowed)
        if bad:
            raise ValueError(f"unknown reward term(s) {bad}; allowed: {sorted(allowed)}")
        return cls(**{k: float(v) for k, v in values.items()})


def reward_terms(world: World, events: Events, prev_accel: float) -> dict[str, float]:
    """Raw terms, each in about [-1, 1.2], computed after a step."""
    road, ego, dt = world.road, world.state.ego, world.dt
    limit = world.scenario.speed_limit
    herr = float(np.angle(np.exp(1j * (ego.yaw - float(road.heading_at(ego.s))))))
    v_along = ego.speed * np.cos(herr)
    lane = int(road.lane_of(ego.d))
    offset = abs(ego.d - float(road.lane_center(lane))) / (0.5 * road.lane_width)
    jerk = abs(ego.accel - prev_accel) / dt
    return {
        "progress": float(min(max(v_along / limit, -1.0), 1.2)),
        "collision": float(events.collision),
        "off_road": float(events.off_road),
        "lane_center": float(min(offset, 1.0)),
        "overspeed": float(max(0.0, ego.speed - limit) / limit),
        "comfort": float(min(jerk / 10.0, 1.0)),
        "ttc": float(events.min_ttc < TTC_WARNING),
    }


def total_reward(terms: dict[str, float], weights: RewardWeights) -> float:
    return float(sum(getattr(weights, k) * v for k, v in terms.items()))
