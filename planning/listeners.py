"""Episode statistics as rollout listeners: what `drivestack run` (`RunStatistics`) and
`drivestack eval` (`DrivingStatistics`) report for one episode, each computed from the
steps `planning.rollout.rollout` hands them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from planning.rollout import EpisodeEnd, Listener, Step
from sim.env import DrivingEnv


@dataclass
class EpisodeMetrics:
    """What one `drivestack run` episode did (SI units)."""

    episode: int
    seed: int
    family: str
    time_of_day: str
    weather: str
    n_lanes: int
    steps: int
    duration: float
    """Simulated time [s]."""
    wall_time: float
    """Real time the episode took, recording included [s]."""
    distance: float
    """Arc length the ego advanced along the route [m]."""
    route_completion: float
    """Fraction of the route driven, 0..1."""
    collision: bool
    collisions: int
    """Steps with an ego collision (episodes end at the first one)."""
    off_road: bool
    mean_speed: float
    """[m/s]"""
    min_ttc: float | None
    """Smallest time to collision over the episode [s]; None if nothing was ever ahead."""
    hard_brakes: int
    """Steps that braked harder than 4 m/s^2."""
    npc_collisions: int
    """Sum over steps of overlapping non-ego pairs (the sim should keep this at 0)."""
    end: str
    """collision | off_road | route_complete | time_limit | max_steps | error"""
    video: str | None = None
    """File name of the episode's mp4 in the output folder, if recorded."""
    rerun: str | None = None
    """Path of the episode's Rerun recording (.rrd), if recorded (`drivestack run --rerun`)."""
    error: str | None = None
    """The exception that ended the episode (end == "error")."""


class RunStatistics(Listener):
    """`EpisodeMetrics` of one episode (`self.metrics` after it ends)."""

    def __init__(self, episode: int, seed: int) -> None:
        self.episode, self.seed = episode, seed
        self.env: DrivingEnv | None = None
        self.steps = self.collisions = self.hard_brakes = self.npc_collisions = 0
        self.off_road = False
        self.speed_sum = 0.0
        self.min_ttc = math.inf
        self.s0: float | None = None
        self.metrics: EpisodeMetrics | None = None

    def on_reset(self, env: DrivingEnv, seed: int | None) -> None:
        assert env.world is not None
        self.env, self.s0 = env, float(env.world.state.ego.s)

    def on_step(self, step: Step) -> None:
        if step.index == 0:
            return
        ev, info = step.events, step.info
        self.steps += 1
        self.collisions += bool(ev["collision"])
        self.hard_brakes += bool(ev["hard_brake"])
        self.npc_collisions += int(ev["npc_collisions"])
        self.off_road = self.off_road or bool(ev["off_road"])
        self.speed_sum += float(info["speed"])
        self.min_ttc = min(self.min_ttc, float(ev["min_ttc"]))

    def on_end(self, end: EpisodeEnd) -> None:
        sc = end.info.get("scenario", {})
        world = self.env.world if self.env is not None else None
        distance = 0.0 if world is None or self.s0 is None else float(world.state.ego.s) - self.s0
        dt = self.env.dt if self.env is not None else 0.0
        self.metrics = EpisodeMetrics(
            episode=self.episode, seed=self.seed, family=sc.get("family", ""),
            time_of_day=sc.get("time_of_day", ""), weather=sc.get("weather", ""),
            n_lanes=int(sc.get("n_lanes", 0)), steps=self.steps,
            duration=round(self.steps * dt, 6), wall_time=end.wall_time,
            distance=distance, route_completion=float(end.info.get("route_completion", 0.0)),
            collision=self.collisions > 0, collisions=self.collisions, off_road=self.off_road,
            mean_speed=self.speed_sum / self.steps if self.steps else 0.0,
            min_ttc=self.min_ttc if math.isfinite(self.min_ttc) else None,
            hard_brakes=self.hard_brakes, npc_collisions=self.npc_collisions,
            end=end.end, error=end.error)


class DrivingStatistics(Listener):
    """The driving benchmark's `EpisodeResult` of one episode (`self.result` after it
    ends): infractions by type, jerk, driving score (planning.evaluate)."""

    def __init__(self, name: str = "", case: Any = None, seed: int = 0,
                 route: bool = False) -> None:
        self.name, self.case, self.seed, self.route = name, case, seed, route
        self.result: Any = None

    def on_reset(self, env: DrivingEnv, seed: int | None) -> None:
        assert env.world is not None
        self.env, self.world = env, env.world
        self.s0 = env.world.state.ego.s
        self.prev_accel = env.world.state.ego.accel
        self.steps = 0
        self.speed = self.jerk = 0.0
        self.hits = {"vehicle": 0, "pedestrian": 0, "static": 0}
        self.off_road = 0
        self.min_ttc = math.inf
        self.overrides = 0

    def on_step(self, step: Step) -> None:
        if step.index == 0:
            return
        from planning.evaluate import collision_types

        ev, ego, a = step.events, self.world.state.ego, self.world.state.actors
        self.steps += 1
        self.speed += float(step.info["speed"])
        self.jerk += abs(ego.accel - self.prev_accel) / self.env.dt
        self.prev_accel = ego.accel
        if ev["collision"]:
            for k, n in collision_types(ev["collided_track_ids"], a.track_id[a.active],
                                        a.cls[a.active]).items():
                self.hits[k] += n
        self.off_road += bool(ev["off_road"])
        ttc = float(ev.get("min_ttc", math.inf))
        if math.isfinite(ttc):
            self.min_ttc = min(self.min_ttc, ttc)
        self.overrides += bool(step.overridden)

    def on_end(self, end: EpisodeEnd) -> None:
        from planning.evaluate import EpisodeResult, driving_score

        sc = self.world.scenario
        rc = float(end.info.get("route_completion", 0.0))
        reason = end.end
        if reason == "collision" and not sum(self.hits.values()):
            reason = "off_road"
        self.result = EpisodeResult(
            planner=self.name, set=self.case.set if self.case else "", family=sc.family,
            time_of_day=sc.time_of_day, weather=sc.weather, seed=self.seed, steps=self.steps,
            duration=round(self.steps * self.env.dt, 6),
            distance=float(self.world.state.ego.s - self.s0), route_completion=rc,
            collisions_vehicle=self.hits["vehicle"],
            collisions_pedestrian=self.hits["pedestrian"],
            collisions_static=self.hits["static"], off_road=self.off_road,
            mean_speed=self.speed / self.steps if self.steps else 0.0,
            jerk=self.jerk / self.steps if self.steps else 0.0,
            success=(reason == "route_complete" if self.route else
                     reason in ("route_complete", "time_limit", "max_steps")),
            driving_score=driving_score(rc, {**self.hits, "off_road": self.off_road}),
            end=reason, wall_time=end.wall_time, error=end.error,
            speed_limit=float(sc.speed_limit),
            min_ttc=self.min_ttc if math.isfinite(self.min_ttc) else None,
            shield_interventions=self.overrides, route=self.route)
