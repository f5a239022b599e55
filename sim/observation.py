"""The privileged `state` observation: ego, road geometry and the nearest actors.

A pure function of the world, with named features and fixed scales, so that a planner
trained on it can be read and debugged feature by feature.
"""

from __future__ import annotations

import numpy as np

from sim.types import CLASS_NAMES
from sim.world.actors import MAX_ACCEL, MAX_STEER
from sim.world.world import World

N_ACTORS = 8
"""Actors in the state vector (nearest first; absent slots are zeros)."""
EGO_FEATURES: tuple[str, ...] = (
    "speed/30", "accel/3", "steer/max", "lane_offset/lane_width", "heading_error",
    "lane/4", "n_lanes/5", "has_left_lane", "has_right_lane", "curv_0m*100", "curv_20m*100",
    "curv_40m*100", "curv_60m*100", "speed_limit/30", "route_left/1000",
)
ACTOR_FEATURES: tuple[str, ...] = (
    "present", "ds/100", "dd/10", "rel_speed/30", "length/10", "width/3",
) + tuple(f"is_{n}" for n in CLASS_NAMES)
STATE_FEATURES: tuple[str, ...] = EGO_FEATURES + tuple(
    f"actor{k}_{f}" for k in range(N_ACTORS) for f in ACTOR_FEATURES
)
STATE_DIM = len(STATE_FEATURES)
STATE_LIMIT = 10.0
"""Every feature is clipped to [-STATE_LIMIT, STATE_LIMIT]."""


def state_vector(world: World) -> np.ndarray:
    """(STATE_DIM,) float32 privileged observation of `world`."""
    road, ego, a = world.road, world.state.ego, world.state.actors
    lane = int(road.lane_of(ego.d))
    herr = float(np.angle(np.exp(1j * (ego.yaw - float(road.heading_at(ego.s))))))
    curv = road.curvature_at(ego.s + np.array([0.0, 20.0, 40.0, 60.0])) * 100.0
    ego_f = np.array([
        ego.speed / 30.0, ego.accel / MAX_ACCEL, ego.steer / MAX_STEER,
        (ego.d - float(road.lane_center(lane))) / road.lane_width, herr, lane / 4.0,
        road.n_lanes / 5.0, float(lane < road.n_lanes - 1), float(lane > 0), *curv,
        world.scenario.speed_limit / 30.0, (road.route_length - ego.s) / 1000.0,
    ])
    ds = a.s - ego.s
    near = np.flatnonzero(a.active & (ds > -40.0) & (ds < 120.0))
    near = near[np.argsort(np.abs(ds[near]), kind="stable")][:N_ACTORS]
    act = np.zeros((N_ACTORS, len(ACTOR_FEATURES)))
    k = near.size
    act[:k, 0] = 1.0
    act[:k, 1] = ds[near] / 100.0
    act[:k, 2] = (a.d[near] - ego.d) / 10.0
    act[:k, 3] = (a.speed[near] - ego.speed) / 30.0
    act[:k, 4] = a.length[near] / 10.0
    act[:k, 5] = a.width[near] / 3.0
    act[np.arange(k), 6 + a.cls[near]] = 1.0
    vec = np.concatenate([ego_f, act.reshape(-1)])
    return np.clip(vec, -STATE_LIMIT, STATE_LIMIT).astype(np.float32)
