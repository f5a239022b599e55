"""A rule-based planner (IDM-style speed, MOBIL-style lane changes) choosing one meta
action per decision from a `Scene` (perception's or the privileged one), and the
`Planner` protocol it shares with `planning.policy.PolicyPlanner`. Each meta action is
applied once: the env's `MetaController` moves its target speed by `SPEED_STEP` per
FASTER / SLOWER and its target lane by one per LANE_LEFT / LANE_RIGHT.

- Speed: `RulePlanner` keeps a copy of the controller's target speed (the speed at reset,
  then +-SPEED_STEP, clamped as the controller clamps) and steps it toward the speed
  limit capped by Gipps' safe speed behind every object in the ego's path (objects moving
  sideways are tested where they will soon be) and before pedestrians that may step into
  it. SLOWER comes at once, FASTER only when the last few decisions all allow it.
- Lanes: a change needs a slow ego lane, an existing lane with a clearly higher safe
  speed and a larger gap (or a blocked ego lane), room to merge, and a cooldown. The
  camera sees only ahead, so: what was seen close in a neighbour lane is remembered while
  it may be beside the ego; no discretionary change in the first seconds (what was beside
  the ego then was never seen), none while far below the limit (unseen traffic from
  behind would close in fast); a change is aborted when something shows up beside; it
  returns right only after the right lane has looked empty for long.
- Closures: a standing object in the path (cones, a broken-down car) closes the lane. The
  ego stops `closure_standstill` short of it and, nearly stopped, leaves the lane though
  slow; while it steers out, only its body's own path limits its speed, so it creeps past.
  Stopped before a pedestrian who keeps standing off the road, it goes on after
  `ped_wait`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from planning.scene import Scene
from sim.actions import FASTER, IDLE, LANE_LEFT, LANE_RIGHT, SLOWER, SPEED_STEP
from sim.types import CAR, CONE, CYCLIST, PEDESTRIAN, TRUCK, check_number

EGO_LENGTH = 4.6
"""Ego body length [m] (sim.types.EgoState)."""
EGO_HALF_WIDTH = 0.95
"""Half the ego's body width [m]."""
HALF_WIDTH = {CAR: 1.0, TRUCK: 1.3, PEDESTRIAN: 0.3, CYCLIST: 0.3, CONE: 0.2}
"""Half width assumed per class [m] (the largest body of the class)."""
LENGTH = {CAR: 5.2, TRUCK: 15.5, PEDESTRIAN: 0.5, CYCLIST: 1.8, CONE: 0.4}
"""Length assumed per class [m] (the longest body of the class)."""
MAX_TARGET_FACTOR = 1.2
"""The controller caps its target speed at this times the speed limit."""


class Planner(Protocol):
    """Chooses one meta action per decision from the scene of that moment."""

    def reset(self) -> None: ...

    def act(self, scene: Scene) -> int: ...


