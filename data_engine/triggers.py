"""Failure triggers: small pure functions over a window of recent `Moment`s, each saying
whether something worth keeping happened **at the window's last moment**.

    from data_engine.triggers import TriggerConfig, evaluate, scan, window_size
    config = TriggerConfig()                       # or from a launch file's `triggers:`
    w = window_size(config)                        # steps `evaluate` needs
    fired = evaluate(moments[-w:], config)         # after each step (a streaming recorder)
    fired = scan(moments, config)                  # a whole episode (offline, tests)

A trigger is `function(window, settings) -> detail | None`: a short text when it fires at
the last moment of `window` (oldest first), else None. Each fires once per event, when
its condition *starts* (a rising edge), so a recorder that calls `evaluate` after every
step with the last `window_size` moments sees a collision once, not on every later step:
"for k frames" fires when the run of frames reaches exactly k, not at k+1, k+2, ...

Two families (`TriggerSpec.needs_truth`):

- **with ground truth** (the simulator's): collision, off_road, near_miss, hard_brake
  (the env's events), missed_object, ghost, lane_error. These measure failures exactly.
- **without ground truth** (what a real fleet has): low_confidence, flicker,
  disagreement, override, lane_jump. `evaluate` hands them a view of the moments with
  `truth`, `truth_lane_offset` and `events` (min_ttc and collided ids come from the
  simulator's truth) removed, so they cannot read what a fleet would not have.
  `recall_precision` says how many ground-truth events they catch.

"Perceived frames" are the moments perception ran on (`seen` is not None); perception runs
on decision frames (every `planning.rollout.DECISION_EVERY` = 3 steps) or on every frame,
so frame counts are counted in perceived frames, not steps, and `window_size` takes the
stride between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from data_engine.moments import Boxes, Moment
from perception.metrics import box_iou
from sim.config import StrictModel

STRIDE = 3
"""Default steps between perceived frames and between decisions (15 Hz sim, 5 Hz planner:
`planning.rollout.DECISION_EVERY`); a larger stride only makes the window longer."""


# -- settings ---------------------------------------------------------------------------


class Trigger(StrictModel):
    """Settings of one trigger: on or off (a trigger with thresholds adds them)."""

    enabled: bool = True

    def window_steps(self, stride: int) -> int:
        """Steps of history this trigger reads (perceived frames `stride` steps apart)."""
        return 2


class FramesTrigger(Trigger):
    """A trigger counting `frames` perceived frames (or decisions) in a row."""

    frames: int = Field(default=3, ge=1, le=100, description="perceived frames in a row")

    def window_steps(self, stride: int) -> int:
        return self.frames * stride + 1  # frames + 1 of them: the one before the run


class NearMiss(Trigger):
    """1.5 s: the usual critical time to collision (below it a driver brakes hard)."""

    ttc: float = Field(default=1.5, gt=0.0, le=10.0, description="time to collision below [s]")


class MissedObject(FramesTrigger):
    """30 m: about 1.2 s at highway speed, where a miss matters; a car there is ~14 px
    wide on the 320 px camera, and boxes under 8 px or objects under half visible are
    ones no detector is expected to find. IoU 0.3 counts a loose box as found (this
    trigger is for misses, not for box quality). 3 perceived frames: 0.6 s at 5 Hz."""

    distance: float = Field(default=30.0, gt=0.0, le=500.0, description="objects closer than [m]")
    visible: float = Field(default=0.5, ge=0.0, le=1.0, description="visible fraction at least")
    min_side: float = Field(default=8.0, ge=0.0, le=4096.0,
                            description="box smaller side at least [px]")
    iou: float = Field(default=0.3, gt=0.0, le=1.0, description="a detection at this IoU finds it")


class Ghost(FramesTrigger):
    """Detections scored >= 0.35 (the top of `LowConfidence`'s band: a box the planner
    acts on) overlapping no object at IoU 0.3, held 3 perceived frames."""

    iou: float = Field(default=0.3, gt=0.0, le=1.0,
                       description="IoU with an object that explains it")
    min_score: float = Field(default=0.35, ge=0.0, le=1.0, description="detections scored at least")
    link_iou: float = Field(default=0.3, gt=0.0, le=1.0, description="IoU linking frame to frame")


class LaneError(FramesTrigger):
    """0.5 m: a third of the room between a car and its lane's markings; on one frame."""

    frames: int = Field(default=1, ge=1, le=100, description="perceived frames in a row")
    error: float = Field(default=0.5, gt=0.0, le=10.0,
                         description="|perceived - true offset| above [m]")


