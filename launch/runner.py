"""The `drivestack run` job: episodes with a driver, per-episode metrics, mp4 recordings.

`run_job(config)` reads top to bottom: make the env and the driver, then for each
episode reset with `seed + episode`, drive until the episode ends (or `max_steps`),
record the video frames, and rewrite metrics.csv / metrics.json atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np

import sim  # noqa: F401 - registers the drivestack/ env ids
from launch.config import RunConfig
from launch.overlays import video_frame
from sim.autopilot import Autopilot
from sim.outputs import Job, OutputFolder, atomic_write_text, json_text

X264_PARAMS = ["-preset", "veryfast"]
"""Extra ffmpeg output options: about 2x faster to encode than the default preset."""


@dataclass
class EpisodeMetrics:
    """What one episode did (SI units)."""

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
    error: str | None = None
    """The exception that ended the episode (end == "error")."""


class Driver(Protocol):
    """Chooses the env action; later drivers (rule, rl) plug in here."""

    def reset(self) -> None: ...

    def act(self, observation: Any, env: gym.Env) -> np.ndarray: ...


class AutopilotDriver:
    """The sim's privileged autopilot (reads the world, not the camera)."""

    def __init__(self) -> None:
        self.autopilot = Autopilot()

    def reset(self) -> None:
        self.autopilot.reset()

    def act(self, observation: Any, env: gym.Env) -> np.ndarray:
        return self.autopilot.act(env.unwrapped.world)  # type: ignore[attr-defined]


class PlannerDriver:
    """A planner (rule-based or RL) on a scene source, deciding every `decision_every`
    steps (the meta action once, IDLE in between, as in training)."""

    def __init__(self, planner: Any, source: Any, decision_every: int = 3) -> None:
        self.planner, self.source, self.every = planner, source, decision_every
        self.steps = 0

    def reset(self) -> None:
        self.planner.reset()
        self.source.reset()
        self.steps = 0

    def act(self, observation: Any, env: gym.Env) -> Any:
        from sim.actions import IDLE

        action = IDLE
        if self.steps % self.every == 0:
            action = self.planner.act(self.source(env.unwrapped))
        self.steps += 1
        return action


PLANNER_DRIVERS = ("rule", "rl", "rl-shield", "privileged")
"""`drivestack run` drivers that are planning.evaluate planner kinds of the same name."""


def make_driver(name: str, perceiver: Any = None, policy: Path | None = None) -> Driver:
    """The driver called `name` in a launch file (planner drivers on perception need
    `perceiver`)."""
    if name == "autopilot":
        return AutopilotDriver()
    if name in PLANNER_DRIVERS:
        from planning.evaluate import build_planner

        mine = name == "privileged"
        planner, source = build_planner(name, policy=None if mine else policy,
                                        privileged_policy=policy if mine else None,
                                        perceiver=perceiver)
        return PlannerDriver(planner, source)
    raise ValueError(f"unknown driver {name!r}; allowed: autopilot, "
                     f"{', '.join(PLANNER_DRIVERS)}")


def make_env(config: RunConfig) -> gym.Env:
    """The camera env of `config` (meta actions for planner drivers, continuous for the
    autopilot), bird's-eye rendering available."""
    action_type = "continuous" if config.driver == "autopilot" else "meta"
    return gym.make(config.env_id, obs_type="camera", action_type=action_type,
                    render_mode="rgb_array", scenario=config.scenario,
                    camera=config.camera.spec())


def steps_cap(config: RunConfig, dt: float) -> int:
    """Most steps an episode of `config` can take."""
    cap = math.ceil(config.scenario.episode_seconds / dt - 1e-9)
    return min(cap, config.max_steps) if config.max_steps else cap


# -- one episode -----------------------------------------------------------------------