@dataclass(frozen=True)
class RuleParams:
    """Tuning of `RulePlanner` (SI units)."""

    decision_dt: float = 3.0 / 15.0
    """Time between two calls of `act` [s] (3 env steps at 15 Hz)."""
    reaction: float = 1.0
    """Reaction time of the safe-following speed [s]."""
    decel: float = 3.0
    """Braking the safe-following speed plans with [m/s^2]."""
    standstill: float = 5.0
    """Gap kept to a stopped object ahead [m]."""
    corridor_margin: float = 0.5
    """Lateral clearance added to both half widths when testing the ego's path [m]."""
    slow_margin: float = 6.0
    """The ego lane is slow when its safe speed is this far below the limit [m/s]."""
    gain: float = 5.0
    """Safe speed a lane change must gain over staying [m/s]."""
    gap_gain: float = 15.0
    """Extra gap ahead a lane change must gain [m]."""
    min_gap: float = 12.0
    """Smallest gap ahead in a target lane, plus `min_gap_time` x speed [m]."""
    min_gap_time: float = 0.8
    """Time part of the smallest gap in a target lane [s]."""
    cooldown: float = 4.0
    """Time between two lane changes [s]."""
    warmup: float = 10.0
    """No lane change this long after reset: what was beside the ego then was never seen,
    and by now has mostly passed or fallen back [s]."""
    keep_right_after: float = 15.0
    """The right lane must have looked empty this long before returning to it [s]."""
    keep_right_gap: float = 60.0
    """Free distance ahead in the right lane needed to return right [m]."""
    memory_gap: float = 15.0
    """Objects seen closer than this in a neighbour lane are remembered [m]."""
    memory_time: float = 20.0
    """Longest a remembered object blocks its lane [s]."""
    settled_offset: float = 0.5
    """Largest lane offset [m] at which a lane change has ended."""
    ped_speed: float = 1.6
    """Fastest pedestrian lateral speed assumed [m/s]."""
    urgent_decel: float = 4.0
    """When the ego lane's safe speed is this far below the speed, a lane change may
    skip the warm-up [m/s]."""
    min_change_speed: float = 7.0
    """No lane change below this speed: a slow change lingers across both lanes [m/s]."""
    max_closing: float = 15.0
    """No lane change while this far below the speed limit: unseen traffic from behind
    would close in too fast [m/s]."""
    """Objects this close with no gap rate yet are taken as stopped [m]."""
    settle: int = 3
    """Decisions the desired speed must allow a FASTER in a row."""
    cut_in_time: float = 1.5
    """Objects moving sideways are tested where they will be this much later [s]."""
    closure_range: float = 60.0
    """A standing object in the ego's path closer than this closes the lane (cones, a
    broken-down car): see `closure_change_speed` [m]."""
    standing_speed: float = 1.0
    """Objects slower than this over ground are standing [m/s]."""
    closure_change_speed: float = 3.0
    """Below this speed before a closed lane, the ego leaves it though slow (the camera
    sees nothing behind: faster, the guards against unseen traffic hold) [m/s]."""
    closure_standstill: float = 10.0
    """Gap kept to a standing object that closes the ego lane: room to steer out [m]."""
    change_margin: float = 0.2
    """Lateral clearance of the body's own path while it steers out of a closed lane [m]."""
    change_standstill: float = 2.0
    """Gap kept to what stands in the body's path while it steers out of a closed lane
    (it creeps up to it while turning away) [m]."""
    creep_speed: float = 1.0
    """From a stop, a desired speed this high already asks for one speed step (the ego
    creeps forward, braking again at the next decision) [m/s]."""
    ped_wait: float = 3.0
    """Stopped this long before a pedestrian who stands still off the road, the ego goes
    on: it is waiting for the ego, not about to cross [s]."""


def safe_speed(gap: float, leader_speed: float, p: RuleParams,
               standstill: float | None = None) -> float:
    """Gipps' safe speed [m/s]: the fastest speed from which, after `p.reaction` seconds,
    braking at `p.decel` stops `standstill` (default `p.standstill`) behind a leader
    braking as hard."""
    room = gap - (p.standstill if standstill is None else standstill)
    b, tau = p.decel, p.reaction
    disc = (b * tau) ** 2 + max(leader_speed, 0.0) ** 2 + 2.0 * b * room
    return max(0.0, -b * tau + math.sqrt(max(disc, 0.0)))


def _half(cls: np.ndarray) -> np.ndarray:
    return np.array([HALF_WIDTH.get(int(c), 1.0) for c in cls])


def in_corridor(objects: np.ndarray, centre: float, p: RuleParams) -> np.ndarray:
    """Which objects ahead overlap a path along `centre` (left of the ego lane centre [m])
    as wide as the ego plus margins."""
    if not len(objects):
        return np.zeros(0, bool)
    reach = EGO_HALF_WIDTH + _half(objects[:, 3]) + p.corridor_margin
    return (np.abs(objects[:, 1] - centre) < reach) & (objects[:, 0] > -2.0)


