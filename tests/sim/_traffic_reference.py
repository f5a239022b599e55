"""Reference: the array formulation of the NPC vehicle step (numpy over (B, N, N+1)
matrices), as sim.world.traffic had it before the compiled kernel
(`sim.world.traffic_kernels.vehicle_step`). tests/sim/test_traffic_kernel.py checks the
kernel against it.
The constants, IDM and the lane geometry are the model's own (imported).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.types import CYCLIST, EgoState
from sim.world.actors import ActorTable, frenet_extents
from sim.world.traffic import (
    B_SAFE,
    KEEP_RIGHT_BIAS,
    LAT_SPEED,
    LC_COOLDOWN,
    LC_THRESHOLD,
    MAX_DECEL,
    MIN_GAP,
    POLITENESS,
    Lanes,
    _a_max,
    _with_ego,
    idm,
    lane_occupancy,
)


def _nearest(mask: np.ndarray, key: np.ndarray, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per row (last axis), the column of the smallest (or largest) key where mask holds;
    -1 if none."""
    fill = -np.inf if largest else np.inf
    k = np.where(mask, key, fill)
    j = np.argmax(k, axis=-1) if largest else np.argmin(k, axis=-1)
    found = _pick(mask, j)
    return np.where(found, j, -1), found


def _pick(a: np.ndarray, j: np.ndarray) -> np.ndarray:
    """a[..., i, j[..., i]] for (..., n, E) matrices, or a[..., j] for (..., E) rows."""
    if j.ndim == 1:  # one world: plain fancy indexing is several times cheaper
        return a[np.arange(j.shape[0]), j] if a.ndim == 2 else a[j]
    # batched (B, n): fancy indexing with broadcast row indices (what take_along_axis
    # does, without its per-call index building)
    rows = np.arange(j.shape[0])[:, None]
    if a.ndim == j.ndim + 1:
        return a[rows, np.arange(j.shape[1])[None, :], j]
    return a[rows, j]


def _in_lane(occ: np.ndarray, lane: np.ndarray) -> np.ndarray:
    """(..., n, E): does participant j occupy lane[..., i]?"""
    if lane.ndim == 1:
        return occ[:, lane].T
    lanes_first = np.swapaxes(occ, -1, -2)  # (B, L, E)
    return lanes_first[np.arange(lane.shape[0])[:, None], lane]


class _Participants:
    """Actors plus the ego as the last column, with their pairwise geometry."""

    def __init__(self, actors: ActorTable, lanes: Lanes, ego: EgoState) -> None:
        self.n = n = actors.s.shape[-1]
        self.s = _with_ego(actors.s, ego.s)
        self.d = _with_ego(actors.d, ego.d)
        self.v = _with_ego(np.abs(actors.speed), ego.speed)
        self.length = _with_ego(actors.length, ego.length)
        self.width = _with_ego(actors.width, ego.width)
        self.acc = _with_ego(actors.accel, ego.accel)
        self.active = _with_ego(actors.active, True)
        self.occ = lane_occupancy(lanes, self.d, self.width) & self.active[..., None]
        self.ds = self.s[..., None, :] - self.s[..., :, None]  # ds[i, j] = s_j - s_i
        self.gap = np.abs(self.ds) - 0.5 * (self.length[..., :, None] + self.length[..., None, :])
        self.not_self = ~np.eye(n + 1, dtype=bool)[:n]  # (n, E): rows are actors

    def subset(self, worlds: np.ndarray) -> _Participants:
        """The same participants of some worlds only (batched: rows of axis 0)."""
        out = object.__new__(_Participants)
        out.n, out.not_self = self.n, self.not_self
        for k in ("s", "d", "v", "length", "width", "acc", "active", "occ", "ds", "gap"):
            setattr(out, k, getattr(self, k)[worlds])
        return out

    def rows(self, m: np.ndarray) -> np.ndarray:
        """The actor rows (..., n, E) of a participant matrix (..., E, E)."""
        return m[..., : self.n, :]