class LowConfidence(FramesTrigger):
    """Scores in [0.15, 0.35): under what the planner trusts, above noise; within 40 m and
    a corridor of +-15 % of the image width (+-2 m at 10 m, wider far away: the corridor
    is in pixels, a `Moment` holds no focal length); 2 perceived frames, so a one-frame
    blip does not fire."""

    frames: int = Field(default=2, ge=1, le=100, description="perceived frames in a row")
    score_lo: float = Field(default=0.15, ge=0.0, le=1.0, description="scores from (inclusive)")
    score_hi: float = Field(default=0.35, ge=0.0, le=1.0, description="scores up to (exclusive)")
    distance: float = Field(default=40.0, gt=0.0, le=500.0,
                            description="closer than [m] (perceived)")
    corridor: float = Field(default=0.15, gt=0.0, le=0.5, description=(
        "box bottom-centre within this fraction of the image width of its centre"))
    link_iou: float = Field(default=0.3, gt=0.0, le=1.0, description="IoU linking frame to frame")

    @model_validator(mode="after")
    def _check(self) -> LowConfidence:
        if not self.score_lo < self.score_hi:
            raise ValueError(f"score_lo {self.score_lo} must be below score_hi {self.score_hi}")
        return self


class Flicker(Trigger):
    """An object gone for 1 or 2 perceived frames and back, twice within 15 perceived
    frames (3 s at 5 Hz)."""

    times: int = Field(default=2, ge=1, le=50, description="reappearances of one object")
    frames: int = Field(default=15, ge=2, le=300, description="within this many perceived frames")
    max_gap: int = Field(default=2, ge=1, le=5, description="absent at most this many frames")
    min_score: float = Field(default=0.25, ge=0.0, le=1.0, description="detections scored at least")
    link_iou: float = Field(default=0.3, gt=0.0, le=1.0, description="IoU linking across the gap")

    def window_steps(self, stride: int) -> int:
        return self.frames * stride + 1


class Disagreement(FramesTrigger):
    """Boxes scored >= 0.5 in one model with no box of the other at IoU 0.5 (the usual
    match), at one place for 3 perceived frames."""

    iou: float = Field(default=0.5, gt=0.0, le=1.0, description="IoU at which the models agree")
    min_score: float = Field(default=0.5, ge=0.0, le=1.0,
                             description="unmatched boxes scored at least")
    link_iou: float = Field(default=0.3, gt=0.0, le=1.0, description="IoU linking frame to frame")


class Override(FramesTrigger):
    """Counted in decisions (`decided` moments), not perceived frames; one is enough."""

    frames: int = Field(default=1, ge=1, le=100, description="overridden decisions in a row")


class LaneJump(Trigger):
    """0.6 m between perceived frames: the ego moves sideways at most ~2 m/s, 0.4 m in
    0.2 s. A lane change flips the offset's sign by about a lane width (2.5 to 4.5 m in
    the scenarios), hence 2 to 5 m."""

    jump: float = Field(default=0.6, gt=0.0, le=10.0,
                        description="|change| between frames above [m]")
    lane_change_min: float = Field(default=2.0, ge=0.0, le=10.0, description=(
        "a sign-flipping change at least this large [m] is a lane change"))
    lane_change_max: float = Field(default=5.0, ge=0.0, le=10.0, description="... and at most [m]")

    def window_steps(self, stride: int) -> int:
        return stride + 1

    @model_validator(mode="after")
    def _check(self) -> LaneJump:
        if self.lane_change_min > self.lane_change_max:
            raise ValueError(f"lane_change_min {self.lane_change_min} is above "
                             f"lane_change_max {self.lane_change_max}")
        return self


class TriggerConfig(StrictModel):
    """Which triggers run and their thresholds (a launch file's `triggers:`)."""

    collision: Trigger = Trigger()
    off_road: Trigger = Trigger()
    near_miss: NearMiss = NearMiss()
    hard_brake: Trigger = Trigger()
    missed_object: MissedObject = MissedObject()
    ghost: Ghost = Ghost()
    lane_error: LaneError = LaneError()
    low_confidence: LowConfidence = LowConfidence()
    flicker: Flicker = Flicker()
    disagreement: Disagreement = Disagreement()
    override: Override = Override()
    lane_jump: LaneJump = LaneJump()


