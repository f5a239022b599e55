"""The data engine's failure triggers on crafted sequences: each fires where it must (at
the right moment, once) and stays quiet just under its threshold or when disabled; the
ground-truth-free ones never see the truth; bad settings are refused by name."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from data_engine import triggers
from data_engine.moments import Boxes, Moment
from data_engine.triggers import (
    TRIGGERS,
    Fired,
    TriggerConfig,
    TriggerSpec,
    evaluate,
    recall_precision,
    scan,
    window_size,
)

STRIDE = 3
CAR = (140.0, 100.0, 180.0, 130.0)
"""A 40x30 px box near the image centre (320x192)."""


def boxes(*rows: tuple[float, ...], scores: Any = None, dist: Any = None, ids: Any = None,
          vis: Any = None) -> Boxes:
    n = len(rows)

    def col(v: Any, dtype: Any) -> np.ndarray | None:
        return None if v is None else np.broadcast_to(np.asarray(v, dtype), (n,)).copy()

    return Boxes(np.asarray(rows, np.float32).reshape(-1, 4), np.zeros(n, np.int64),
                 col(scores, np.float32), col(dist, np.float32), col(ids, np.int64),
                 col(vis, np.float32))


def truth(*rows: tuple[float, ...], dist: float = 20.0, vis: float = 0.9) -> Boxes:
    return boxes(*rows, dist=dist, ids=list(range(7, 7 + len(rows))), vis=vis)


def seen(*rows: tuple[float, ...], score: float = 0.9, dist: float = 20.0) -> Boxes:
    return boxes(*rows, scores=score, dist=dist)


def moment(i: int, **kw: Any) -> Moment:
    kw.setdefault("events", {})
    return Moment(index=i, time=i / 15.0, speed=20.0, **kw)


def episode(frames: list[dict[str, Any]], stride: int = STRIDE) -> list[Moment]:
    """Perceived frames `stride` steps apart (frame f at index f * stride), the steps
    between them unperceived."""
    out: list[Moment] = []
    for f, kw in enumerate(frames):
        out += [moment(f * stride - stride + k) for k in range(1, stride) if f]
        out.append(moment(f * stride, **kw))
    return out


def only(name: str, **settings: Any) -> TriggerConfig:
    """A config with every trigger off but `name` (with `settings`)."""
    doc: dict[str, Any] = {n: {"enabled": n == name} for n in TRIGGERS}
    doc[name].update(settings)
    return TriggerConfig.model_validate(doc)


def fired(moments: list[Moment], name: str, **settings: Any) -> list[int]:
    """Indices where `name` fires over `moments` (every other trigger off)."""
    hits = scan(moments, only(name, **settings))
    assert all(f.name == name for f in hits)
    return [f.index for f in hits]


def shifted(box: tuple[float, ...], dx: float) -> tuple[float, ...]:
    return (box[0] + dx, box[1], box[2] + dx, box[3])


# -- with ground truth ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["collision", "off_road", "hard_brake"])
def test_event_triggers_fire_once_per_event(key: str) -> None:
    flags = [False, False, True, True, False, True]
    ms = [moment(i, events={key: flag}) for i, flag in enumerate(flags)]
    assert fired(ms, key) == [2, 5]
    assert fired(ms, key, enabled=False) == []
    assert fired([moment(i) for i in range(4)], key) == []


def test_near_miss_fires_when_ttc_falls_under_threshold() -> None:
    ttc = [math.inf, 3.0, 1.4, 1.0, 0.9, 2.0]
    ms = [moment(i, events={"min_ttc": t}) for i, t in enumerate(ttc)]
    assert fired(ms, "near_miss") == [2]
    assert fired(ms, "near_miss", ttc=1.0) == [4]
    at_threshold = [moment(i, events={"min_ttc": t}) for i, t in enumerate([9.0, 1.5, 1.6])]
    assert fired(at_threshold, "near_miss") == []


def _missed_frames(n: int, **change: Any) -> list[dict[str, Any]]:
    gt = truth(change.get("box", CAR), dist=change.get("dist", 20.0),
               vis=change.get("vis", 0.9))
    found = change.get("found", set())
    det = seen(shifted(CAR, 8.0))  # IoU with CAR: 0.6
    return [{"truth": gt, "seen": det if f in found else seen()} for f in range(n)]


def test_missed_object_fires_at_the_kth_perceived_frame_once() -> None:
    ms = episode(_missed_frames(8))
    hits = scan(ms, only("missed_object"))
    assert [f.index for f in hits] == [2 * STRIDE]
    assert "track 7 at 20.0 m" in hits[0].detail and hits[0].needs_truth
    # found again, then missed again: a new event
    assert fired(episode(_missed_frames(9, found={4})), "missed_object") == [2 * STRIDE,
                                                                             7 * STRIDE]


@pytest.mark.parametrize("change", [
    {"dist": 30.0},                               # not closer than 30 m
    {"vis": 0.45},                                # less than half visible
    {"box": (150.0, 100.0, 157.0, 130.0)},        # 7 px wide
    {"found": {2, 5}},                            # missed only 2 frames in a row
    {"found": set(range(8))},                     # found at IoU 0.6
])
def test_missed_object_quiet_just_under_threshold(change: dict[str, Any]) -> None:
    assert fired(episode(_missed_frames(8, **change)), "missed_object") == []


def _ghost_frames(present: list[bool], score: float = 0.6, step: float = 2.0,
                  gt: Boxes | None = None) -> list[dict[str, Any]]:
    return [{"truth": gt or truth(),
             "seen": seen(shifted(CAR, step * f), score=score) if on else seen()}
            for f, on in enumerate(present)]


def test_ghost_fires_when_held_k_frames() -> None:
    ms = episode(_ghost_frames([True] * 6))
    assert fired(ms, "ghost") == [2 * STRIDE]
    assert fired(ms, "ghost", frames=5) == [4 * STRIDE]


@pytest.mark.parametrize("frames", [
    _ghost_frames([True] * 6, score=0.3),                     # under min_score
    _ghost_frames([True] * 6, gt=truth(shifted(CAR, 4.0))),  # an object explains it
    _ghost_frames([True] * 6, step=60.0),                    # no IoU link between frames
    _ghost_frames([True, True, False, True, True, False]),   # only 2 frames in a row
])
def test_ghost_quiet(frames: list[dict[str, Any]]) -> None:
    assert fired(episode(frames), "ghost") == []


def _lane(errors: list[float]) -> list[Moment]:
    return episode([{"seen": seen(), "lane_offset": 0.1 + e, "truth_lane_offset": 0.1}
                    for e in errors])


def test_lane_error() -> None:
    assert fired(_lane([0.2, 0.6, 0.7, 0.2, 0.55]), "lane_error") == [STRIDE, 4 * STRIDE]
    assert fired(_lane([0.2, 0.6, 0.7, 0.2, 0.55]), "lane_error", frames=2) == [2 * STRIDE]
    assert fired(_lane([0.5, 0.49, 0.45]), "lane_error") == []
    assert fired(_lane([0.2, 0.6, 0.7]), "lane_error", enabled=False) == []


# -- without ground truth ---------------------------------------------------------------


def _doubt(n: int, score: float = 0.2, dist: float = 20.0, dx: float = 0.0) -> list[Moment]:
    box = (150.0 + dx, 120.0, 170.0 + dx, 150.0)  # bottom-centre (160 + dx, 150)
    return episode([{"seen": seen(box, score=score, dist=dist)} for _ in range(n)])


def test_low_confidence_near_path() -> None:
    assert fired(_doubt(5), "low_confidence") == [STRIDE]
    assert fired(_doubt(5), "low_confidence", frames=1) == [0]


@pytest.mark.parametrize("kw", [{"score": 0.35}, {"score": 0.14}, {"dist": 40.0},
                                {"dist": math.inf}, {"dx": 0.16 * 320}])
def test_low_confidence_quiet(kw: dict[str, Any]) -> None:
    assert fired(_doubt(5, **kw), "low_confidence") == []


def _flicker(pattern: str) -> list[Moment]:
    return episode([{"seen": seen(CAR) if c == "1" else seen()} for c in pattern])


def test_flicker_fires_when_count_reaches_times() -> None:
    assert fired(_flicker("1010110111"), "flicker") == [4 * STRIDE]
    assert fired(_flicker("1010110111"), "flicker", times=3) == [7 * STRIDE]


@pytest.mark.parametrize("pattern", [
    "101111",                        # once
    "100010001",                     # gaps of 3 frames: gone, not flickering
    "101" + "1" * 14 + "01",         # twice, but 16 frames apart
])
def test_flicker_quiet(pattern: str) -> None:
    assert fired(_flicker(pattern), "flicker") == []


def _disagree(n: int, second: Boxes, score: float = 0.9) -> list[Moment]:
    return episode([{"seen": seen(CAR, score=score), "second": second} for _ in range(n)])


def test_disagreement_between_detectors() -> None:
    assert fired(_disagree(5, seen()), "disagreement") == [2 * STRIDE]
    other = seen((10.0, 100.0, 40.0, 130.0), score=0.7)  # seen by the second model only
    assert fired(_disagree(5, other, score=0.4), "disagreement") == [2 * STRIDE]


@pytest.mark.parametrize("second", [seen(shifted(CAR, 8.0)), seen(score=0.9)])
def test_disagreement_quiet(second: Boxes) -> None:
    score = 0.9 if len(second) else 0.45  # agree at IoU 0.6 / unmatched under min_score
    assert fired(_disagree(5, second, score=score), "disagreement") == []


def test_override_on_decided_steps() -> None:
    over = {6, 9, 18, 19, 20}  # 19, 20 are not decisions: ignored
    ms = [moment(i, decided=i % 3 == 0, overridden=i in over) for i in range(24)]
    assert fired(ms, "override") == [6, 18]
    assert fired(ms, "override", frames=2) == [9]
    assert fired(ms, "override", enabled=False) == []


def _offsets(values: list[float]) -> list[Moment]:
    return episode([{"seen": seen(), "lane_offset": v} for v in values])


def test_lane_jump_ignores_lane_changes_and_lost_lanes() -> None:
    values = [0.1, 0.15, 0.9, 0.95, 1.3, -1.9, -1.8, math.nan, 0.4, 1.1]
    assert fired(_offsets(values), "lane_jump") == [2 * STRIDE, 9 * STRIDE]
    assert fired(_offsets([0.1, 0.69, 0.1]), "lane_jump") == []
    assert fired(_offsets([-1.0, 1.5]), "lane_jump", lane_change_min=2.6) == [STRIDE]


# -- the whole set ----------------------------------------------------------------------


def _busy_episode(seed: int = 0, n: int = 60) -> list[Moment]:
    """A random episode where every trigger has something to chew on."""
    rng = np.random.default_rng(seed)
    base = rng.uniform([0, 60, 20, 20], [280, 150, 60, 40], (4, 4))
    base[:, 2:] += base[:, :2]
    frames = []
    for _ in range(n):
        jitter = base + rng.normal(0, 2, base.shape)
        keep = rng.random(4) < 0.7
        gt = truth(*map(tuple, jitter), dist=rng.uniform(5, 50), vis=rng.uniform(0.3, 1))
        det = boxes(*map(tuple, jitter[keep]), scores=rng.uniform(0.1, 1, keep.sum()),
                    dist=rng.uniform(5, 50, keep.sum()))
        keep2 = rng.random(4) < 0.7
        sec = boxes(*map(tuple, jitter[keep2]), scores=rng.uniform(0.3, 1, keep2.sum()))
        frames.append({"truth": gt, "seen": det, "second": sec, "decided": True,
                       "overridden": bool(rng.random() < 0.2),
                       "lane_offset": float(rng.normal(0, 0.5)),
                       "truth_lane_offset": float(rng.normal(0, 0.2)),
                       "events": {"collision": bool(rng.random() < 0.05),
                                  "min_ttc": float(rng.uniform(0.5, 8))}})
    return episode(frames)


def test_ground_truth_free_triggers_ignore_truth() -> None:
    ms = _busy_episode()
    free = [f for f in scan(ms, TriggerConfig()) if not f.needs_truth]
    assert {f.name for f in free} == {n for n, s in TRIGGERS.items() if not s.needs_truth}
    blind = [replace(m, truth=None, truth_lane_offset=None) for m in ms]
    assert [f for f in scan(blind, TriggerConfig()) if not f.needs_truth] == free
    assert all(f.needs_truth == TRIGGERS[f.name].needs_truth for f in scan(ms, TriggerConfig()))


def test_evaluate_hands_free_triggers_a_view_without_truth(
        monkeypatch: pytest.MonkeyPatch) -> None:
    saw: dict[str, list[bool]] = {"free": [], "truth": []}

    def spy(kind: str) -> Callable[[Any, Any], str | None]:
        def look(window: Any, settings: Any) -> str | None:
            saw[kind] += [m.truth is not None or m.truth_lane_offset is not None or
                          bool(m.events) for m in window]
            return None
        return look

    monkeypatch.setattr(triggers, "TRIGGERS", {
        "free": TriggerSpec(spy("free"), False, "override"),
        "truth": TriggerSpec(spy("truth"), True, "collision")})
    ms = _busy_episode(n=4)
    assert evaluate(ms, TriggerConfig()) == [] and scan(ms, TriggerConfig()) == []
    assert saw["free"] and not any(saw["free"])
    assert saw["truth"] and any(saw["truth"])


def test_streaming_matches_scan_and_longer_windows_change_nothing() -> None:
    ms, config = _busy_episode(seed=1), TriggerConfig()
    w = window_size(config)
    streamed = [f for i in range(len(ms)) for f in evaluate(ms[max(0, i + 1 - w):i + 1],
                                                            config)]
    assert streamed == scan(ms, config) and len(streamed) > 10
    assert scan(ms, config, stride=7) == streamed
    assert evaluate([], config) == []


def test_window_size() -> None:
    config = TriggerConfig()
    assert window_size(config) == 15 * STRIDE + 1  # flicker: 15 frames + the one before
    assert window_size(config, stride=1) == 16
    assert window_size(only("collision")) == 2
    assert window_size(only("lane_jump"), stride=1) == 2
    off = TriggerConfig.model_validate({n: {"enabled": False} for n in TRIGGERS})
    assert window_size(off) == 1
    with pytest.raises(ValueError, match="stride"):
        window_size(config, stride=0)


@pytest.mark.parametrize(("doc", "names"), [
    ({"ghost": {"frame": 3}}, "ghost.frame"),
    ({"colision": {}}, "colision"),
    ({"near_miss": {"ttc": math.nan}}, "near_miss.ttc"),
    ({"missed_object": {"frames": -1}}, "missed_object.frames"),
    ({"flicker": {"times": True}}, "flicker.times"),
    ({"lane_error": {"error": "wide"}}, "lane_error.error"),
    ({"low_confidence": {"score_lo": 0.4}}, "score_lo"),
    ({"lane_jump": {"lane_change_min": 6.0}}, "lane_change_min"),
])
def test_bad_config_names_the_key(doc: dict[str, Any], names: str) -> None:
    with pytest.raises(ValidationError) as info:
        TriggerConfig.model_validate(doc)
    assert names in str(info.value)


def test_recall_precision() -> None:
    gt = [Fired("collision", i, "", True) for i in (10, 50)] + [Fired("ghost", 90, "", True)]
    free = [Fired("flicker", i, "", False) for i in (12, 70)]
    free += [Fired("override", i, "", False) for i in (88, 89)]
    r = recall_precision(gt, free, tolerance=3)
    assert (r["gt_events"], r["caught"], r["free_events"], r["confirmed"]) == (3, 2, 4, 3)
    assert r["recall"] == pytest.approx(2 / 3) and r["precision"] == pytest.approx(3 / 4)
    assert r["recall_by_trigger"] == {"collision": 0.5, "ghost": 1.0}
    assert r["precision_by_trigger"] == {"flicker": 0.5, "override": 1.0}
    assert recall_precision(gt, free, tolerance=1)["caught"] == 1
    empty = recall_precision([], [], tolerance=0)
    assert math.isnan(empty["recall"]) and math.isnan(empty["precision"])
    with pytest.raises(ValueError, match="tolerance"):
        recall_precision(gt, free, tolerance=-1)
