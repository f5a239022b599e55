"""Evaluation before and after a data-engine retrain, and the promotion decision.

    sets = make_heldout_sets(out / "heldout", nominal_frames=300, hard_frames=400, workers=2)
    before, after = detector_report(current, sets), detector_report(new, sets)
    boot = compare_reports(before, after, "hard", n=200, seed=0)  # paired bootstrap
    priv = privileged_suite(cases, max_steps=450)                 # the same for both
    loop_before = closed_loop_suite(current, cases, max_steps=450)
    loop_after = closed_loop_suite(new, cases, max_steps=450)
    decision = decide(before, after, boot, loop_before, loop_after, PromotionGate(), priv)

- Held-out sets (`make_heldout_sets`): `drivestack dataset` folders rendered from seeds at
  `HELDOUT_BASE_SEED` (900,000) and above, which mining never uses (`assert_disjoint`):
  `nominal` (day, clear, all families) and one hard set per condition (`hard_night`,
  `hard_fog`, `hard_rain`), each in its own block of `SEED_BLOCK` seeds (so no two sets
  share a road). Every split of a held-out set is unseen by the detector, so all three
  are scored pooled (more frames, a tighter interval), as CALIBRATION.md did. A set
  already rendered from the same plan is kept (resuming); `heldout.json` records the plans.
- `detector_report`: mAP50-95 and mAP50 of a detector (through the shipped refiner) on
  each set and on the hard sets pooled (`hard`); the predictions stay in the report for
  the bootstrap.
- `paired_bootstrap`: the change of mAP50-95 with a 95 % percentile interval, both models
  scored on the same resamples. `compare_reports` resamples whole episodes (the frames of
  one episode share a road, traffic and light, so resampling frames would understate the
  spread); each image is matched once and a resample only reweights the matches.
- `closed_loop_suite` / `privileged_suite`: the rule planner driving on the detector's
  perception, and on the exact scene (which perception cannot fix); `paired_failures`.
- `PromotionGate` and `decide`: promote only when the hard sets gain enough (interval
  above 0), nominal does not drop, and closed-loop failures do not rise.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from data_engine.failure_cause import FailureCause, count_causes
from perception.datasets import SPLITS, DatasetPlan, generate, read_coco
from perception.metrics import (
    IOU_THRESHOLDS,
    ImageBoxes,
    detection_map,
    match_detections_at,
    ranked_ap,
)
from perception.refine import MAX_IOU_WEIGHT
from planning.evaluate import Case, EpisodeResult, build_planner, make_env, run_episode
from planning.evaluate import scenario_config as case_config
from sim.config import StrictModel
from sim.outputs import atomic_write_text, json_text, read_marker
from sim.types import CLASS_NAMES, CameraSpec, check_number

HELDOUT_BASE_SEED = 900_000
"""First held-out episode seed; mining scenario seeds stay below it."""
HELDOUT_END_SEED = 1_000_000
"""One past the last held-out seed."""
SEED_BLOCK = 10_000
"""Seeds reserved for each held-out set (episode k of a set uses its block's start + k)."""
HARD_CONDITIONS: dict[str, tuple[str, str]] = {
    "hard_night": ("night", "clear"), "hard_fog": ("day", "fog"), "hard_rain": ("day", "rain")}
"""Hard set name -> (time of day, weather)."""
NOMINAL = "nominal"
HARD = "hard"
"""Name of the hard sets pooled in a report."""
NIGHT_FOG = "night_fog"
"""Name of the night and fog sets pooled in a report (the known weak spots)."""
RECORD = "heldout.json"
"""File beside the sets naming the plan each was rendered from."""
RECORD_KIND = "drivestack-heldout"
METRICS = ("mAP50-95", "mAP50")


def heldout_seed_range() -> range:
    """Every episode seed a held-out set may use (mining must stay out of it)."""
    return range(HELDOUT_BASE_SEED, HELDOUT_END_SEED)


def assert_disjoint(mining_seeds: Iterable[int], heldout_seeds: Iterable[int]) -> None:
    """Raise ValueError naming the seeds (the first 10, and how many) that are both mining
    and held-out seeds."""
    held = heldout_seeds if isinstance(heldout_seeds, range) else set(heldout_seeds)
    both = sorted({int(s) for s in mining_seeds if s in held})
    if both:
        shown = ", ".join(map(str, both[:10])) + (", ..." if len(both) > 10 else "")
        raise ValueError(f"mining seeds overlap the held-out seeds: {shown} ({len(both)} "
                         f"seed{'s' if len(both) > 1 else ''}); mine below "
                         f"{HELDOUT_BASE_SEED}")


# -- held-out sets ----------------------------------------------------------------------


@dataclass(frozen=True)
class HeldoutSets:
    """Rendered held-out datasets: `nominal` first, then the hard sets."""

    root: Path
    folders: dict[str, Path]
    """Set name -> `drivestack dataset` folder."""
    plans: dict[str, DatasetPlan]

    @property
    def nominal(self) -> Path:
        return self.folders[NOMINAL]

    @property
    def hard(self) -> dict[str, Path]:
        return {k: v for k, v in self.folders.items() if k != NOMINAL}

    def episode_seeds(self) -> set[int]:
        """The episode seeds the rendered frames came from (meta.jsonl of every set)."""
        return {int(r["episode_seed"]) for f in self.folders.values() for r in _meta(f)}


def heldout_plans(nominal_frames: int = 300, hard_frames: int = 400,
                  seed: int = HELDOUT_BASE_SEED, *, families: Mapping[str, float] | None = None,
                  frames_per_episode: int = 5, stride: int = 10, warmup: int = 15,
                  camera: CameraSpec | None = None, block: int = SEED_BLOCK
                  ) -> dict[str, DatasetPlan]:
    """The plan of each held-out set; `hard_frames` are shared among the hard conditions.
    Few frames an episode (5, 10 steps apart), so a set holds many episodes. Set k uses
    the seeds from `seed + k * block` on."""
    check_number("block", block, 1, SEED_BLOCK, integer=True)
    check_number("seed", seed, HELDOUT_BASE_SEED,
                 HELDOUT_END_SEED - block * (1 + len(HARD_CONDITIONS)), integer=True)
    check_number("nominal_frames", nominal_frames, 1, block, integer=True)
    check_number("hard_frames", hard_frames, len(HARD_CONDITIONS), block, integer=True)
    common: dict[str, Any] = {"frames_per_episode": frames_per_episode, "stride": stride,
                              "warmup": warmup, "camera": camera or CameraSpec()}
    if families is not None:
        common["families"] = dict(families)
    plans = {NOMINAL: DatasetPlan(frames=nominal_frames, seed=seed, time_of_day={"day": 1.0},
                                  weather={"clear": 1.0}, **common)}
    share, extra = divmod(hard_frames, len(HARD_CONDITIONS))
    for i, (name, (tod, weather)) in enumerate(HARD_CONDITIONS.items()):
        plans[name] = DatasetPlan(frames=share + (i < extra), seed=seed + (i + 1) * block,
                                  time_of_day={tod: 1.0}, weather={weather: 1.0}, **common)
    return plans


def make_heldout_sets(out: Path | str, nominal_frames: int = 300, hard_frames: int = 400,
                      seed: int = HELDOUT_BASE_SEED, workers: int = 1, *,
                      families: Mapping[str, float] | None = None, frames_per_episode: int = 5,
                      stride: int = 10, warmup: int = 15, camera: CameraSpec | None = None,
                      on_frame: Callable[[int], None] | None = None, block: int = SEED_BLOCK
                      ) -> HeldoutSets:
    """Render the held-out sets into `out/<name>` (`heldout_plans`), keeping every set
    already rendered there from the same plan (a complete dataset: its marker says so and
    `out/heldout.json` records the plan). A set from another plan is rendered again
    (`perception.datasets.generate` replaces its own datasets and refuses other folders).
    ValueError when a set ran past its seed block."""
    plans = heldout_plans(nominal_frames, hard_frames, seed, families=families,
                          frames_per_episode=frames_per_episode, stride=stride,
                          warmup=warmup, camera=camera, block=block)
    root = Path(out)
    record = root / RECORD
    done = _read_record(record)
    for name, plan in plans.items():
        folder = root / name
        if done.get(name) == _plan_json(plan) and _complete(folder, plan):
            continue
        done.pop(name, None)
        _write_record(record, done)  # the old plan no longer describes the folder
        generate(plan, folder, on_frame=on_frame, workers=workers)
        done[name] = _plan_json(plan)
        _write_record(record, done)
    sets = HeldoutSets(root, {name: root / name for name in plans}, plans)
    for name, plan in plans.items():
        seeds = {int(r["episode_seed"]) for r in _meta(sets.folders[name])}
        if seeds and not plan.seed <= min(seeds) <= max(seeds) < plan.seed + block:
            raise ValueError(f"held-out set {name}: episode seeds {min(seeds)}..{max(seeds)} "
                             f"leave its block {plan.seed}..{plan.seed + block - 1}; "
                             "render fewer frames or more frames an episode")
    return sets


def _plan_json(plan: DatasetPlan) -> Any:
    return json.loads(json.dumps(dataclasses.asdict(plan)))


def _read_record(path: Path) -> dict[str, Any]:
    """The recorded plans by set name ({} without a record); ValueError for a file of
    that name drivestack did not write (it is left as it is)."""
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        doc = None
    if not (isinstance(doc, dict) and doc.get("kind") == RECORD_KIND
            and isinstance(doc.get("sets"), dict)):
        raise ValueError(f"{path}: not a drivestack held-out record; it is left as it is: "
                         "move it, or choose another folder for the held-out sets")
    return dict(doc["sets"])


def _write_record(path: Path, sets: dict[str, Any]) -> None:
    atomic_write_text(path, json_text({"kind": RECORD_KIND, "format": 1, "sets": sets},
                                      indent=1) + "\n")


def _complete(folder: Path, plan: DatasetPlan) -> bool:
    """Whether `folder` holds a finished dataset of `plan.frames` frames."""
    marker = read_marker(folder) if folder.is_dir() else None
    if marker is None or marker.get("kind") != "dataset" or not marker.get("complete"):
        return False
    try:
        frames = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["frames"]
        return sum(frames.values()) == plan.frames
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _meta(folder: Path) -> list[dict[str, Any]]:
    path = folder / "meta.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# -- detector report --------------------------------------------------------------------


@dataclass
class ScoredImages:
    """Predictions and ground truth of a set's images, in one fixed order."""

    keys: list[str]
    """Image path, relative to the held-out root (`set/images/split/name.jpg`)."""
    preds: list[ImageBoxes]
    gts: list[ImageBoxes]
    episodes: list[int]
    """Episode seed of each image (the bootstrap's resampling unit)."""

    def __add__(self, other: ScoredImages) -> ScoredImages:
        return ScoredImages(self.keys + other.keys, self.preds + other.preds,
                            self.gts + other.gts, self.episodes + other.episodes)


@dataclass
class DetectorReport:
    """A detector's figures on the held-out sets and the scored images behind them."""

    weights: str
    scores: dict[str, dict[str, Any]]
    """Set name (and `hard`, the hard sets pooled) -> mAP50-95, mAP50, images, objects."""
    refine: bool = True
    images: dict[str, ScoredImages] = field(default_factory=dict, repr=False)
    """Set name -> scored images (not in `as_dict`)."""

    def figure(self, name: str, metric: str = "mAP50-95") -> float:
        return float(self.scores[name][metric])

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "refine": self.refine, "splits": "all, pooled",
                "sets": self.scores}


