"""`drivestack loop`: mine -> relabel -> version -> retrain -> evaluate -> promote, with a
report, resumable after a kill (each stage's result is a file; a rerun starts at the first
stage without one).

Stages (the folder `out` holds everything):

    base      ground-truth frames of the usual mix (the "old frames" a fine-tune keeps)
    heldout   held-out perception sets (nominal, night, fog, rain; seeds >= 900,000)
    mine      the deployed stack over hard scenarios, perception on every frame; a clip
              around every trigger firing (snapshots/), and in the same episodes clips of
              random moments (random/: the control)
    relabel   auto-labels of every clip from its frames alone; their quality against the
              ground truth beside the online perception (report only)
    versions  dataset versions (manifests): mined frames with auto labels (the
              candidate), random frames with auto labels (control: mining must beat
              random), mined frames with ground-truth labels (the labeler's ceiling),
              mined frames labelled by the online perceiver (naive self-training: the
              floor); each mixed with as many base frames
    train     a fine-tune of the current detector on each version
    calibrate each detector's refiner score exponent, chosen on ground-truth frames of
              seeds of their own (the refiner reranks boxes by the detector's confidence
              times its own to this power; a fine-tune's confidences differ)
    evaluate  mAP50-95 before and after on the held-out sets, a paired bootstrap on the
              hard set, the closed-loop hard suite (paired by seed, rule-privileged beside)
    promote   the candidate is registered; promoted only through the gate
    report    report.md with PNG plots
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from itertools import chain
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from data_engine.clip import PERCEPTION as PERCEPTION_FILE
from data_engine.clip import TRUTH as TRUTH_FILE
from data_engine.evaluation import SCORE_WEIGHTS, SEED_BLOCK
from data_engine.recorder import RecorderConfig
from data_engine.selection import ONLINE_CONF, disagreement, online_errors, select_top
from perception.refine import MAX_IOU_WEIGHT
from sim.config import StrictModel
from sim.outputs import Job, OutputFolder, atomic_write_text, json_text

MINE_SEEDS = (500_000, 900_000)
"""Mining scenario seeds: disjoint from the held-out perception sets (900,000 and above),
the closed-loop hard suite (910,000..) and the eval suites (below 10,000)."""
STAGES = ("base", "heldout", "mine", "relabel", "versions", "train", "calibrate", "evaluate",
          "promote", "report")
CURRENT_CALIBRATED = "current_calibrated"
"""The report of the current detector at its newly calibrated score exponent (a control)."""
CALIBRATION_BLOCK = 2_500
"""Seeds a calibration set may use (four sets: nominal, night, fog, rain)."""
ARMS = ("mined_auto", "random_auto", "mined_truth", "mined_online")
"""The candidate and its three controls."""
SpreadArm = Literal["mined_auto", "random_auto"]
SPREAD_ARMS: tuple[SpreadArm, ...] = ("mined_auto", "random_auto")
"""The arms `train.spread_seeds` trains again by default (run `<arm>_s<seed>`): the
run-to-run spread."""
RUN_NAME = re.compile(r"(mined_auto|random_auto|mined_truth|mined_online)(_s[0-9]{1,10})?")
JOB = Job("loop", files=(r"loop_state\.json", r"report\.md", r"[a-z_]+\.png",
                         r"[a-z_]+\.json"),
          folders=(r"base", r"heldout", r"calibration", r"snapshots", r"random", r"labels",
                   r"versions", r"train"), trust_unconfirmed=True)
ENTRIES = ["loop_state.json", "report.md", "base", "heldout", "calibration", "snapshots",
           "random", "labels", "versions", "train"]


class MineSettings(StrictModel):
    families: list[Literal["highway", "rural", "urban"]] = Field(
        default=["highway", "urban"], min_length=1)
    conditions: list[tuple[Literal["day", "dusk", "night"], Literal["clear", "fog", "rain"]]] \
        = Field(default=[("night", "clear"), ("day", "fog")], min_length=1)
    seeds: list[int] = Field(default=[500_000, 500_001, 500_002], min_length=1)
    max_steps: int = Field(default=450, ge=10, le=100_000)
    driver: Literal["rule", "rl", "rl-shield"] = "rule"
    second_detector: bool = True
    random_rate: float = Field(default=0.01, gt=0.0, le=1.0, description=(
        "control clips per step (random moments)"))
    variations: int = Field(default=2, ge=0, le=100, description=(
        "re-simulated variations of each mined clip (traffic, speeds, condition)"))
    variation_clips: int = Field(default=8, ge=0, le=100_000, description=(
        "mined clips that get variations (the first ones)"))
    recorder: RecorderConfig = Field(default_factory=RecorderConfig)

    @model_validator(mode="after")
    def _mining_seeds(self) -> MineSettings:
        bad = [s for s in self.seeds if not MINE_SEEDS[0] <= s < MINE_SEEDS[1]]
        if bad:
            raise ValueError(f"seeds: mining seeds must lie in {MINE_SEEDS[0]}.."
                             f"{MINE_SEEDS[1] - 1}, disjoint from the held-out ones; got "
                             f"{bad[:5]}")
        return self


class TrainSettings(StrictModel):
    epochs: int = Field(default=1, ge=1, le=1000)
    lr0: float = Field(default=0.001, gt=0.0, le=1.0)
    batch: int = Field(default=16, ge=1, le=1024)
    imgsz: int | None = Field(default=None, ge=32, le=4096,
                              description="default: the current detector's training size")
    hours: float | None = Field(default=None, gt=0.0, le=100.0)
    nbs: int | None = Field(default=None, ge=1, le=1 << 16, description=(
        "ultralytics nbs (default 64): ceil(nbs / batch) batches make one optimizer step"))
    freeze: int | None = Field(default=None, ge=0, le=1000,
                               description="freeze the first this many layers")
    workers: int = Field(default=2, ge=0, le=64)
    frame_stride: int = Field(default=2, ge=1, le=100,
                              description="every k-th frame of a clip goes into a version")
    max_new_frames: int = Field(default=600, ge=1, le=1_000_000, description=(
        "new frames per arm: a seeded sample over every clip's frames, the same count for "
        "every arm"))
    select: Literal["disagreement", "sample"] = Field(default="disagreement", description=(
        "how the mined arms' frames are chosen from the mined clips: `disagreement`, the "
        "frames where the auto-labels and the online detector disagree most "
        "(data_engine/selection.py; no ground truth), or `sample`, a seeded sample; the "
        "random control is always a seeded sample of the random clips"))
    arms: list[Literal["mined_auto", "random_auto", "mined_truth", "mined_online"]] = Field(
        default=["mined_auto", "random_auto", "mined_truth", "mined_online"], min_length=1)
    spread_seeds: list[int] = Field(default=[], max_length=10, description=(
        "train the candidate and the random control again with each of these seeds "
        "(another sample of frames and of old frames, another training seed): the "
        "run-to-run spread that mined-versus-random is judged against"))
    spread_arms: list[SpreadArm] = Field(
        default=list(SPREAD_ARMS), min_length=1, max_length=2, description=(
            "the arms `spread_seeds` trains again; the random control alone halves the "
            "cost (each repeat is a whole fine-tune)"))

    @model_validator(mode="after")
    def _spread(self) -> TrainSettings:
        if len(set(self.spread_seeds)) != len(self.spread_seeds) or any(
                not 0 <= s < 2**31 for s in self.spread_seeds):
            raise ValueError("spread_seeds: distinct seeds in 0..2147483647")
        if len(set(self.spread_arms)) != len(self.spread_arms):
            raise ValueError("spread_arms: distinct arms of mined_auto, random_auto")
        if self.spread_seeds and not set(self.spread_arms) & set(self.arms):
            raise ValueError(f"spread_arms: none of {self.spread_arms} is in arms "
                             f"{self.arms}, so spread_seeds would train nothing")
        return self

    def runs(self, seed: int) -> list[tuple[str, str, int]]:
        """(run name, arm, seed) of every fine-tune: each arm with the loop's seed, then
        the spread repeats."""
        out: list[tuple[str, str, int]] = [(arm, arm, seed) for arm in self.arms]
        out += [(f"{arm}_s{s}", arm, s) for s in self.spread_seeds if s != seed
                for arm in SPREAD_ARMS if arm in self.arms and arm in self.spread_arms]
        return out


class EvalSettings(StrictModel):
    heldout_seed: int = Field(default=900_000, ge=900_000, le=960_000, description=(
        "first seed of the held-out perception sets (nominal, then 10,000 seeds a hard "
        "condition); another value gives fresh sets, e.g. to check a recipe chosen on "
        "the default ones"))
    nominal_frames: int = Field(default=300, ge=4, le=100_000)
    hard_frames: int = Field(default=400, ge=4, le=100_000,
                             description="hard frames in all, shared among night, fog and rain")
    bootstrap: int = Field(default=200, ge=10, le=100_000)
    closed_loop_seeds: list[int] = Field(default=list(range(910_000, 910_012)), min_length=1)
    closed_loop_families: list[Literal["highway", "rural", "urban"]] = Field(
        default=["highway", "urban"], min_length=1)
    closed_loop_conditions: list[tuple[Literal["day", "dusk", "night"],
                                       Literal["clear", "fog", "rain"]]] = Field(
        default=[("night", "clear")], min_length=1)
    max_steps: int = Field(default=450, ge=10, le=100_000)
    calibration_frames: int = Field(default=400, ge=0, le=4 * CALIBRATION_BLOCK, description=(
        "ground-truth frames (a quarter nominal, the rest night, fog and rain) from seeds "
        "of their own, on which each detector's refiner score exponent is chosen "
        "(`calibrate` stage); 0: every detector keeps the refiner's own"))
    calibration_seed: int = Field(default=990_000, ge=900_000,
                                  le=1_000_000 - 4 * CALIBRATION_BLOCK, description=(
        f"first seed of the calibration sets ({CALIBRATION_BLOCK:,} seeds a set): never a "
        "held-out set's or the closed-loop suite's"))
    score_weights: list[Annotated[float, Field(ge=0.0, le=MAX_IOU_WEIGHT)]] = Field(
        default=list(SCORE_WEIGHTS), min_length=1, max_length=50,
        description="the refiner score exponents the calibration tries")
    calibrate_on: Literal["all", "hard"] = Field(default="all", description=(
        "which calibration frames rank the exponents: all conditions pooled (as "
        "deployed), or night, fog and rain pooled (the gate's hard set)"))

    @model_validator(mode="after")
    def _calibration_seeds(self) -> EvalSettings:
        if not self.calibration_frames:
            return self
        if self.calibration_frames < 8:
            raise ValueError("calibration_frames: 0 (off) or at least 8")
        cal = range(self.calibration_seed, self.calibration_seed + 4 * CALIBRATION_BLOCK)
        held = range(self.heldout_seed, self.heldout_seed + 4 * SEED_BLOCK)
        loop = [s for s in self.closed_loop_seeds if s in cal]
        if cal.start < held.stop and held.start < cal.stop or loop:
            what = (f"the closed-loop seeds {loop[:3]}" if loop else
                    f"the held-out sets' seeds {held.start}..{held.stop - 1}")
            raise ValueError(f"calibration_seed: its seeds {cal.start}..{cal.stop - 1} "
                             f"overlap {what}; calibrate on seeds of their own")
        return self


class LoopConfig(StrictModel):
    """Launch file of `drivestack loop`."""

    out: Path = Field(default=Path("runs/loop"), description="output folder")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu"] = "cpu"
    workers: int = Field(default=2, ge=1, le=64)
    base_frames: int = Field(default=1200, ge=4, le=1_000_000,
                             description="ground-truth frames of the usual mix")
    mine: MineSettings = Field(default_factory=MineSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluate: EvalSettings = Field(default_factory=EvalSettings)
    gate: dict[str, float] = Field(default_factory=dict,
                                   description="promotion gate overrides")
    promote: bool = Field(default=True, description="promote when the gate passes")


# -- the state file -----------------------------------------------------------------------


class State:
    """`loop_state.json`: each finished stage's result, written atomically."""

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder
        self.path = folder.path / "loop_state.json"
        self.doc: dict[str, Any] = {"stages": {}, "times": {}}
        if self.path.is_file():
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("stages"), dict):
                self.doc = doc

    def done(self, stage: str) -> bool:
        return stage in self.doc["stages"]

    def result(self, stage: str) -> Any:
        return self.doc["stages"][stage]

    def drop_from(self, stage: str) -> None:
        """Forget `stage` and every later one, and the per-item results they keep
        (labels, finished trainings) in the loop's own folders."""
        from data_engine.store import check_id

        later = STAGES[STAGES.index(stage):]
        mined = self.doc["stages"].get("mine", {})  # read before it may be dropped
        for name in later:
            self.doc["stages"].pop(name, None)
            self.doc["times"].pop(name, None)
        root = self.folder.path
        if "relabel" in later:  # the labels this loop wrote, by snapshot id, nothing else
            for sid in [*mined.get("mined_ids", []), *mined.get("variation_ids", []),
                        *mined.get("random_ids", [])]:
                for ext in (".json", ".npz"):
                    (root / "labels" / f"{check_id(sid)}{ext}").unlink(missing_ok=True)
        if "train" in later and (root / "train").is_dir():
            for run in sorted((root / "train").iterdir()):
                if RUN_NAME.fullmatch(run.name) and not run.is_symlink():
                    (run / "drivestack_result.json").unlink(missing_ok=True)
        atomic_write_text(self.folder.own("loop_state.json"), json_text(self.doc, indent=1))
        self.folder.wrote()

    def save(self, stage: str, result: Any, seconds: float) -> None:
        self.doc["stages"][stage] = result
        self.doc["times"][stage] = round(seconds, 1)
        atomic_write_text(self.folder.own("loop_state.json"), json_text(self.doc, indent=1))
        self.folder.wrote()


