"""The `drivestack run` job: episodes with a driver, per-episode metrics, mp4 recordings
and, when asked, Rerun recordings.

`run_job(config)` reads top to bottom: make the env and the driver, then for each
episode reset with `seed + episode`, drive until the episode ends (or `max_steps`),
record the video frames (and the Rerun recording), and rewrite metrics.csv / metrics.json
atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np

import sim  # noqa: F401 - registers the drivestack/ env ids
from launch.config import RunConfig
from launch.overlays import video_frame
from planning.listeners import EpisodeMetrics, RunStatistics
from planning.rerun_log import RerunLogger, episode_paths, import_rerun
from planning.rollout import Agent, AutopilotAgent, Listener, PlannerAgent, Step, rollout
from sim.outputs import Job, OutputFolder, atomic_write_text, json_text

X264_PARAMS = ["-preset", "veryfast"]
"""Extra ffmpeg output options: about 2x faster to encode than the default preset."""


PLANNER_DRIVERS = ("rule", "rl", "rl-shield", "privileged")
"""`drivestack run` drivers that are planning.evaluate planner kinds of the same name."""


def make_driver(name: str, perceiver: Any = None, policy: Path | None = None) -> Agent:
    """The driver (a planning.rollout agent) called `name` in a launch file (planner
    drivers on perception need `perceiver`)."""
    if name == "autopilot":
        return AutopilotAgent()
    if name in PLANNER_DRIVERS:
        from planning.evaluate import build_planner

        mine = name == "privileged"
        planner, source = build_planner(name, policy=None if mine else policy,
                                        privileged_policy=policy if mine else None,
                                        perceiver=perceiver)
        return PlannerAgent(planner, source)
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


class VideoFrames(Listener):
    """Hands one video frame per step (the reset included) to `add_frame`: the camera with
    ground truth, perception (when the step has one) and the bird's-eye view."""

    def __init__(self, env: gym.Env, add_frame: Callable[[np.ndarray], None],
                 overlays: bool = True) -> None:
        self.env, self.add_frame, self.overlays = env, add_frame, overlays

    def on_step(self, step: Step) -> None:
        human = self.env.render()
        assert isinstance(human, np.ndarray) and step.frame is not None
        predicted = lanes = None
        if step.perception is not None:
            seen = step.perception
            predicted = (seen.detections.boxes_xyxy, seen.detections.classes)
            if seen.lanes is not None:
                lanes = (seen.lanes.rows, seen.lanes.xs)
        self.add_frame(video_frame(step.frame, step.info.get("ground_truth"), human,
                                   overlays=self.overlays, predicted=predicted,
                                   predicted_lanes=lanes))


class StepCount(Listener):
    """Calls `on_step(n)` with the env steps taken, after each one."""

    def __init__(self, on_step: Callable[[int], None]) -> None:
        self.report = on_step

    def on_step(self, step: Step) -> None:
        if step.index:
            self.report(step.index)


def run_episode(
    env: gym.Env,
    driver: Agent,
    *,
    episode: int,
    seed: int,
    max_steps: int | None = None,
    on_frame: Callable[[np.ndarray], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    overlays: bool = True,
    perceiver: Any = None,
    listeners: Sequence[Listener] = (),
    perceive_every_frame: bool | None = None,
) -> EpisodeMetrics:
    """Drive one episode reset with `seed` (planning.rollout with `RunStatistics`).
    `on_frame` (if given) receives one video frame per step, reset included, with
    `perceiver`'s output drawn on it; `on_step` the step count after each step.
    `perceiver` runs on every frame when `perceive_every_frame` (default: when `on_frame`
    is given), for the video and `listeners` (a Rerun recording) to show.

    An exception inside the episode ends it with `end="error"` and the exception in
    `error`, so that one broken episode does not lose the others.
    """
    stats = RunStatistics(episode, seed)
    extra: list[Listener] = []
    if on_frame is not None:
        extra.append(VideoFrames(env, on_frame, overlays))
    if on_step is not None:
        extra.append(StepCount(on_step))
    if perceive_every_frame is None:
        perceive_every_frame = on_frame is not None
    rollout(env, driver, seed=seed, max_steps=max_steps,
            listeners=[stats, *extra, *listeners], perceiver=perceiver,
            perceive_every_frame=perceiver is not None and perceive_every_frame)
    assert stats.metrics is not None
    return stats.metrics


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
    rerun: Path | None = None,
    rerun_spawn: bool = False,
) -> dict[str, Any]:
    """Run every episode of `config`, writing metrics after each one and the mp4s into
    `config.out`; returns the metrics document. `on_episode_start(episode, steps_cap)`,
    `on_step(step)` and `on_episode_end(metrics)` report progress.

    `rerun` (an .rrd path, new) records every episode with Rerun (planning.rerun_log):
    one recording per episode, at `rerun` itself for a one-episode run, else at
    `<stem>_000.rrd`, `<stem>_001.rrd`, ... beside it (`rerun_files`); `rerun_spawn`
    also streams them to a Rerun viewer it starts. Each file appears when its episode
    ends; metrics name it (`rerun`).

    `config.out` must be new, empty or an earlier `drivestack run` output, whose files are
    removed first (`force`: a folder drivestack did not write, whose files stay untouched;
    sim.outputs). metrics.json says `"complete": false` until the last episode is done.
    """
    recordings = rerun_files(config, rerun)
    folder = OutputFolder.claim(config.out, JOB, force=force, entries=run_entries(config))
    env = make_env(config)
    try:
        perceiver = None
        needs_perception = config.driver in ("rule", "rl", "rl-shield")
        if needs_perception or (config.perception and (config.video.enabled or recordings)):
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
                                        video_perceiver,
                                        recordings[i] if recordings else None, rerun_spawn)
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


def rerun_files(config: RunConfig, rerun: Path | None) -> list[Path]:
    """The Rerun recording of each episode of `config` (none without `rerun`), checked:
    .rrd files that do not exist yet, rerun-sdk installed (planning.rerun_log)."""
    if rerun is None:
        return []
    import_rerun()
    return episode_paths(rerun, config.episodes, what="--rerun")


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


def _recorded_episode(config: RunConfig, env: gym.Env, driver: Agent, i: int,
                      folder: OutputFolder, on_step: Callable[[int], None] | None,
                      perceiver: Any, rerun: Path | None = None, spawn: bool = False
                      ) -> EpisodeMetrics:
    """Episode `i`, recorded as an mp4 when the launch file asks and with Rerun into
    `rerun` when given; `video` and `rerun` name the files only when they were written."""
    record = config.video.enabled and i < config.video.episodes
    name = _video_name(i) if record else None
    video = (mp4_writer(folder.own(name), config.video.fps,
                        tmp=folder.own(_partial(name)))
             if name else nullcontext(None))
    logger = (RerunLogger(rerun, name=f"drivestack run: episode {i} (seed {config.seed + i})",
                          spawn=spawn) if rerun is not None else None)
    try:
        with video as add_frame:
            metrics = run_episode(env, driver, episode=i, seed=config.seed + i,
                                  max_steps=config.max_steps, on_frame=add_frame,
                                  on_step=on_step, overlays=config.overlays,
                                  perceiver=perceiver if name or logger else None,
                                  listeners=[logger] if logger else [],
                                  perceive_every_frame=bool(name or logger))
    finally:
        if logger is not None:
            logger.abort()  # an interrupted episode leaves no temporary file
    metrics.video = name if name and (folder.path / name).is_file() else None
    metrics.rerun = str(logger.written) if logger is not None and logger.written else None
    folder.wrote()
    return metrics