def detector_report(weights: Path | str | None, sets: HeldoutSets, refine: bool = True,
                    device: str = "cpu", imgsz: int | None = None,
                    iou_weight: float | None = None, raw: bool = False) -> DetectorReport:
    """Score a detector (None: the current one, `perception.registry`) on every held-out
    set, all splits pooled, through the shipped box refiner unless `refine` is False, at
    score exponent `iou_weight` (None: the registry's for the current detector, else the
    refiner's own). `raw`: the detector as the Perceiver runs it (on the CPU its ONNX
    export; `perception.evaluate.predict_split_refined`)."""
    from perception.registry import Registry

    if weights is None:
        entry = Registry().current()
        weights = entry.path
        iou_weight = entry.refiner_iou_weight if iou_weight is None else iou_weight
    reports = detector_reports(weights, sets, [iou_weight] if refine else [None],
                               device=device, imgsz=imgsz, refine=refine, raw=raw)
    return reports[0]


def detector_reports(weights: Path | str, sets: HeldoutSets, iou_weights: Sequence[float | None],
                     device: str = "cpu", imgsz: int | None = None, refine: bool = True,
                     raw: bool = False) -> list[DetectorReport]:
    """`detector_report` of one detector through the shipped refiner at each score exponent
    of `iou_weights` (None: the refiner's own), the detector run once (`refine` False:
    one report without the refiner)."""
    from perception.detector import resolve_device, torch_device
    from perception.evaluate import predict_split_refined
    from perception.refine import load_refiner

    weights = Path(weights)
    dev = resolve_device(device)
    refiners = ([load_refiner(None, torch_device(dev), iou_weight=w) for w in iou_weights]
                if refine else [None])
    images: list[dict[str, ScoredImages]] = [{} for _ in refiners]
    for name, folder in sets.folders.items():
        for im in images:
            im[name] = ScoredImages([], [], [], [])
        episodes = {r["image"]: int(r["episode_seed"]) for r in _meta(folder)}
        for split in SPLITS:
            doc = read_coco(folder / "annotations" / f"{split}.json")
            if not doc["images"]:
                continue
            preds = predict_split_refined(weights, folder, split, refiners, imgsz=imgsz,
                                          device=dev, raw=raw)
            for im, p in zip(images, preds, strict=True):
                im[name] += _scored(doc, p, episodes, name)
    out = []
    for im in images:
        hard = [im[n] for n in sets.hard]
        if hard:
            im[HARD] = sum(hard[1:], hard[0])
        if "hard_night" in im and "hard_fog" in im:
            im[NIGHT_FOG] = im["hard_night"] + im["hard_fog"]
        out.append(DetectorReport(str(weights), {n: _score(s) for n, s in im.items()},
                                  refine, im))
    return out


