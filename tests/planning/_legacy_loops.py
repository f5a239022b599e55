"""The two episode loops as they were before `planning.rollout` replaced them (commit
40d36d8), kept as the oracle that pins `drivestack run` and `drivestack eval` metrics."""
# ruff: noqa
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from launch.overlays import video_frame
from launch.runner import EpisodeMetrics
from planning.evaluate import Case, EpisodeResult, collision_types, driving_score
from sim.actions import IDLE


class LegacyPlannerDriver:
    def __init__(self, planner: Any, source: Any, decision_every: int = 3) -> None:
        self.planner, self.source, self.every = planner, source, decision_every
        self.steps = 0

    def reset(self) -> None:
        self.planner.reset()
        self.source.reset()
        self.steps = 0

    def act(self, observation: Any, env: gym.Env) -> Any:
        action = IDLE
        if self.steps % self.every == 0:
            action = self.planner.act(self.source(env.unwrapped))
        self.steps += 1
        return action


class LegacyAutopilotDriver:
    def __init__(self) -> None:
        from sim.autopilot import Autopilot
        self.autopilot = Autopilot()

    def reset(self) -> None:
        self.autopilot.reset()

    def act(self, observation: Any, env: gym.Env) -> np.ndarray:
        return self.autopilot.act(env.unwrapped.world)


