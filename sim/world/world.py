"""The world: road, clutter, ego and actors, advanced one fixed step at a time.

All mutable state lives in one `WorldState` (ego, actor table, clock, the world's random
generator state), so `get_state()` / `set_state()` restore an episode exactly. The road
and clutter are rebuilt from the scenario seed, not stored.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.config import Scenario
from sim.types import CAR, CONE, CYCLIST, PEDESTRIAN, TRUCK, EgoState, Events, check_number
from sim.world.actors import (
    ActorTable,
    box_corners,
    boxes_overlap,
    frenet_extents,
    step_bicycle,
)
from sim.world.road import Road, make_road
from sim.world.scenario import (
    CONE_SPACING,
    Clutter,
    make_clutter,
    place_cyclist,
    place_pedestrian,
    place_static,
    place_vehicle,
)
from sim.world.traffic import MOBIL_EVERY, step_pedestrians, step_vehicles

BEHIND = 120.0
"""Actors further than this behind the ego are recycled [m]."""
AHEAD = 420.0
"""Smallest recycling distance ahead of the ego [m] (see `World.ahead`)."""
HARD_BRAKE = 4.0
"""Deceleration counted as a hard brake [m/s^2]."""
CONES_PER_GROUP = 8
RETRY_EVERY = 15
"""Steps between two attempts to place an actor that found no free slot."""
BROAD_MARGIN = 0.5
"""Slack of the Frenet broad phase for curvature and lane-change yaw [m]."""
MAX_DT = 0.5
"""Longest simulation step [s]; the physics and IDM are integrated with explicit steps."""
STATIC_GAP = 45.0
"""Smallest spacing of two static obstacles (cone tapers, stalled vehicles) [m]."""
EGO_MARGIN = 10.0
"""How far beyond the road's ends and its paved edges a state's ego may be [m]: the step
that ends an episode off the road overshoots the edge."""
ACTOR_MARGIN = 3.0
"""How far beyond the paved edges an active actor may be [m] (pedestrians walk up to
2 m beyond them)."""
POSE_TOLERANCE = 1.0
"""Largest disagreement between the ego's world pose and its Frenet s, d in a state [m]."""


def spawn_end(sc: Scenario) -> float:
    """Vehicles start in [-70 m, this] around the ego: room for ~45 m per vehicle and
    lane, so dense traffic fits."""
    return max(260.0, 45.0 * sc.n_vehicles / sc.n_lanes)


def _static_span(sc: Scenario) -> tuple[float, float]:
    """Where static obstacles are drawn along s [m] (then spread STATIC_GAP apart)."""
    return 90.0, max(120.0, min(600.0, sc.road_length - 50))


def placement_end(sc: Scenario) -> float:
    """The farthest s at which the world places an actor when it starts [m]. Dense
    traffic and many obstacles on a short road reach past the road's end."""
    n_static = sc.n_cone_groups + sc.n_stalled
    static_end = (_static_span(sc)[1] + STATIC_GAP * max(n_static - 1, 0)
                  + CONE_SPACING * (CONES_PER_GROUP - 1))
    return max(spawn_end(sc), static_end, 250.0)


def expected_rows(sc: Scenario) -> dict[str, tuple[int, str]]:
    """Rows of each kind a world of scenario sc holds in its actor table, for ever
    (rows are reused, never added), with the scenario fields that set the count."""
    return {
        "moving cars and trucks": (sc.n_vehicles, f"scenario.n_vehicles={sc.n_vehicles}"),
        "stalled cars and trucks": (sc.n_stalled, f"scenario.n_stalled={sc.n_stalled}"),
        "cyclists": (sc.n_cyclists, f"scenario.n_cyclists={sc.n_cyclists}"),
        "pedestrians": (sc.n_pedestrians, f"scenario.n_pedestrians={sc.n_pedestrians}"),
        "cones": (CONES_PER_GROUP * sc.n_cone_groups,
                  f"{CONES_PER_GROUP} * scenario.n_cone_groups={sc.n_cone_groups}"),
    }


