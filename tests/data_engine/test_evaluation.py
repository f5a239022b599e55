"""Evaluation before and after a retrain: the paired bootstrap on crafted boxes (and its
reweighting against `detection_map` on copied images), the promotion decision on crafted
figures, paired closed-loop failures, held-out seeds, and a tiny held-out set rendered
and scored with the shipped detector."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from data_engine.evaluation import (
    HARD,
    NOMINAL,
    Bootstrap,
    DetectorReport,
    LoopRow,
    PromotionGate,
    _Matched,
    assert_disjoint,
    closed_loop_suite,
    compare_reports,
    decide,
    detector_report,
    heldout_seed_range,
    make_heldout_sets,
    paired_bootstrap,
    paired_failures,
    privileged_suite,
)
from perception.metrics import ImageBoxes, detection_map
from planning.evaluate import Case
from sim.types import CLASS_NAMES


def _scene(rng: np.random.Generator, n: int) -> ImageBoxes:
    xy = rng.uniform(0, 280, (n, 2))
    wh = rng.uniform(6, 40, (n, 2))
    return ImageBoxes(np.hstack([xy, xy + wh]), rng.integers(0, 3, n))


def _detect(gt: ImageBoxes, rng: np.random.Generator, jitter: float, misses: float
            ) -> ImageBoxes:
    """Ground-truth boxes moved by up to `jitter` x their size, a share `misses` left
    out, one false alarm; distinct random scores (no ties)."""
    keep = rng.random(len(gt.boxes)) >= misses
    b = gt.boxes[keep]
    size = np.repeat(b[:, 2:] - b[:, :2], 2, axis=1)
    b = b + rng.uniform(-jitter, jitter, b.shape) * size
    fa = _scene(rng, 1)
    return ImageBoxes(np.vstack([b, fa.boxes]), np.append(gt.classes[keep], fa.classes),
                      rng.uniform(0.05, 1.0, len(b) + 1))


@pytest.fixture(scope="module")
def crafted() -> tuple[list[ImageBoxes], list[ImageBoxes], list[ImageBoxes]]:
    """60 images: ground truth, a loose detector and a tight one."""
    rng = np.random.default_rng(7)
    gts = [_scene(rng, int(rng.integers(1, 6))) for _ in range(60)]
    loose = [_detect(g, rng, 0.15, 0.3) for g in gts]
    tight = [_detect(g, rng, 0.01, 0.05) for g in gts]
    return gts, loose, tight


def test_identical_predictions_change_nothing(crafted: tuple) -> None:
    gts, loose, _ = crafted
    b = paired_bootstrap(loose, loose, gts, n=50, seed=1)
    assert b.delta == 0.0 and b.ci_low <= 0.0 <= b.ci_high
    assert b.before == pytest.approx(detection_map(loose, gts, len(CLASS_NAMES))["mAP50-95"])


def test_a_clearly_better_detector_has_its_interval_above_zero(crafted: tuple) -> None:
    gts, loose, tight = crafted
    b = paired_bootstrap(loose, tight, gts, n=100, seed=0)
    full = {k: detection_map(p, gts, len(CLASS_NAMES))["mAP50-95"] for k, p in
            (("loose", loose), ("tight", tight))}
    assert b.delta == pytest.approx(full["tight"] - full["loose"])
    assert 0 < b.ci_low < b.delta < b.ci_high
    worse = paired_bootstrap(tight, loose, gts, n=100, seed=0)
    assert worse.ci_high < 0


def test_same_seed_same_interval_other_seed_another(crafted: tuple) -> None:
    gts, loose, tight = crafted
    a = paired_bootstrap(loose, tight, gts, n=40, seed=3)
    assert a == paired_bootstrap(loose, tight, gts, n=40, seed=3)
    b = paired_bootstrap(loose, tight, gts, n=40, seed=4)
    assert b.delta == a.delta and (b.ci_low, b.ci_high) != (a.ci_low, a.ci_high)


def test_reweighting_equals_detection_map_on_copied_images(crafted: tuple) -> None:
    """A resample's mAP (image i taken w[i] times) is detection_map's on the copies."""
    gts, loose, _ = crafted
    matched = _Matched(loose, gts)
    rng = np.random.default_rng(0)
    for _ in range(3):
        w = np.bincount(rng.integers(0, len(gts), len(gts)), minlength=len(gts))
        idx = np.repeat(np.arange(len(gts)), w)
        want = detection_map([loose[i] for i in idx], [gts[i] for i in idx],
                             len(CLASS_NAMES))["mAP50-95"]
        assert matched.map(w.astype(float)) == pytest.approx(want, abs=1e-12)


def test_groups_resample_whole_episodes(crafted: tuple) -> None:
    gts, loose, tight = crafted
    b = paired_bootstrap(loose, tight, gts, n=30, seed=0, groups=[i // 10 for i in range(60)])
    assert (b.unit, b.units, b.images) == ("episode", 6, 60)
    with pytest.raises(ValueError, match="groups: 3 labels for 60 images"):
        paired_bootstrap(loose, tight, gts, groups=[0, 1, 2])
    with pytest.raises(ValueError, match="59, 60 and 60 images"):
        paired_bootstrap(loose[:-1], tight, gts)


# -- decide -----------------------------------------------------------------------------


def _report(nominal: float, hard: float) -> DetectorReport:
    return DetectorReport("w.pt", {NOMINAL: {"mAP50-95": nominal}, HARD: {"mAP50-95": hard}})


def _boot(delta: float, lo: float, hi: float) -> Bootstrap:
    return Bootstrap(0.4, 0.4 + delta, delta, lo, hi, 200, 0, "episode", 80, 400)


def _rows(failed: list[bool], planner: str = "rule") -> list[LoopRow]:
    return [LoopRow(Case("s", "highway", "day", "clear", 500_000 + i), planner, f,
                    "collision" if f else "max_steps", 0.5, 1.0) for i, f in enumerate(failed)]


GOOD = {"before": _report(0.78, 0.37), "after": _report(0.775, 0.42),
        "boot": _boot(0.05, 0.02, 0.08), "loop_before": _rows([True, True, False]),
        "loop_after": _rows([False, True, False])}


def test_decide_promotes_only_when_every_condition_passes() -> None:
    d = decide(**GOOD, gate=PromotionGate())
    assert d.promote and d.reasons == []
    assert d.figures["hard_gain"] == pytest.approx(0.05)
    assert d.figures["closed_loop"]["n_fixed"] == 1
    json.dumps(d.as_dict())  # plain JSON


@pytest.mark.parametrize(("change", "reason"), [
    ({"after": _report(0.775, 0.385)}, r"gain \+0\.0150 .* under the required \+0\.0200"),
    ({"boot": _boot(0.05, 0.0, 0.09)}, r"interval \[\+0\.0000, \+0\.0900\] .* above 0"),
    ({"after": _report(0.765, 0.42)}, r"nominal mAP50-95 fell by 0\.0150 .* allowed 0\.0100"),
    ({"loop_after": _rows([True, True, True])},
     r"failures rose from 2 to 3 \(fixed 0, broken 1: \['highway day/clear:500002'\]\)"),
    ({"after": _report(0.775, math.nan)}, r"gain \+nan"),
])
def test_decide_names_each_failed_condition(change: dict, reason: str) -> None:
    d = decide(**{**GOOD, **change}, gate=PromotionGate())
    assert not d.promote
    assert len(d.reasons) == 1 and re.search(reason, d.reasons[0]), d.reasons


def test_decide_lists_every_failure_and_follows_the_gate() -> None:
    bad = {"before": _report(0.78, 0.37), "after": _report(0.70, 0.375),
           "boot": _boot(0.005, -0.01, 0.02), "loop_before": _rows([False, False]),
           "loop_after": _rows([True, True])}
    assert len(decide(**bad).reasons) == 4
    lax = PromotionGate(min_hard_gain=0.0, require_ci_above_zero=False,
                        max_nominal_drop=0.1, max_extra_failures=2)
    assert decide(**bad, gate=lax).promote


def test_gate_is_strict() -> None:
    assert PromotionGate.model_validate({"min_hard_gain": 0.05}).min_hard_gain == 0.05
    for bad in ({"min_gain": 0.05}, {"max_nominal_drop": True}, {"min_hard_gain": -0.1},
                {"max_extra_failures": math.inf}):
        with pytest.raises(ValidationError):
            PromotionGate.model_validate(bad)


def test_paired_failures() -> None:
    priv = _rows([False, True, False, False], "rule-privileged")
    c = paired_failures(_rows([True, True, False, False]), _rows([False, True, True, False]),
                        priv)
    assert (c.before, c.after, c.fixed, c.broken, c.not_fixable) == (
        2, 2, ["highway day/clear:500000"], ["highway day/clear:500002"],
        ["highway day/clear:500001"])
    with pytest.raises(ValueError, match="same cases"):
        paired_failures(_rows([True, False]), _rows([True]))
    assert c.p_value == 1.0 and c.as_dict()["p_value"] == 1.0  # one flip each way


@pytest.mark.parametrize(("fixed", "broken", "p"), [
    (0, 0, 1.0), (9, 8, 1.0), (10, 0, 2 / 1024), (0, 10, 2 / 1024),
    (7, 1, 2 * 9 / 256),  # 2 * (C(8,0) + C(8,1)) / 2^8
    (6, 0, 2 / 64)])
def test_mcnemar_p(fixed: int, broken: int, p: float) -> None:
    from data_engine.evaluation import mcnemar_p

    assert mcnemar_p(fixed, broken) == pytest.approx(p)
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_p(-1, 3)


def test_assert_disjoint_names_the_overlap() -> None:
    assert_disjoint(range(500_000, 900_000), heldout_seed_range())
    with pytest.raises(ValueError, match=r"899999, 900000, 900001 \(3 seeds\)"):
        assert_disjoint([5, 899_999, 900_000, 900_001, 1_000_000], [899_999, 900_000, 900_001])
    with pytest.raises(ValueError, match=r"900000, .*, \.\.\. \(100000 seeds\)"):
        assert_disjoint(range(500_000, 1_000_000), heldout_seed_range())


# -- tiny held-out sets, shipped detector -----------------------------------------------

TINY = {"nominal_frames": 4, "hard_frames": 6, "families": {"highway": 1.0},
        "frames_per_episode": 2, "stride": 5, "warmup": 10}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("heldout") / "sets"
    make_heldout_sets(root, **TINY)
    return root


def test_heldout_sets_render_resume_and_keep_their_seeds(tiny: Path) -> None:
    stamp = {n: (tiny / n / ".drivestack.json").stat().st_mtime_ns
             for n in ("nominal", "hard_night", "hard_fog", "hard_rain")}
    sets = make_heldout_sets(tiny, **TINY)  # all there: nothing rendered again
    assert {n: (f / ".drivestack.json").stat().st_mtime_ns
            for n, f in sets.folders.items()} == stamp
    seeds = sets.episode_seeds()
    assert seeds <= set(heldout_seed_range()) and min(seeds) == 900_000
    assert_disjoint(range(500_000, 900_000), seeds)
    conditions = {(r["time_of_day"], r["weather"]) for r in map(
        json.loads, (sets.hard["hard_fog"] / "meta.jsonl").read_text().splitlines())}
    assert conditions == {("day", "fog")}
    again = make_heldout_sets(tiny, **{**TINY, "nominal_frames": 2})  # a new plan
    assert (again.nominal / ".drivestack.json").stat().st_mtime_ns != stamp["nominal"]
    assert (again.hard["hard_fog"] / ".drivestack.json").stat().st_mtime_ns == stamp["hard_fog"]
    make_heldout_sets(tiny, **TINY)


def test_heldout_sets_refuse_foreign_records_and_seeds(tmp_path: Path) -> None:
    (tmp_path / "heldout.json").write_text("{}")
    with pytest.raises(ValueError, match="not a drivestack held-out record"):
        make_heldout_sets(tmp_path, **TINY)
    with pytest.raises(ValueError, match="seed"):
        make_heldout_sets(tmp_path / "x", seed=500_000, **TINY)


def test_detector_report_on_tiny_sets(tiny: Path) -> None:
    sets = make_heldout_sets(tiny, **TINY)
    report = detector_report(None, sets)
    assert set(report.scores) == {"nominal", "hard_night", "hard_fog", "hard_rain", "hard",
                                  "night_fog"}
    assert report.scores["hard"]["images"] == 6 and report.scores["nominal"]["images"] == 4
    assert report.scores["night_fog"]["images"] == (report.scores["hard_night"]["images"]
                                                    + report.scores["hard_fog"]["images"])
    for name in ("nominal", "hard"):
        assert report.scores[name]["objects"] > 0
        assert 0 < report.figure(name) <= report.figure(name, "mAP50") <= 1
    json.dumps(report.as_dict())
    same = compare_reports(report, report, n=10)
    assert same.delta == 0 and same.unit == "episode" and same.units == 3


def test_calibrate_score_weight_takes_the_best_exponent(tiny: Path) -> None:
    from data_engine.evaluation import calibrate_score_weight, detector_reports
    from perception.detector import DEFAULT_WEIGHTS

    sets = make_heldout_sets(tiny, **TINY)
    grid = [0.5, 0.0, 2.0]
    cal = calibrate_score_weight(DEFAULT_WEIGHTS, sets, grid)
    assert sorted(cal.scores) == [0.0, 0.5, 2.0]
    assert cal.scores[cal.best] == max(cal.scores.values())
    json.dumps(cal.as_dict())
    # one detector pass, several exponents: each report as detector_report's at that one
    reports = detector_reports(DEFAULT_WEIGHTS, sets, [0.0, 2.0])
    assert detector_report(DEFAULT_WEIGHTS, sets, iou_weight=2.0).scores == reports[1].scores
    assert reports[0].scores != reports[1].scores, "the exponent reranks boxes"
    plain = detector_report(DEFAULT_WEIGHTS, sets, refine=False)
    assert plain.refine is False and plain.scores != reports[0].scores
    for bad in ([], [-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="score exponent"):
            calibrate_score_weight(DEFAULT_WEIGHTS, sets, bad)
    # every set's figure comes back; the ranking can pool the hard sets alone
    each = dict(zip(grid, detector_reports(DEFAULT_WEIGHTS, sets, grid), strict=True))
    for w in grid:
        assert set(cal.per_set[w]) == {*sets.folders, "hard"}
        assert all(cal.per_set[w][n] == each[w].scores[n]["mAP50-95"]
                   for n in cal.per_set[w])
    assert cal.pool == tuple(sets.folders)
    hard = calibrate_score_weight(DEFAULT_WEIGHTS, sets, grid, pool=list(sets.hard))
    assert hard.pool == tuple(sets.hard)
    assert hard.scores == {w: cal.per_set[w]["hard"] for w in grid}
    assert hard.scores[hard.best] == max(hard.scores.values())
    with pytest.raises(ValueError, match="pool: unknown calibration sets .'dusk'."):
        calibrate_score_weight(DEFAULT_WEIGHTS, sets, grid, pool=["dusk"])


def test_closed_loop_suites_run_a_few_steps() -> None:
    cases = [Case("t", "highway", "day", "clear", 900_000 - 1)]
    rows = closed_loop_suite(None, cases, max_steps=6)
    priv = privileged_suite(cases, max_steps=6)
    assert [(r.planner, r.end, r.failed) for r in rows + priv] == [
        ("rule", "max_steps", False), ("rule-privileged", "max_steps", False)]
    assert paired_failures(rows, rows, priv).before == 0


def test_closed_loop_in_two_processes_gives_the_rows_of_one() -> None:
    """Workers drive the cases in their own processes; the rows (order, ends, scores to
    the last bit) are those of one process, whatever order they finish in."""
    cases = [Case("t", fam, tod, w, 900_000 - 1 - k) for k, (fam, tod, w) in enumerate([
        ("urban", "night", "fog"), ("highway", "day", "clear"), ("rural", "night", "rain")])]
    seen: list[str] = []
    one = closed_loop_suite(None, cases, max_steps=45)
    two = closed_loop_suite(None, cases, max_steps=45, workers=2,
                            on_episode=lambda r: seen.append(r.case.family))
    assert [r.as_dict() for r in two] == [r.as_dict() for r in one]
    assert sorted(seen) == sorted(c.family for c in cases)
    priv = privileged_suite(cases, max_steps=45, workers=2)
    assert [r.as_dict() for r in priv] == [
        r.as_dict() for r in privileged_suite(cases, max_steps=45)]
    with pytest.raises(ValueError, match="workers"):
        closed_loop_suite(None, cases, max_steps=5, workers=0)