def legacy_run_episode(
    env: gym.Env,
    driver: Driver,
    *,
    episode: int,
    seed: int,
    max_steps: int | None = None,
    on_frame: Callable[[np.ndarray], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    overlays: bool = True,
    perceiver: Any = None,
) -> EpisodeMetrics:
    """Drive one episode reset with `seed`. `on_frame` (if given) receives one video
    frame per step, reset included; `on_step` the step count after each step.

    An exception inside the episode ends it with `end="error"` and the exception in
    `error`, so that one broken episode does not lose the others.
    """
    start = time.perf_counter()
    stats = _Stats()
    info: dict[str, Any] = {}
    terminated = truncated = False
    error = None
    try:
        driver.reset()
        obs, info = env.reset(seed=seed)
        stats.start(env)
        if on_frame is not None:
            on_frame(_frame(env, info, overlays, perceiver))
        while not (terminated or truncated) and (max_steps is None or stats.steps < max_steps):
            obs, _, terminated, truncated, info = env.step(driver.act(obs, env))
            stats.add(info)
            if on_frame is not None:
                on_frame(_frame(env, info, overlays, perceiver))
            if on_step is not None:
                on_step(stats.steps)
    except Exception as exc:  # reported in the metrics and by the CLI
        error = f"{type(exc).__name__}: {exc} (at step {stats.steps + 1})"
    sc = info.get("scenario", {})
    return EpisodeMetrics(
        episode=episode, seed=seed, family=sc.get("family", ""),
        time_of_day=sc.get("time_of_day", ""), weather=sc.get("weather", ""),
        n_lanes=int(sc.get("n_lanes", 0)), steps=stats.steps,
        duration=round(stats.steps * env.unwrapped.dt, 6),  # type: ignore[attr-defined]
        wall_time=round(time.perf_counter() - start, 3),
        distance=stats.distance(env), route_completion=float(info.get("route_completion", 0.0)),
        collision=stats.collisions > 0, collisions=stats.collisions, off_road=stats.off_road,
        mean_speed=stats.speed_sum / stats.steps if stats.steps else 0.0,
        min_ttc=stats.min_ttc if math.isfinite(stats.min_ttc) else None,
        hard_brakes=stats.hard_brakes, npc_collisions=stats.npc_collisions,
        end="error" if error else _end_reason(info, terminated, truncated), error=error,
    )


class _Stats:
    """Running sums over the steps of an episode."""

    def __init__(self) -> None:
        self.steps = self.collisions = self.hard_brakes = self.npc_collisions = 0
        self.off_road = False
        self.speed_sum = 0.0
        self.min_ttc = math.inf
        self.s0: float | None = None

    def start(self, env: gym.Env) -> None:
        self.s0 = float(env.unwrapped.world.state.ego.s)  # type: ignore[attr-defined]

    def add(self, info: dict[str, Any]) -> None:
        ev = info["events"]
        self.steps += 1
        self.collisions += bool(ev["collision"])
        self.hard_brakes += bool(ev["hard_brake"])
        self.npc_collisions += int(ev["npc_collisions"])
        self.off_road = self.off_road or bool(ev["off_road"])
        self.speed_sum += float(info["speed"])
        self.min_ttc = min(self.min_ttc, float(ev["min_ttc"]))

    def distance(self, env: gym.Env) -> float:
        if self.s0 is None:
            return 0.0
        return float(env.unwrapped.world.state.ego.s) - self.s0  # type: ignore[attr-defined]


def _end_reason(info: dict[str, Any], terminated: bool, truncated: bool) -> str:
    if terminated:
        return "collision" if info["events"]["collision"] else "off_road"
    if truncated:
        return "route_complete" if info["route_completion"] >= 1.0 - 1e-9 else "time_limit"
    return "max_steps"


def _frame(env: gym.Env, info: dict[str, Any], overlays: bool, perceiver: Any = None
           ) -> np.ndarray:
    human = env.render()
    camera = env.unwrapped.frame.image  # type: ignore[attr-defined]
    assert isinstance(human, np.ndarray)
    predicted = lanes = None
    if perceiver is not None:
        seen = perceiver([camera])[0]
        predicted = (seen.detections.boxes_xyxy, seen.detections.classes)
        if seen.lanes is not None:
            lanes = (seen.lanes.rows, seen.lanes.xs)
    return video_frame(camera, info.get("ground_truth"), human, overlays=overlays,
                       predicted=predicted, predicted_lanes=lanes)




class _Tally:
    """Running sums over the steps of an episode."""

    def __init__(self, env: Any) -> None:
        assert env.world is not None
        self.env, self.world = env, env.world
        self.s0 = env.world.state.ego.s
        self.prev_accel = env.world.state.ego.accel
        self.steps = 0
        self.speed = self.jerk = 0.0
        self.hits = {"vehicle": 0, "pedestrian": 0, "static": 0}
        self.off_road = 0

    def add(self, info: dict[str, Any]) -> None:
        ev, ego, a = info["events"], self.world.state.ego, self.world.state.actors
        self.steps += 1
        self.speed += float(info["speed"])
        self.jerk += abs(ego.accel - self.prev_accel) / self.env.dt
        self.prev_accel = ego.accel
        if ev["collision"]:
            for k, n in collision_types(ev["collided_track_ids"], a.track_id[a.active],
                                        a.cls[a.active]).items():
                self.hits[k] += n
        self.off_road += bool(ev["off_road"])


def legacy_eval_episode(planner: Any, source: Any, env: Any, seed: int,
                max_steps: int, decision_every: int = 3, *, name: str = "",
                case: Case | None = None) -> EpisodeResult:
    """Drive one episode of the env's current scenario config, reset with `seed`, for at
    most `max_steps` steps. An exception ends the episode with end="error"."""
    start = time.perf_counter()
    planner.reset()
    source.reset()
    env.reset(seed=seed, options={"scenario_seed": seed})
    tally = _Tally(env)
    info: dict[str, Any] = {"route_completion": 0.0}
    terminated = truncated = False
    error = None
    try:
        while tally.steps < max_steps and not (terminated or truncated):
            action = IDLE
            if tally.steps % decision_every == 0:
                action = planner.act(source(env))
            _, _, terminated, truncated, info = env.step(action)
            tally.add(info)
    except Exception as exc:  # one broken episode must not lose the suite
        error = f"{type(exc).__name__}: {exc} (at step {tally.steps + 1})"
    return _result(tally, info, terminated, truncated, error, name, case, seed, start)


def _result(t: _Tally, info: dict[str, Any], terminated: bool, truncated: bool,
            error: str | None, name: str, case: Case | None, seed: int, start: float
            ) -> EpisodeResult:
    sc = t.world.scenario
    rc = float(info.get("route_completion", 0.0))
    infractions = {**t.hits, "off_road": t.off_road}
    if error:
        end = "error"
    elif terminated:
        end = "collision" if sum(t.hits.values()) else "off_road"
    elif truncated:
        end = "route_complete" if rc >= 1.0 - 1e-9 else "time_limit"
    else:
        end = "max_steps"
    return EpisodeResult(
        planner=name, set=case.set if case else "", family=sc.family,
        time_of_day=sc.time_of_day, weather=sc.weather, seed=seed, steps=t.steps,
        duration=round(t.steps * t.env.dt, 6), distance=float(t.world.state.ego.s - t.s0),
        route_completion=rc, collisions_vehicle=t.hits["vehicle"],
        collisions_pedestrian=t.hits["pedestrian"], collisions_static=t.hits["static"],
        off_road=t.off_road, mean_speed=t.speed / t.steps if t.steps else 0.0,
        jerk=t.jerk / t.steps if t.steps else 0.0,
        success=end in ("route_complete", "time_limit", "max_steps"),
        driving_score=driving_score(rc, infractions), end=end,
        wall_time=round(time.perf_counter() - start, 3), error=error)