# -- helpers ----------------------------------------------------------------------------


def _reaches(flags: Sequence[bool], k: int = 1) -> bool:
    """Whether the trailing run of True in `flags` (oldest first) is exactly `k` long."""
    run = 0
    for flag in reversed(flags):
        if not flag:
            break
        run += 1
    return run == k


def _last(window: Sequence[Moment], n: int, keep: Callable[[Moment], bool]) -> list[Moment]:
    """The last `n` moments of `window` that `keep` accepts, oldest first; [] unless the
    window's last moment is one of them."""
    if not window or not keep(window[-1]):
        return []
    found: list[Moment] = []
    for m in reversed(window):
        if keep(m):
            found.append(m)
            if len(found) == n:
                break
    return found[::-1]


def _perceived(m: Moment) -> bool:
    return m.seen is not None


def _judged(m: Moment) -> bool:
    return m.seen is not None and m.truth is not None


def _column(values: np.ndarray | None, n: int, default: float) -> np.ndarray:
    return np.full(n, default) if values is None else np.asarray(values, np.float64)


def _scores(b: Boxes) -> np.ndarray:
    """Scores as float32 (1 where none); compare with `np.float32(threshold)`, so a score
    of 0.35 reported as float32 is not under a threshold of 0.35."""
    return np.ones(len(b), np.float32) if b.scores is None else np.asarray(b.scores, np.float32)


def _unmatched(a: Boxes, b: Boxes, iou: float, min_score: float) -> np.ndarray:
    """Boxes of `a` scored >= min_score overlapping no box of `b` at >= iou, (K, 4)."""
    keep = _scores(a) >= np.float32(min_score)
    if len(a) and len(b):
        keep &= box_iou(a.xyxy, b.xyxy).max(axis=1) < iou
    return a.xyxy[keep]


def _chain_lengths(frames: Sequence[np.ndarray], link_iou: float) -> np.ndarray:
    """For each box of the last frame, the length of the longest chain of boxes ending at
    it, one per frame, consecutive boxes overlapping at IoU >= link_iou."""
    counts, prev = np.zeros(0, np.int64), np.zeros((0, 4))
    for boxes in frames:
        if len(prev) and len(boxes):
            linked = box_iou(boxes, prev) >= link_iou
            counts = 1 + np.where(linked, counts[None, :], 0).max(axis=1)
        else:
            counts = np.ones(len(boxes), np.int64)
        prev = boxes
    return counts


def _held(frames: Sequence[np.ndarray], link_iou: float, k: int, what: str) -> str | None:
    """A detail when some box of the last frame ends a chain of exactly `k` frames."""
    hit = frames[-1][_chain_lengths(frames, link_iou) == k] if frames else np.zeros((0, 4))
    if not len(hit):
        return None
    where = ", ".join("[" + " ".join(f"{v:.0f}" for v in box) + "]" for box in hit)
    return f"{len(hit)} {what} for {k} perceived frames at {where}"


# -- with ground truth ------------------------------------------------------------------


def _event_edge(window: Sequence[Moment], key: str) -> bool:
    return _reaches([bool(m.events.get(key, False)) for m in window[-2:]])


def collision(window: Sequence[Moment], c: Trigger) -> str | None:
    """The ego hit something at the last moment (and not at the one before)."""
    if not _event_edge(window, "collision"):
        return None
    return f"collision with track(s) {window[-1].events.get('collided_track_ids', [])}"


def off_road(window: Sequence[Moment], c: Trigger) -> str | None:
    """The ego left the road."""
    return "off road" if _event_edge(window, "off_road") else None


def hard_brake(window: Sequence[Moment], c: Trigger) -> str | None:
    """The ego braked harder than the env's hard-brake limit (4 m/s^2)."""
    if not _event_edge(window, "hard_brake"):
        return None
    return f"hard brake at {window[-1].speed:.1f} m/s"


def _ttc(m: Moment) -> float:
    value = m.events.get("min_ttc")
    return math.inf if value is None else float(value)


