"""A rule-based driver on ground truth: IDM for speed, MOBIL-style lane choice and pure
pursuit for steering. It reads the world (privileged), so it is the sim's autopilot used
to make data and run episodes, not a planner under test."""

from __future__ import annotations

import numpy as np

from sim.actions import SpeedController, pure_pursuit
from sim.types import PEDESTRIAN
from sim.world.actors import MAX_ACCEL, MAX_BRAKE, MAX_STEER
from sim.world.traffic import idm, lane_occupancy
from sim.world.world import World


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

    def _lane_free(self, world: World, lane: int) -> bool:
        a, ego, road = world.state.actors, world.state.ego, world.road
        occ = lane_occupancy(road, a.d, a.width)[:, lane] & a.active
        ds = a.s - ego.s
        closing = np.maximum(a.speed - ego.speed, 0.0)
        danger = (ds > -(12.0 + 3.0 * closing)) & (ds < 14.0 + 0.5 * ego.speed)
        return not (occ & danger).any()

    def _choose_lane(self, world: World, lane: int, v0: float, dt: float) -> int:
        self.cooldown = max(0.0, self.cooldown - dt)
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
        if settled:
            self.target_lane = self._choose_lane(world, self.target_lane, v0, world.dt)
        gap, v_lead = self._leader(world, [self.target_lane])
        if lane != self.target_lane:  # creep past an obstacle in the lane being left
            gap_cur, v_cur = self._leader(world, [lane], corridor=True)
            if gap_cur < 2.0:
                gap, v_lead = gap_cur, v_cur
        acc = float(idm(np.array(ego.speed), np.array(v0), np.array(1.5), np.array(2.0),
                        np.array(gap), np.array(ego.speed - v_lead)))
        free = self.pid(ego.speed, v0, world.dt)
        acc = min(acc, free) if np.isfinite(gap) else free
        lookahead = max(8.0, 0.9 * ego.speed)
        steer = pure_pursuit(ego, road, float(road.lane_center(self.target_lane)), lookahead)
        return steer, min(max(acc, -MAX_BRAKE), MAX_ACCEL)

    def act(self, world: World) -> np.ndarray:
        """The continuous env action (normalized steer, accel) that gives `controls`."""
        steer, acc = self.controls(world)
        a = acc / MAX_ACCEL if acc > 0 else acc / MAX_BRAKE
        return np.array([steer / MAX_STEER, a], dtype=np.float32)