@dataclass(frozen=True)
class ScoreWeight:
    """The refiner score exponent calibrated for one detector (`calibrate_score_weight`)."""

    weights: str
    best: float
    scores: dict[float, float]
    """Exponent -> mAP50-95 of the calibration sets the ranking pooled (`pool`)."""
    pool: tuple[str, ...] = ()
    """The sets the ranking pooled."""
    per_set: dict[float, dict[str, float]] = field(default_factory=dict)
    """Exponent -> mAP50-95 of each calibration set, and of the hard ones pooled."""

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "best": self.best,
                "scores": {str(k): v for k, v in self.scores.items()},
                "pool": list(self.pool),
                "per_set": {str(k): v for k, v in self.per_set.items()}}


SCORE_WEIGHTS = (0.0, 0.125, 0.25, 0.375, 0.5)
"""The refiner score exponents `calibrate_score_weight` tries by default."""


def calibrate_score_weight(weights: Path | str, sets: HeldoutSets,
                           grid: Sequence[float] = SCORE_WEIGHTS, device: str = "cpu",
                           raw: bool = False, pool: Sequence[str] | None = None
                           ) -> ScoreWeight:
    """The refiner's score exponent (`RefinerSpec.iou_weight`) that gives detector
    `weights` the highest mAP50-95 on `sets` pooled (`pool`: the names of the sets to
    pool, default all of them: one ranking over all conditions, as deployed). The refiner
    multiplies each small box's confidence by its edge confidence to this power: a
    fine-tuned detector's confidences are not the ones the exponent was chosen for, and
    at the shipped 0.5 the refiner took away the night mAP fine-tunes gained
    (docs/data_engine.md, "Turn 5"). `sets` must not be the sets the detector is then
    judged on: the loop renders its own from seeds of their own. Ties go to the smaller
    exponent. Every set's mAP at every exponent comes back too (`per_set`)."""
    for w in grid:
        check_number("score exponent", w, 0.0, MAX_IOU_WEIGHT)
    grid = sorted({float(w) for w in grid})
    if not grid:
        raise ValueError("grid: no score exponent to try")
    names = list(sets.folders) if pool is None else list(dict.fromkeys(pool))
    unknown = [n for n in names if n not in sets.folders]
    if unknown or not names:
        raise ValueError(f"pool: unknown calibration sets {unknown}; allowed: "
                         f"{', '.join(sets.folders)}")
    reports = detector_reports(weights, sets, grid, device=device, raw=raw)
    scores: dict[float, float] = {}
    per_set: dict[float, dict[str, float]] = {}
    for w, r in zip(grid, reports, strict=True):
        pooled = [r.images[n] for n in names]
        scores[w] = _score(sum(pooled[1:], pooled[0]))["mAP50-95"]
        per_set[w] = {n: _score(r.images[n])["mAP50-95"] for n in sets.folders}
        hard = [r.images[n] for n in sets.hard]
        if hard:
            per_set[w][HARD] = _score(sum(hard[1:], hard[0]))["mAP50-95"]
    best = max(grid, key=lambda w: (scores[w], -w))
    return ScoreWeight(str(weights), best, scores, tuple(names), per_set)