def lane_safe_speed(objects: np.ndarray, mask: np.ndarray, speed: float, p: RuleParams,
                    standing_gap: float | None = None) -> tuple[float, float]:
    """Safe speed [m/s] behind every masked object (the slowest of their Gipps speeds)
    and the gap to the nearest one [m] (inf, inf when none). An object perception has not
    tracked yet carries the gap rate -speed (`planning.scene.with_gap_rates`), so it is
    taken as stopped. `standing_gap`: the standstill gap kept to standing objects (other
    than pedestrians; default `p.standstill`)."""
    if not mask.any():
        return math.inf, math.inf
    rows = objects[mask]
    lead = np.maximum(speed + rows[:, 4], 0.0)
    gaps = np.full(len(rows), p.standstill)
    if standing_gap is not None:
        gaps[(lead < p.standing_speed) & (rows[:, 3] != PEDESTRIAN)] = standing_gap
    v = min(safe_speed(float(g), float(vl), p, float(s))
            for g, vl, s in zip(rows[:, 0], lead, gaps, strict=True))
    return v, float(rows[:, 0].min())


@dataclass
class _Ghost:
    """An object that was close in a neighbour lane and may now be beside the ego."""

    lane: int
    """Lane index counted from the ego's lane at reset (left positive)."""
    gap: float
    """Predicted gap [m] (negative: its near side is behind the ego's front)."""
    rate: float
    """Gap rate [m/s]."""
    clear: float
    """It no longer overlaps the ego once the gap is below -clear [m]."""
    age: float = 0.0
    """Time since last seen [s]."""


