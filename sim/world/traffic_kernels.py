"""The NPC vehicle step (IDM following, MOBIL lane changes, lateral moves and the
safety clamp) compiled with numba, for one world or a batch of worlds alike.

`sim.world.traffic.step_vehicles` prepares the arrays (lane indices, a_max, the
participants' Frenet extents: whatever needs numpy's own transcendental functions) and
calls `vehicle_step` with (B, N) actor arrays; one world is a batch of one. The loops
follow the former array formulation term by term (same operations in the same order);
the pairwise work per vehicle is O(N), with no (B, N, N) temporaries.

Participants are the N actor rows plus the ego as column N (NPCs follow and yield to
the ego but never steer it). Compiled on first use and cached on disk, as
`sim.render.kernels`; every compiled function lives in this one module (numba's cache
checks only the file of a function).
"""

from __future__ import annotations

import math

import numba
import numpy as np

S0 = 2.5
"""IDM jam distance [m]."""
COMFORT_DECEL = 2.5
"""IDM comfortable deceleration b [m/s^2]."""
MAX_DECEL = 9.0
"""Hardest NPC braking [m/s^2]."""
POLITENESS = 0.3
"""MOBIL politeness p."""
LC_THRESHOLD = 0.25
"""MOBIL incentive threshold [m/s^2]."""
KEEP_RIGHT_BIAS = 0.1
"""MOBIL bias toward the right lane [m/s^2]."""
B_SAFE = 3.5
"""MOBIL safety limit on the deceleration imposed on the new follower [m/s^2]."""
LC_COOLDOWN = 6.0
"""Seconds between two lane changes of one vehicle."""
LAT_SPEED = 1.1
"""Largest lateral speed during a lane change [m/s]."""
MIN_GAP = 0.3
"""Smallest bumper gap a vehicle keeps to its leader [m]."""
CYCLIST = 3
"""`sim.types.CYCLIST` (a test checks it; sim.types is not imported into compiled code)."""


@numba.njit(cache=True, inline="always")
def _idm(v: float, free: float, headway: float, a_max: float, gap: float, dv: float) -> float:
    """`sim.world.traffic.idm` with its free-road term 1 - (v / v0)^4 given (numpy's
    power, computed before the kernel, keeps the results bit for bit)."""
    s_star = S0 + max(0.0, v * headway + v * dv / (2.0 * math.sqrt(a_max * COMFORT_DECEL)))
    q = s_star / max(gap, 0.1)
    interaction = q * q
    return max(a_max * (free - interaction), -MAX_DECEL)


@numba.njit(cache=True, inline="always")
def _bound(k: int, n_lanes: int, lane_width: float, half_width: float) -> float:
    """Lateral offset of lane boundary k (+inf past the road's own lanes)."""
    return k * lane_width - half_width if k <= n_lanes else math.inf


@numba.njit(cache=True, inline="always")
def _in_lane(d: float, width: float, active: bool, lane: int, n_lanes: int,
             lane_width: float, half_width: float) -> bool:
    """Does a footprint (centre d, width) overlap lane `lane`?"""
    lo = d - 0.5 * width
    hi = d + 0.5 * width
    return active and lo < _bound(lane + 1, n_lanes, lane_width, half_width) and \
        hi > _bound(lane, n_lanes, lane_width, half_width)


@numba.njit(cache=True, inline="always")
def _lane_line(cls: int, d: float, lane: int, lane_width: float, half_width: float,
               in_lanes_half: float) -> float:
    """The centre of `lane`, or for a cyclist 0.9 m left of its right boundary (one
    on a shoulder keeps its own line)."""
    centre = (lane + 0.5) * lane_width - half_width
    if cls != CYCLIST:
        return centre
    if abs(d) < in_lanes_half:
        return centre - 0.5 * lane_width + 0.9
    return d


@numba.njit(cache=True)
def _leader(i: int, tgt: int, ps: np.ndarray, pd: np.ndarray, plen: np.ndarray,
            pwid: np.ndarray, pact: np.ndarray, nl: int, lw: float, hw: float) -> int:
    """The participant row i follows: the nearest ahead that overlaps it sideways, or
    stands wholly ahead in its target lane `tgt` (-1: none)."""
    best, lead = math.inf, -1
    for j in range(ps.size):
        ds = ps[j] - ps[i]
        if j == i or not ds > 0:
            continue
        gap = abs(ds) - 0.5 * (plen[i] + plen[j])
        lat = abs(pd[i] - pd[j]) < 0.5 * (pwid[i] + pwid[j]) + 0.2
        conflict = (lat and pact[j]) or (
            gap > 0 and _in_lane(pd[j], pwid[j], pact[j], tgt, nl, lw, hw))
        if conflict and ds < best:
            best, lead = ds, j
    return lead