def _scored(doc: dict[str, Any], preds: dict[int, ImageBoxes], episodes: dict[str, int],
            name: str) -> ScoredImages:
    from perception.evaluate import is_ignored

    anns: dict[int, list[dict[str, Any]]] = {}
    for a in doc["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    out = ScoredImages([], [], [], [])
    for im in doc["images"]:
        mine = anns.get(im["id"], [])
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in mine], float).reshape(-1, 4)
        out.gts.append(ImageBoxes(boxes, np.array([a["category_id"] - 1 for a in mine], int),
                                  ignore=np.array([is_ignored(a) for a in mine], bool)))
        out.preds.append(preds[im["id"]])
        out.keys.append(f"{name}/{im['file_name']}")
        out.episodes.append(episodes[im["file_name"]])
    return out


def _score(s: ScoredImages) -> dict[str, Any]:
    r: dict[str, Any] = detection_map(s.preds, s.gts, len(CLASS_NAMES)) if s.keys else {}
    objects = sum(int((~g.ignore).sum()) if g.ignore is not None else len(g.boxes)
                  for g in s.gts)
    return {**{m: float(r.get(m, math.nan)) for m in METRICS}, "images": len(s.keys),
            "objects": objects}


# -- paired bootstrap -------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """Change of mAP50-95 (after - before) on a set, with its 95 % percentile interval."""

    before: float
    after: float
    delta: float
    """after - before on the whole set."""
    ci_low: float
    ci_high: float
    n: int
    """Resamples."""
    seed: int
    unit: str
    """What was resampled: "episode" or "image"."""
    units: int
    """How many episodes (or images) the set holds."""
    images: int
    skipped: int = 0
    """Resamples without any object (no mAP), left out of the interval."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Matched:
    """Every detection of a model on a set matched once against the ground truth, per class
    and IoU threshold, sorted by score; `map(weights)` is the mAP50-95 of the set with
    image i taken weights[i] times."""

    def __init__(self, preds: Sequence[ImageBoxes], gts: Sequence[ImageBoxes]) -> None:
        if len(preds) != len(gts):
            raise ValueError(f"{len(preds)} prediction images for {len(gts)} ground-truth "
                             "images")
        n_cls = len(CLASS_NAMES)
        self.n_gt = np.zeros((n_cls, len(gts)))
        self.tables: list[list[tuple[np.ndarray, np.ndarray]]] = []
        for c in range(n_cls):
            matched = [match_detections_at(p, g, c) for p, g in zip(preds, gts, strict=True)]
            self.n_gt[c] = [n for _, _, n in matched]
            rows = []
            for k in range(len(IOU_THRESHOLDS)):
                kept = [st[k] >= 0 for st, _, _ in matched]
                tps = np.concatenate([np.zeros(0, bool)] + [
                    st[k][m] == 1 for (st, _, _), m in zip(matched, kept, strict=True)])
                scores = np.concatenate([np.zeros(0)] + [
                    sc[m] for (_, sc, _), m in zip(matched, kept, strict=True)])
                owner = np.concatenate([np.zeros(0, int)] + [
                    np.full(int(m.sum()), i) for i, m in enumerate(kept)])
                order = np.argsort(-scores, kind="stable")  # as detection_map
                rows.append((tps[order], owner[order]))
            self.tables.append(rows)

    def map(self, weights: np.ndarray) -> float:
        aps = []
        for c, rows in enumerate(self.tables):
            n_gt = float(self.n_gt[c] @ weights)
            if n_gt == 0:
                continue  # no object of this class in the resample: not averaged
            aps.append(np.mean([ranked_ap(tp, n_gt, weights[owner]) for tp, owner in rows]))
        return float(np.mean(aps)) if aps else math.nan


def paired_bootstrap(before: Sequence[ImageBoxes], after: Sequence[ImageBoxes],
                     gts: Sequence[ImageBoxes], n: int = 200, seed: int = 0,
                     groups: Sequence[int] | None = None) -> Bootstrap:
    """mAP50-95 of `after` minus that of `before` on the same images, and its 95 %
    interval (2.5th and 97.5th percentiles) over `n` resamples drawn with replacement,
    each used for both models. `groups` (one label per image, e.g. its episode): resample
    whole groups instead of single images."""
    check_number("n", n, 1, 1_000_000, integer=True)
    if not len(before) == len(after) == len(gts):
        raise ValueError(f"before, after and gts hold {len(before)}, {len(after)} and "
                         f"{len(gts)} images; the bootstrap pairs them image by image")
    if not gts:
        raise ValueError("no images to resample")
    if groups is not None and len(groups) != len(gts):
        raise ValueError(f"groups: {len(groups)} labels for {len(gts)} images")
    m0, m1 = _Matched(before, gts), _Matched(after, gts)
    labels = np.arange(len(gts)) if groups is None else np.asarray(groups)
    _, member = np.unique(labels, return_inverse=True)
    units = int(member.max()) + 1
    ones = np.ones(len(gts))
    full0, full1 = m0.map(ones), m1.map(ones)
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n):
        w = np.bincount(rng.integers(0, units, units), minlength=units)[member].astype(float)
        deltas.append(m1.map(w) - m0.map(w))
    d = np.asarray(deltas)
    ok = d[np.isfinite(d)]
    lo, hi = (np.percentile(ok, [2.5, 97.5]) if ok.size else (math.nan, math.nan))
    return Bootstrap(full0, full1, full1 - full0, float(lo), float(hi), n, seed,
                     "image" if groups is None else "episode", units, len(gts),
                     int(d.size - ok.size))


def compare_reports(before: DetectorReport, after: DetectorReport, name: str = HARD,
                    n: int = 200, seed: int = 0, by_episode: bool = True) -> Bootstrap:
    """`paired_bootstrap` of two reports on set `name` (default the hard sets pooled),
    resampling episodes (or images when `by_episode` is False)."""
    b, a = before.images.get(name), after.images.get(name)
    if b is None or a is None:
        raise ValueError(f"set {name!r}: not in both reports (they hold "
                         f"{sorted(before.images)} and {sorted(after.images)})")
    if b.keys != a.keys:
        raise ValueError(f"set {name!r}: the reports scored different images; score both "
                         "detectors on the same held-out sets")
    return paired_bootstrap(b.preds, a.preds, b.gts, n, seed,
                            b.episodes if by_episode else None)


# -- closed loop ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopRow:
    """One closed-loop episode."""

    case: Case
    planner: str
    failed: bool
    """It collided or left the road."""
    end: str
    driving_score: float
    route_completion: float
    error: str | None = None
    cause: dict[str, Any] | None = None
    """Why it failed (data_engine.failure_cause.Cause.as_dict), on camera runs; None
    without camera frames."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _row(case: Case, r: EpisodeResult, cause: dict[str, Any] | None = None) -> LoopRow:
    failed = r.collisions > 0 or r.off_road > 0 or r.end in ("collision", "off_road")
    return LoopRow(case, r.planner, failed, r.end, r.driving_score, r.route_completion,
                   r.error, cause)


