"""A rule-based driver on ground truth: IDM for speed, MOBIL-style lane choice and pure
pursuit for steering. It reads the world (privileged), so it is the sim's autopilot used
to make data and run episodes, not a planner under test."""

from __future__ import annotations

import numpy as np

from sim.actions import SpeedController, pure_pursuit
from sim.types import PEDESTRIAN
from sim.world.actors import MAX_ACCEL, MAX_BRAKE, MAX_STEER
from sim.world.traffic import B_SAFE, idm, lane_occupancy
from sim.world.world import World

STANDSTILL_GAP = 10.0
"""Bumper gap kept to a stopped leader [m]: room to steer around it."""


class Autopilot:
    """`act(world)` returns a continuous action in [-1, 1]^2 (steer, accel)."""

    def __init__(self, speed_factor: float = 1.0, lane_changes: bool = True) -> None:
        self.speed_factor = speed_factor
        self.lane_changes = lane_changes
        self.target_lane: int | None = None
        self.cooldown = 0.0
        self.pid = SpeedController()

    def reset(self) -> None:
        self.target_lane, self.cooldown = None, 0.0
        self.pid = SpeedController()

    def _leader(
        self, world: World, lanes: list[int], corridor: bool = False
    ) -> tuple[float, float]:
        """Gap [m] and speed [m/s] of the nearest actor ahead in any of `lanes`
        (or, with `corridor`, ahead and overlapping the ego's own width)."""
        a, ego, road = world.state.actors, world.state.ego, world.road
        if corridor:
            occ = a.active & (np.abs(a.d - ego.d) < 0.5 * (a.width + ego.width) + 0.3)
        else:
            occ = lane_occupancy(road, a.d, a.width)[:, lanes].any(axis=1) & a.active
        # a pedestrian crossing the road blocks every lane until it has crossed
        occ |= (a.active & (a.cls == PEDESTRIAN) & (a.cross_state == 2)
                & (np.abs(a.d) < road.paved_half_width))
        ds = a.s - ego.s
        ahead = occ & (ds > 0)
        if not ahead.any():
            return float("inf"), 0.0
        gaps = ds - 0.5 * (a.length + ego.length)
        j = int(np.argmin(np.where(ahead, gaps, np.inf)))
        return float(gaps[j]), float(max(a.speed[j], 0.0))

    def _someone_beside(self, world: World, lane: int) -> bool:
        """An actor in `lane` alongside the ego, or closing in from just behind: merging
        on would hit it (one waiting behind us is no threat: it follows us)."""
        a, ego, road = world.state.actors, world.state.ego, world.road
        occ = lane_occupancy(road, a.d, a.width)[:, lane] & a.active
        gap = np.abs(a.s - ego.s) - 0.5 * (a.length + ego.length)
        closing = (a.s < ego.s) & (a.speed > ego.speed + 1.0) & (gap < 3.0)
        return bool((occ & ((gap < 0.0) | closing)).any())

    def _lane_free(self, world: World, lane: int) -> bool:
        """MOBIL's safety test: nobody alongside, the new follower need not brake
        harder than B_SAFE, and the ego need not either behind its new leader."""
        a, ego, road = world.state.actors, world.state.ego, world.road
        occ = lane_occupancy(road, a.d, a.width)[:, lane] & a.active
        ds = a.s - ego.s
        gap = np.abs(ds) - 0.5 * (a.length + ego.length)
        if (occ & (gap < 1.0)).any():
            return False
        behind = np.flatnonzero(occ & (ds < 0))
        if behind.size:
            f = behind[np.argmax(ds[behind])]
            v_f = max(float(a.speed[f]), 0.0)
            a_f = self._idm(v_f, v_f + 5.0, float(gap[f]), ego.speed, 2.5)
            if a_f < -B_SAFE:
                return False
        gap_l, v_l = self._leader(world, [lane])
        return self._idm(ego.speed, ego.speed + 5.0, gap_l, v_l, 2.5) > -B_SAFE

    def _choose_lane(self, world: World, lane: int, v0: float) -> int:
        if not self.lane_changes or self.cooldown > 0:
            return lane
        gap, v_lead = self._leader(world, [lane])
        if gap > 70.0 or v_lead > v0 - 2.0:
            return lane
        for cand in (lane + 1, lane - 1):
            if 0 <= cand < world.road.n_lanes and self._lane_free(world, cand):
                gap_c, v_c = self._leader(world, [cand])
                if gap_c > gap + 15.0 or (gap_c > 40.0 and v_c > v_lead + 2.0):
                    self.cooldown = 6.0
                    return cand
        return lane

    def controls(self, world: World) -> tuple[float, float]:
        """Wheel angle [rad] and acceleration [m/s^2]."""
        ego, road = world.state.ego, world.road
        lane = int(road.lane_of(ego.d))
        if self.target_lane is None or self.target_lane >= road.n_lanes:
            self.target_lane = lane
        v0 = self.speed_factor * world.scenario.speed_limit
        settled = abs(ego.d - float(road.lane_center(self.target_lane))) < 0.4
        self.cooldown = max(0.0, self.cooldown - world.dt)
        if settled:
            self.target_lane = self._choose_lane(world, self.target_lane, v0)
        elif ego.speed < 1.0:  # stuck mid-change: choose again from where the ego is
            self.target_lane = self._choose_lane(world, lane, v0)
        elif self._someone_beside(world, self.target_lane):
            self.target_lane = lane  # the gap closed while merging: go back and wait
        changing = not settled or self.target_lane != lane
        # traffic in the target lane, and whatever stands in front of the body: close
        # in on the latter only while steering away from it
        gap_t, v_t = self._leader(world, [self.target_lane])
        gap_c, v_c = self._leader(world, [lane], corridor=True)
        acc = min(self._idm(ego.speed, v0, gap_t, v_t, STANDSTILL_GAP),
                  self._idm(ego.speed, v0, gap_c, v_c, 1.0 if changing else STANDSTILL_GAP),
                  self.pid(ego.speed, v0, world.dt))
        lookahead = max(8.0, 0.9 * ego.speed)
        steer = pure_pursuit(ego, road, float(road.lane_center(self.target_lane)), lookahead)
        return steer, min(max(acc, -MAX_BRAKE), MAX_ACCEL)

    @staticmethod
    def _idm(v: float, v0: float, gap: float, v_lead: float, s0: float) -> float:
        if not np.isfinite(gap):
            return float("inf")
        return float(idm(np.array(v), np.array(v0), np.array(1.5), np.array(2.0),
                         np.array(gap), np.array(v - v_lead), s0=s0))

    def act(self, world: World) -> np.ndarray:
        """The continuous env action (normalized steer, accel) that gives `controls`."""
        steer, acc = self.controls(world)
        a = acc / MAX_ACCEL if acc > 0 else acc / MAX_BRAKE
        return np.array([steer / MAX_STEER, a], dtype=np.float32)
