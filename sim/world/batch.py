"""Many worlds stepped as one set of arrays: the scale-out path for physics.

`BatchWorld` holds B worlds (each built exactly as `World` builds it) with the actor
tables stacked to (B, N), the egos as (B,) arrays and the roads concatenated. One
`step` runs the same pure functions as `World.step` (bicycle, IDM + MOBIL, pedestrians)
with a leading batch axis, so numpy's per-call cost is paid once for all B worlds.
World b of a batch evolves exactly as a `World` built from the same scenario and driven
with the same controls (tests/sim/test_batch.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sim.config import Scenario
from sim.types import PEDESTRIAN, EgoState
from sim.world.actors import ActorTable, box_corners, boxes_overlap, frenet_extents, step_bicycle
from sim.world.road import DS
from sim.world.traffic import MOBIL_EVERY, step_pedestrians, step_vehicles
from sim.world.world import (
    BROAD_MARGIN,
    HARD_BRAKE,
    RETRY_EVERY,
    World,
    WorldState,
    min_ttc,
    recycle,
)

_ACTOR_FIELDS = tuple(f.name for f in fields(ActorTable))
_EGO_FIELDS = ("x", "y", "yaw", "speed", "steer", "accel", "s", "d", "length", "width",
               "wheelbase")


@dataclass
class BatchEgo:
    """The egos of a batch: every `EgoState` field as a (B,) array."""

    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    steer: np.ndarray
    accel: np.ndarray
    s: np.ndarray
    d: np.ndarray
    length: np.ndarray
    width: np.ndarray
    wheelbase: np.ndarray

    def one(self, b: int) -> EgoState:
        return EgoState(**{k: float(getattr(self, k)[b]) for k in _EGO_FIELDS})


class BatchRoads:
    """B roads concatenated into flat arrays; lane geometry as (B, 1) arrays (the
    `traffic.Lanes` protocol) and vectorized Frenet <-> world conversion per row."""

    def __init__(self, worlds: list[World]) -> None:
        roads = [w.road for w in worlds]
        self.length = np.array([len(r.s) for r in roads])
        self.offset = np.concatenate([[0], np.cumsum(self.length)[:-1]])[:, None]
        self.s0 = np.array([[r.s[0]] for r in roads])
        self.x = np.concatenate([r.x for r in roads])
        self.y = np.concatenate([r.y for r in roads])
        self.heading = np.concatenate([r.heading for r in roads])
        self.n_lanes = np.array([[r.n_lanes] for r in roads])
        self.lane_width = np.array([[r.lane_width] for r in roads])
        self.half_width = 0.5 * self.n_lanes * self.lane_width
        self.shoulder_width = np.array([[r.shoulder_width] for r in roads])
        self.paved_half_width = self.half_width + self.shoulder_width
        self._max_lanes = int(self.n_lanes.max())

    def set_row(self, b: int, road: Any) -> bool:
        """Put `road` in row b in place when it has as many samples as the road there
        (the usual case: one family's roads share a length); False when it does not fit
        (then build the roads again)."""
        n = len(road.s)
        if n != self.length[b] or road.n_lanes > self._max_lanes:
            return False
        sl = slice(int(self.offset[b, 0]), int(self.offset[b, 0]) + n)
        self.x[sl], self.y[sl], self.heading[sl] = road.x, road.y, road.heading
        self.s0[b, 0] = road.s[0]
        self.n_lanes[b, 0], self.lane_width[b, 0] = road.n_lanes, road.lane_width
        self.half_width[b, 0] = 0.5 * self.n_lanes[b, 0] * self.lane_width[b, 0]
        self.shoulder_width[b, 0] = road.shoulder_width
        self.paved_half_width[b, 0] = self.half_width[b, 0] + self.shoulder_width[b, 0]
        return True

    def lane_of(self, d: np.ndarray) -> np.ndarray:
        lane = np.floor((d + self.half_width) / self.lane_width)
        return np.minimum(np.maximum(lane, 0), self.n_lanes - 1).astype(np.int64)

    def lane_center(self, lane: np.ndarray) -> np.ndarray:
        return (lane + 0.5) * self.lane_width - self.half_width

    def boundaries(self) -> np.ndarray:
        """(B, max lanes + 1); +inf past a road's own lanes, so nothing occupies them."""
        j = np.arange(self._max_lanes + 1)[None, :]
        return np.where(j <= self.n_lanes, j * self.lane_width - self.half_width, np.inf)

    def _index(self, s: np.ndarray, rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Flat sample index and fraction of arc lengths s (R, K) on the roads of `rows`
        (default: row r is world r)."""
        sel = slice(None) if rows is None else rows
        f = (s - self.s0[sel]) / DS
        f = np.minimum(np.maximum(f, 0.0), self.length[sel][:, None] - 1.000001)
        i = f.astype(np.int64)
        return i + self.offset[sel], f - i

    def to_world(self, s: np.ndarray, d: np.ndarray, rows: np.ndarray | None = None
                 ) -> tuple[np.ndarray, ...]:
        """World x, y and centerline heading of Frenet (s, d) given as (R, K)."""
        i, t = self._index(s, rows)
        x = self.x[i] * (1.0 - t) + self.x[i + 1] * t
        y = self.y[i] * (1.0 - t) + self.y[i + 1] * t
        h = self.heading[i] * (1.0 - t) + self.heading[i + 1] * t
        return x - d * np.sin(h), y + d * np.cos(h), h

    def to_frenet(self, x: np.ndarray, y: np.ndarray, hint: np.ndarray,
                  window: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the closest sample within `window` m of `hint`, projected as
        `Road.to_frenet` does."""
        n_win = int(window / DS)
        i0, _ = self._index((hint - window)[:, None])
        last = (self.offset + self.length[:, None] - 1)
        idx = np.minimum(i0 + np.arange(2 * n_win + 1)[None, :], last)
        d2 = (self.x[idx] - x[:, None]) ** 2 + (self.y[idx] - y[:, None]) ** 2
        best = np.take_along_axis(idx, np.argmin(d2, axis=1)[:, None], axis=1)[:, 0]
        h = self.heading[best]
        dx, dy = x - self.x[best], y - self.y[best]
        s_best = self.s0[:, 0] + (best - self.offset[:, 0]) * DS
        return s_best + dx * np.cos(h) + dy * np.sin(h), -dx * np.sin(h) + dy * np.cos(h)


class BatchWorld:
    """B worlds stepped at once. `step(steer, accel)` takes (B,) wheel angles [rad] and
    accelerations [m/s^2] and returns (B,) event arrays."""

    def __init__(self, scenarios: list[Scenario], dt: float = 1.0 / 15.0) -> None:
        if not scenarios:
            raise ValueError("a batch needs at least one scenario")
        self.worlds = [World(sc, dt) for sc in scenarios]
        self.dt = dt
        self.roads = BatchRoads(self.worlds)
        self.actors = _stack([w.state.actors for w in self.worlds])
        self.ego = BatchEgo(**{k: np.array([getattr(w.state.ego, k) for w in self.worlds],
                                           dtype=np.float64) for k in _EGO_FIELDS})
        self.steps = 0
        """Batch steps taken."""
        self.world_steps = np.zeros(len(self.worlds), np.int64)
        """Steps of each world since it was built (`replace` restarts one)."""
        self._ahead = np.array([w.ahead for w in self.worlds])
        self.count_npc_collisions = True
        """`events` counts NPC-NPC overlaps; False: its "npc_collisions" are zeros (the
        pairwise test is a sizeable part of a step, and training does not use it)."""

    def __len__(self) -> int:
        return len(self.worlds)

    def step(self, steer: np.ndarray, accel: np.ndarray) -> dict[str, np.ndarray]:
        ego, roads = self.ego, self.roads
        step_bicycle(ego, np.asarray(steer, float), np.asarray(accel, float),  # type: ignore[arg-type]
                     self.dt)
        off = 0.5 * ego.wheelbase  # Frenet coordinates refer to the body centre
        ego.s, ego.d = roads.to_frenet(ego.x + off * np.cos(ego.yaw),
                                       ego.y + off * np.sin(ego.yaw), ego.s)
        decide = self.world_steps % MOBIL_EVERY == 0  # each world on its own clock
        step_vehicles(self.actors, roads, ego, self.dt, decide=decide)  # type: ignore[arg-type]
        step_pedestrians(self.actors, roads, ego, self.dt)  # type: ignore[arg-type]
        self._recycle()  # sees the step count before this step, as World's does
        self.world_steps += 1
        self.steps += 1
        return self.events()

    def replace(self, b: int, scenario: Scenario) -> None:
        """Start world b afresh on `scenario` (as `World(scenario)` starts), keeping the
        others where they are. Its actors overwrite row b (all tables are stacked again
        only when it has more rows than the batch) and the roads are joined again."""
        w = World(scenario, self.dt)
        n, n_max = len(w.state.actors), self.actors.active.shape[1]
        if n <= n_max:  # fits: overwrite row b, padded with empty rows
            pad = ActorTable.empty(n_max - n)
            for f in _ACTOR_FIELDS:
                getattr(self.actors, f)[b] = np.concatenate([getattr(w.state.actors, f),
                                                             getattr(pad, f)])
        else:
            tables = [self._table(k) for k in range(len(self))]
            tables[b] = w.state.actors
            self.actors = _stack(tables)
        self.worlds[b] = w
        if not self.roads.set_row(b, w.road):
            self.roads = BatchRoads(self.worlds)
        for k in _EGO_FIELDS:
            getattr(self.ego, k)[b] = getattr(w.state.ego, k)
        self.world_steps[b] = 0
        self._ahead[b] = w.ahead

    def row(self, b: int) -> ActorTable:
        """World b's row of the stacked actor table, as views (padding included)."""
        return ActorTable(**{f: getattr(self.actors, f)[b] for f in _ACTOR_FIELDS})

    def _table(self, b: int) -> ActorTable:
        """World b's rows of the stacked actor table (copies, without the padding)."""
        n = len(self.worlds[b].state.actors)
        return ActorTable(**{f: getattr(self.actors, f)[b, :n].copy() for f in _ACTOR_FIELDS})

    def _recycle(self) -> None:
        """Per-world respawns, only for the worlds that need one this step."""
        a, ego = self.actors, self.ego
        rel = a.s - ego.s[:, None]
        moving = (a.desired_speed > 0) | (a.cls == PEDESTRIAN)
        out = (rel < -120.0) | (rel > self._ahead[:, None])
        retry = (self.world_steps % RETRY_EVERY == 0)[:, None]  # `recycle` retries then
        stale = (a.active & out) | (~a.active & moving & retry) | (
            a.active & ~moving & (rel < -120.0))
        stale |= a.active & (a.s > (self.roads.s0 + (self.roads.length[:, None] - 1) * DS - 40))
        for b in np.flatnonzero(stale.any(axis=1)):
            w = self.worlds[b]
            view = self.row(int(b))
            st = WorldState(scenario=w.scenario, ego=ego.one(int(b)), actors=view,
                            step=int(self.world_steps[b]),
                            next_track_id=w.state.next_track_id, rng_state=w.state.rng_state)
            recycle(st, w.road, w.scenario, w.ahead)
            w.state.next_track_id, w.state.rng_state = st.next_track_id, st.rng_state

    def events(self) -> dict[str, np.ndarray]:
        """(B,) collision, off_road, hard_brake, npc_collisions and min_ttc."""
        a, ego, roads = self.actors, self.ego, self.roads
        ext_s, ext_d = frenet_extents(a.length, a.width, a.yaw_rel)
        e_yaw = ego.yaw - roads.to_world(ego.s[:, None], np.zeros((len(self), 1)))[2][:, 0]
        es, ed = frenet_extents(ego.length, ego.width, e_yaw)
        near = a.active & (np.abs(a.s - ego.s[:, None]) < ext_s + es[:, None] + BROAD_MARGIN) \
            & (np.abs(a.d - ego.d[:, None]) < ext_d + ed[:, None] + BROAD_MARGIN)
        collision = np.zeros(len(self), bool)
        b, i = np.nonzero(near)
        if b.size:
            x, y, h = roads.to_world(a.s[b, i][:, None], a.d[b, i][:, None], rows=b)
            corners = box_corners(x[:, 0], y[:, 0], h[:, 0] + a.yaw_rel[b, i], a.length[b, i],
                                  a.width[b, i])
            c = 0.5 * ego.wheelbase[b]
            ego_box = box_corners(ego.x[b] + c * np.cos(ego.yaw[b]),
                                  ego.y[b] + c * np.sin(ego.yaw[b]), ego.yaw[b],
                                  ego.length[b], ego.width[b])
            np.logical_or.at(collision, b, boxes_overlap(ego_box, corners))
        return {
            "collision": collision,
            "off_road": np.abs(ego.d) > roads.paved_half_width[:, 0],
            "hard_brake": ego.accel < -HARD_BRAKE,
            "npc_collisions": (self._npc_overlaps(ext_s, ext_d) if self.count_npc_collisions
                               else np.zeros(len(self), np.int64)),
            "min_ttc": min_ttc(a, ego),
        }

    def _npc_overlaps(self, ext_s: np.ndarray, ext_d: np.ndarray) -> np.ndarray:
        a, roads = self.actors, self.roads
        walker = a.cls == PEDESTRIAN
        pair = a.active[:, :, None] & a.active[:, None, :] & ~(walker[:, :, None]
                                                              & walker[:, None, :])
        pair &= np.abs(a.s[:, :, None] - a.s[:, None, :]) < (
            ext_s[:, :, None] + ext_s[:, None, :] + BROAD_MARGIN)
        pair &= np.abs(a.d[:, :, None] - a.d[:, None, :]) < (
            ext_d[:, :, None] + ext_d[:, None, :] + BROAD_MARGIN)
        b, i, j = np.nonzero(np.triu(pair, k=1))
        count = np.zeros(len(self), np.int64)
        if b.size:
            x, y, h = roads.to_world(np.stack([a.s[b, i], a.s[b, j]], 1),
                                     np.stack([a.d[b, i], a.d[b, j]], 1), rows=b)
            yaw = h + np.stack([a.yaw_rel[b, i], a.yaw_rel[b, j]], 1)
            ci = box_corners(x[:, 0], y[:, 0], yaw[:, 0], a.length[b, i], a.width[b, i])
            cj = box_corners(x[:, 1], y[:, 1], yaw[:, 1], a.length[b, j], a.width[b, j])
            np.add.at(count, b, boxes_overlap(ci, cj))
        return count

    def actor_poses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, yaw of every actor of every world, (B, N) each, in one pass."""
        a = self.actors
        x, y, h = self.roads.to_world(a.s, a.d)
        return x, y, h + a.yaw_rel

    def view(self, b: int, poses: tuple[np.ndarray, ...] | None = None) -> WorldView:
        """World b as the renderer and the labels read a `World` (no copies). `poses`:
        this batch's `actor_poses()`, when the caller has them for all worlds already."""
        return WorldView(self, b, poses)

    def world_state(self, b: int) -> WorldState:
        """World b as a `WorldState` (copies), e.g. to render or restore it in an env."""
        w, step = self.worlds[b], int(self.world_steps[b])
        return WorldState(scenario=w.scenario, ego=self.ego.one(b), actors=self._table(b),
                          step=step, time=step * self.dt,
                          next_track_id=w.state.next_track_id, rng_state=dict(w.state.rng_state))


class WorldView:
    """World b of a `BatchWorld`, read as a `World` by `sim.render` (renderer and labels):
    its own road, clutter and scenario, the batch's actor arrays as row views and the
    ego as an `EgoState`. A view is valid until the batch steps again."""

    def __init__(self, batch: BatchWorld, b: int,
                 poses: tuple[np.ndarray, ...] | None = None) -> None:
        w = batch.worlds[b]
        self.road, self.clutter, self.scenario, self.dt = w.road, w.clutter, w.scenario, batch.dt
        step = int(batch.world_steps[b])
        self.state = WorldState(scenario=w.scenario, ego=batch.ego.one(b), actors=batch.row(b),
                                step=step, time=step * batch.dt)
        self._batch, self._b = batch, b
        self._poses = None if poses is None else (poses[0][b], poses[1][b], poses[2][b])

    def actor_poses(self, rows: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World x, y, yaw of every actor row (or of `rows`), as `World.actor_poses`."""
        if self._poses is None:
            x, y, yaw = self._batch.actor_poses()
            self._poses = (x[self._b], y[self._b], yaw[self._b])
        if rows is None:
            return self._poses
        return self._poses[0][rows], self._poses[1][rows], self._poses[2][rows]


def _stack(tables: list[ActorTable]) -> ActorTable:
    """Stack actor tables to (B, N), padding with inactive, non-moving rows."""
    n = max(len(t) for t in tables)
    out = {}
    for f in fields(ActorTable):
        rows = []
        for t in tables:
            a = getattr(t, f.name)
            if len(t) < n:
                a = np.concatenate([a, getattr(ActorTable.empty(n - len(t)), f.name)])
            rows.append(a)
        out[f.name] = np.stack(rows)
    return ActorTable(**out)