@dataclass(frozen=True)
class _PerceiverSpec:
    """What builds a closed-loop suite's Perceiver (in this process or in a worker)."""

    weights: Path | str | None
    device: str
    camera: CameraSpec
    lanes: bool
    iou_weight: float | None

    def build(self) -> Any:
        from perception.perceiver import Perceiver

        return Perceiver(weights=self.weights, device=self.device, camera=self.camera,
                         lanes=self.lanes, refiner_iou_weight=self.iou_weight)


class _Driver:
    """One planner, scene source and env that drive cases one after another."""

    def __init__(self, kind: str, spec: _PerceiverSpec | None,
                 camera: CameraSpec | None) -> None:
        self.kind = kind
        self.planner, self.source = build_planner(
            kind, perceiver=spec.build() if spec is not None else None)
        self.env = make_env(self.source.needs_camera, camera)

    def __call__(self, case: Case, max_steps: int) -> LoopRow:
        self.env.config = case_config(case)
        why = FailureCause() if self.source.needs_camera else None
        r = run_episode(self.planner, self.source, self.env, case.seed, max_steps,
                        name=self.kind, case=case, listeners=[why] if why else ())
        return _row(case, r, why.cause.as_dict() if why else None)

    def close(self) -> None:
        self.env.close()


def _drive(kind: str, spec: _PerceiverSpec | None, cases: Sequence[Case], max_steps: int,
           camera: CameraSpec | None, on_episode: Callable[[LoopRow], None] | None,
           workers: int = 1) -> list[LoopRow]:
    """Rows of `cases` in their order. With `workers` > 1, the cases are driven by as many
    processes (`sim.fanout`), each with its own planner, Perceiver and env and a share of
    the cores for inference: every episode starts from its own seed with a reset planner,
    so the rows are those of one process."""
    check_number("workers", workers, 1, 256, integer=True)
    from sim.fanout import Fanout, ordered_map

    rows = []
    for row in ordered_map(_make_driver, (kind, spec, camera), _drive_case,
                           [(case, max_steps) for case in cases],
                           Fanout(workers=max(1, min(workers, len(cases)))),
                           close=_Driver.close):
        rows.append(row)
        if on_episode is not None:
            on_episode(row)
    return rows