@numba.njit(cache=True)
def _mobil(i: int, lane: int, target: int, acc_i: float, free_i: float, headway_i: float,
           a_max_i: float, ps: np.ndarray, pd: np.ndarray, pv: np.ndarray, plen: np.ndarray,
           pwid: np.ndarray, pacc: np.ndarray, pact: np.ndarray, pfree: np.ndarray,
           nl: int, lw: float, hw: float) -> int:
    """The lane MOBIL picks for row i (left first, then right with the keep-right bias;
    `target` when no change pays). The last participant is the ego, which stands in as
    the new follower when there is none (v0: its speed + 5, in `pfree`)."""
    n = ps.size - 1
    best_gain = -math.inf
    for delta in (1, -1):
        bias = 0.0 if delta == 1 else KEEP_RIGHT_BIAS
        nlane = lane + delta
        if nlane < 0 or nlane >= nl:
            continue
        beside = False
        ld, fl = -1, -1
        ld_ds, fl_ds = math.inf, -math.inf
        for j in range(n + 1):
            if j == i or not _in_lane(pd[j], pwid[j], pact[j], nlane, nl, lw, hw):
                continue
            ds = ps[j] - ps[i]
            if abs(ds) - 0.5 * (plen[i] + plen[j]) < 1.0:
                beside = True
            if ds > 0 and ds < ld_ds:
                ld_ds, ld = ds, j
            if ds < 0 and ds > fl_ds:
                fl_ds, fl = ds, j
        gap_l, dv_l = math.inf, 0.0
        if ld >= 0:
            gap_l, dv_l = abs(ps[ld] - ps[i]) - 0.5 * (plen[i] + plen[ld]), pv[i] - pv[ld]
        a_new = _idm(pv[i], free_i, headway_i, a_max_i, gap_l, dv_l)
        f = fl if fl >= 0 else n
        gap_f = abs(ps[f] - ps[i]) - 0.5 * (plen[i] + plen[f]) if fl >= 0 else math.inf
        a_f_new = _idm(pv[f], pfree[f], 1.5, 1.8, gap_f, pv[f] - pv[i])
        safe = a_new > -B_SAFE and a_f_new > -B_SAFE and not beside
        gain = a_new - acc_i + POLITENESS * (a_f_new - pacc[f] if fl >= 0 else 0.0) + bias
        if safe and gain > LC_THRESHOLD and gain > best_gain:
            best_gain, target = gain, nlane
    return target


@numba.njit(cache=True)
def _blocked(i: int, v_lat: float, ps: np.ndarray, pd: np.ndarray, pact: np.ndarray,
             pes: np.ndarray, ped: np.ndarray) -> bool:
    """Would row i's sideways move run into someone beside it?"""
    sign = 1.0 if v_lat > 0 else -1.0
    for j in range(ps.size):
        if j == i or not pact[j]:
            continue
        side = (pd[j] - pd[i]) * sign
        if abs(ps[j] - ps[i]) < pes[i] + pes[j] + 0.1 and side > 0 and \
                side < ped[i] + ped[j] + 0.4:
            return True
    return False