def near_miss(window: Sequence[Moment], c: NearMiss) -> str | None:
    """Time to collision with an actor in the ego's path fell under `ttc`."""
    ttc = [_ttc(m) for m in window[-2:]]
    if not _reaches([t < c.ttc for t in ttc]):
        return None
    return f"time to collision {ttc[-1]:.2f} s < {c.ttc:g} s"


def _missed(m: Moment, c: MissedObject) -> dict[int, float]:
    """Track id -> distance [m] of the close, visible objects no detection finds."""
    t, seen = m.truth, m.seen
    if t is None or seen is None or t.track_ids is None:
        return {}
    n = len(t)
    dist = _column(t.distance, n, math.inf)
    wh = t.xyxy[:, 2:] - t.xyxy[:, :2]
    close = (dist < c.distance) & (_column(t.visible, n, 1.0) >= c.visible)
    close &= wh.min(axis=1, initial=np.inf) >= c.min_side
    if len(seen):
        close &= box_iou(t.xyxy, seen.xyxy).max(axis=1) < c.iou
    return {int(i): float(d) for i, d in zip(t.track_ids[close], dist[close], strict=True)}


def missed_object(window: Sequence[Moment], c: MissedObject) -> str | None:
    """A close, visible object (ground truth) found by no detection for `frames` perceived
    frames in a row (objects followed by track id)."""
    missed = [_missed(m, c) for m in _last(window, c.frames + 1, _judged)]
    now = missed[-1] if missed else {}
    hits = [i for i in now if _reaches([i in s for s in missed], c.frames)]
    if not hits:
        return None
    where = ", ".join(f"track {i} at {now[i]:.1f} m" for i in hits)
    return f"{where} missed for {c.frames} perceived frames"


def ghost(window: Sequence[Moment], c: Ghost) -> str | None:
    """A detection explained by no object for `frames` perceived frames in a row (followed
    from frame to frame by IoU)."""
    frames = [_unmatched(m.seen, m.truth, c.iou, c.min_score)
              for m in _last(window, c.frames + 1, _judged)
              if m.seen is not None and m.truth is not None]
    return _held(frames, c.link_iou, c.frames, "detection(s) matching no object")


def _lane_error(m: Moment) -> float:
    return math.nan if m.truth_lane_offset is None else abs(m.lane_offset - m.truth_lane_offset)


def lane_error(window: Sequence[Moment], c: LaneError) -> str | None:
    """|perceived - true lane offset| above `error` for `frames` perceived frames."""
    errors = [_lane_error(m) for m in _last(window, c.frames + 1, _perceived)]
    if not errors or not _reaches([e > c.error for e in errors], c.frames):
        return None
    return f"lane offset off by {errors[-1]:.2f} m > {c.error:g} m"


# -- without ground truth ---------------------------------------------------------------


def _doubtful(m: Moment, c: LowConfidence) -> np.ndarray:
    """Boxes scored in [score_lo, score_hi) standing in the ego corridor, closer than
    `distance` (finite: below the horizon)."""
    b = m.seen
    if b is None:
        return np.zeros((0, 4))
    width = m.image_size[0]
    score = _scores(b)
    centre = (b.xyxy[:, 0] + b.xyxy[:, 2]) / 2.0
    keep = (score >= np.float32(c.score_lo)) & (score < np.float32(c.score_hi))
    keep &= _column(b.distance, len(b), math.inf) < c.distance
    keep &= np.abs(centre - width / 2.0) <= c.corridor * width
    return b.xyxy[keep]


def low_confidence(window: Sequence[Moment], c: LowConfidence) -> str | None:
    """A low-confidence detection near the ego path for `frames` perceived frames in a
    row (followed by IoU): the detector is unsure about something that matters."""
    frames = [_doubtful(m, c) for m in _last(window, c.frames + 1, _perceived)]
    return _held(frames, c.link_iou, c.frames, "low-confidence object(s) near the path")