def _make_driver(arg: tuple[str, _PerceiverSpec | None, CameraSpec | None]) -> _Driver:
    return _Driver(*arg)


def _drive_case(driver: _Driver, job: tuple[Case, int]) -> LoopRow:
    return driver(*job)


def closed_loop_suite(weights: Path | str | None, cases: Sequence[Case], max_steps: int = 450,
                      *, device: str = "cpu", camera: CameraSpec | None = None,
                      on_episode: Callable[[LoopRow], None] | None = None,
                      iou_weight: float | None = None, workers: int = 1) -> list[LoopRow]:
    """Drive every case with the rule planner on the perception of detector `weights`
    (None: the current one), with the shipped refiner (score exponent `iou_weight`; None:
    the registry's for the current detector, else the refiner's) and lane model. On the
    CPU a `.pt` detector runs as its cached ONNX export, as the current one does, so that
    before and after run the same way. `workers`: processes driving the cases (the same
    rows as one)."""
    from perception.detector import cached_onnx, resolve_device
    from perception.lanes import DEFAULT_LANE_WEIGHTS

    cam = camera or CameraSpec()
    dev = resolve_device(device)
    if weights is not None and dev == "cpu" and Path(weights).suffix == ".pt":
        try:
            weights = cached_onnx(weights, cam.height, cam.width)
        except ValueError:  # sides off multiples of 32: ultralytics' predict, as Perceiver
            pass
    spec = _PerceiverSpec(weights, dev, cam, DEFAULT_LANE_WEIGHTS.is_file(), iou_weight)
    if workers > 1:
        spec.build()  # a bad weights file: its one error here, not a broken worker pool
    return _drive("rule", spec, cases, max_steps, camera, on_episode, workers)


