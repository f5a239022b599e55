"""Replay: restore a snapshot's world and re-simulate its clip.

- `replay_clip(snapshot)`: the recorded actions from the recorded start state in a fresh
  env; every frame and its ground truth are compared, by SHA-256, with the stored ones
  (byte for byte). With `frames: png` snapshots the stored PNGs are compared too; other
  listeners (a Rerun recording, data_engine.rerun_replay) may ride along.
- `closed_loop(snapshot, stacks)`: from the same start, drive with other stacks (another
  detector, lane model or planner) and report for each whether the failure happens
  again. `rule-privileged` on the exact scene says whether perception could fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_engine.clip import (
    Clip,
    frame_name,
    image_digest,
    png_image,
    read_clip,
    truth_digest,
)
from planning.rollout import ActionReplay, Listener, PlannerAgent, Step, rollout
from sim.env import DrivingEnv
from sim.types import CameraSpec


@dataclass
class ReplayCheck:
    """How a re-simulated clip compares with the stored one."""

    snapshot: str
    frames: int
    frames_equal: int
    truth_equal: int
    truth_checked: int
    stored_png_equal: int | None
    """Stored PNGs equal to the re-rendered frames (None: the snapshot stores hashes)."""
    first_mismatch: int | None
    """The first frame (0 = clip start) whose image or ground truth differs."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return (self.error is None and self.frames_equal == self.frames
                and self.truth_equal == self.truth_checked
                and self.stored_png_equal in (None, self.frames))


def clip_env(clip: Clip, labels: bool = True, action_type: str | None = None) -> DrivingEnv:
    """A fresh env made as the clip's was (observation and action type, camera, dt);
    `action_type` replaces the recorded one (closed-loop replay drives meta actions)."""
    env = clip.doc["env"]
    return DrivingEnv(obs_type=env.get("obs_type", "camera"),
                      action_type=action_type or env.get("action_type", "meta"),
                      camera=CameraSpec(**env["camera"]), dt=float(env["dt"]), labels=labels)


@dataclass
class _Hashes(Listener):
    images: list[str] = field(default_factory=list)
    truths: list[str | None] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    keep: bool = False

    def on_step(self, step: Step) -> None:
        assert step.frame is not None
        self.images.append(image_digest(step.frame))
        gt = step.ground_truth
        self.truths.append(None if gt is None else truth_digest(gt))
        if self.keep:
            self.frames.append(step.frame.copy())


def replay_clip(snapshot: Any, keep_frames: bool = False, listeners: Sequence[Listener] = ()
                ) -> tuple[ReplayCheck, list[Any]]:
    """Re-simulate a snapshot (`data_engine.store.Snapshot`: verified) and compare; the
    check and, with `keep_frames`, the re-rendered frames. `listeners` see the
    re-simulation too (a Rerun recording: data_engine.rerun_replay)."""
    clip = read_clip(snapshot.read, snapshot.id)
    env = clip_env(clip)
    hashes = _Hashes(keep=keep_frames)
    n = clip.n_frames
    end = rollout(env, ActionReplay(clip.actions[:-1]), state=clip.state, max_steps=n - 1,
                  listeners=[hashes, *listeners], catch_reset=False)
    stored_i, stored_t = clip.image_digests, clip.truth_digests
    got = len(hashes.images)
    eq_i = [k < got and hashes.images[k] == stored_i[k] for k in range(n)]
    checked = [k for k in range(n) if stored_t[k] is not None]
    eq_t = [k < got and hashes.truths[k] == stored_t[k] for k in checked]
    png_equal = None
    if clip.doc.get("frames_stored"):
        png_equal = sum(image_digest(png_image(snapshot.read(frame_name(k)), frame_name(k)))
                        == stored_i[k] for k in range(n))
    bad = [k for k in range(n) if not eq_i[k]] + [k for k, e in zip(checked, eq_t,
                                                                     strict=True) if not e]
    check = ReplayCheck(snapshot.id, n, sum(eq_i), sum(eq_t), len(checked), png_equal,
                        min(bad) if bad else None, end.error)
    return check, hashes.frames


@dataclass
class LoopResult:
    """One stack driven from a clip's start."""

    stack: str
    steps: int
    end: str
    collision: bool
    off_road: bool
    min_ttc: float | None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.collision or self.off_road or self.error is not None


class _Outcome(Listener):
    def __init__(self) -> None:
        self.collision = self.off_road = False
        self.min_ttc = float("inf")

    def on_step(self, step: Step) -> None:
        ev = step.events
        self.collision |= bool(ev.get("collision"))
        self.off_road |= bool(ev.get("off_road"))
        self.min_ttc = min(self.min_ttc, float(ev.get("min_ttc", float("inf"))))


def closed_loop(snapshot: Any, stacks: dict[str, tuple[Any, Any]], steps: int | None = None,
                perceiver: Any = None) -> list[LoopResult]:
    """Drive each of `stacks` ({name: (planner, scene source)}, fresh memory) from the
    snapshot's first frame for `steps` env steps (default: the clip's length) and say
    whether it collides or leaves the road."""
    clip = read_clip(snapshot.read, snapshot.id)
    n = steps if steps is not None else clip.n_frames - 1
    out = []
    for name, (planner, source) in stacks.items():
        env = clip_env(clip, action_type="meta")
        seen = _Outcome()
        end = rollout(env, PlannerAgent(planner, source), state=clip.state, max_steps=n,
                      listeners=[seen], perceiver=perceiver)
        out.append(LoopResult(name, end.steps, end.end, seen.collision, seen.off_road,
                              seen.min_ttc if np.isfinite(seen.min_ttc) else None, end.error))
    return out
