"""IDM car following, MOBIL lane changes and pedestrians over the actor table.

Actor arrays may carry a leading batch axis (B worlds stepped at once). The NPC vehicle
step runs compiled (`sim.world.traffic_kernels.vehicle_step`, which also holds the
model's constants); `step_vehicles` prepares its inputs with numpy. The pedestrians, IDM
itself (`idm`, also used by the autopilot) and the lane geometry stay numpy. The ego is
a participant NPCs follow and yield to but never steer.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from sim.types import CYCLIST, PEDESTRIAN, TRUCK, EgoState
from sim.world.actors import ActorTable, frenet_extents
from sim.world.traffic_kernels import (
    B_SAFE,
    COMFORT_DECEL,
    KEEP_RIGHT_BIAS,
    LAT_SPEED,
    LC_COOLDOWN,
    LC_THRESHOLD,
    MAX_DECEL,
    MIN_GAP,
    POLITENESS,
    S0,
    vehicle_step,
)

__all__ = [  # the traffic model's constants live in traffic_kernels (compiled code)
    "B_SAFE",
    "COMFORT_DECEL",
    "KEEP_RIGHT_BIAS",
    "LAT_SPEED",
    "LC_COOLDOWN",
    "LC_THRESHOLD",
    "MAX_DECEL",
    "MIN_GAP",
    "POLITENESS",
    "S0",
    "PED_SPEED",
    "MOBIL_EVERY",
    "Lanes",
    "idm",
    "lane_occupancy",
    "step_vehicles",
    "step_pedestrians",
]

PED_SPEED = 1.4
"""Walking speed [m/s]."""


def idm(
    v: np.ndarray, v0: np.ndarray, headway: np.ndarray, a_max: np.ndarray,
    gap: np.ndarray, dv: np.ndarray, s0: float = S0,
) -> np.ndarray:
    """Intelligent Driver Model acceleration; gap = inf means a free road."""
    s_star = s0 + np.maximum(0.0, v * headway + v * dv / (2.0 * np.sqrt(a_max * COMFORT_DECEL)))
    free = 1.0 - (v / np.maximum(v0, 0.1)) ** 4
    interaction = (s_star / np.maximum(gap, 0.1)) ** 2
    return np.maximum(a_max * (free - interaction), -MAX_DECEL)


class Lanes(Protocol):
    """Lane geometry the traffic functions need: a `Road`, or per-world arrays shaped
    (B, 1) for a batch of worlds (see `sim.world.batch`)."""

    @property
    def n_lanes(self) -> Any: ...

    @property
    def half_width(self) -> Any: ...

    @property
    def lane_width(self) -> Any: ...

    @property
    def shoulder_width(self) -> Any: ...

    @property
    def paved_half_width(self) -> Any: ...

    def lane_of(self, d: np.ndarray) -> np.ndarray: ...

    def lane_center(self, lane: np.ndarray) -> np.ndarray: ...

    def boundaries(self) -> np.ndarray: ...


def lane_occupancy(lanes: Lanes, d: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(..., E, L) bool: which lanes each footprint overlaps."""
    bounds = lanes.boundaries()[..., None, :]  # (..., 1, L + 1)
    lo = (d - 0.5 * width)[..., None]
    hi = (d + 0.5 * width)[..., None]
    return (lo < bounds[..., 1:]) & (hi > bounds[..., :-1])


def _with_ego(rows: np.ndarray, ego_value: Any) -> np.ndarray:
    """Append the ego's value as the last column of (..., N) rows."""
    out = np.empty(rows.shape[:-1] + (rows.shape[-1] + 1,), dtype=rows.dtype)
    out[..., :-1] = rows
    out[..., -1] = ego_value
    return out


def _a_max(actors: ActorTable) -> np.ndarray:
    return np.where(actors.cls == TRUCK, 1.0, np.where(actors.cls == CYCLIST, 1.0, 1.8))


MOBIL_EVERY = 3
"""Lane-change decisions are taken every this many steps (5 Hz at 15 Hz physics)."""


