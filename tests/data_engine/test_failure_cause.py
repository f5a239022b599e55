"""Why a closed-loop episode failed: the pure classification on crafted records, the
listener on fake steps, and one real collision of the loop's hard suite."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from data_engine.failure_cause import (
    REACTION,
    WINDOW,
    FailureCause,
    FrameRecord,
    classify,
    count_causes,
)
from planning.rollout import EpisodeEnd, Step

DT = 1 / 15
HIT = 200
BOX = np.array([100.0, 50.0, 140.0, 120.0], np.float32)
FAR = np.array([[300.0, 10.0, 310.0, 20.0]], np.float32)


def _frames(in_view: range, found: range | None = None, every: int = 3) -> list[FrameRecord]:
    """Steps 0..HIT: the actor in view over `in_view`; perception on every `every`th step,
    finding it on `found` (else a box elsewhere)."""
    out = []
    for i in range(HIT + 1):
        box = BOX if i in in_view else None
        det = None
        if i % every == 0:
            det = BOX[None] + 2 if found is not None and i in found else FAR
        out.append(FrameRecord(i, box, det))
    return out


def test_an_actor_never_in_view_is_out_of_view() -> None:
    c = classify(_frames(range(0)), HIT, DT, actor_class=0)
    assert (c.cause, c.actor_class, c.in_view_frames) == ("out_of_view", 0, 0)


def test_in_view_only_too_late_to_react_is_out_of_view() -> None:
    late = range(HIT - round(REACTION / DT) + 1, HIT + 1)
    assert classify(_frames(late, late), HIT, DT).cause == "out_of_view"
    early = range(0, HIT - round(WINDOW / DT))  # left the view before the window
    assert classify(_frames(early, early), HIT, DT).cause == "out_of_view"


def test_detected_to_the_end_is_seen_and_lost_at_the_end_is_missed() -> None:
    view = range(100, HIT + 1)
    seen = classify(_frames(view, view), HIT, DT)
    assert seen.cause == "seen" and seen.found == seen.judged > 0
    lost = classify(_frames(view, range(100, 160)), HIT, DT)  # lost 2.7 s before the hit
    assert lost.cause == "missed" and lost.found == 0 and lost.judged == 5
    never = classify(_frames(view, None), HIT, DT)
    assert never.cause == "missed"
    half = classify(_frames(view, range(100, 187)), HIT, DT)  # 3 of the last 5 frames
    assert (half.cause, half.found, half.judged) == ("seen", 3, 5)


def test_a_poor_box_is_not_a_find_and_no_perception_is_in_view() -> None:
    view = range(100, HIT + 1)
    frames = [FrameRecord(f.step, f.box, None if f.detections is None else
                          np.array([[120.0, 50.0, 180.0, 120.0]], np.float32))  # IoU 0.25
              for f in _frames(view, view)]
    assert classify(frames, HIT, DT).cause == "missed"
    bare = [FrameRecord(f.step, f.box, None) for f in _frames(view)]
    assert classify(bare, HIT, DT).cause == "in_view"
    with pytest.raises(ValueError, match="dt"):
        classify(bare, HIT, 0.0)


def test_count_causes_leaves_out_the_episodes_that_did_not_fail() -> None:
    n = count_causes(["none", "out_of_view", "missed", "out_of_view", None])
    assert n["out_of_view"] == 2 and n["missed"] == 1 and n["seen"] == 0 and "none" not in n


# -- the listener on fake steps ---------------------------------------------------------

def _env() -> Any:
    actors = SimpleNamespace(track_id=np.array([4, 7]), cls=np.array([0, 2]))
    return SimpleNamespace(dt=DT, world=SimpleNamespace(state=SimpleNamespace(actors=actors)))


class _Truth:
    def __init__(self, tracks: list[int], vis: float) -> None:
        self.track_ids = np.array(tracks, np.int64)
        self.boxes_xyxy = np.tile(BOX, (len(tracks), 1))
        self.class_ids = np.zeros(len(tracks), np.int64)
        self.visible_fraction = np.full(len(tracks), vis, np.float32)

    def __len__(self) -> int:
        return len(self.track_ids)


def _run(steps: int, *, hit: int | None = None, vis: float = 1.0, truth: bool = True,
         found: bool = True, off_road_at: int | None = None) -> FailureCause:
    env = _env()
    why = FailureCause()
    why.on_reset(env, 0)
    for i in range(steps + 1):
        events: dict[str, Any] = {}
        if hit is not None and i == hit:
            events = {"collision": True, "collided_track_ids": [7]}
        if off_road_at is not None and i == off_road_at:
            events = {"off_road": True}
        info: dict[str, Any] = {"events": events}
        if truth:
            info["ground_truth"] = _Truth([3, 7], vis)
        det = SimpleNamespace(boxes_xyxy=BOX[None] if found else FAR)
        why.on_step(Step(i, env, None, info, perception=SimpleNamespace(detections=det)
                         if i % 3 == 0 else None))
    why.on_end(EpisodeEnd(steps, hit is not None or off_road_at is not None, False, {}))
    return why


def test_the_listener_names_the_actor_hit_and_why() -> None:
    c = _run(90, hit=90).cause
    assert (c.cause, c.actor_class) == ("seen", 2)  # track 7 is a pedestrian (cls 2)
    assert _run(90, hit=90, found=False).cause.cause == "missed"
    assert _run(90, hit=90, vis=0.1).cause.cause == "out_of_view"  # never 25 % visible
    assert _run(90, hit=90, truth=False).cause.cause == "unknown"
    assert _run(90).cause.cause == "none"
    assert _run(90, off_road_at=90).cause.cause == "off_road"
    why = _run(300, hit=300)  # a long episode keeps only the last seconds
    assert len(why._rows) <= round((WINDOW + 1) / DT) + 1
    assert why.cause.cause == "seen"


def test_a_real_blind_merge_of_the_loop_suite() -> None:
    """urban night/clear, seed 910027 (the loop's closed-loop suite): the rule planner on
    the shipped perception changes lanes into a car coming up from behind, which the
    camera never saw (docs/data_engine.md, "Why the closed loop does not move")."""
    from data_engine.evaluation import closed_loop_suite
    from planning.evaluate import Case

    (row,) = closed_loop_suite(None, [Case("hard", "urban", "night", "clear", 910_027)],
                               max_steps=120)
    assert row.failed and row.end == "collision"
    assert row.cause is not None and row.cause["cause"] == "out_of_view"
    assert row.cause["actor_class"] == 0  # a car


def test_the_loop_report_gives_the_causes() -> None:
    from data_engine.loop_report import _closed_loop

    case = {"family": "urban", "time_of_day": "night", "weather": "fog", "seed": 910_002}
    ev = {"closed_loop": {
        "paired": {"before": 2, "after": 1, "n_fixed": 1, "n_broken": 0, "p_value": 1.0,
                   "not_fixable": [], "causes_before": {"out_of_view": 1, "missed": 1},
                   "causes_after": {"out_of_view": 1}},
        "rows": [{"case": case, "failed_before": True, "failed_after": False,
                  "privileged_failed": False,
                  "cause_before": {"cause": "missed", "actor_class": 2, "found": 0,
                                   "judged": 5},
                  "cause_after": {"cause": "none", "actor_class": None}}]}}
    text = "\n".join(_closed_loop(ev))
    assert "- 1 / 1 out of view" in text and "- 1 / 0 missed" in text
    assert "seen:" not in text  # causes no run had are left out
    assert "| urban night/fog 910002 | True | False | False | missed pedestrian (0/5) |  |" \
        in text
    old = {"closed_loop": {"paired": {"before": 0, "after": 0}, "rows": [
        {"case": case, "failed_before": False, "failed_after": False,
         "privileged_failed": False}]}}  # a report of a turn before the causes
    assert "why before" not in "\n".join(_closed_loop(old))