def _reappearances(frames: Sequence[np.ndarray], link_iou: float,
                   max_gap: int) -> list[tuple[int, int, int]]:
    """(track, frame before the gap, frame after) of each detection coming back after 1 to
    `max_gap` absent frames; boxes join tracks greedily, best IoU first, across gaps."""
    tracks: list[tuple[np.ndarray, int]] = []  # per track: its last box and frame
    found: list[tuple[int, int, int]] = []
    for f, boxes in enumerate(frames):
        live = [i for i, (_, at) in enumerate(tracks) if f - at <= max_gap + 1]
        iou = box_iou(boxes, np.array([tracks[i][0] for i in live]).reshape(-1, 4))
        pairs = sorted(((float(iou[j, k]), int(j), live[k])
                        for j, k in np.argwhere(iou >= link_iou)), reverse=True)
        taken: set[int] = set()
        used: set[int] = set()
        for _, j, track in pairs:
            if j in taken or track in used:
                continue
            taken.add(j)
            used.add(track)
            if f - tracks[track][1] > 1:
                found.append((track, tracks[track][1], f))
            tracks[track] = (boxes[j], f)
        tracks += [(boxes[j], f) for j in range(len(boxes)) if j not in taken]
    return found


def flicker(window: Sequence[Moment], c: Flicker) -> str | None:
    """One object (followed by IoU) vanished for 1 to `max_gap` perceived frames and came
    back, `times` times within the last `frames` perceived frames; fires when that count
    reaches `times` (counting only flickers that lie wholly inside the frames)."""
    moments = _last(window, c.frames + 1, _perceived)
    frames = [m.seen.xyxy[_scores(m.seen) >= np.float32(c.min_score)]
              for m in moments if m.seen is not None]
    if not frames:
        return None
    events = _reappearances(frames, c.link_iou, c.max_gap)
    end, start = len(frames) - 1, max(0, len(frames) - c.frames)
    for track in {t for t, _, after in events if after == end}:
        now = sum(1 for t, before, _ in events if t == track and before >= start)
        then = sum(1 for t, _, after in events if t == track and after < end)
        if now >= c.times > then:
            return f"an object flickered {now} times in {c.frames} perceived frames"
    return None


def _compared(m: Moment) -> bool:
    return m.seen is not None and m.second is not None


def disagreement(window: Sequence[Moment], c: Disagreement) -> str | None:
    """The online detector and the second model disagree (a box scored >= `min_score` in
    one matches none of the other's at `iou`) on one place for `frames` perceived frames."""
    frames = [np.concatenate([_unmatched(m.seen, m.second, c.iou, c.min_score),
                              _unmatched(m.second, m.seen, c.iou, c.min_score)])
              for m in _last(window, c.frames + 1, _compared)
              if m.seen is not None and m.second is not None]
    return _held(frames, c.link_iou, c.frames, "box(es) the two detectors disagree on")


def _decided(m: Moment) -> bool:
    return m.decided


def override(window: Sequence[Moment], c: Override) -> str | None:
    """The safety shield replaced the planner's choice on `frames` decisions in a row."""
    steps = _last(window, c.frames + 1, _decided)
    if not steps or not _reaches([m.overridden for m in steps], c.frames):
        return None
    return f"shield overrode the planner ({c.frames} decision(s) in a row)"


def lane_jump(window: Sequence[Moment], c: LaneJump) -> str | None:
    """The perceived lane offset moved more than `jump` between two consecutive perceived
    frames; a sign flip of about a lane width (`lane_change_min`..`lane_change_max`) is the
    ego changing lanes and does not count. Frames without a lane estimate (NaN) count
    as frames, so a lane that is lost and found again is not a jump."""
    frames = _last(window, 2, _perceived)
    if len(frames) < 2:
        return None
    a, b = frames[0].lane_offset, frames[1].lane_offset
    change = abs(b - a)
    if not change > c.jump:  # NaN: no estimate on one of them
        return None
    if a * b < 0 and c.lane_change_min <= change <= c.lane_change_max:
        return None
    return f"lane offset jumped {a:+.2f} -> {b:+.2f} m"


# -- registry and evaluation ------------------------------------------------------------


@dataclass(frozen=True)
class TriggerSpec:
    """One trigger: its function, whether it reads ground truth, its `TriggerConfig` field."""

    function: Callable[[Sequence[Moment], Any], str | None]
    needs_truth: bool
    field: str


@dataclass(frozen=True)
class Fired:
    """A trigger that fired."""

    name: str
    index: int
    """`Moment.index` of the moment it fired at."""
    detail: str
    needs_truth: bool


