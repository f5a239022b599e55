"""Why a closed-loop episode failed, from the ground truth (for reports only; nothing that
labels or trains reads it).

The loop's closed-loop suite asks whether a new detector makes the stack fail less. A
detector can only prevent a collision with something it could have seen: the collided
actor in the camera frame, early enough to react. So each collision is put in one of:

- `out_of_view`: the actor was never at least `MIN_VISIBLE` visible in the frames from
  `WINDOW` to `REACTION` seconds before the collision: a car coming up beside or behind
  the ego, a sideswipe in a lane change (the camera looks ahead only). No detector sees
  it; a new one changes such an episode only by changing the path that led there.
- `missed`: in view, and the detector found it (IoU >= `MATCH_IOU` with any box) in under
  half of the perception frames of the last `RECENT` seconds it was in view: a detection
  miss, the detector's to fix.
- `seen`: in view and detected: the planner's (or the tracker's) to fix.
- `in_view`: in view, but the run computed no perception (the exact scene): the planner's.
- `off_road` when the ego left the road, `none` when the episode did not fail,
  `unknown` for a collision in a run without ground truth (no camera frames).

`rule-privileged` failing the same seed (the issue's test of "not perception's to fix")
is a weaker test here: it shares the camera's field of view, and its run takes another
path, so a failure that vanishes under it may only have been avoided by chance.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from perception.metrics import box_iou
from planning.rollout import Listener, Step

WINDOW = 4.0
"""How far back before a collision the frames are looked at [s]."""
REACTION = 0.5
"""The last moments before a collision, too late to react, left out [s]."""
RECENT = 1.0
"""The detector is judged on the last this many seconds the actor was in view [s]."""
MIN_VISIBLE = 0.25
"""Visible fraction (sim.GroundTruth.visible_fraction) for an actor to count as in view."""
MATCH_IOU = 0.3
"""IoU with a detected box (any class) for the actor to count as found."""

CAUSES = ("none", "off_road", "out_of_view", "missed", "seen", "in_view", "unknown")


@dataclass(frozen=True)
class FrameRecord:
    """What the cause needs of one step: the collided actor's box when it was in view."""

    step: int
    box: np.ndarray | None
    """(4,) xyxy of the actor in view (visible >= MIN_VISIBLE), else None."""
    detections: np.ndarray | None
    """(N, 4) perception boxes of this frame, None when no perception ran on it."""


@dataclass(frozen=True)
class Cause:
    cause: str
    actor_class: int | None = None
    """sim CLASS_NAMES index of the collided actor (None: no collision)."""
    in_view_frames: int = 0
    found: int = 0
    """Perception frames of the judged seconds in which the actor was found ..."""
    judged: int = 0
    """... of this many."""

    def as_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "actor_class": self.actor_class,
                "in_view_frames": self.in_view_frames, "found": self.found,
                "judged": self.judged}


def classify(frames: Sequence[FrameRecord], collision_step: int, dt: float,
             actor_class: int | None = None) -> Cause:
    """The cause of a collision at `collision_step` from the records of the steps before
    it (any order; steps outside the window are ignored). A pure function."""
    if not dt > 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    lo = collision_step - round(WINDOW / dt)
    hi = collision_step - round(REACTION / dt)
    window = sorted((f for f in frames if lo <= f.step <= hi), key=lambda f: f.step)
    seen = [f for f in window if f.box is not None]
    if not seen:
        return Cause("out_of_view", actor_class)
    recent = [f for f in seen if f.step > seen[-1].step - round(RECENT / dt)
              and f.detections is not None]
    if not recent:
        return Cause("in_view", actor_class, len(seen))
    found = sum(_found(f) for f in recent)
    cause = "missed" if 2 * found < len(recent) else "seen"
    return Cause(cause, actor_class, len(seen), found, len(recent))


def _found(f: FrameRecord) -> bool:
    """The actor's box (in view) is covered by a detection of this frame."""
    det = np.asarray(f.detections if f.detections is not None else np.zeros((0, 4)))
    if f.box is None or not len(det):
        return False
    return bool(box_iou(f.box, det.reshape(-1, 4)[:, :4]).max() >= MATCH_IOU)


class FailureCause(Listener):
    """Keeps, per step, the boxes of the actors close to the ego in the frame and the
    perception boxes; after the episode, `cause` says why it failed (see the module doc).
    Needs the env's ground truth (a camera env); without it a collision is `unknown`."""

    def __init__(self) -> None:
        self._dt = 0.0
        self._rows: deque[tuple[int, Any, np.ndarray | None]] = deque()
        self._hit: tuple[int, list[int], int | None] | None = None
        self._off_road = False
        self._truth = False
        self.cause = Cause("none")

    def on_reset(self, env: Any, seed: int | None) -> None:
        self._dt = float(env.dt)
        self._rows = deque(maxlen=round((WINDOW + 1.0) / self._dt) + 1)
        self._hit, self._off_road, self._truth = None, False, False
        self.cause = Cause("none")

    def on_step(self, step: Step) -> None:
        gt, ev = step.ground_truth, step.events
        det = None
        if step.perception is not None:
            det = np.asarray(step.perception.detections.boxes_xyxy, np.float32).reshape(-1, 4)
        keep = None
        self._truth |= gt is not None
        if gt is not None and len(gt):
            m = np.asarray(gt.visible_fraction) >= MIN_VISIBLE
            keep = (np.asarray(gt.track_ids)[m], np.asarray(gt.boxes_xyxy)[m],
                    np.asarray(gt.class_ids)[m])
        self._rows.append((step.index, keep, det))
        ids = list(ev.get("collided_track_ids", []) or [])
        if self._hit is None and ev.get("collision") and ids:
            cls = self._class_of(step, ids[0])
            self._hit = (step.index, ids, cls)
        if ev.get("off_road"):
            self._off_road = True

    @staticmethod
    def _class_of(step: Step, track_id: int) -> int | None:
        world = step.env.world
        if world is None:
            return None
        a = world.state.actors
        k = np.flatnonzero(np.asarray(a.track_id) == track_id)
        return int(a.cls[k[0]]) if len(k) else None

    def on_end(self, end: Any) -> None:
        if self._hit is None:
            self.cause = Cause("off_road" if self._off_road else "none")
            return
        at, ids, cls = self._hit
        if not self._truth:
            self.cause = Cause("unknown", cls)
            return
        frames = []
        for index, keep, det in self._rows:
            box = None
            if keep is not None:
                k = np.flatnonzero(np.isin(keep[0], ids))
                box = keep[1][k[0]] if len(k) else None
            frames.append(FrameRecord(index, box, det))
        self.cause = classify(frames, at, self._dt, cls)


def count_causes(causes: Sequence[str | None]) -> dict[str, int]:
    """How many of each cause (failures only: `none` and missing ones are left out)."""
    out = {c: 0 for c in CAUSES if c != "none"}
    for c in causes:
        if c and c != "none":
            out[c] = out.get(c, 0) + 1
    return out
