"""`Moment`: what the data engine keeps of one rollout step (numpy only, no env, no
models), so that triggers are pure functions over a window of them and a snapshot can
store them as JSON + npz.

Ground-truth fields are None where a real fleet would have none (and must stay unread by
the ground-truth-free triggers and the auto-labeler); perception fields are None on
frames perception did not run on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

EMPTY_BOXES = np.zeros((0, 4), np.float32)


@dataclass
class Boxes:
    """Boxes of one frame: (N, 4) float32 xyxy [px], (N,) scores, classes and distances."""

    xyxy: np.ndarray = field(default_factory=lambda: EMPTY_BOXES.copy())
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray | None = None
    """(N,) float32 confidence (None for ground truth)."""
    distance: np.ndarray | None = None
    """(N,) float32 [m]; inf above the horizon."""
    track_ids: np.ndarray | None = None
    """(N,) int64 ids stable over an episode (ground truth; offline tracks)."""
    visible: np.ndarray | None = None
    """(N,) float32 visible fraction (ground truth only)."""

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])


@dataclass
class Moment:
    """One step of an episode as the data engine sees it (index 0 is the reset)."""

    index: int
    time: float
    """Simulated time [s]."""
    speed: float
    """Ego speed [m/s]."""
    events: dict[str, Any]
    """The env's events on arriving here (collision, off_road, min_ttc, hard_brake, ...)."""
    action: Any = None
    """The action chosen from this moment (None on the last one)."""
    decided: bool = False
    overridden: bool = False
    """A safety shield replaced the planner's choice."""
    truth: Boxes | None = None
    """Ground-truth objects (None: not available)."""
    truth_lane_offset: float | None = None
    """Ground-truth ego offset from its lane centre [m]."""
    seen: Boxes | None = None
    """The online detector's objects (None: perception did not run on this frame)."""
    lane_offset: float = math.nan
    """Perceived ego lane offset [m] (NaN: not seen or not run)."""
    lane_heading: float = math.nan
    """Perceived heading error [rad]."""
    second: Boxes | None = None
    """A second detector's objects on the same frame (None: not run)."""
    image_size: tuple[int, int] = (320, 192)
    """(width, height) [px]."""


def boxes_of_perception(p: Any) -> Boxes:
    """`Boxes` of a `perception.perceiver.Perception` (or its `Detections`)."""
    d = getattr(p, "detections", p)
    return Boxes(np.asarray(d.boxes_xyxy, np.float32).reshape(-1, 4),
                 np.asarray(d.classes, np.int64).reshape(-1),
                 np.asarray(d.scores, np.float32).reshape(-1),
                 np.asarray(d.distance, np.float32).reshape(-1))


def boxes_of_truth(gt: Any) -> Boxes:
    """`Boxes` of a `sim.types.GroundTruth`."""
    return Boxes(np.asarray(gt.boxes_xyxy, np.float32).reshape(-1, 4),
                 np.asarray(gt.class_ids, np.int64).reshape(-1), None,
                 np.asarray(gt.distance, np.float32).reshape(-1),
                 np.asarray(gt.track_ids, np.int64).reshape(-1),
                 np.asarray(gt.visible_fraction, np.float32).reshape(-1))


def moment_of_step(step: Any, second: Any = None) -> Moment:
    """The `Moment` of a `planning.rollout.Step` (and a second detector's output on its
    frame, if any)."""
    env = step.env
    gt = step.ground_truth
    p = step.perception
    lane_offset = lane_heading = math.nan
    if p is not None and getattr(p, "lanes", None) is not None:
        lane_offset, lane_heading = float(p.lanes.ego_offset), float(p.lanes.heading_error)
    world = env.world
    spec = env.camera_spec
    return Moment(
        index=step.index, time=float(world.state.time), speed=float(world.state.ego.speed),
        events=dict(step.events), action=_plain_action(step.action), decided=step.decided,
        overridden=step.overridden,
        truth=None if gt is None else boxes_of_truth(gt),
        truth_lane_offset=None if gt is None else float(gt.ego_lane_offset),
        seen=None if p is None else boxes_of_perception(p),
        lane_offset=lane_offset, lane_heading=lane_heading,
        second=None if second is None else boxes_of_perception(second),
        image_size=(int(spec.width), int(spec.height)))


def _plain_action(action: Any) -> Any:
    """An action as JSON: an int (meta) or a list of floats (continuous), or None."""
    if action is None:
        return None
    a = np.asarray(action)
    if a.ndim == 0 and a.dtype.kind in "iu":
        return int(a)
    return [float(x) for x in a.reshape(-1)]