@dataclass
class WorldState:
    """Everything that changes during an episode (picklable)."""

    scenario: Scenario
    ego: EgoState
    actors: ActorTable
    step: int = 0
    time: float = 0.0
    next_track_id: int = 1
    rng_state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Room for the env's own state (controller memory, reward memory)."""

    def check(self) -> None:
        """Raise TypeError or ValueError naming the first part of the state that is not
        what `World.get_state` writes: types, array shapes, dtypes, finiteness, ranges, a
        scenario that validates, a random generator state numpy accepts. `World.set_state`
        calls it, so a damaged or hand-made state is one clear error, not NaN frames."""
        for name, kind in (("scenario", Scenario), ("ego", EgoState), ("actors", ActorTable),
                           ("rng_state", dict), ("extra", dict)):
            value = getattr(self, name)
            if not isinstance(value, kind):
                raise TypeError(f"state.{name}: must be a {kind.__name__}, "
                                f"got {type(value).__name__}")
        try:
            self.scenario.check()
        except ValueError as exc:
            raise ValueError(f"state.scenario.{exc}") from None
        self.ego.check()
        self.actors.check(n_lanes=self.scenario.n_lanes)
        check_number("step", self.step, 0, 2**62, integer=True)
        check_number("time", self.time, 0.0, 1e7, unit="s")
        check_number("next_track_id", self.next_track_id, 1, 2**62, integer=True)
        self._check_rows()
        self._check_track_ids()
        try:
            np.random.PCG64().state = self.rng_state  # type: ignore[assignment]
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"rng_state: not a state of numpy's PCG64 generator "
                             f"({type(exc).__name__}: {str(exc)[:100]})") from None

    def _check_rows(self) -> None:
        """The actor table holds the rows the scenario asks for, kind by kind."""
        a = self.actors
        vehicle = (a.cls == CAR) | (a.cls == TRUCK)
        have = {
            "moving cars and trucks": (vehicle & (a.desired_speed > 0),
                                       "actors.cls car or truck, actors.desired_speed > 0"),
            "stalled cars and trucks": (vehicle & (a.desired_speed == 0),
                                        "actors.cls car or truck, actors.desired_speed 0"),
            "cyclists": (a.cls == CYCLIST, f"actors.cls {CYCLIST} (cyclist)"),
            "pedestrians": (a.cls == PEDESTRIAN, f"actors.cls {PEDESTRIAN} (pedestrian)"),
            "cones": (a.cls == CONE, f"actors.cls {CONE} (cone)"),
        }
        want = expected_rows(self.scenario)
        total = sum(n for n, _ in want.values())
        if len(a) != total:
            raise ValueError(
                f"actors: the table has {len(a)} rows, the scenario asks for {total} ("
                + ", ".join(f"{k}: {why}" for k, (_, why) in want.items())
                + "); a world keeps one row per actor of its scenario")
        for kind, (n, why) in want.items():
            rows, what = have[kind]
            got = int(rows.sum())
            if got != n:
                raise ValueError(f"actors: {got} rows of {kind} ({what}), the scenario asks "
                                 f"for {n} ({why}); rows keep their kind for the whole episode")

    def _check_track_ids(self) -> None:
        """Track ids are unique (0 only in rows never placed), below next_track_id."""
        a = self.actors
        unplaced = a.active & (a.track_id == 0)
        if unplaced.any():
            raise ValueError(f"actors.track_id: 0 at active row {int(np.flatnonzero(unplaced)[0])}"
                             f"; an active actor has a track id in [1, next_track_id - 1]")
        ids = a.track_id[a.track_id != 0]
        if ids.size == 0:
            return
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            tid = int(uniq[np.flatnonzero(counts > 1)[0]])
            rows = np.flatnonzero(a.track_id == tid).tolist()
            raise ValueError(f"actors.track_id: {tid} is held by rows {rows}; "
                             "track ids must be unique")
        if int(uniq[-1]) >= self.next_track_id:
            raise ValueError(f"next_track_id: must be greater than every actors.track_id, "
                             f"i.e. in [{int(uniq[-1]) + 1}, 2**62], got {self.next_track_id!r}"
                             " (a respawned actor would reuse an id)")

    def check_on(self, road: Road, dt: float) -> None:
        """Raise ValueError naming the first part of a checked state (`check`) that does not
        fit the road built from its scenario or the world's step `dt`: the ego off the
        road (beyond EGO_MARGIN), its world pose and Frenet s, d disagreeing, an active
        actor off the road or outside the window the world keeps around the ego, a time
        that is not step * dt."""
        sc, e, a = self.scenario, self.ego, self.actors
        where = (f"m (the road of the state's scenario: s in [{road.s[0]:g}, {road.s_max:g}] m, "
                 f"paved |d| <= {road.paved_half_width:.3g} m, plus {EGO_MARGIN:g} m)")
        check_number("ego.s", e.s, road.s[0] - EGO_MARGIN, road.s_max + EGO_MARGIN, unit=where)
        edge = road.paved_half_width + EGO_MARGIN
        check_number("ego.d", e.d, -edge, edge, unit=where)
        off = 0.5 * e.wheelbase
        s, d = road.to_frenet(e.x + off * np.cos(e.yaw), e.y + off * np.sin(e.yaw), e.s)
        if abs(float(s[0]) - e.s) > POSE_TOLERANCE or abs(float(d[0]) - e.d) > POSE_TOLERANCE:
            raise ValueError(
                f"ego: x={e.x:.6g}, y={e.y:.6g}, yaw={e.yaw:.6g} put the body centre at "
                f"s={float(s[0]):.6g}, d={float(d[0]):.6g} m on the road, but ego.s={e.s:.6g}, "
                f"ego.d={e.d:.6g}; they must agree within {POSE_TOLERANCE:g} m")
        lo, hi = e.s - BEHIND, max(road.s_max, placement_end(sc))
        edge = road.paved_half_width + ACTOR_MARGIN
        for name, v, v_lo, v_hi, why in (
            ("s", a.s, lo, hi, f"from {BEHIND:g} m behind ego.s to the end of the road or "
                               "of the actors' first placement"),
            ("d", a.d, -edge, edge, f"the paved road plus {ACTOR_MARGIN:g} m"),
        ):
            bad = a.active & ~((v >= v_lo - 1e-6) & (v <= v_hi))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"actors.{name}: {float(v[i])!r} at active row {i} is off the "
                                 f"scenario's road: allowed [{v_lo:.6g}, {v_hi:.6g}] m ({why})")
        want = self.step * dt
        if abs(self.time - want) > 1e-6 * max(1.0, want):
            raise ValueError(f"time: {self.time!r} s does not match step={self.step} at the "
                             f"world's dt={dt:.6g} s (step * dt = {want:.6g} s)")


