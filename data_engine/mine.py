"""Mining: drive a suite of scenarios with the deployed stack, perception on every frame,
and let the recorder save a clip around every failure into the snapshot store.

    store = SnapshotStore("out/snapshots", create=True)
    summary = mine(store, cases, driver="rule", perceiver=Perceiver())

Each episode is `planning.rollout` with the `Recorder` listener; the driver is a planner
kind of `planning.evaluate` (perception kinds use `perceiver`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_engine.recorder import Recorder, RecorderConfig
from data_engine.triggers import Fired, recall_precision
from perception.registry import sha256_file
from planning.evaluate import Case, build_planner, scenario_config
from planning.rollout import PlannerAgent, rollout
from sim.env import DrivingEnv
from sim.fanout import Fanout, ordered_map
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
    miner = _Miner(driver, perceiver, second, policy, camera)
    models = dict(models or {})
    summary = MineSummary()
    try:
        for case in cases:
            episode = miner.episode(case, store, recorder or RecorderConfig(), max_steps,
                                    models, control)
            summary.episodes.append(episode)
            if on_episode is not None:
                on_episode(episode)
    finally:
        miner.close()
    return summary


class _Miner:
    """A driver (planner and scene source) and a camera env, reused over episodes."""

    def __init__(self, driver: str, perceiver: Any, second: Any, policy: Path | None,
                 camera: CameraSpec | None) -> None:
        self.driver, self.perceiver, self.second = driver, perceiver, second
        self.planner, self.source = build_planner(
            driver, perceiver=perceiver, policy=None if driver == "privileged" else policy,
            privileged_policy=policy if driver == "privileged" else None)
        self.env = DrivingEnv(obs_type="camera", action_type="meta", camera=camera)

    def episode(self, case: Case, store: Any, recorder: RecorderConfig, max_steps: int,
                models: dict[str, str], control: tuple[Any, float] | None) -> MinedEpisode:
        self.env.config = scenario_config(case)
        context = {"seed": case.seed, "scenario_seed": case.seed, "driver": self.driver,
                   "models": models, "model_version": model_version(models),
                   "case": asdict(case)}
        rec = Recorder(store, recorder, context, self.second)
        listeners: list[Any] = [rec]
        if control is not None:
            listeners.append(Recorder(control[0], recorder, context, random_rate=control[1]))
        end = rollout(self.env, PlannerAgent(self.planner, self.source), seed=case.seed,
                      scenario_seed=case.seed, max_steps=max_steps, listeners=listeners,
                      perceiver=self.perceiver,
                      perceive_every_frame=self.perceiver is not None)
        return MinedEpisode(asdict(case), end.steps, end.end, list(rec.saved),
                            [_fired(f) for f in rec.fired], end.error)

    def close(self) -> None:
        self.env.close()


# ---------------------------------------------------------------- fanned out

@dataclass(frozen=True)
class MineSpec:
    """What a mining worker needs to build its stack itself: the driver, perception (the
    current detector, the shipped lane model, `second_detector`: the fast detector as the
    disagreement trigger's second opinion), the recorder and the episode cap."""

    driver: str = "rule"
    device: str = "cpu"
    camera: CameraSpec | None = None
    second_detector: bool = False
    policy: Path | None = None
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    max_steps: int = 450
    models: dict[str, str] = field(default_factory=dict)
    control_rate: float | None = None
    """Also record randomly chosen moments at this rate per step (mining's control)."""


def mine_fanout(store: Any, cases: Sequence[Case], spec: MineSpec, fanout: Fanout, *,
                control_store: Any = None,
                on_episode: Callable[[MinedEpisode], None] | None = None) -> MineSummary:
    """`mine` with the episodes fanned out (`sim.fanout`: local processes or Ray tasks).
    Workers drive and record into memory; this process writes their snapshots into
    `store` (and `control_store`) in episode order, so the stores hold the same
    snapshots as a serial run's, and a retried episode writes nothing twice."""
    if (spec.control_rate is None) != (control_store is None):
        raise ValueError("control_store and spec.control_rate go together")
    summary = MineSummary()
    for episode, found, control in ordered_map(_MineWorker, spec, _mine_job, cases, fanout,
                                               close=_MineWorker.close):
        ids = {pending: store.add(files, meta) for pending, files, meta in found}
        if control_store is not None:
            for _, files, meta in control:
                control_store.add(files, meta)
        episode.snapshots = [ids[s] for s in episode.snapshots]
        summary.episodes.append(episode)
        if on_episode is not None:
            on_episode(episode)
    return summary


class PendingStore:
    """A store that keeps what `add` is given in memory (a worker's recorder writes here;
    the parent writes it into the real store). Ids are placeholders."""

    def __init__(self) -> None:
        self.added: list[tuple[str, dict[str, bytes], dict[str, Any]]] = []

    def add(self, files: Mapping[str, bytes | Path], meta: Mapping[str, Any] | None = None
            ) -> str:
        pending = f"pending-{len(self.added)}"
        self.added.append((pending, {k: v if isinstance(v, bytes) else Path(v).read_bytes()
                                     for k, v in files.items()}, dict(meta or {})))
        return pending


class _MineWorker:
    def __init__(self, spec: MineSpec) -> None:
        from perception.detector import FAST_WEIGHTS
        from planning.evaluate import make_perceiver

        self.spec = spec
        perceiver, _ = make_perceiver(spec.device, spec.camera)  # every frame: triggers
        second = None
        if spec.second_detector:
            from perception.perceiver import Perceiver

            second = Perceiver(weights=FAST_WEIGHTS, device=spec.device, camera=spec.camera,
                               lanes=False)
        self.miner = _Miner(spec.driver, perceiver, second, spec.policy, spec.camera)

    def close(self) -> None:
        self.miner.close()


def _mine_job(worker: _MineWorker, case: Case) -> tuple[MinedEpisode, list[Any], list[Any]]:
    spec = worker.spec
    found, control = PendingStore(), PendingStore()
    episode = worker.miner.episode(
        case, found, spec.recorder, spec.max_steps, spec.models,
        None if spec.control_rate is None else (control, spec.control_rate))
    return episode, found.added, control.added


def _fired(f: Fired) -> dict[str, Any]:
    return asdict(f)