TRIGGERS: dict[str, TriggerSpec] = {
    name: TriggerSpec(function, truth, name) for name, function, truth in (
        ("collision", collision, True),
        ("off_road", off_road, True),
        ("near_miss", near_miss, True),
        ("hard_brake", hard_brake, True),
        ("missed_object", missed_object, True),
        ("ghost", ghost, True),
        ("lane_error", lane_error, True),
        ("low_confidence", low_confidence, False),
        ("flicker", flicker, False),
        ("disagreement", disagreement, False),
        ("override", override, False),
        ("lane_jump", lane_jump, False),
    )
}
"""Every trigger by name, in the order `evaluate` runs them."""


def without_truth(m: Moment) -> Moment:
    """`m` as a fleet would have it: no ground truth, no simulator events."""
    return replace(m, truth=None, truth_lane_offset=None, events={})


def window_size(config: TriggerConfig, stride: int = STRIDE) -> int:
    """Steps of history `evaluate` needs: the longest window of an enabled trigger, with
    perceived frames and decisions at most `stride` steps apart (3: perception on decision
    frames; give the larger of the perception and decision strides)."""
    if stride < 1:
        raise ValueError(f"stride: must be >= 1 steps, got {stride}")
    specs = (getattr(config, s.field) for s in TRIGGERS.values())
    return max([1] + [c.window_steps(stride) for c in specs if c.enabled])


def _fire(window: Sequence[Moment], free: Sequence[Moment],
          config: TriggerConfig) -> list[Fired]:
    fired = []
    for name, spec in TRIGGERS.items():
        settings = getattr(config, spec.field)
        if settings.enabled:
            detail = spec.function(window if spec.needs_truth else free, settings)
            if detail is not None:
                fired.append(Fired(name, window[-1].index, detail, spec.needs_truth))
    return fired


def evaluate(window: Sequence[Moment], config: TriggerConfig) -> list[Fired]:
    """The enabled triggers that fire at the last moment of `window` (oldest first; give
    it at least `window_size(config)` moments, fewer only at an episode's start). The
    ground-truth-free ones see the window `without_truth`."""
    if not window:
        return []
    return _fire(window, [without_truth(m) for m in window], config)


def scan(moments: Sequence[Moment], config: TriggerConfig,
         stride: int = STRIDE) -> list[Fired]:
    """`evaluate` after every moment of one episode, as a streaming recorder would."""
    moments = list(moments)
    free = [without_truth(m) for m in moments]
    w = window_size(config, stride)
    fired: list[Fired] = []
    for i in range(len(moments)):
        lo = max(0, i + 1 - w)
        fired += _fire(moments[lo:i + 1], free[lo:i + 1], config)
    return fired


def _near(a: list[int], b: list[int], tolerance: int) -> list[bool]:
    arr = np.asarray(b, np.int64)
    return [bool(arr.size) and bool(np.abs(arr - x).min() <= tolerance) for x in a]


def _ratio(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else math.nan


def recall_precision(gt_fired: list[Fired], free_fired: list[Fired],
                     tolerance: int) -> dict[str, Any]:
    """How well the ground-truth-free firings of one episode stand for the ground-truth
    ones: recall = share of `gt_fired` with a `free_fired` within +-`tolerance` steps,
    precision = share of `free_fired` with a `gt_fired` that near; per trigger too (NaN
    where there is nothing to count)."""
    if tolerance < 0:
        raise ValueError(f"tolerance: must be >= 0 steps, got {tolerance}")
    caught = _near([f.index for f in gt_fired], [f.index for f in free_fired], tolerance)
    confirmed = _near([f.index for f in free_fired], [f.index for f in gt_fired], tolerance)

    def by_name(fired: list[Fired], flags: list[bool]) -> dict[str, float]:
        names = dict.fromkeys(f.name for f in fired)
        return {n: _ratio([x for f, x in zip(fired, flags, strict=True) if f.name == n])
                for n in names}

    return {"tolerance": tolerance,
            "gt_events": len(gt_fired), "caught": sum(caught), "recall": _ratio(caught),
            "free_events": len(free_fired), "confirmed": sum(confirmed),
            "precision": _ratio(confirmed),
            "recall_by_trigger": by_name(gt_fired, caught),
            "precision_by_trigger": by_name(free_fired, confirmed)}