def run_episode(
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


# -- output files ------------------------------------------------------------------------


@contextmanager
def mp4_writer(path: Path, fps: int, tmp: Path | None = None
               ) -> Iterator[Callable[[np.ndarray], None]]:
    """A function that appends RGB frames to an H.264 mp4 at `path`; the file appears
    (atomically, from `tmp`) only when the block exits without an error and a frame was
    written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or path.with_name(f".{path.stem}.partial{path.suffix}")
    writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1,
                                ffmpeg_log_level="error", output_params=X264_PARAMS)
    try:
        yield writer.append_data
        writer.close()
        if tmp.exists():  # ffmpeg starts (and creates the file) with the first frame
            os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def summarize(episodes: list[EpisodeMetrics]) -> dict[str, Any]:
    """Means and totals over episodes."""
    n = len(episodes)
    ttcs = [e.min_ttc for e in episodes if e.min_ttc is not None]
    km = sum(e.distance for e in episodes) / 1000.0
    return {
        "episodes": n,
        "steps": sum(e.steps for e in episodes),
        "duration": round(sum(e.duration for e in episodes), 6),
        "distance": sum(e.distance for e in episodes),
        "route_completion": sum(e.route_completion for e in episodes) / n if n else 0.0,
        "collision_rate": sum(e.collision for e in episodes) / n if n else 0.0,
        "collisions_per_km": sum(e.collisions for e in episodes) / km if km > 0 else None,
        "off_road_rate": sum(e.off_road for e in episodes) / n if n else 0.0,
        "mean_speed": sum(e.mean_speed for e in episodes) / n if n else 0.0,
        "min_ttc": min(ttcs) if ttcs else None,
        "npc_collisions": sum(e.npc_collisions for e in episodes),
        "errors": sum(e.error is not None for e in episodes),
    }


def metrics_document(config: RunConfig, launch: Path, episodes: list[EpisodeMetrics],
                     complete: bool = True) -> dict[str, Any]:
    """What metrics.json holds: whether the run finished (`complete`; false while it runs
    and in what a killed run leaves), the launch file, the resolved config, summary and
    episodes."""
    return {
        "complete": complete,
        "episodes_planned": config.episodes,
        "launch": str(launch),
        "config": config.model_dump(mode="json"),
        "summary": summarize(episodes),
        "episodes": [asdict(e) for e in episodes],
    }


def write_metrics(folder: OutputFolder, document: dict[str, Any]) -> None:
    """metrics.json (the document, strict JSON) and metrics.csv (one row per episode),
    atomically."""
    atomic_write_text(folder.own("metrics.json"), json_text(document, indent=2) + "\n")
    buf = io.StringIO()
    names = [f.name for f in fields(EpisodeMetrics)]
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in document["episodes"]:
        writer.writerow({k: "" if row[k] is None else row[k] for k in names})
    atomic_write_text(folder.own("metrics.csv"), buf.getvalue())
    folder.wrote()


# -- the job -----------------------------------------------------------------------------


def run_job(
    config: RunConfig,
    launch: Path,
    *,
    force: bool = False,
    on_episode_start: Callable[[int, int], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_episode_end: Callable[[EpisodeMetrics], None] | None = None,
) -> dict[str, Any]:
    """Run every episode of `config`, writing metrics after each one and the mp4s into
    `config.out`; returns the metrics document. `on_episode_start(episode, steps_cap)`,
    `on_step(step)` and `on_episode_end(metrics)` report progress.

    `config.out` must be new, empty or an earlier `drivestack run` output, whose files are
    removed first (`force`: a folder drivestack did not write, whose files stay untouched;
    sim.outputs). metrics.json says `"complete": false` until the last episode is done.
    """
    folder = OutputFolder.claim(config.out, JOB, force=force, entries=run_entries(config))
    env = make_env(config)
    try:
        perceiver = None
        needs_perception = config.driver in ("rule", "rl", "rl-shield")
        if needs_perception or (config.perception and config.video.enabled):
            from perception.perceiver import Perceiver  # torch loads only when asked for

            perceiver = Perceiver(camera=config.camera.spec())
        driver = make_driver(config.driver, perceiver, config.policy)
    except BaseException:
        env.close()
        raise
    cap = steps_cap(config, env.unwrapped.dt)  # type: ignore[attr-defined]
    video_perceiver = perceiver if config.perception else None
    done: list[EpisodeMetrics] = []
    folder.remove_stale()  # set up: the previous run's files make way for this one's
    try:
        write_metrics(folder, metrics_document(config, launch, done, complete=False))
        for i in range(config.episodes):
            if on_episode_start is not None:
                on_episode_start(i, cap)
            metrics = _recorded_episode(config, env, driver, i, folder, on_step,
                                        video_perceiver)
            done.append(metrics)
            last = i == config.episodes - 1
            write_metrics(folder, metrics_document(config, launch, done, complete=last))
            if on_episode_end is not None:
                on_episode_end(metrics)
    finally:
        env.close()
    folder.finish(episodes=len(done))
    return metrics_document(config, launch, done)


JOB = Job("run", files=(r"metrics\.json", r"metrics\.csv", r"episode_\d{3,}\.mp4",
                        r"\.episode_\d{3,}\.mp4\.partial-\d+\.mp4"))
"""What `drivestack run` writes into its folder (sim.outputs)."""


def run_entries(config: RunConfig) -> list[str]:
    """The files `drivestack run` writes into `config.out` (videos: with their temporary
    names)."""
    videos = [_video_name(i) for i in range(config.episodes)
              if config.video.enabled and i < config.video.episodes]
    return ["metrics.json", "metrics.csv", *videos, *map(_partial, videos)]


def _video_name(i: int) -> str:
    return f"episode_{i:03d}.mp4"


def _partial(video: str) -> str:
    """The temporary name of `video` while it is written (this process's own)."""
    return f".{video}.partial-{os.getpid()}.mp4"


def _recorded_episode(config: RunConfig, env: gym.Env, driver: Driver, i: int,
                      folder: OutputFolder, on_step: Callable[[int], None] | None,
                      perceiver: Any) -> EpisodeMetrics:
    """Episode `i`, recorded as an mp4 when the launch file asks; `video` names the file
    only when it was written."""
    record = config.video.enabled and i < config.video.episodes
    name = _video_name(i) if record else None
    video = (mp4_writer(folder.own(name), config.video.fps,
                        tmp=folder.own(_partial(name)))
             if name else nullcontext(None))
    with video as add_frame:
        metrics = run_episode(env, driver, episode=i, seed=config.seed + i,
                              max_steps=config.max_steps, on_frame=add_frame,
                              on_step=on_step, overlays=config.overlays,
                              perceiver=perceiver if name else None)
    metrics.video = name if name and (folder.path / name).is_file() else None
    folder.wrote()
    return metrics