@numba.njit(cache=True)
def vehicle_step(
    s: np.ndarray, d: np.ndarray, speed: np.ndarray, v_lat: np.ndarray, accel: np.ndarray,
    target_lane: np.ndarray, lc_timer: np.ndarray, length: np.ndarray, width: np.ndarray,
    headway: np.ndarray, cls: np.ndarray, active: np.ndarray, vehicle: np.ndarray,
    lane: np.ndarray, a_max: np.ndarray, free: np.ndarray, ego_free: np.ndarray,
    ext_s: np.ndarray, ext_d: np.ndarray, ego_s: np.ndarray, ego_d: np.ndarray,
    ego_speed: np.ndarray, ego_length: np.ndarray, ego_width: np.ndarray,
    ego_accel: np.ndarray, ego_ext_s: np.ndarray, ego_ext_d: np.ndarray,
    n_lanes: np.ndarray, lane_width: np.ndarray, half_width: np.ndarray,
    in_lanes_half: np.ndarray, decide: np.ndarray, dt: float,
) -> None:
    """One step of every vehicle row (`vehicle`) of every world, in place: s, d, speed,
    v_lat, accel, target_lane of vehicles, lc_timer of every row. Worlds without a
    vehicle are left as they are. (B, N) actor arrays, (B,) ego and road arrays; `free`
    is IDM's free-road term of each row and `ego_free` the ego's as a follower."""
    n_worlds, n = s.shape
    part = np.empty((9, n + 1))  # the participants' columns
    ps, pd, pv, plen, pwid, pacc, pfree, pes, ped = part[0], part[1], part[2], part[3], \
        part[4], part[5], part[6], part[7], part[8]
    pact = np.empty(n + 1, np.bool_)
    acc, new_lat = np.empty(n), np.empty(n)
    lead, new_target = np.empty(n, np.int64), np.empty(n, np.int64)
    for b in range(n_worlds):
        if not vehicle[b].any():
            continue
        for j in range(n):  # the participants: actor rows, then the ego
            ps[j], pd[j], pv[j], plen[j] = s[b, j], d[b, j], abs(speed[b, j]), length[b, j]
            pwid[j], pacc[j], pact[j], pfree[j] = width[b, j], accel[b, j], active[b, j], \
                free[b, j]
            pes[j], ped[j] = ext_s[b, j], ext_d[b, j]
        ps[n], pd[n], pv[n], plen[n] = ego_s[b], ego_d[b], ego_speed[b], ego_length[b]
        pwid[n], pacc[n], pact[n], pfree[n] = ego_width[b], ego_accel[b], True, ego_free[b]
        pes[n], ped[n] = ego_ext_s[b], ego_ext_d[b]
        nl, lw, hw, inh = n_lanes[b], lane_width[b], half_width[b], in_lanes_half[b]
        for i in range(n):
            tgt = target_lane[b, i] if target_lane[b, i] >= 0 else lane[b, i]
            new_target[i], lead[i], new_lat[i] = tgt, -1, 0.0
            if not vehicle[b, i]:
                continue
            k = _leader(i, tgt, ps, pd, plen, pwid, pact, nl, lw, hw)
            lead[i] = k
            gap_l, dv_l = math.inf, 0.0
            if k >= 0:
                gap_l, dv_l = abs(ps[k] - ps[i]) - 0.5 * (plen[i] + plen[k]), pv[i] - pv[k]
            acc[i] = _idm(pv[i], free[b, i], headway[b, i], a_max[b, i], gap_l, dv_l)
            settled = abs(d[b, i] - _lane_line(cls[b, i], d[b, i], tgt, lw, hw, inh)) < 0.3
            if decide[b] and settled and lc_timer[b, i] <= 0:
                new_target[i] = _mobil(i, lane[b, i], tgt, acc[i], free[b, i], headway[b, i],
                                       a_max[b, i], ps, pd, pv, plen, pwid, pacc, pact, pfree,
                                       nl, lw, hw)
            # lateral motion toward the line kept in the (new) target lane, unless
            # someone is beside in the way
            d_goal = _lane_line(cls[b, i], d[b, i], new_target[i], lw, hw, inh)
            lat_max = min(max(0.12 * speed[b, i], 0.25), LAT_SPEED)  # creep if slow
            lat = min(max(0.9 * (d_goal - d[b, i]), -lat_max), lat_max)
            if lat != 0.0 and _blocked(i, lat, ps, pd, pact, pes, ped):
                lat = 0.0
            new_lat[i] = lat
        for i in range(n):  # write back (every row read the old state above)
            changed = new_target[i] != (target_lane[b, i] if target_lane[b, i] >= 0
                                        else lane[b, i])
            lc_timer[b, i] = LC_COOLDOWN if changed else max(lc_timer[b, i] - dt, 0.0)
            if not vehicle[b, i]:
                continue
            v_new = max(speed[b, i] + acc[i] * dt, 0.0)
            s_new = s[b, i] + 0.5 * (speed[b, i] + v_new) * dt
            k = lead[i]
            if k >= 0:  # never closer than MIN_GAP behind the leader, whatever IDM says
                lead_s = ps[k] + max(pv[k] - MAX_DECEL * dt, 0.0) * dt
                s_max = lead_s - 0.5 * (plen[i] + plen[k]) - MIN_GAP
                if s_new > s_max:
                    s_new = max(s[b, i], s_max)
                    v_new = min(v_new, pv[k])
            s[b, i], speed[b, i], d[b, i] = s_new, v_new, d[b, i] + new_lat[i] * dt
            v_lat[b, i], accel[b, i], target_lane[b, i] = new_lat[i], acc[i], new_target[i]
