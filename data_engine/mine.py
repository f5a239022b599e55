"""Mining: drive a suite of scenarios with the deployed stack, perception on every frame,
and let the recorder save a clip around every failure into the snapshot store.

    store = SnapshotStore("out/snapshots", create=True)
    summary = mine(store, cases, driver="rule", perceiver=Perceiver())

Each episode is `planning.rollout` with the `Recorder` listener; the driver is a planner
kind of `planning.evaluate` (perception kinds use `perceiver`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_engine.recorder import Recorder, RecorderConfig
from data_engine.triggers import Fired, recall_precision
from perception.registry import sha256_file
from planning.evaluate import Case, build_planner, scenario_config
from planning.rollout import PlannerAgent, rollout
from sim.env import DrivingEnv
from sim.types import CameraSpec

TOLERANCE = 15
"""Steps (1 s) within which a ground-truth-free firing counts as catching a ground-truth
one."""


@dataclass
class MinedEpisode:
    """What mining one episode gave."""

    case: dict[str, Any]
    steps: int
    end: str
    snapshots: list[str]
    fired: list[dict[str, Any]]
    error: str | None = None


@dataclass
class MineSummary:
    episodes: list[MinedEpisode] = field(default_factory=list)

    @property
    def snapshots(self) -> list[str]:
        return [s for e in self.episodes for s in e.snapshots]

    def as_dict(self) -> dict[str, Any]:
        by_trigger: dict[str, int] = {}
        for e in self.episodes:
            for f in e.fired:
                by_trigger[f["name"]] = by_trigger.get(f["name"], 0) + 1
        return {"episodes": len(self.episodes), "snapshots": len(self.snapshots),
                "failures": sum(e.end in ("collision", "off_road") for e in self.episodes),
                "errors": sum(e.error is not None for e in self.episodes),
                "fired_by_trigger": dict(sorted(by_trigger.items())),
                "truth_free_triggers": self.truth_free_quality(),
                "per_episode": [asdict(e) for e in self.episodes]}

    def truth_free_quality(self, tolerance: int = TOLERANCE) -> dict[str, Any]:
        """How many ground-truth firings the ground-truth-free triggers also caught (within
        `tolerance` steps, per episode) and how many of theirs were near a real one."""
        gt_events = caught = free_events = confirmed = 0
        for e in self.episodes:
            fired = [Fired(**f) for f in e.fired]
            r = recall_precision([f for f in fired if f.needs_truth],
                                 [f for f in fired if not f.needs_truth], tolerance)
            gt_events += r["gt_events"]
            caught += r["caught"]
            free_events += r["free_events"]
            confirmed += r["confirmed"]
        return {"tolerance_steps": tolerance, "truth_events": gt_events, "caught": caught,
                "recall": caught / gt_events if gt_events else None,
                "free_events": free_events, "confirmed": confirmed,
                "precision": confirmed / free_events if free_events else None}


def model_hashes(paths: dict[str, Path | None]) -> dict[str, str]:
    """{name: sha256} of the model files that exist."""
    return {k: sha256_file(Path(p)) for k, p in paths.items()
            if p is not None and Path(p).is_file()}


def model_version(hashes: dict[str, str]) -> str:
    """A short name for a set of model files: the detector's hash prefix, or a hash of
    all of them."""
    if "detector" in hashes:
        return hashes["detector"][:12]
    return hashlib.sha256("".join(sorted(hashes.values())).encode()).hexdigest()[:12]


def mine(store: Any, cases: Sequence[Case], *, driver: str = "rule",
         perceiver: Any = None, second: Any = None, policy: Path | None = None,
         recorder: RecorderConfig | None = None, max_steps: int = 450,
         camera: CameraSpec | None = None, models: dict[str, str] | None = None,
         on_episode: Callable[[MinedEpisode], None] | None = None,
         control: tuple[Any, float] | None = None) -> MineSummary:
    """Drive every case with `driver` (a planner kind), perceiving every frame, and save
    clips of failures into `store`. `control` (a store and a rate per step): in the same
    episodes, also save clips of randomly chosen moments there (mining's control)."""
    planner, source = build_planner(driver, perceiver=perceiver,
                                    policy=None if driver == "privileged" else policy,
                                    privileged_policy=policy if driver == "privileged" else None)
    env = DrivingEnv(obs_type="camera", action_type="meta", camera=camera)
    models = dict(models or {})
    summary = MineSummary()
    try:
        for case in cases:
            env.config = scenario_config(case)
            context = {"seed": case.seed, "scenario_seed": case.seed, "driver": driver,
                       "models": models, "model_version": model_version(models),
                       "case": asdict(case)}
            rec = Recorder(store, recorder or RecorderConfig(), context, second)
            listeners: list[Any] = [rec]
            if control is not None:
                listeners.append(Recorder(control[0], recorder or RecorderConfig(), context,
                                          random_rate=control[1]))
            end = rollout(env, PlannerAgent(planner, source), seed=case.seed,
                          scenario_seed=case.seed, max_steps=max_steps, listeners=listeners,
                          perceiver=perceiver, perceive_every_frame=perceiver is not None)
            episode = MinedEpisode(asdict(case), end.steps, end.end, list(rec.saved),
                                   [_fired(f) for f in rec.fired], end.error)
            summary.episodes.append(episode)
            if on_episode is not None:
                on_episode(episode)
    finally:
        env.close()
    return summary


def _fired(f: Fired) -> dict[str, Any]:
    return asdict(f)