class World:
    """Road + actors + ego physics. Knows nothing about cameras or gymnasium."""

    def __init__(self, scenario: Scenario, dt: float = 1.0 / 15.0) -> None:
        check_number("dt", dt, 0.0, MAX_DT, unit="s", open_lo=True)
        if not isinstance(scenario, Scenario):
            raise TypeError(f"scenario: must be a sim.config.Scenario, "
                            f"got {type(scenario).__name__}")
        self.dt = dt
        self._build(scenario)
        self.state = self._initial_state(scenario)

    # -- construction --------------------------------------------------------------
    def _build(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.road, self.clutter = self._make(scenario)

    @staticmethod
    def _make(scenario: Scenario) -> tuple[Road, Clutter]:
        """The road and clutter of a scenario (drawn from its seed)."""
        rng = np.random.default_rng([scenario.seed, 0xD0AD])
        road = make_road(
            rng, n_lanes=scenario.n_lanes, lane_width=scenario.lane_width,
            shoulder_width=scenario.shoulder_width, min_radius=scenario.min_radius,
            route_length=scenario.road_length, family=scenario.family,
        )
        return road, make_clutter(rng, road, scenario.clutter)

    @property
    def _spawn_end(self) -> float:
        """Vehicles start in [-70 m, this] around the ego (see `spawn_end`)."""
        return spawn_end(self.scenario)

    @property
    def ahead(self) -> float:
        """Actors further than this ahead of the ego are recycled [m]."""
        return max(AHEAD, self._spawn_end + 80.0)

    def _initial_state(self, sc: Scenario) -> WorldState:
        rng = np.random.default_rng([sc.seed, 0xAC7])
        road = self.road
        lane = int(rng.integers(road.n_lanes))
        x, y, h = road.to_world(0.0, road.lane_center(lane))
        ego = EgoState(x=0.0, y=0.0, yaw=float(h), speed=0.7 * sc.speed_limit,
                       s=0.0, d=float(road.lane_center(lane)))
        ego.x = float(x) - 0.5 * ego.wheelbase * np.cos(h)
        ego.y = float(y) - 0.5 * ego.wheelbase * np.sin(h)
        n_static = sc.n_cone_groups * CONES_PER_GROUP + sc.n_stalled
        n = sc.n_vehicles + sc.n_cyclists + sc.n_pedestrians + n_static
        actors = ActorTable.empty(n)
        state = WorldState(scenario=sc, ego=ego, actors=actors)
        row = 0
        static_s = np.sort(rng.uniform(*_static_span(sc), sc.n_cone_groups + sc.n_stalled))
        for k in range(1, static_s.size):  # a cone taper is ~30 m long: keep them apart
            static_s[k] = max(static_s[k], static_s[k - 1] + STATIC_GAP)
        kinds = rng.permutation([False] * sc.n_cone_groups + [True] * sc.n_stalled)
        for s0, stalled in zip(static_s, kinds, strict=True):
            k = 1 if stalled else CONES_PER_GROUP
            rows = list(range(row, row + k))
            place_static(actors, rows, rng, road, ego, float(s0), bool(stalled),
                         [self._new_id(state) for _ in rows])
            row += k
        span = (-70.0, self._spawn_end)
        for _ in range(sc.n_vehicles):
            place_vehicle(actors, row, rng, road, ego, sc, span, self._new_id(state))
            row += 1
        for _ in range(sc.n_cyclists):
            place_cyclist(actors, row, rng, road, ego, (30.0, 250.0), self._new_id(state))
            row += 1
        for _ in range(sc.n_pedestrians):
            place_pedestrian(actors, row, rng, road, sc, (25.0, 250.0), self._new_id(state))
            row += 1
        state.rng_state = dict(rng.bit_generator.state)
        return state

    @staticmethod
    def _new_id(state: WorldState) -> int:
        state.next_track_id += 1
        return state.next_track_id - 1

    # -- state ---------------------------------------------------------------------
    def get_state(self) -> WorldState:
        """A deep copy of the mutable state."""
        return copy.deepcopy(self.state)

    def set_state(self, state: WorldState) -> None:
        """Restore a state from `get_state()` (rebuilds road and clutter if needed).
        Raises TypeError or ValueError naming what the state holds wrong (`WorldState.check`
        and `check_on` the scenario's road); the world is left as it was."""
        if not isinstance(state, WorldState):
            raise TypeError(f"expected a WorldState, got {type(state).__name__}")
        state.check()
        same = state.scenario == self.scenario
        road, clutter = (self.road, self.clutter) if same else self._make(state.scenario)
        state.check_on(road, self.dt)
        self.scenario, self.road, self.clutter = state.scenario, road, clutter
        self.state = copy.deepcopy(state)

    # -- stepping ------------------------------------------------------------------
    def step(self, steer: float, accel: float) -> Events:
        """Advance by dt with the ego's front-wheel angle [rad] and acceleration [m/s^2]."""
        st, road = self.state, self.road
        ego = st.ego
        step_bicycle(ego, steer, accel, self.dt)
        off = 0.5 * ego.wheelbase  # Frenet coordinates refer to the body centre
        s, d = road.to_frenet(ego.x + off * np.cos(ego.yaw), ego.y + off * np.sin(ego.yaw), ego.s)
        ego.s, ego.d = float(s[0]), float(d[0])
        step_vehicles(st.actors, road, ego, self.dt, decide=st.step % MOBIL_EVERY == 0)
        step_pedestrians(st.actors, road, ego, self.dt)
        self._recycle()
        st.step += 1
        st.time += self.dt
        return self.events()

    def _recycle(self) -> None:
        recycle(self.state, self.road, self.scenario, self.ahead)

    # -- geometry ------------------------------------------------------------------
    def actor_poses(
        self, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, yaw of every actor row (or of `rows`)."""
        a = self.state.actors
        if rows is None:
            rows = np.arange(len(a))
        x, y, h = self.road.to_world(a.s[rows], a.d[rows])
        return x, y, h + a.yaw_rel[rows]

    def ego_box(self) -> np.ndarray:
        """(4, 2) corners of the ego's body."""
        e = self.state.ego
        off = 0.5 * e.wheelbase
        cx, cy = e.x + off * np.cos(e.yaw), e.y + off * np.sin(e.yaw)
        return box_corners(np.array([cx]), np.array([cy]), np.array([e.yaw]),
                           np.array([e.length]), np.array([e.width]))[0]

    def events(self) -> Events:
        """Collisions, off-road, time to collision and hard braking, now.

        Overlaps are found in two stages: road-aligned extents in the Frenet frame pick
        the few pairs that may touch, then an exact oriented-box test decides."""
        st, road = self.state, self.road
        a, ego = st.actors, st.ego
        ev = Events()
        ev.off_road = abs(ego.d) > road.paved_half_width
        ev.hard_brake = ego.accel < -HARD_BRAKE
        idx = np.flatnonzero(a.active)
        if idx.size == 0:
            return ev
        ext_s, ext_d = frenet_extents(a.length[idx], a.width[idx], a.yaw_rel[idx])
        e_yaw = float(ego.yaw - road.heading_at(ego.s))
        es, ed = frenet_extents(np.array(ego.length), np.array(ego.width), np.array(e_yaw))
        near_ego = ((np.abs(a.s[idx] - ego.s) < ext_s + es + BROAD_MARGIN)
                    & (np.abs(a.d[idx] - ego.d) < ext_d + ed + BROAD_MARGIN))
        cand = np.flatnonzero(near_ego)
        if cand.size:
            x, y, yaw = self.actor_poses(idx[cand])
            corners = box_corners(x, y, yaw, a.length[idx[cand]], a.width[idx[cand]])
            hit = boxes_overlap(np.repeat(self.ego_box()[None], cand.size, 0), corners)
            ev.collided_track_ids = [int(t) for t in a.track_id[idx[cand[hit]]]]
            ev.collision = bool(hit.any())
        ev.npc_collisions = self._count_npc_overlaps(idx, ext_s, ext_d)
        ev.min_ttc = float(min_ttc(a, ego))
        return ev

    def _count_npc_overlaps(self, idx: np.ndarray, ext_s: np.ndarray, ext_d: np.ndarray) -> int:
        """Overlapping pairs of actors; two pedestrians passing each other do not count."""
        a = self.state.actors
        s, d = a.s[idx], a.d[idx]
        walker = a.cls[idx] == PEDESTRIAN
        near = ((np.abs(s[:, None] - s[None, :]) < ext_s[:, None] + ext_s[None, :] + BROAD_MARGIN)
                & (np.abs(d[:, None] - d[None, :]) < ext_d[:, None] + ext_d[None, :] + BROAD_MARGIN)
                & ~(walker[:, None] & walker[None, :]))
        i, j = np.nonzero(np.triu(near, k=1))
        if i.size == 0:
            return 0
        x, y, yaw = self.actor_poses(idx)
        ci = box_corners(x[i], y[i], yaw[i], a.length[idx[i]], a.width[idx[i]])
        cj = box_corners(x[j], y[j], yaw[j], a.length[idx[j]], a.width[idx[j]])
        return int(boxes_overlap(ci, cj).sum())


def min_ttc(a: ActorTable, ego: Any) -> Any:
    """Smallest gap / closing speed over active actors ahead in the ego's corridor [s]
    (inf if none). Arrays may carry a leading batch axis, with the ego's fields (B,)."""
    def col(v: Any) -> Any:
        return np.asarray(v)[..., None]

    ds = a.s - col(ego.s)
    lateral = np.abs(a.d - col(ego.d)) < 0.5 * (a.width + col(ego.width)) + 0.2
    gap = ds - 0.5 * (a.length + col(ego.length))
    closing = col(ego.speed) - a.speed
    mask = a.active & lateral & (ds > 0) & (closing > 0.1)
    ttc = np.where(mask, np.maximum(gap, 0.0) / np.where(mask, closing, 1.0), np.inf)
    return np.min(ttc, axis=-1, initial=np.inf)


SIDE_REACH = 1.0
"""`min_side_gap` counts actors whose extent along the road comes this close to the
ego's [m]."""


def min_headway(a: ActorTable, ego: Any) -> Any:
    """Smallest time gap over active actors ahead in the ego's corridor (as `min_ttc`
    finds them): gap / ego speed [s], the speed taken as at least 1 m/s (inf if none).
    Arrays may carry a leading batch axis, with the ego's fields (B,)."""
    def col(v: Any) -> Any:
        return np.asarray(v)[..., None]

    ds = a.s - col(ego.s)
    lateral = np.abs(a.d - col(ego.d)) < 0.5 * (a.width + col(ego.width)) + 0.2
    gap = ds - 0.5 * (a.length + col(ego.length))
    mask = a.active & lateral & (ds > 0)
    headway = np.maximum(gap, 0.0) / np.maximum(col(ego.speed), 1.0)
    return np.min(np.where(mask, headway, np.inf), axis=-1, initial=np.inf)


def min_side_gap(a: ActorTable, ego: Any) -> Any:
    """Smallest lateral clearance [m] between the ego's body and an active actor beside
    it (their extents along the road overlap, or come within SIDE_REACH): the distance
    between the two bodies across the road, negative when they overlap (inf if none).
    Arrays may carry a leading batch axis, with the ego's fields (B,)."""
    def col(v: Any) -> Any:
        return np.asarray(v)[..., None]

    beside = np.abs(a.s - col(ego.s)) < 0.5 * (a.length + col(ego.length)) + SIDE_REACH
    gap = np.abs(a.d - col(ego.d)) - 0.5 * (a.width + col(ego.width))
    return np.min(np.where(a.active & beside, gap, np.inf), axis=-1, initial=np.inf)


def recycle(st: WorldState, road: Road, sc: Scenario, ahead_limit: float) -> None:
    """Respawn moving actors that fell out of the window around the ego, in place
    (the actor table may be a view into a batch, see `sim.world.batch`)."""
    a, ego = st.actors, st.ego
    rel = a.s - ego.s
    moving = (a.cls != CONE) & ((a.desired_speed > 0) | (a.cls == PEDESTRIAN))
    out = (rel < -BEHIND) | (rel > ahead_limit) | (a.s > road.s_max - 40.0)
    unplaced = ~a.active & moving  # could not be placed before: retried once a second
    a.active[a.active & ((~moving & (rel < -BEHIND)) | (moving & out))] = False
    retry = st.step % RETRY_EVERY == 0
    todo = np.flatnonzero(~a.active & moving & (retry | ~unplaced))
    if todo.size == 0:
        return
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = st.rng_state
    ahead = (ego.s + 180.0, min(ego.s + 320.0, road.s_max - 60.0))
    for i in todo[:2]:  # a couple per step keeps the cost flat
        if ahead[0] >= ahead[1]:
            a.active[i] = False
            continue
        tid = World._new_id(st)
        if a.cls[i] == PEDESTRIAN:
            place_pedestrian(a, int(i), rng, road, sc, ahead, tid)
        elif a.cls[i] == CYCLIST:
            place_cyclist(a, int(i), rng, road, ego, ahead, tid)
        else:
            behind = rel[i] > ahead_limit and ego.s - 110.0 > road.s[0]
            span = (ego.s - 110.0, ego.s - 80.0) if behind else ahead
            place_vehicle(a, int(i), rng, road, ego, sc, span, tid)
    st.rng_state = dict(rng.bit_generator.state)
