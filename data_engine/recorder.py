"""The recorder: a rollout listener that runs the triggers after every step and saves a
clip around each failure into the snapshot store.

    store = SnapshotStore("out/snapshots", create=True)
    recorder = Recorder(store, RecorderConfig(), context={"seed": 7, "scenario_seed": 7})
    rollout(env, agent, seed=7, scenario_seed=7, listeners=[recorder],
            perceiver=perceiver, perceive_every_frame=True)
    recorder.saved  # snapshot ids

A clip holds `pre_seconds` before the moment a trigger fired and `post_seconds` after it
(fewer when the episode ends first: a collision ends it), the world state at its first
frame, and everything `data_engine.clip` lists. Triggers that fire while a clip is open
join it; after a clip is saved, the next waits `cooldown_seconds`.
"""

from __future__ import annotations

import platform
import subprocess
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from data_engine.clip import (
    CLIP,
    FORMAT,
    PERCEPTION,
    TRUTH,
    boxes_arrays,
    frame_name,
    image_digest,
    npz_bytes,
    png_bytes,
    state_files,
    truth_digest,
)
from data_engine.moments import Moment, moment_of_step
from data_engine.triggers import Fired, TriggerConfig, evaluate, window_size
from planning.rollout import EpisodeEnd, Listener, Step
from sim.config import StrictModel
from sim.env import DrivingEnv
from sim.outputs import json_text
from sim.world.world import WorldState

ROOT = Path(__file__).resolve().parents[1]


class RecorderConfig(StrictModel):
    """How clips are cut and stored (launch files: `recorder:`)."""

    pre_seconds: float = Field(default=3.0, ge=0.0, le=60.0,
                               description="seconds kept before the trigger")
    post_seconds: float = Field(default=1.0, ge=0.0, le=60.0,
                                description="seconds kept after the trigger")
    cooldown_seconds: float = Field(default=2.0, ge=0.0, le=600.0,
                                    description="quiet time after a saved clip")
    max_per_episode: int = Field(default=3, ge=1, le=1000,
                                 description="clips saved per episode at most")
    frames: Literal["png", "hash"] = Field(
        default="png", description="png: lossless frames in the snapshot; hash: only "
                                   "their SHA-256 (replay re-renders them)")
    triggers: TriggerConfig = Field(default_factory=TriggerConfig)


@dataclass
class _Entry:
    moment: Moment
    state: WorldState
    image: Any
    truth: str | None
    png: bytes | None


@dataclass
class _Open:
    entries: list[_Entry]
    fired: list[Fired]
    remaining: int


@dataclass
class Recorder(Listener):
    """Saves a clip around every trigger firing (see the module docstring).

    `context` goes into each snapshot's clip.json and index: seed, scenario_seed,
    driver, models ({name: sha256}), model_version. `second` (optional) is a second
    detector run on every perceived frame, for the disagreement trigger."""

    store: Any
    config: RecorderConfig = field(default_factory=RecorderConfig)
    context: dict[str, Any] = field(default_factory=dict)
    second: Any = None
    random_rate: float | None = None
    """Control mode: instead of the triggers, fire "random" at each step with this
    probability (seeded by `context["seed"]`): clips of randomly chosen moments, the
    data engine's control against mining."""
    saved: list[str] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    """Every firing of the episodes seen (for the report), saved or not."""

    def on_reset(self, env: DrivingEnv, seed: int | None) -> None:
        self.env = env
        steps = lambda s: int(round(s / env.dt))  # noqa: E731
        self.pre, self.post = steps(self.config.pre_seconds), steps(self.config.post_seconds)
        self.cooldown = steps(self.config.cooldown_seconds)
        self.buffer: deque[_Entry] = deque(maxlen=self.pre + 1)
        self.window: deque[Moment] = deque(maxlen=max(window_size(self.config.triggers), 1))
        self.open: _Open | None = None
        self.quiet_until = -1
        self.episode_saved = 0
        self.rng = np.random.default_rng([int(self.context.get("seed") or 0), 7])

    def on_step(self, step: Step) -> None:
        second = None
        if self.second is not None and step.perception is not None and step.frame is not None:
            [second] = self.second([step.frame])
        moment = moment_of_step(step, second)
        image = step.frame
        gt = step.ground_truth
        entry = _Entry(moment, step.state(), None if image is None else image.copy(),
                       None if gt is None else truth_digest(gt),
                       png_bytes(image) if image is not None and self.config.frames == "png"
                       else None)
        self.buffer.append(entry)
        self.window.append(moment)
        if self.random_rate is None:
            fired = evaluate(list(self.window), self.config.triggers)
        else:
            fired = [Fired("random", step.index, "control: a random moment", False)] \
                if self.rng.random() < self.random_rate else []
        self.fired += fired
        if self.open is not None:
            self.open.entries.append(entry)
            self.open.fired += fired
            self.open.remaining -= 1
            if self.open.remaining <= 0:
                self._save()
        elif fired and step.index > self.quiet_until \
                and self.episode_saved < self.config.max_per_episode:
            self.open = _Open(list(self.buffer), list(fired), self.post)
            if self.post == 0:
                self._save()

    def on_end(self, end: EpisodeEnd) -> None:
        if getattr(self, "open", None) is not None:
            self._save()

    def _save(self) -> None:
        clip = self.open
        assert clip is not None
        self.open = None
        self.episode_saved += 1
        self.quiet_until = clip.entries[-1].moment.index + self.cooldown
        files, meta = snapshot_files(self.env, clip.entries, clip.fired, self.context,
                                     self.config.frames)
        self.saved.append(self.store.add(files, meta))