@dataclass
class _Memory:
    """What the planner carries from one decision to the next."""

    target_speed: float | None = None
    """Its copy of the controller's target speed [m/s]."""
    lane: int = 0
    """Ego lane counted from the lane at reset (left positive)."""
    target_lane: int = 0
    """Lane the controller is steering to, same count."""
    origin_lane: int = 0
    """Lane the last lane change started from, same count."""
    since_change: float = math.inf
    """Time since the last lane change was asked for [s]."""
    time: float = 0.0
    """Time since reset [s]."""
    leaving: bool = False
    """The lane change under way leaves a closed lane (until centred in the new one)."""
    stopped: float = 0.0
    """How long the ego has stood still [s]."""
    prev_offset: float | None = None
    recent: list[float] = field(default_factory=list)
    """Desired speeds of the last decisions [m/s]."""
    right_empty: float = 0.0
    """How long the right lane has looked empty for `keep_right_gap` ahead [s]."""
    ghosts: list[_Ghost] = field(default_factory=list)
    lateral: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(K,) lateral speed [m/s] (left positive) of each object of the last scene."""
    prev_objects: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))


class RulePlanner:
    """IDM/Gipps speed choice and MOBIL-style lane changes on a `Scene` (see module doc)."""

    def __init__(self, params: RuleParams | None = None, lane_changes: bool = True) -> None:
        self.params = params or RuleParams()
        self.lane_changes = lane_changes
        self.mem = _Memory()

    def set_decision_dt(self, dt: float) -> None:
        """The time between two calls of `act` [s], when the caller decides at another
        cadence than `RuleParams.decision_dt` (`planning.rollout.PlannerAgent` sets it)."""
        check_number("decision_dt", dt, 0.0, 3600.0, unit="s", open_lo=True)
        self.params = replace(self.params, decision_dt=float(dt))

    def reset(self) -> None:
        self.mem = _Memory()

    def act(self, scene: Scene) -> int:
        """The meta action for this decision."""
        self._observe(scene)
        v_des = self.desired_speed(scene)
        action = None
        if self.lane_changes:
            action = self._abort(scene)
            if action is None:
                action = self._lane_action(scene)
        return self._speed_action(scene, v_des) if action is None else action

    # -- memory ----------------------------------------------------------------------------
    def _observe(self, scene: Scene) -> None:
        m, p = self.mem, self.params
        if m.target_speed is None:
            m.target_speed = scene.speed  # the controller starts at the speed at reset
        m.since_change += p.decision_dt
        m.time += p.decision_dt
        m.stopped = m.stopped + p.decision_dt if scene.speed < 0.5 else 0.0
        if m.leaving and m.target_lane == m.lane and abs(scene.lane_offset) < p.settled_offset:
            m.leaving = False  # out of the closed lane and centred in the new one
        shift = 0
        if scene.lane_seen:
            if m.prev_offset is not None:
                jump = m.prev_offset - scene.lane_offset
                if abs(jump) > 0.6 * scene.lane_width:
                    shift = int(round(jump / scene.lane_width))
                    m.lane += shift
            m.prev_offset = scene.lane_offset
        if m.target_lane != m.lane and m.since_change > 3 * p.cooldown:
            m.target_lane = m.lane  # a crossing went unseen: trust where we are
        self._track(scene, shift)
        self._remember(scene)
        gap_right = self.lane_speed(scene, -1)[1] if scene.right_lane else 0.0
        empty = shift == 0 and gap_right > p.keep_right_gap
        m.right_empty = m.right_empty + p.decision_dt if empty else 0.0

    def _track(self, scene: Scene, shift: int) -> None:
        """Lateral speed of each object, from the nearest match (same class, predicted
        gap and lateral position) in the previous decision's scene."""
        p, m, obj = self.params, self.mem, scene.objects
        prev = m.prev_objects.copy()
        prev[:, 1] -= shift * scene.lane_width  # lateral positions from the new lane
        lat = np.zeros(len(obj))
        for i, o in enumerate(obj):
            same = np.flatnonzero(prev[:, 3] == o[3])
            if not same.size:
                continue
            expect = prev[same, 0] + o[4] * p.decision_dt
            dist = np.abs(expect - o[0]) + np.abs(prev[same, 1] - o[1])
            j = int(np.argmin(dist))
            if dist[j] < 2.0:
                raw = (o[1] - prev[same[j], 1]) / p.decision_dt
                lat[i] = 0.5 * m.lateral[same[j]] + 0.5 * raw
        m.prev_objects, m.lateral = obj.astype(np.float64), lat

    def _remember(self, scene: Scene) -> None:
        """Update the objects that may be beside the ego (see `_Ghost`)."""
        p, m, obj = self.params, self.mem, scene.objects
        kept = []
        for g in m.ghosts:
            g.gap += g.rate * p.decision_dt
            g.age += p.decision_dt
            if g.gap < 4.0 and g.gap > -g.clear and g.age < p.memory_time:
                kept.append(g)  # out of the camera's view, maybe beside the ego
        for o in obj[(np.abs(obj[:, 2]) <= 1) & (obj[:, 0] < p.memory_gap)]:
            lane = m.lane + int(o[2])
            kept = [g for g in kept if not (g.lane == lane and abs(g.gap - o[0]) < 6.0)]
            clear = LENGTH.get(int(o[3]), 5.0) + EGO_LENGTH + 3.0
            kept.append(_Ghost(lane=lane, gap=float(o[0]), rate=min(float(o[4]), 0.0),
                               clear=clear))
        m.ghosts = kept

    # -- speed -----------------------------------------------------------------------------
    def _path_mask(self, scene: Scene, centre: float) -> np.ndarray:
        """Objects in a path along `centre` now or, moving sideways, within
        `cut_in_time`."""
        p, obj = self.params, scene.objects
        ahead = obj.copy()
        ahead[:, 1] += self.mem.lateral * p.cut_in_time
        return in_corridor(obj, centre, p) | in_corridor(ahead, centre, p)

    def lane_speed(self, scene: Scene, rel: int) -> tuple[float, float]:
        """Safe speed [m/s] and gap [m] ahead in lane `rel` (0 ego, +1 left, -1 right).
        In the ego lane, standing objects are kept `closure_standstill` away (room to
        steer out); while the ego steers out of a closed lane, only its body's own path
        counts, with `change_margin`."""
        p = self.params
        if rel == 0 and self.mem.leaving:
            body = replace(p, corridor_margin=p.change_margin)
            mask = in_corridor(scene.objects, scene.lane_offset, body)
            return lane_safe_speed(scene.objects, mask, scene.speed, p, p.change_standstill)
        mask = self._path_mask(scene, rel * scene.lane_width)
        if rel == 0:  # the body's own path too, wherever it is in the lane
            mask |= in_corridor(scene.objects, scene.lane_offset, p)
            return lane_safe_speed(scene.objects, mask, scene.speed, p, p.closure_standstill)
        return lane_safe_speed(scene.objects, mask, scene.speed, p)

    def desired_speed(self, scene: Scene) -> float:
        """min(speed limit, safe speed in the ego lane (and the target lane while
        changing), stopping speed before pedestrians that may step into the path)."""
        v = min(scene.speed_limit, self.lane_speed(scene, 0)[0])
        rel = self.mem.target_lane - self.mem.lane
        if rel:
            v = min(v, self.lane_speed(scene, int(np.sign(rel)))[0])
        return min(v, self._pedestrian_speed(scene))

    def _pedestrian_speed(self, scene: Scene) -> float:
        """Stop before a pedestrian that stands still or walks toward the path and could
        reach it before the ego has passed."""
        p, v, obj = self.params, math.inf, scene.objects
        reach = EGO_HALF_WIDTH + HALF_WIDTH[PEDESTRIAN] + p.corridor_margin
        for k in np.flatnonzero((obj[:, 3] == PEDESTRIAN) & (obj[:, 0] > -1.0)):
            gap, left, rate = float(obj[k, 0]), float(obj[k, 1]), float(obj[k, 4])
            v_lat = float(self.mem.lateral[k])
            outside = abs(left) - reach
            toward = v_lat * np.sign(left) < -0.3
            along = scene.speed + rate  # an untracked object's rate is -speed: standing
            if outside > 0 and not toward and (abs(v_lat) > 0.3 or abs(along) > 0.5):
                continue  # walking along the kerb or away from the road
            if outside > 0 and self.mem.stopped >= p.ped_wait:
                continue  # standing at the kerb while the ego waited: it lets the ego go
            t_ped = max(outside, 0.0) / p.ped_speed
            t_ego = (gap + EGO_LENGTH + 1.0) / max(scene.speed, 3.0)
            if t_ped < t_ego + 1.0:
                v = min(v, safe_speed(gap, 0.0, p))
        return v

    def _speed_action(self, scene: Scene, v_des: float) -> int:
        """Step the target speed toward `v_des`: down as soon as it is above, up only
        when the last `settle` decisions all allow it (noisy scenes then make fewer
        changes); from a stop, creeping speed is enough."""
        m, p = self.mem, self.params
        assert m.target_speed is not None
        m.recent = [*m.recent[1 - p.settle:], v_des] if p.settle > 1 else [v_des]
        if m.target_speed > v_des + 0.25 and m.target_speed > 0.0:
            m.target_speed = max(m.target_speed - SPEED_STEP, 0.0)
            return SLOWER
        cap = MAX_TARGET_FACTOR * scene.speed_limit
        allowed = min(*m.recent, cap)
        creep = m.target_speed < 0.5 * SPEED_STEP and allowed >= p.creep_speed
        if creep or m.target_speed + SPEED_STEP <= allowed + 0.25:
            m.target_speed = min(m.target_speed + SPEED_STEP, cap)
            return FASTER
        return IDLE

    # -- lanes -----------------------------------------------------------------------------
    def _settled(self, scene: Scene, urgent: bool = False) -> bool:
        """Not changing lanes, centred (or standing), past the cooldown and (unless
        `urgent`) past the warm-up."""
        m, p = self.mem, self.params
        waited = m.since_change >= p.cooldown and (m.time >= p.warmup or urgent)
        stopped = m.stopped >= p.decision_dt  # stands off-centre: may decide anew
        return (scene.lane_seen and m.target_lane == m.lane and waited
                and (stopped or (abs(scene.lane_offset) < p.settled_offset
                                 and abs(scene.heading_error) < 0.05)))

    def _beside(self, scene: Scene, rel: int) -> bool:
        """Something remembered beside the ego in lane `rel`, or seen close in it (now or
        moving into it)."""
        m, p = self.mem, self.params
        if any(g.lane == m.lane + rel for g in m.ghosts):
            return True
        close = scene.objects[:, 0] < p.min_gap
        return bool((close & self._path_mask(scene, rel * scene.lane_width)).any())

    def lane_free(self, scene: Scene, rel: int, urgent: bool = False) -> bool:
        """Lane `rel` exists, nothing remembered beside the ego in it, and its gap ahead
        leaves room to merge without braking hard (`urgent`: a shorter gap will do)."""
        p = self.params
        if not (scene.left_lane if rel > 0 else scene.right_lane) or self._beside(scene, rel):
            return False
        v, gap = self.lane_speed(scene, rel)
        scale = 0.6 if urgent else 1.0
        need = scale * (p.min_gap + p.min_gap_time * scene.speed)
        return gap > need and v >= scene.speed - 1.0

    def closed(self, scene: Scene) -> bool:
        """A standing object (a cone, a stopped car) in the ego's path within
        `closure_range`: the lane is closed ahead."""
        p, obj = self.params, scene.objects
        standing = np.abs(scene.speed + obj[:, 4]) < p.standing_speed
        near = obj[:, 0] < p.closure_range
        mask = self._path_mask(scene, 0.0) | in_corridor(obj, scene.lane_offset, p)
        return bool((mask & standing & near & (obj[:, 3] != PEDESTRIAN)).any())

    def _lane_action(self, scene: Scene) -> int | None:
        p = self.params
        v_ego, gap_ego = self.lane_speed(scene, 0)
        # stopped before a closed lane: leave it, warm-up and slow speed or not
        closed = scene.speed < p.closure_change_speed and self.closed(scene)
        urgent = closed or v_ego < scene.speed - p.urgent_decel  # must brake hard to stay
        limit = scene.speed_limit
        slow = scene.speed < max(p.min_change_speed, limit - p.max_closing)
        if (slow and not closed) or not self._settled(scene, urgent):
            return None
        if v_ego < limit - p.slow_margin:  # blocked or slow: overtake, left first
            for rel in (1, -1):
                v, gap = self.lane_speed(scene, rel)
                better = min(v, limit) > v_ego + p.gain and (
                    urgent or gap > gap_ego + p.gap_gain)
                if better and self.lane_free(scene, rel, urgent):
                    return self._change(rel, leaving=closed)
            return None
        late = self.mem.time >= 2 * p.warmup  # optional: wait longer for unseen neighbours
        if late and self.mem.right_empty >= p.keep_right_after and self.lane_free(scene, -1):
            return self._change(-1)  # free road: keep right
        return None

    def _abort(self, scene: Scene) -> int | None:
        """Steer back when something shows up beside the ego in the lane it is moving to
        before it has crossed into it."""
        m = self.mem
        rel = m.target_lane - m.lane
        if not rel or m.lane != m.origin_lane or not self._beside(scene, rel):
            return None
        m.target_lane = m.lane
        m.since_change = 0.0
        return LANE_RIGHT if rel > 0 else LANE_LEFT

    def _change(self, rel: int, leaving: bool = False) -> int:
        m = self.mem
        m.leaving = leaving
        m.origin_lane = m.lane
        m.target_lane = m.lane + rel
        m.since_change = 0.0
        return LANE_LEFT if rel > 0 else LANE_RIGHT