def privileged_suite(cases: Sequence[Case], max_steps: int = 450, *,
                     camera: CameraSpec | None = None,
                     on_episode: Callable[[LoopRow], None] | None = None,
                     workers: int = 1) -> list[LoopRow]:
    """Drive every case with the rule planner on the exact scene (`rule-privileged`): its
    failures are not perception's to fix. The same for every detector: run it once."""
    return _drive("rule-privileged", None, cases, max_steps, camera, on_episode, workers)


@dataclass(frozen=True)
class FailureCounts:
    """Closed-loop failures of two detectors on the same cases."""

    before: int
    after: int
    fixed: list[str]
    """Cases ("family:seed") that failed before and not after."""
    broken: list[str]
    """Cases that did not fail before and fail after."""
    not_fixable: list[str]
    """Cases where the rule planner fails on the exact scene too (not perception's)."""
    errors: int = 0
    """Episodes (before and after) that raised."""
    causes_before: dict[str, int] = field(default_factory=dict)
    """Failures by cause (data_engine.failure_cause) before; empty when not known."""
    causes_after: dict[str, int] = field(default_factory=dict)

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar test of the flips: how likely a split at least this
        uneven between fixed and broken is when the detector change flips episodes either
        way with equal chance (1.0: no evidence either way)."""
        return mcnemar_p(len(self.fixed), len(self.broken))

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "n_fixed": len(self.fixed),
                "n_broken": len(self.broken), "p_value": self.p_value}


def mcnemar_p(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p-value of `fixed` against `broken` paired flips (the
    binomial test of min(fixed, broken) of their sum at 1/2)."""
    if fixed < 0 or broken < 0:
        raise ValueError(f"flip counts must be >= 0, got {fixed} and {broken}")
    n, k = fixed + broken, min(fixed, broken)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired_failures(before: Sequence[LoopRow], after: Sequence[LoopRow],
                    privileged: Sequence[LoopRow] = ()) -> FailureCounts:
    """Failures before and after, paired by case; ValueError when the cases differ."""
    b, a = {r.case: r for r in before}, {r.case: r for r in after}
    if set(b) != set(a) or len(b) != len(before) or len(a) != len(after):
        raise ValueError(f"before and after must drive the same cases once each "
                         f"({len(before)} and {len(after)} rows, "
                         f"{len(set(b) ^ set(a))} cases in one only)")
    p = {r.case: r for r in privileged}
    if p and set(p) != set(b):
        raise ValueError("privileged rows must drive the same cases as before and after")
    cases = list(b)
    return FailureCounts(
        before=sum(b[c].failed for c in cases), after=sum(a[c].failed for c in cases),
        fixed=[_name(c) for c in cases if b[c].failed and not a[c].failed],
        broken=[_name(c) for c in cases if a[c].failed and not b[c].failed],
        not_fixable=[_name(c) for c in cases if c in p and p[c].failed],
        errors=sum(r.error is not None for r in (*before, *after)),
        causes_before=_causes(before), causes_after=_causes(after))