def _leader_accel(
    actors: ActorTable, p: _Participants, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IDM acceleration of every actor row with its leader (the nearest participant ahead
    that overlaps its own width, or stands wholly ahead in its target lane), the
    leader's index and whether there is one."""
    n = p.n
    lateral = np.abs(p.d[..., :n, None] - p.d[..., None, :]) < 0.5 * (
        p.width[..., :n, None] + p.width[..., None, :]) + 0.2
    # someone in the target lane counts once fully ahead; one still beside (a merging
    # car) counts only if it overlaps sideways, so traffic alongside a merger keeps going
    gap, ds = p.rows(p.gap), p.rows(p.ds)
    conflict = (lateral & p.active[..., None, :]) | (_in_lane(p.occ, target) & (gap > 0))
    ahead = conflict & (ds > 0) & p.not_self
    j, found = _nearest(ahead, ds, largest=False)
    lead_gap = np.where(found, _pick(gap, j), np.inf)
    dv = np.where(found, p.v[..., :n] - _pick(p.v, j), 0.0)
    acc = idm(p.v[..., :n], actors.desired_speed, actors.headway, _a_max(actors), lead_gap, dv)
    return acc, j, found


def _mobil(
    actors: ActorTable, lanes: Lanes, p: _Participants, acc_now: np.ndarray, lane: np.ndarray,
    target: np.ndarray, can_change: np.ndarray,
) -> np.ndarray:
    """Target lane chosen by MOBIL for each actor that may change (others keep theirs).
    Batched, only the worlds with an actor that may change are computed (MOBIL_EVERY
    staggers the worlds' decisions)."""
    if can_change.ndim == 2:
        rows = np.flatnonzero(can_change.any(axis=1))
        if rows.size < can_change.shape[0]:
            out = target.copy()
            out[rows] = _mobil_rows(actors.desired_speed[rows], actors.headway[rows],
                                    _a_max(actors)[rows], np.asarray(lanes.n_lanes)[rows],
                                    p.subset(rows), acc_now[rows], lane[rows], target[rows],
                                    can_change[rows])
            return out
    return _mobil_rows(actors.desired_speed, actors.headway, _a_max(actors), lanes.n_lanes,
                       p, acc_now, lane, target, can_change)


def _mobil_rows(
    desired_speed: np.ndarray, headway: np.ndarray, a_max: np.ndarray, n_lanes: Any,
    p: _Participants, acc_now: np.ndarray, lane: np.ndarray, target: np.ndarray,
    can_change: np.ndarray,
) -> np.ndarray:
    n = p.n
    best_gain = np.full(acc_now.shape, -np.inf)
    target = target.copy()
    gap, ds, v = p.rows(p.gap), p.rows(p.ds), p.v[..., :n]
    for delta, bias in ((1, 0.0), (-1, KEEP_RIGHT_BIAS)):
        new_lane = lane + delta
        valid = can_change & (new_lane >= 0) & (new_lane < n_lanes)
        in_new = _in_lane(p.occ, np.clip(new_lane, 0, p.occ.shape[-1] - 1)) & p.not_self
        beside = in_new & (gap < 1.0)
        lead, has_lead = _nearest(in_new & (ds > 0), ds, largest=False)
        foll, has_foll = _nearest(in_new & (ds < 0), ds, largest=True)
        gap_l = np.where(has_lead, _pick(gap, lead), np.inf)
        dv_l = np.where(has_lead, v - _pick(p.v, lead), 0.0)
        a_new = idm(v, desired_speed, headway, a_max, gap_l, dv_l)
        f = np.where(has_foll, foll, n)  # the ego column stands in when there is none
        gap_f = np.where(has_foll, _pick(gap, f), np.inf)
        v_f = _pick(p.v, f)
        f_v0 = np.where(f < n, _pick(desired_speed, np.minimum(f, n - 1)), v_f + 5.0)
        a_f_new = idm(v_f, f_v0, np.full_like(v_f, 1.5), np.full_like(v_f, 1.8), gap_f, v_f - v)
        a_f_old = _pick(p.acc, f)
        safe = (a_new > -B_SAFE) & (a_f_new > -B_SAFE) & ~beside.any(axis=-1)
        gain = a_new - acc_now + POLITENESS * np.where(has_foll, a_f_new - a_f_old, 0.0) + bias
        ok = valid & safe & (gain > LC_THRESHOLD) & (gain > best_gain)
        best_gain = np.where(ok, gain, best_gain)
        target = np.where(ok, new_lane, target)
    return target


def step_vehicles(
    actors: ActorTable, lanes: Lanes, ego: EgoState, dt: float,
    decide: bool | np.ndarray = True,
) -> None:
    """One IDM step for every moving vehicle, in place; with `decide`, MOBIL may also
    start lane changes. Arrays may carry a leading batch axis (one world per row); then
    `decide` may be a (B,) array, one per world."""
    veh = actors.is_vehicle
    if not veh.any():
        return
    p = _Participants(actors, lanes, ego)
    lane = lanes.lane_of(actors.d)
    target = np.where(actors.target_lane >= 0, actors.target_lane, lane)
    acc, lead, has_lead = _leader_accel(actors, p, target)
    settled = np.abs(actors.d - _lane_line(actors, lanes, target)) < 0.3
    can_change = veh & settled & (actors.lc_timer <= 0)
    can_change &= np.asarray(decide)[..., None] if np.ndim(decide) else bool(decide)
    if can_change.any():
        new_target = _mobil(actors, lanes, p, acc, lane, target, can_change)
    else:
        new_target = target
    changed = new_target != target
    actors.lc_timer = np.where(changed, LC_COOLDOWN, np.maximum(actors.lc_timer - dt, 0.0))
    # lateral motion toward the line kept in the target lane
    d_goal = _lane_line(actors, lanes, new_target)
    lat_max = np.minimum(np.maximum(0.12 * actors.speed, 0.25), LAT_SPEED)  # creep if slow
    v_lat = np.minimum(np.maximum(0.9 * (d_goal - actors.d), -lat_max), lat_max)
    v_lat = np.where(_blocked_sideways(actors, p, v_lat), 0.0, v_lat)
    v_new = np.maximum(actors.speed + acc * dt, 0.0)
    s_new = actors.s + 0.5 * (actors.speed + v_new) * dt
    # safety clamp: never close in to less than MIN_GAP behind the leader, even when
    # IDM cannot brake hard enough (cut-ins, obstacles appearing sideways)
    lead_v = _pick(p.v, lead)
    lead_s = _pick(p.s, lead) + np.maximum(lead_v - MAX_DECEL * dt, 0.0) * dt
    s_max = lead_s - 0.5 * (actors.length + _pick(p.length, lead)) - MIN_GAP
    clamp = has_lead & (s_new > s_max)
    s_new = np.where(clamp, np.maximum(actors.s, s_max), s_new)
    v_new = np.where(clamp, np.minimum(v_new, lead_v), v_new)
    actors.s = np.where(veh, s_new, actors.s)
    actors.d = np.where(veh, actors.d + v_lat * dt, actors.d)
    actors.v_lat = np.where(veh, v_lat, actors.v_lat)
    actors.accel = np.where(veh, acc, actors.accel)
    actors.speed = np.where(veh, v_new, actors.speed)
    actors.target_lane = np.where(veh, new_target, actors.target_lane)


def _lane_line(actors: ActorTable, lanes: Lanes, lane: np.ndarray) -> np.ndarray:
    """Lateral offset each vehicle keeps in `lane`: the centre, or for cyclists 0.9 m
    left of the lane's right boundary (a cyclist on a shoulder keeps its own line)."""
    centre = lanes.lane_center(lane)
    right_edge = centre - 0.5 * lanes.lane_width
    in_lanes = np.abs(actors.d) < lanes.paved_half_width - lanes.shoulder_width
    cyclist = (actors.cls == CYCLIST)
    return np.where(cyclist, np.where(in_lanes, right_edge + 0.9, actors.d), centre)


def _blocked_sideways(actors: ActorTable, p: _Participants, v_lat: np.ndarray) -> np.ndarray:
    """Rows whose sideways move would run into someone beside them: they wait."""
    n = p.n
    if not v_lat.any():
        return np.zeros(v_lat.shape, dtype=bool)
    ext_s, ext_d = frenet_extents(p.length, p.width, _with_ego(actors.yaw_rel, 0.0))
    side = (p.d[..., None, :] - p.d[..., :n, None]) * np.sign(v_lat)[..., None]
    beside = np.abs(p.rows(p.ds)) < ext_s[..., :n, None] + ext_s[..., None, :] + 0.1
    close = (side > 0) & (side < ext_d[..., :n, None] + ext_d[..., None, :] + 0.4)
    blocked = beside & close & p.active[..., None, :] & p.not_self
    return blocked.any(axis=-1) & (v_lat != 0)