def step_vehicles(
    actors: ActorTable, lanes: Lanes, ego: EgoState, dt: float,
    decide: bool | np.ndarray = True,
) -> None:
    """One IDM step for every moving vehicle, in place; with `decide`, MOBIL may also
    start lane changes. Arrays may carry a leading batch axis (one world per row); then
    `decide` may be a (B,) array, one per world. The loops run compiled
    (`sim.world.traffic_kernels.vehicle_step`); this prepares their inputs."""
    veh = actors.is_vehicle
    if not veh.any():
        return
    one = actors.s.ndim == 1
    n_worlds = 1 if one else actors.s.shape[0]

    def rows(a: Any) -> np.ndarray:  # (B, N) view of an actor column
        return a[None] if one else a

    def per_world(x: Any, dtype: Any = np.float64) -> np.ndarray:  # (B,) of a scalar/column
        return np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype).reshape(-1),
                                                    (n_worlds,)))

    # IDM's free-road term 1 - (v / v0)^4 of every row, and of the ego standing in as a
    # follower (v0 = its speed + 5), with numpy's power (the kernel's would round apart)
    free = 1.0 - (np.abs(actors.speed) / np.maximum(actors.desired_speed, 0.1)) ** 4
    ego_v = per_world(ego.speed)
    ego_free = 1.0 - (ego_v / np.maximum(ego_v + 5.0, 0.1)) ** 4
    ext_s, ext_d = frenet_extents(actors.length, actors.width, actors.yaw_rel)
    ego_len, ego_wid = per_world(ego.length), per_world(ego.width)
    e_s, e_d = frenet_extents(ego_len, ego_wid, np.zeros(n_worlds))
    # new arrays, as the array formulation made: whoever holds the old ones keeps them
    out = {k: np.array(rows(getattr(actors, k)), order="C")
           for k in ("s", "d", "speed", "v_lat", "accel", "target_lane", "lc_timer")}
    vehicle_step(
        out["s"], out["d"], out["speed"], out["v_lat"], out["accel"], out["target_lane"],
        out["lc_timer"], rows(actors.length), rows(actors.width), rows(actors.headway),
        rows(actors.cls), rows(actors.active), rows(veh), rows(lanes.lane_of(actors.d)),
        rows(_a_max(actors)), rows(free), ego_free, rows(ext_s), rows(ext_d),
        per_world(ego.s), per_world(ego.d), per_world(ego.speed), ego_len, ego_wid,
        per_world(ego.accel), e_s, e_d, per_world(lanes.n_lanes, np.int64),
        per_world(lanes.lane_width), per_world(lanes.half_width),
        per_world(lanes.paved_half_width - lanes.shoulder_width),
        per_world(decide, np.bool_), float(dt))
    for k, v in out.items():
        setattr(actors, k, v[0] if one else v)


def _worlds(mask: np.ndarray) -> Any:
    """Index of the worlds (rows) where `mask` holds anywhere, for a batched (B, N) mask;
    all of it (`...`) for one world's (N,) mask."""
    return np.flatnonzero(mask.any(axis=-1)) if mask.ndim == 2 else Ellipsis


def step_pedestrians(actors: ActorTable, lanes: Lanes, ego: EgoState, dt: float) -> None:
    """Pedestrians walk along the kerb; those waiting cross when the ego nears and
    no NPC vehicle is close (the ego must react; NPCs are given room)."""
    ped = actors.active & (actors.cls == PEDESTRIAN)
    if not ped.any():
        return
    edge = lanes.paved_half_width + 0.8
    ego_s = np.asarray(ego.s)[..., None]
    waiting = ped & (actors.cross_state == 1)
    near_ego = (actors.s - ego_s > 18.0) & (actors.s - ego_s < 55.0)
    if (waiting & near_ego).any():
        w = _worlds(waiting & near_ego)  # batched: only worlds where one may start
        s, v = actors.s[w], actors.speed[w]
        veh = actors.is_vehicle[w][..., None, :]
        ds = s[..., None, :] - s[..., :, None]  # vehicle s minus pedestrian s
        reach = veh & (ds < 4.0) & (ds > -(25.0 + 4.0 * v[..., None, :]))
        start = np.zeros_like(waiting)
        start[w] = waiting[w] & near_ego[w] & ~reach.any(axis=-1)
        actors.cross_state = np.where(start, 2, actors.cross_state)
        actors.v_lat = np.where(start, -np.sign(actors.d) * PED_SPEED, actors.v_lat)
        actors.speed = np.where(start, 0.0, actors.speed)
    crossing = ped & (actors.cross_state == 2)
    if crossing.any():  # a crossing pedestrian waits while a vehicle stands in its way
        w = _worlds(crossing)
        ego_s, ego_d = np.asarray(ego.s)[w], np.asarray(ego.d)[w]
        vs = _with_ego(actors.s[w], ego_s)[..., None, :]
        vd = _with_ego(actors.d[w], ego_d)[..., None, :]
        other = _with_ego(actors.active[w] & (actors.cls[w] != PEDESTRIAN), True)[..., None, :]
        half_l = 0.5 * _with_ego(actors.length[w], np.asarray(ego.length)[w])[..., None, :] + 0.8
        half_w = 0.5 * _with_ego(actors.width[w], np.asarray(ego.width)[w])[..., None, :] + 1.0
        ahead = (vd - actors.d[w][..., :, None]) * np.sign(actors.v_lat[w])[..., :, None]
        near = np.abs(vs - actors.s[w][..., :, None]) < half_l
        blocked = other & near & (ahead > 0) & (ahead < half_w)
        stop = np.zeros_like(crossing)
        stop[w] = crossing[w] & blocked.any(axis=-1)
    else:
        stop = crossing
    done = crossing & (np.abs(actors.d) > edge) & (np.sign(actors.d) == np.sign(actors.v_lat))
    actors.cross_state = np.where(done, 0, actors.cross_state)
    actors.speed = np.where(done, PED_SPEED * np.sign(actors.d), actors.speed)
    actors.v_lat = np.where(done, 0.0, actors.v_lat)
    actors.s = np.where(ped, actors.s + actors.speed * dt, actors.s)
    actors.d = np.where(ped & ~stop, actors.d + actors.v_lat * dt, actors.d)