def _causes(rows: Sequence[LoopRow]) -> dict[str, int]:
    """Failures by cause; empty when no failed row knows its cause."""
    known = [r.cause["cause"] for r in rows if r.failed and r.cause is not None]
    return count_causes(known) if known else {}


def _name(case: Case) -> str:
    """A case as "family time/weather:seed" (a seed repeats across families and
    conditions)."""
    return f"{case.family} {case.time_of_day}/{case.weather}:{case.seed}"


# -- promotion --------------------------------------------------------------------------


class PromotionGate(StrictModel):
    """When a retrained detector replaces the current one (a launch file's `gate:`)."""

    min_hard_gain: float = Field(default=0.02, ge=0.0, le=1.0,
                                 description="least rise of hard-set mAP50-95")
    require_ci_above_zero: bool = Field(default=True, description="the gain's 95 % interval "
                                        "must lie above 0")
    max_nominal_drop: float = Field(default=0.01, ge=0.0, le=1.0,
                                    description="largest fall of nominal mAP50-95")
    max_extra_failures: int = Field(default=0, ge=0, le=1_000_000, description=(
        "closed-loop failures may rise by at most this many"))


@dataclass(frozen=True)
class Decision:
    promote: bool
    reasons: list[str]
    """One line per condition that failed (empty when promoted)."""
    figures: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decide(before: DetectorReport, after: DetectorReport, boot: Bootstrap,
           loop_before: Sequence[LoopRow], loop_after: Sequence[LoopRow],
           gate: PromotionGate | None = None, privileged: Sequence[LoopRow] = ()) -> Decision:
    """Promote when the hard sets' mAP50-95 rises by `min_hard_gain` (with the bootstrap
    interval above 0), nominal mAP50-95 falls by at most `max_nominal_drop` and closed-loop
    failures do not rise (beyond `max_extra_failures`); a reason for each that fails."""
    gate = gate or PromotionGate()
    gain = after.figure(HARD) - before.figure(HARD)
    drop = before.figure(NOMINAL) - after.figure(NOMINAL)
    loop = paired_failures(loop_before, loop_after, privileged)
    reasons = []
    if not gain >= gate.min_hard_gain:  # NaN fails too
        reasons.append(f"hard-set mAP50-95 gain {gain:+.4f} ({before.figure(HARD):.4f} -> "
                       f"{after.figure(HARD):.4f}) is under the required "
                       f"{gate.min_hard_gain:+.4f}")
    if gate.require_ci_above_zero and not boot.ci_low > 0:
        reasons.append(f"hard-set gain's 95% interval [{boot.ci_low:+.4f}, "
                       f"{boot.ci_high:+.4f}] ({boot.n} resamples of {boot.units} "
                       f"{boot.unit}s) does not lie above 0")
    if not drop <= gate.max_nominal_drop:
        reasons.append(f"nominal mAP50-95 fell by {drop:.4f} ({before.figure(NOMINAL):.4f} "
                       f"-> {after.figure(NOMINAL):.4f}), more than the allowed "
                       f"{gate.max_nominal_drop:.4f}")
    if loop.after > loop.before + gate.max_extra_failures:
        reasons.append(f"closed-loop failures rose from {loop.before} to {loop.after} "
                       f"(fixed {len(loop.fixed)}, broken {len(loop.broken)}: "
                       f"{loop.broken[:10]}); at most {gate.max_extra_failures} more allowed")
    if loop.errors:
        reasons.append(f"{loop.errors} closed-loop episode(s) raised an error; their "
                       "outcome is unknown")
    figures = {"hard_gain": gain, "hard_ci": [boot.ci_low, boot.ci_high],
               "nominal_drop": drop, "bootstrap": boot.as_dict(),
               "closed_loop": loop.as_dict(), "gate": gate.model_dump(),
               "before": before.as_dict(), "after": after.as_dict()}
    return Decision(not reasons, reasons, figures)