def snapshot_files(env: DrivingEnv, entries: list[_Entry], fired: list[Fired],
                   context: dict[str, Any], frames: str) -> tuple[dict[str, bytes],
                                                                   dict[str, Any]]:
    """The files and index metadata of a clip of `entries` (data_engine.clip)."""
    first = entries[0]
    sc = first.state.scenario
    moments = [e.moment for e in entries]
    doc = {
        "format": FORMAT,
        "env": {"obs_type": env.obs_type, "action_type": env.action_type,
                "camera": asdict(env.camera_spec), "dt": env.dt},
        "seed": context.get("seed"), "scenario_seed": context.get("scenario_seed"),
        "scenario": asdict(sc),
        "start_index": first.moment.index, "n_frames": len(entries),
        "triggers": [asdict(f) for f in fired],
        "actions": [m.action for m in moments],
        "decided": [m.decided for m in moments],
        "overridden": [m.overridden for m in moments],
        "events": [m.events for m in moments],
        "speed": [m.speed for m in moments],
        "frames": [{"index": m.index, "image_sha256": image_digest(e.image),
                    "truth_sha256": e.truth} for m, e in zip(moments, entries, strict=True)],
        "frames_stored": frames == "png",
        "driver": context.get("driver"),
        "origin": {k: context[k] for k in ("case", "variation_of", "variation", "changed")
                   if k in context},
        "models": context.get("models", {}),
        "code_version": code_version(),
    }
    files: dict[str, bytes] = {CLIP: json_text(doc, indent=1).encode(),
                               **state_files(first.state)}
    if frames == "png":
        for i, e in enumerate(entries):
            assert e.png is not None
            files[frame_name(i)] = e.png
    truth = boxes_arrays([m.truth for m in moments], "")
    truth["lane_offset"] = _floats([m.truth_lane_offset for m in moments])
    files[TRUTH] = npz_bytes(truth)
    seen = boxes_arrays([m.seen for m in moments], "")
    seen.update({f"second_{k}": v for k, v in
                 boxes_arrays([m.second for m in moments], "").items()})
    seen["lane_offset"] = _floats([m.lane_offset for m in moments])
    seen["lane_heading"] = _floats([m.lane_heading for m in moments])
    files[PERCEPTION] = npz_bytes(seen)
    meta = {"triggers": sorted({f.name for f in fired}), "time_of_day": sc.time_of_day,
            "weather": sc.weather, "family": sc.family,
            "model_version": context.get("model_version"), "seed": context.get("seed"),
            "scenario_seed": context.get("scenario_seed"), "n_frames": len(entries)}
    return files, meta


def _floats(values: list[float | None]) -> Any:
    return np.array([np.nan if v is None else v for v in values], np.float64)


@cache
def code_version() -> str:
    """`git describe` of the checkout when there is one, else the package version, with
    the Python version."""
    version = "unknown"
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=False)
        if out.returncode == 0 and out.stdout.strip():
            version = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if version == "unknown":
        try:
            from importlib.metadata import version as pkg_version

            version = pkg_version("drivestack")
        except Exception:  # noqa: BLE001 - not installed: keep "unknown"
            pass
    return f"{version} (python {platform.python_version()})"
