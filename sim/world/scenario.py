"""Seeded placement of actors and roadside clutter.

All functions draw from the generator they are given, so a world built from the same
scenario seed, and stepped with the same actions, places the same actors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.config import Scenario
from sim.types import CAR, CONE, CYCLIST, PEDESTRIAN, TRUCK, EgoState
from sim.world.actors import BODY_SHAPES, SHAPE_NAMES, SHAPE_SIZE, ActorTable
from sim.world.road import Road

CAR_COLORS = np.array(
    [[200, 200, 205], [30, 30, 35], [150, 20, 25], [20, 50, 140], [230, 230, 225],
     [90, 95, 100], [180, 140, 40], [30, 100, 60], [120, 70, 40], [210, 90, 20]], np.uint8,
)
CLOTHES = np.array(
    [[40, 40, 90], [160, 30, 40], [220, 200, 60], [30, 120, 60], [200, 200, 200],
     [60, 60, 60], [230, 120, 30], [90, 40, 120]], np.uint8,
)

CONE_SPACING = 4.0
"""Spacing of the cones of a taper along s [m]."""

CLUTTER_KINDS: tuple[str, ...] = ("tree", "pole", "building", "sign", "bush")


@dataclass(frozen=True)
class Clutter:
    """Unlabeled static roadside objects (a detector must learn to ignore them)."""

    kind: np.ndarray
    """(C,) int64 index into CLUTTER_KINDS."""
    s: np.ndarray
    """(C,) [m]"""
    d: np.ndarray
    """(C,) [m]"""
    size: np.ndarray
    """(C, 3) length, width, height [m]."""
    color: np.ndarray
    """(C, 3) uint8 RGB."""
    rail_sides: tuple[int, ...]
    """Sides with a guard rail along the whole road: -1 right, +1 left."""


def make_clutter(rng: np.random.Generator, road: Road, style: str) -> Clutter:
    """Roadside objects in a band beyond the shoulders."""
    spacing = {"sparse": 45.0, "rural": 14.0, "urban": 16.0}[style]
    n = int(road.s_max / spacing) * 2
    s = rng.uniform(road.s[0], road.s_max, n)
    side = rng.choice([-1.0, 1.0], n)
    edge = road.paved_half_width
    if style == "urban":
        kind = rng.choice([1, 2, 3, 0], n, p=[0.3, 0.45, 0.1, 0.15])
    elif style == "rural":
        kind = rng.choice([0, 1, 3, 4], n, p=[0.6, 0.15, 0.05, 0.2])
    else:
        kind = rng.choice([0, 1, 3, 4], n, p=[0.3, 0.35, 0.15, 0.2])
    setback = np.where(kind == 2, rng.uniform(6.0, 12.0, n), rng.uniform(1.2, 6.0, n))
    setback = np.where(kind == 1, rng.uniform(0.8, 1.6, n), setback)
    d = side * (edge + setback)
    size = np.stack([
        np.select([kind == 2, kind == 0, kind == 4, kind == 3],
                  [rng.uniform(10, 25, n), 2.8, 1.6, 0.15], 0.3),
        np.select([kind == 2, kind == 0, kind == 4, kind == 3],
                  [rng.uniform(8, 12, n), 2.8, 1.6, 1.2], 0.3),
        np.select(
            [kind == 2, kind == 0, kind == 1, kind == 3, kind == 4],
            [rng.uniform(6, 20, n), rng.uniform(5, 9, n), rng.uniform(6, 9, n), 2.8, 1.0],
            1.0,
        ),
    ], axis=1)
    palette = np.array(
        [[40, 110, 45], [120, 120, 125], [170, 150, 130], [30, 90, 170], [60, 120, 50]],
        np.uint8,
    )
    jitter = rng.integers(-25, 26, (n, 3))
    color = np.clip(palette[kind].astype(int) + jitter, 0, 255).astype(np.uint8)
    building_color = rng.choice([0, 1, 2], n)
    walls = np.array([[170, 150, 130], [150, 90, 70], [200, 195, 180]], np.uint8)
    color[kind == 2] = walls[building_color[kind == 2]]
    rails: tuple[int, ...] = ()
    if style == "sparse":
        rails = (-1,) if rng.random() < 0.6 else ()
    order = np.argsort(s)
    return Clutter(
        kind=kind[order].astype(np.int64), s=s[order], d=d[order], size=size[order],
        color=color[order], rail_sides=rails,
    )


def _set_shape(actors: ActorTable, i: int, rng: np.random.Generator, cls: int) -> None:
    name = BODY_SHAPES[cls][int(rng.integers(len(BODY_SHAPES[cls])))]
    length, width, height = SHAPE_SIZE[name]
    scale = rng.uniform(0.95, 1.05)
    actors.cls[i] = cls
    actors.shape[i] = SHAPE_NAMES.index(name)
    actors.length[i], actors.width[i], actors.height[i] = length * scale, width, height * scale
    if cls in (PEDESTRIAN, CYCLIST):
        actors.color[i] = CLOTHES[rng.integers(len(CLOTHES))]
    elif cls == CONE:
        actors.color[i] = (250, 110, 20)
    else:
        actors.color[i] = CAR_COLORS[rng.integers(len(CAR_COLORS))]


def slot_is_free(
    actors: ActorTable, ego: EgoState, road: Road, s: float, d: float, length: float,
    width: float, margin: float, speed: float = 0.0,
) -> bool:
    """No active actor nor the ego within `margin` m of the footprint along its lane,
    plus the distance needed to brake gently (3 m/s^2) to a slower actor ahead or for a
    faster one behind."""
    half = 0.5 * (actors.width + width) + 0.5
    changing_to = np.where(actors.target_lane >= 0, road.lane_center(actors.target_lane), np.inf)
    near_lat = (np.abs(actors.d - d) < half) | (np.abs(changing_to - d) < half)
    ahead = actors.s > s
    closing = np.where(ahead, speed - np.abs(actors.speed), np.abs(actors.speed) - speed)
    need = margin + np.maximum(closing, 0.0) ** 2 / 6.0
    gap = np.abs(actors.s - s) - 0.5 * (actors.length + length)
    if (actors.active & near_lat & (gap < need)).any():
        return False
    ego_lat = abs(ego.d - d) < 0.5 * (ego.width + width) + 0.5
    ego_need = margin + 10.0 + max(0.0, (ego.speed - speed) * (1 if s > ego.s else -1)) ** 2 / 6.0
    return not (ego_lat and abs(ego.s - s) - 0.5 * (ego.length + length) < ego_need)


def place_vehicle(
    actors: ActorTable, i: int, rng: np.random.Generator, road: Road, ego: EgoState,
    scenario: Scenario, s_range: tuple[float, float], track_id: int,
) -> bool:
    """Put a moving car or truck in row i at a free slot in s_range; False if none found."""
    cls = TRUCK if rng.random() < scenario.truck_fraction else CAR
    _set_shape(actors, i, rng, cls)
    limit = scenario.speed_limit
    v0 = limit * (rng.uniform(0.75, 0.9) if cls == TRUCK else rng.uniform(0.8, 1.1))
    actors.desired_speed[i] = v0  # marks the row as a moving vehicle, so a failed
    # placement is retried by the world's recycling
    for _ in range(20):
        s = float(rng.uniform(*s_range))
        lane = int(rng.integers(road.n_lanes))
        d = float(road.lane_center(lane))
        if slot_is_free(actors, ego, road, s, d, actors.length[i], actors.width[i],
                        8.0 + 0.8 * v0, 0.9 * v0):
            actors.s[i], actors.d[i], actors.target_lane[i] = s, d, lane
            actors.speed[i], actors.desired_speed[i] = 0.9 * v0, v0
            actors.headway[i] = rng.uniform(1.2, 1.8)
            actors.v_lat[i] = actors.accel[i] = actors.lc_timer[i] = 0.0
            actors.cross_state[i] = 0
            actors.track_id[i] = track_id
            actors.active[i] = True
            return True
    actors.active[i] = False
    return False


def place_cyclist(
    actors: ActorTable, i: int, rng: np.random.Generator, road: Road, ego: EgoState,
    s_range: tuple[float, float], track_id: int,
) -> bool:
    _set_shape(actors, i, rng, CYCLIST)
    actors.desired_speed[i] = 5.0  # a moving row, retried if it cannot be placed now
    # on a one-lane road cyclists ride on the shoulder, elsewhere in the right lane
    d = float(road.boundary_d(0) + (-0.5 if road.n_lanes == 1 else 0.9))
    for _ in range(8):
        s = float(rng.uniform(*s_range))
        if slot_is_free(actors, ego, road, s, d, actors.length[i], actors.width[i], 15.0):
            v0 = rng.uniform(4.0, 7.0)
            actors.s[i], actors.d[i], actors.target_lane[i] = s, d, 0
            actors.speed[i], actors.desired_speed[i], actors.headway[i] = v0, v0, 1.5
            actors.v_lat[i] = actors.accel[i] = actors.lc_timer[i] = 0.0
            actors.track_id[i], actors.active[i] = track_id, True
            return True
    actors.active[i] = False
    return False


def place_pedestrian(
    actors: ActorTable, i: int, rng: np.random.Generator, road: Road, scenario: Scenario,
    s_range: tuple[float, float], track_id: int,
) -> None:
    _set_shape(actors, i, rng, PEDESTRIAN)
    side = rng.choice([-1.0, 1.0])
    actors.s[i] = rng.uniform(*s_range)
    actors.d[i] = side * (road.paved_half_width + rng.uniform(0.8, 2.0))
    crosses = rng.random() < scenario.crossing_fraction
    actors.cross_state[i] = 1 if crosses else 0
    actors.speed[i] = 0.0 if crosses else side * rng.uniform(0.8, 1.6)
    actors.desired_speed[i] = 0.0
    actors.v_lat[i] = actors.accel[i] = 0.0
    actors.target_lane[i] = -1
    actors.track_id[i], actors.active[i] = track_id, True


def place_static(
    actors: ActorTable, rows: list[int], rng: np.random.Generator, road: Road, ego: EgoState,
    s0: float, stalled: bool, track_ids: list[int],
) -> None:
    """A stalled vehicle in one row, or a taper of cones closing an edge lane in several."""
    lane = 0 if rng.random() < 0.6 else road.n_lanes - 1
    if road.n_lanes == 1:
        lane = 0  # cones go on the left shoulder, away from cyclists on the right one
    for k, (i, tid) in enumerate(zip(rows, track_ids, strict=True)):
        if stalled:
            _set_shape(actors, i, rng, CAR if rng.random() < 0.7 else TRUCK)
            actors.s[i] = s0
            actors.d[i] = road.lane_center(lane) + rng.uniform(-0.3, 0.3)
        else:
            _set_shape(actors, i, rng, CONE)
            left = lane == road.n_lanes - 1 and (lane > 0 or road.n_lanes == 1)
            outer = road.boundary_d(road.n_lanes if left else 0)
            inward = -1.0 if left else 1.0
            if road.n_lanes == 1:  # never close the only lane: cones stand on the shoulder
                actors.d[i] = outer - inward * 0.5
            else:
                frac = min(1.0, k / max(1, len(rows) - 3))
                actors.d[i] = outer + inward * (0.3 + frac * (road.lane_width - 0.6))
            actors.s[i] = s0 + CONE_SPACING * k
        actors.speed[i] = actors.desired_speed[i] = actors.v_lat[i] = 0.0
        actors.target_lane[i] = -1
        actors.track_id[i], actors.active[i] = tid, True