def run_loop(cfg: LoopConfig, *, force: bool = False, redo_from: str | None = None,
             on_stage: Callable[[str, str], None] | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns the state document. `redo_from`: run that
    stage and every later one again (e.g. after a new labeler). A stage that runs drops
    the results of later ones (a folder made before that stage existed). `on_stage(stage, what)`
    reports "start", "skip" or "done"; `progress(stage, done, total)` counts work."""
    if redo_from is not None and redo_from not in STAGES:
        raise ValueError(f"redo_from: {redo_from!r} is not a stage; allowed: "
                         f"{', '.join(STAGES)}")
    folder = OutputFolder.claim(cfg.out, JOB, force=force, entries=ENTRIES)
    state = State(folder)
    settings = launch_settings(cfg)
    made_with = state.doc.get("settings")
    if redo_from is None and made_with is not None and made_with != settings \
            and any(state.done(s) for s in STAGES):
        keys = changed_keys(made_with, settings)
        raise ValueError(f"{cfg.out}: its finished stages were made with other settings "
                         f"(changed: {', '.join(keys[:8])}); run again with --redo-from "
                         f"{first_stage(keys)} (the first stage they concern) or into "
                         "another --out")
    if redo_from is not None:
        state.drop_from(redo_from)
    state.doc["settings"] = settings
    ctx = _Context(cfg, folder, state, progress or (lambda *a: None))
    for stage in STAGES:
        if state.done(stage):
            if on_stage:
                on_stage(stage, "skip")
            continue
        later = STAGES[STAGES.index(stage) + 1:]
        if any(state.done(s) for s in later):  # they were made without this stage's result
            state.drop_from(later[0])  # (a folder from before the stage existed)
        if on_stage:
            on_stage(stage, "start")
        start = time.perf_counter()
        result = getattr(ctx, f"stage_{stage}")()
        state.save(stage, result, time.perf_counter() - start)
        if on_stage:
            on_stage(stage, "done")
    folder.finish(stages=len(STAGES))
    return state.doc


def launch_settings(cfg: LoopConfig) -> dict[str, Any]:
    """The launch settings a turn's results depend on (all but the output folder), as
    JSON values: kept in the state, so that a resumed turn does not mix settings."""
    doc: dict[str, Any] = cfg.model_dump(mode="json")
    for key in ("out", "workers"):  # where, and how many processes: not what
        doc.pop(key, None)
    return doc


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two `launch_settings`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "settings"]


SETTING_STAGES = {
    "seed": "base", "base_frames": "base", "device": "mine", "mine": "mine",
    "evaluate.heldout_seed": "heldout", "evaluate.nominal_frames": "heldout",
    "evaluate.hard_frames": "heldout", "train.frame_stride": "versions",
    "train.max_new_frames": "versions", "train.arms": "versions",
    "train.select": "versions", "train.spread_seeds": "versions",
    "train.spread_arms": "versions", "train": "train",
    "evaluate.calibration_frames": "calibrate", "evaluate.calibration_seed": "calibrate",
    "evaluate.score_weights": "calibrate", "evaluate.calibrate_on": "calibrate",
    "evaluate": "evaluate", "gate": "promote", "promote": "promote"}
"""The first stage a launch setting (a dotted name, or the section it is in) concerns."""


def first_stage(keys: list[str]) -> str:
    """The first stage that any of the dotted setting names concerns (`SETTING_STAGES`;
    a name it does not know: the first stage)."""
    def stage(key: str) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in SETTING_STAGES:
                return SETTING_STAGES[".".join(parts[:n])]
        return STAGES[0]

    return min((stage(k) for k in keys), key=STAGES.index, default=STAGES[0])


class _Context:
    def __init__(self, cfg: LoopConfig, folder: OutputFolder, state: State,
                 progress: Callable[[str, int, int], None]) -> None:
        self.cfg, self.folder, self.state, self.progress = cfg, folder, state, progress
        self.out = folder.path
        self._box_cache: dict[tuple[str, tuple[str, ...], str], dict[str, np.ndarray]] = {}

    # -- data --------------------------------------------------------------------------
    def stage_base(self) -> dict[str, Any]:
        from perception.datasets import DatasetPlan, generate

        per = max(1, min(20, self.cfg.base_frames // 10))  # >= 10 episodes: every split
        plan = DatasetPlan(frames=self.cfg.base_frames, frames_per_episode=per,
                           seed=self.cfg.seed * 10_000)
        summary = generate(plan, self.folder.own("base"), workers=self.cfg.workers,
                           force=False)
        return {"frames": summary.get("frames", self.cfg.base_frames),
                "seeds": [plan.seed, plan.seed + 10_000]}

    def stage_heldout(self) -> dict[str, Any]:
        from data_engine.evaluation import make_heldout_sets

        e = self.cfg.evaluate
        sets = make_heldout_sets(self.folder.own("heldout"), nominal_frames=e.nominal_frames,
                                 hard_frames=e.hard_frames, seed=e.heldout_seed,
                                 workers=self.cfg.workers)
        return {"sets": {k: str(v) for k, v in sets.folders.items()},
                "episode_seeds": [min(sets.episode_seeds()), max(sets.episode_seeds())]}

    def stage_mine(self) -> dict[str, Any]:
        from data_engine.evaluation import assert_disjoint, heldout_seed_range
        from data_engine.mine import MineSpec, mine, mine_fanout, model_hashes
        from data_engine.store import SnapshotStore
        from perception.detector import FAST_WEIGHTS
        from perception.perceiver import Perceiver
        from perception.registry import current_detector
        from planning.evaluate import Case
        from sim.fanout import Fanout

        m = self.cfg.mine
        assert_disjoint(m.seeds, heldout_seed_range())
        assert_disjoint(m.seeds, self.cfg.evaluate.closed_loop_seeds)
        cases = [Case("mine", f, tod, w, s) for f in m.families for tod, w in m.conditions
                 for s in m.seeds]
        store = SnapshotStore(self.folder.own("snapshots"), create=True)
        control = SnapshotStore(self.folder.own("random"), create=True)
        perceiver = Perceiver(device=self.cfg.device)
        second = Perceiver(weights=FAST_WEIGHTS, device=self.cfg.device, lanes=False) \
            if m.second_detector else None
        models = model_hashes({"detector": current_detector(),
                               "second_detector": FAST_WEIGHTS if second else None})
        done = [0]

        def tick(_: Any) -> None:
            done[0] += 1
            self.progress("mine", done[0], len(cases))

        if self.cfg.workers > 1:  # the same snapshots; each worker a share of the cores
            spec = MineSpec(m.driver, self.cfg.device, None, m.second_detector, None,
                            m.recorder, m.max_steps, models, m.random_rate)
            summary = mine_fanout(store, cases, spec, Fanout(workers=self.cfg.workers),
                                  control_store=control, on_episode=tick)
        else:
            summary = mine(store, cases, driver=m.driver, perceiver=perceiver, second=second,
                           recorder=m.recorder, max_steps=m.max_steps, models=models,
                           on_episode=tick, control=(control, m.random_rate))
        doc = summary.as_dict()
        doc["random_ids"] = control.good_ids()
        doc["mined_ids"] = summary.snapshots
        doc["replay"] = self._replays(store, summary.snapshots)
        doc["variations"] = self._variations(store, summary.snapshots, perceiver, second)
        doc["variation_ids"] = [i for r in doc["variations"]["rows"] for i in r["snapshots"]]
        return doc

    def _variations(self, store: Any, ids: list[str], perceiver: Any, second: Any
                    ) -> dict[str, Any]:
        from data_engine.variations import summarize, vary_and_mine
        from planning.evaluate import build_planner

        m = self.cfg.mine
        rows: list[dict[str, Any]] = []
        picked = ids[: m.variation_clips] if m.variations else []
        for k, sid in enumerate(picked):
            planner, source = build_planner(m.driver, perceiver=perceiver)
            rows += vary_and_mine(store.get(sid), store, planner, source, m.variations,
                                  seed=self.cfg.seed, perceiver=perceiver, second=second,
                                  recorder=m.recorder)
            self.progress("variations", k + 1, len(picked))
        return {**summarize(rows, len(picked)), "rows": rows}

    def _replays(self, store: Any, ids: list[str]) -> dict[str, Any]:
        """Every mined clip re-simulated and compared byte for byte."""
        from data_engine.replay import replay_clip

        ok = 0
        failed = []
        for sid in ids:
            check, _ = replay_clip(store.get(sid))
            ok += check.ok
            if not check.ok:
                failed.append(sid)
        return {"checked": len(ids), "byte_equal": ok, "failed": failed}

    def stage_relabel(self) -> dict[str, Any]:
        from data_engine.autolabel import ClipLabels, default_teacher, labeler_name
        from data_engine.relabel import (
            online_tallies,
            quality_against_truth,
            quality_of,
            relabel_fanout,
            relabel_snapshot,
        )
        from data_engine.store import SnapshotStore
        from sim.fanout import Fanout

        mined = self.state.result("mine")
        labels = self.folder.own("labels")
        labels.mkdir(exist_ok=True)
        labeler = labeler_name(default_teacher(lanes=False))
        by_condition: dict[str, tuple[list[Any], list[Any]]] = {}
        ours_all, online_all = [], []
        jobs = [("snapshots", i) for i in mined["mined_ids"] + mined.get(
            "variation_ids", [])] + [("random", i) for i in mined["random_ids"]]
        stores = {w: SnapshotStore(self.out / w) for w in ("snapshots", "random")}
        found: dict[str, Any] = {}
        for _where, sid in jobs:
            target = labels / sid
            # a resumed turn keeps labels only of the labeler it runs now
            lab = ClipLabels.load(target) if target.with_name(sid + ".json").is_file() \
                else None
            if lab is not None and lab.labeler == labeler:
                found[sid] = lab
        todo = [stores[w].get(sid) for w, sid in jobs if sid not in found]
        labeled = (relabel_fanout(todo, Fanout(workers=self.cfg.workers))
                   if self.cfg.workers > 1 else (relabel_snapshot(s) for s in todo))
        for k, (where, sid) in enumerate(jobs):
            store = stores[where]
            lab = found.get(sid)
            if lab is None:
                r = next(labeled)  # in the order of `todo`
                lab = r.labels
                lab.save(labels / sid)
            if where == "snapshots":
                snap = store.get(sid)
                ours = quality_against_truth(snap, lab)
                online = online_tallies(snap)
                cond = f"{snap.meta.get('time_of_day')}/{snap.meta.get('weather')}"
                a, b = by_condition.setdefault(cond, ([], []))
                a += ours
                b += online
                ours_all += ours
                online_all += online
            self.progress("relabel", k + 1, len(jobs))
        return {"auto": quality_of(ours_all), "online": quality_of(online_all),
                "by_condition": {c: {"auto": quality_of(a), "online": quality_of(b)}
                                 for c, (a, b) in sorted(by_condition.items())}}

    def stage_versions(self) -> dict[str, Any]:
        from data_engine.versions import build_version

        mined = self.state.result("mine")
        t = self.cfg.train
        frames_of: dict[str, list[Any]] = {arm: self._frames(arm, mined) for arm in t.arms}
        # the same count for every arm
        n = min(t.max_new_frames, *(len(f) for f in frames_of.values()))
        scores = self._frame_scores(frames_of, mined) if t.select == "disagreement" else None
        errors = self._online_errors(mined)  # ground truth: for the report only
        out: dict[str, Any] = {}
        for name, arm, seed in t.runs(self.cfg.seed):
            frames = frames_of[arm]
            if scores is not None and arm != "random_auto":
                keep = select_top(scores, n, seed)
                how = "disagreement"
            else:  # a seeded sample over all clips' frames (never the first N, which
                # would keep the first clips, i.e. the first scenarios, only)
                rng = np.random.default_rng(seed)
                keep = sorted(rng.choice(len(frames), size=n, replace=False).tolist())
                how = "sample"
            chosen = [frames[i] for i in keep]
            (self.folder.own("versions")).mkdir(exist_ok=True)
            manifest = build_version(self.out / "versions" / name, self.out / "base", chosen,
                                     seed=seed, name=name, force=False)
            err = [errors[f.key] for f in chosen if f.key in errors]
            pool = [errors[f.key] for f in frames if f.key in errors]
            out[name] = {"arm": arm, "seed": seed, "frames": manifest["new_frames"],
                         "old_frames": manifest["old_frames"], "counts": manifest["counts"],
                         "available": len(frames), "selection": how,
                         "online_errors": float(np.mean(err)) if err else None,
                         "pool_online_errors": float(np.mean(pool)) if pool else None}
            if how == "disagreement":
                out[name]["disagreeing"] = int(np.count_nonzero(np.asarray(scores) > 0))
        return out

    def _frame_scores(self, frames_of: dict[str, list[Any]], mined: dict[str, Any]
                      ) -> list[float] | None:
        """Each mined frame's misses + ghosts of the online detector against its
        auto-labels (data_engine.selection; no ground truth), in the order of every mined
        arm's frames; None without a mined arm."""
        arms = [a for a in frames_of if a != "random_auto"]
        if not arms:
            return None
        auto = frames_of.get("mined_auto") or self._frames("mined_auto", mined)
        for a in arms:
            if [f.key for f in frames_of[a]] != [f.key for f in auto]:
                raise RuntimeError(f"arm {a}: its frames are not the mined clips' frames")
        online = self._boxes("snapshots", _mined_ids(mined), PERCEPTION_FILE)
        return [float(sum(disagreement(f.boxes, online[f.key], f.ignore))) for f in auto]

    def _online_errors(self, mined: dict[str, Any]) -> dict[str, int]:
        """Misses + ghosts of the online detector against the ground truth for every
        frame of the mined and random clips (for the report only)."""
        out: dict[str, int] = {}
        for where, ids in (("snapshots", _mined_ids(mined)), ("random", mined["random_ids"])):
            online = self._boxes(where, ids, PERCEPTION_FILE)
            truth = self._boxes(where, ids, TRUTH_FILE)
            out.update({k: online_errors(truth[k], online[k]) for k in online if k in truth})
        return out

    def _boxes(self, where: str, ids: list[str], name: str) -> dict[str, np.ndarray]:
        """Boxes of every frame of snapshots `ids` by frame key: the online detector's
        (score >= ONLINE_CONF) or the ground truth's (as the ceiling arm takes them); read
        once per stage run."""
        key = (where, tuple(ids), name)
        if key not in self._box_cache:
            self._box_cache[key] = self._read_boxes(where, ids, name)
        return self._box_cache[key]

    def _read_boxes(self, where: str, ids: list[str], name: str) -> dict[str, np.ndarray]:
        from data_engine.clip import boxes_per_frame, npz_arrays
        from data_engine.relabel import snapshot_frames
        from data_engine.store import SnapshotStore

        store = SnapshotStore(self.out / where)
        out: dict[str, np.ndarray] = {}
        for sid in ids:
            snap = store.get(sid)
            n = len(snapshot_frames(snap))
            for k, b in enumerate(boxes_per_frame(npz_arrays(snap.read(name), name), "", n,
                                                  name)):
                assert b is not None
                keep = _truth_kept(b) if name == TRUTH_FILE else (
                    b.scores is not None and b.scores >= ONLINE_CONF)
                out[f"{sid}/{k:06d}"] = b.xyxy[keep]
        return out

    def _frames(self, arm: str, mined: dict[str, Any]) -> list[Any]:
        """The labelled frames of an arm (every `frame_stride`-th of each clip, all clips)."""
        from data_engine.autolabel import ClipLabels
        from data_engine.clip import PERCEPTION, TRUTH, boxes_per_frame, npz_arrays
        from data_engine.relabel import snapshot_frames
        from data_engine.store import SnapshotStore
        from data_engine.versions import NewFrame

        where, ids = (("random", mined["random_ids"]) if arm == "random_auto"
                      else ("snapshots", _mined_ids(mined)))
        store = SnapshotStore(self.out / where)
        t = self.cfg.train
        out: list[NewFrame] = []
        for sid in ids:
            snap = store.get(sid)
            images = snapshot_frames(snap)
            n = len(images)
            cond = {k: str(snap.meta.get(k)) for k in ("family", "time_of_day", "weather")}
            if arm.endswith("_auto"):
                lab = ClipLabels.load(self.out / "labels" / sid)
                per = [(lab.boxes[k], lab.classes[k], lab.ignore[k]) for k in range(n)]
                source, labeler = "auto", lab.labeler
            else:
                name = TRUTH if arm == "mined_truth" else PERCEPTION
                per = []
                for b in boxes_per_frame(npz_arrays(snap.read(name), name), "", n, name):
                    assert b is not None
                    keep = _truth_kept(b) if arm == "mined_truth" else (
                        b.scores is not None and b.scores >= ONLINE_CONF)
                    per.append((b.xyxy[keep], b.classes[keep], np.zeros((0, 4), np.float32)))
                source = "ground_truth" if arm == "mined_truth" else "online"
                labeler = "" if arm == "mined_truth" else "Perceiver(conf=0.25)"
            for k in range(0, n, t.frame_stride):
                boxes, classes, ignore = per[k]
                out.append(NewFrame(f"{sid}/{k:06d}", images[k], boxes, classes, source,
                                    labeler, ignore, snap.meta.get("scenario_seed"), cond))
        return out

    # -- models ------------------------------------------------------------------------
    def stage_train(self) -> dict[str, Any]:
        from perception.detector import (
            DetectorTraining,
            cached_onnx,
            resolve_device,
            trained_imgsz,
        )
        from perception.registry import current_detector
        from sim.fanout import Fanout, ordered_map

        t = self.cfg.train
        init = current_detector()
        imgsz = t.imgsz or trained_imgsz(init)
        (self.folder.own("train")).mkdir(exist_ok=True)
        out: dict[str, Any] = {}
        runs = t.runs(self.cfg.seed)
        todo = []
        for name, _arm, seed in runs:
            if not (self.out / "train" / name / "drivestack_result.json").is_file():
                todo.append(DetectorTraining(
                    data=self.out / "base" / "data.yaml", out=self.out / "train" / name,
                    init=init, epochs=t.epochs, imgsz=imgsz, batch=t.batch, seed=seed,
                    device=self.cfg.device, workers=t.workers, lr0=t.lr0, hours=t.hours,
                    close_mosaic=t.epochs, nbs=t.nbs, freeze=t.freeze,
                    train_list=self.out / "versions" / name / "train.txt"))
        # the fine-tunes run `workers` at a time, each on its share of the cores (on 2
        # cores two 1-thread fine-tunes took 49.3 s, one on both cores 29.5 s: 1.2x the
        # throughput; bench/finetune_threads.py), and
        # those left over (5 runs in 2 workers: the last) here on every core; on a GPU
        # one at a time. Each writes only its own run folder; the marker that it is done
        # is written here, so a killed turn trains again what has none
        # (not with `hours`: ultralytics counts the epochs from an epoch's time)
        on_cpu = resolve_device(self.cfg.device) == "cpu"
        parallel = min(self.cfg.workers, len(todo)) if on_cpu and not t.hours else 1
        cut = len(todo) - len(todo) % parallel if parallel > 1 else 0
        results = chain(ordered_map(_no_state, None, _fine_tune, todo[:cut],
                                    Fanout(workers=parallel)) if cut else (),
                        (_fine_tune(None, cfg) for cfg in todo[cut:]))
        self.progress("train", len(runs) - len(todo), len(runs))
        for k, result in enumerate(results):
            atomic_write_text(Path(todo[k].out) / "drivestack_result.json",
                              json_text(result, indent=1))
            self.progress("train", len(runs) - len(todo) + k + 1, len(runs))
        for name, arm, seed in runs:
            best = self.out / "train" / name / "weights" / "best.pt"
            onnx = cached_onnx(best, 192, 320)  # what the Perceiver runs on the CPU
            out[name] = {"arm": arm, "seed": seed, "weights": str(best), "onnx": str(onnx),
                         "init": str(init), "imgsz": imgsz}
        return out

    def stage_calibrate(self) -> dict[str, Any]:
        from data_engine.evaluation import calibrate_score_weight
        from perception.refine import load_refiner
        from perception.registry import Registry

        e = self.cfg.evaluate
        entry = Registry().current()
        deployed = (entry.refiner_iou_weight if entry.refiner_iou_weight is not None
                    else load_refiner(backend="torch").spec.iou_weight)
        trained = self.state.result("train")
        if not e.calibration_frames:
            return {"deployed": deployed, "weights": {}, "scores": {}}
        sets = self._calibration_sets()
        held = self._sets().episode_seeds()
        both = sorted(sets.episode_seeds() & (held | set(e.closed_loop_seeds)))
        if both:  # the plans keep them apart; checked on the rendered frames too
            raise ValueError(f"calibration frames come from evaluation episodes {both[:5]}")
        models = [("current", entry.path), *((n, Path(t["weights"])) for n, t in
                                             trained.items())]
        scores: dict[str, Any] = {}
        for k, (name, weights) in enumerate(models):
            scores[name] = calibrate_score_weight(
                weights, sets, e.score_weights, device=self.cfg.device, raw=True,
                pool=list(sets.hard) if e.calibrate_on == "hard" else None).as_dict()
            self.progress("calibrate", k + 1, len(models))
        return {"deployed": deployed, "weights": {n: r["best"] for n, r in scores.items()},
                "scores": scores, "frames": e.calibration_frames,
                "seed": e.calibration_seed, "on": e.calibrate_on}

    def _calibration_sets(self) -> Any:
        from data_engine.evaluation import make_heldout_sets

        e = self.cfg.evaluate
        nominal = e.calibration_frames // 4
        return make_heldout_sets(self.folder.own("calibration"), nominal_frames=nominal,
                                 hard_frames=e.calibration_frames - nominal,
                                 seed=e.calibration_seed, workers=self.cfg.workers,
                                 block=CALIBRATION_BLOCK)

    def stage_evaluate(self) -> dict[str, Any]:
        from data_engine.evaluation import (
            NIGHT_FOG,
            PromotionGate,
            closed_loop_suite,
            compare_reports,
            decide,
            detector_report,
            paired_failures,
            privileged_suite,
        )
        from perception.registry import Registry
        from planning.evaluate import Case

        e = self.cfg.evaluate
        sets = self._sets()
        entry = Registry().current()
        current = entry.path
        trained = self.state.result("train")
        cal = self.state.result("calibrate")
        deployed, tuned = cal["deployed"], cal["weights"]
        again = "current" in tuned and tuned["current"] != deployed
        steps = len(trained) + 4 + again
        # every detector as the Perceiver runs it (on the CPU its ONNX export: the same
        # mAP as ultralytics' predict to 4 digits, 1.5x as fast)
        before = detector_report(current, sets, device=self.cfg.device, iou_weight=deployed,
                                 raw=True)
        self.progress("evaluate", 1, steps)
        reports: dict[str, Any] = {"before": before.as_dict()}
        boots: dict[str, Any] = {}
        boots_nf: dict[str, Any] = {}
        after_of: dict[str, Any] = {}
        runs = list(trained.items())
        weight_of = {a: tuned.get(a, deployed) for a in trained}
        if again:  # control: how much of a gain the new exponent alone makes
            runs.append((CURRENT_CALIBRATED, {"weights": str(current)}))
            weight_of[CURRENT_CALIBRATED] = tuned["current"]
        for k, (arm, t) in enumerate(runs):
            after = detector_report(Path(t["weights"]), sets, device=self.cfg.device,
                                    iou_weight=weight_of[arm], raw=True)
            after_of[arm] = after
            reports[arm] = after.as_dict()
            boots[arm] = compare_reports(before, after, n=e.bootstrap,
                                         seed=self.cfg.seed).as_dict()
            if NIGHT_FOG in after.images and NIGHT_FOG in before.images:
                boots_nf[arm] = compare_reports(before, after, NIGHT_FOG, n=e.bootstrap,
                                                seed=self.cfg.seed).as_dict()
            self.progress("evaluate", k + 2, steps)
        cases = [Case("hard", f, tod, w, s) for f in e.closed_loop_families
                 for tod, w in e.closed_loop_conditions for s in e.closed_loop_seeds]
        main = "mined_auto" if "mined_auto" in trained else next(iter(trained))
        # in `workers` processes, each on its share of the cores: the same rows as one
        # (tests/data_engine/test_evaluation), 1.35x as fast on 2 cores
        # (bench/closed_loop_workers.py)
        privileged = privileged_suite(cases, max_steps=e.max_steps, workers=self.cfg.workers)
        loop_before = closed_loop_suite(current, cases, max_steps=e.max_steps,
                                        iou_weight=deployed, workers=self.cfg.workers)
        self.progress("evaluate", steps - 1, steps)
        loop_after = closed_loop_suite(Path(trained[main]["weights"]), cases,
                                       max_steps=e.max_steps,
                                       iou_weight=weight_of[main], workers=self.cfg.workers)
        self.progress("evaluate", steps, steps)
        gate = PromotionGate.model_validate(self.cfg.gate)
        decision = decide(before, after_of[main], compare_reports(
            before, after_of[main], n=e.bootstrap, seed=self.cfg.seed), loop_before,
            loop_after, gate, privileged=privileged)
        priv = {r.case: r for r in privileged}
        rows = [{"case": _plain(b.case), "failed_before": b.failed, "failed_after": a.failed,
                 "privileged_failed": priv[b.case].failed, "end_before": b.end,
                 "end_after": a.end, "cause_before": b.cause, "cause_after": a.cause}
                for b, a in zip(loop_before, loop_after, strict=True)]
        versus = {}
        if "mined_auto" in after_of and "random_auto" in after_of:
            versus["mined_vs_random"] = compare_reports(
                after_of["random_auto"], after_of["mined_auto"], n=e.bootstrap,
                seed=self.cfg.seed).as_dict()
            versus["mined_vs_random_night_fog"] = compare_reports(
                after_of["random_auto"], after_of["mined_auto"], NIGHT_FOG, n=e.bootstrap,
                seed=self.cfg.seed).as_dict()
        return {"reports": reports, "bootstrap": boots, "bootstrap_night_fog": boots_nf,
                "main": main, "versus": versus,
                "score_weights": {"before": deployed, **weight_of},
                "spread": run_spread(reports, trained),
                "closed_loop": {"rows": rows, "paired": paired_failures(
                    loop_before, loop_after, privileged).as_dict()},
                "decision": _plain(decision.as_dict())}

    def _sets(self) -> Any:
        from data_engine.evaluation import make_heldout_sets

        e = self.cfg.evaluate
        return make_heldout_sets(self.out / "heldout", nominal_frames=e.nominal_frames,
                                 hard_frames=e.hard_frames, seed=e.heldout_seed,
                                 workers=self.cfg.workers)

    def stage_promote(self) -> dict[str, Any]:
        from perception.registry import Registry

        ev = self.state.result("evaluate")
        main, decision = ev["main"], ev["decision"]
        reg = Registry()
        name = f"loop-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{main}"
        taken = {e.name for e in reg.entries()}
        name = next(n for k in range(1, 1000) if (n := name if k == 1 else f"{name}-{k}")
                    not in taken)
        weights = Path(self.state.result("train")[main]["weights"])
        figures = {k: decision["figures"][k] for k in ("hard_gain", "hard_ci", "nominal_drop")}
        cal = self.state.result("calibrate")
        weight = cal["weights"].get(main)
        entry = reg.register(weights, name, metrics=figures, loop=str(self.out),
                             refiner_iou_weight=None if weight is None else float(weight))
        promoted = bool(decision["promote"]) and self.cfg.promote
        if promoted:
            reg.promote(entry.name)
        return {"registered": entry.name, "promoted": promoted,
                "gate_passed": bool(decision["promote"]), "reasons": decision["reasons"]}

    def stage_report(self) -> dict[str, Any]:
        from data_engine.loop_report import write_report

        files = write_report(self.state.doc, self.cfg, self.folder)
        return {"files": files}


def _mined_ids(mined: dict[str, Any]) -> list[str]:
    """The mined clips: the triggers' and their variations'."""
    return [*mined["mined_ids"], *mined.get("variation_ids", [])]


def _truth_kept(b: Any) -> np.ndarray:
    """The ground-truth boxes a label set keeps: at least 4 px a side, a quarter visible."""
    if b.visible is None:
        return np.ones(len(b.xyxy), bool)
    wh = b.xyxy[:, 2:] - b.xyxy[:, :2]
    return np.asarray((wh >= 4).all(1) & (b.visible >= 0.25))


def _no_state(_: Any) -> None:
    return None


def _fine_tune(_: None, cfg: Any) -> dict[str, Any]:
    """One fine-tune (a loop worker's job)."""
    from perception.detector import train_detector

    return train_detector(cfg)


def _plain(value: Any) -> Any:
    """A JSON-able copy (dataclasses as dicts, numpy scalars as numbers; attributes that
    hold raw predictions are dropped)."""
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in asdict(value).items() if not k.startswith("_")
                and k != "predictions"}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if k != "predictions"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def run_spread(reports: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """The run-to-run spread of the hard-set mAP50-95: for each arm trained more than
    once (`train.spread_seeds`), the range of its hard-set figure over its runs; `spread`
    is the largest such range (None with a single run per arm)."""
    by_arm: dict[str, list[float]] = {}
    for name, t in trained.items():
        v = reports.get(name, {}).get("sets", {}).get("hard", {}).get("mAP50-95")
        if isinstance(v, int | float):
            by_arm.setdefault(str(t.get("arm", name)), []).append(float(v))
    ranges = {a: max(v) - min(v) for a, v in by_arm.items() if len(v) > 1}
    return {"hard_by_arm": by_arm, "range_by_arm": ranges,
            "spread": max(ranges.values()) if ranges else None}
