"""What the planner remembers of its neighbours: the objects it saw close in the lane to
its left or right that may now be beside it, out of the camera's view.

A forward camera loses a car it overtakes a few metres before the car is level with the
ego, and a policy that reads one scene at a time then changes lanes into it. The rule
planner remembers such objects (`planning.rule_based.RulePlanner._remember`: "ghosts");
`NeighbourMemory` is the same memory for a batch of envs, as arrays, and gives the
policy's `MEMORY_FEATURES`:

- `time`: time since the episode started, capped at `RuleParams.warmup` (what was beside
  the ego at the start was never seen);
- per side (left, right): `beside`: a remembered object is predicted to overlap the ego
  now (its predicted gap between -(its length + the ego's + 3 m) and 4 m), and `age`:
  how long ago the youngest such object was last seen (capped at
  `RuleParams.memory_time`; the cap when none).

An object is remembered when seen in a neighbour lane (relative lane +-1) with a gap under
`RuleParams.memory_gap`, with its ground speed (the ego's speed plus its gap rate, then);
each decision its predicted gap moves by that speed less the ego's own (the mean of its
speeds at the two decisions), so an ego that slows down after overtaking a car sees the
car come level again, and it is forgotten once past the ego, older than `memory_time`, or
seen again (the new sighting replaces it). (The rule planner's ghosts keep the gap rate of
the sighting, which is wrong as soon as the ego changes speed.) When
the ego's lane offset jumps by more than 0.6 lane widths (it crossed into a neighbour
lane) the memory of both sides is dropped: the side it moved to is now its own lane, and
what was beside the old lane on the far side is two lanes away.

    memory = NeighbourMemory(num_envs)
    memory.reset()                        # at the start of every episode (or rows of it)
    extra = memory.update_scene(scene, dt, row=b)   # (len(MEMORY_FEATURES),) unscaled
    extra = memory.update(objects, valid, speed, lane_offset, lane_width, lane_seen, dt)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from planning.rule_based import EGO_LENGTH, LENGTH, RuleParams

SIDES: tuple[str, ...] = ("left", "right")
MEMORY_FEATURES: tuple[str, ...] = ("time",) + tuple(
    f"{side}_{f}" for side in SIDES for f in ("beside", "beside_age"))
SCALES: dict[str, float] = {"time": RuleParams().warmup, **{
    f"{side}_beside_age": RuleParams().memory_time for side in SIDES}}
"""Divisors of the memory features that are not flags."""
NEUTRAL_MEMORY = np.array([RuleParams().warmup] + [0.0, RuleParams().memory_time] * len(SIDES))
"""The memory of an ego that has driven for the warm-up and remembers nothing."""
SLOTS = 4
"""Objects remembered per side."""
BESIDE_FRONT = 4.0
"""A remembered object counts as beside while its predicted gap is under this [m] (the
rule planner's bound: farther ahead, the camera still sees it)."""
_PARAMS = RuleParams()
_CLASSES = 8


def _clear_of() -> np.ndarray:
    out = np.full(_CLASSES, 5.0 + EGO_LENGTH + 3.0)
    for cls, length in LENGTH.items():
        out[cls] = length + EGO_LENGTH + 3.0
    return out


_CLEAR = _clear_of()


class NeighbourMemory:
    """Remembered neighbours of `num_envs` envs (see the module doc)."""

    def __init__(self, num_envs: int, params: RuleParams | None = None) -> None:
        self.params = params or _PARAMS
        self.n = int(num_envs)
        shape = (self.n, len(SIDES), SLOTS)
        self.gap = np.zeros(shape)
        self.ground = np.zeros(shape)
        """Each remembered object's ground speed when last seen [m/s]."""
        self.clear = np.zeros(shape)
        self.age = np.zeros(shape)
        self.active = np.zeros(shape, bool)
        self.time = np.zeros(self.n)
        self.prev_offset = np.full(self.n, np.nan)
        self.prev_speed = np.zeros(self.n)
        self.started = np.zeros(self.n, bool)
        """The env has had a decision since its reset (its time runs)."""

    def reset(self, rows: Sequence[int] | np.ndarray | None = None) -> None:
        """Forget everything of `rows` (None: every env): a new episode."""
        r = slice(None) if rows is None else np.asarray(rows, np.int64)
        self.active[r] = False
        self.time[r] = 0.0
        self.prev_offset[r] = np.nan
        self.started[r] = False

    def update(self, objects: np.ndarray, valid: np.ndarray, speed: np.ndarray,
               lane_offset: np.ndarray, lane_width: np.ndarray, lane_seen: np.ndarray,
               dt: float, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """One decision of `rows` (None: every env), `dt` seconds after the last one:
        `objects` (R, M, 5) scene rows of which `valid` (R, M) are real, and (R,) ego
        speeds [m/s], lane offsets, widths and whether the lane was seen. Returns
        (R, len(MEMORY_FEATURES)) unscaled features. The first update after a reset does
        not advance time."""
        p = self.params
        r = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        obj = np.asarray(objects, np.float64)
        valid = np.asarray(valid, bool)
        offset = np.asarray(lane_offset, np.float64)
        width = np.asarray(lane_width, np.float64)
        seen = np.asarray(lane_seen, bool)
        speed = np.asarray(speed, np.float64)
        if not np.all(np.isfinite(speed)):
            raise ValueError("NeighbourMemory.update: the ego speed is NaN or infinite")
        step = np.where(self.started[r], float(dt), 0.0)
        ego_v = np.where(self.started[r], 0.5 * (self.prev_speed[r] + speed), speed)
        self.started[r] = True
        self.prev_speed[r] = speed
        self.time[r] += step
        gap, ground, clear = self.gap[r], self.ground[r], self.clear[r]
        age, active = self.age[r], self.active[r]
        # predict (the object at its ground speed, the ego at its own), then forget what
        # has passed the ego or aged out
        gap += (ground - ego_v[:, None, None]) * step[:, None, None]
        age += step[:, None, None]
        active &= (gap > -clear) & (age < p.memory_time)
        # a lane change (the offset jumps): both sides' memories are void
        prev = self.prev_offset[r]
        jumped = seen & ~np.isnan(prev) & (np.abs(prev - offset) > 0.6 * width)
        active[jumped] = False
        self.prev_offset[r] = np.where(seen, offset, prev)
        # new sightings: close objects in a neighbour lane, nearest first
        m = obj.shape[1] if obj.ndim == 3 else 0
        rows_r = np.arange(len(r))
        for i in range(m):
            o = obj[:, i]
            for s, lane in enumerate((1, -1)):
                new = valid[:, i] & (o[:, 2] == lane) & (o[:, 0] < p.memory_gap)
                if not new.any():
                    continue
                # the same object seen again replaces its memory
                same = active[:, s] & (np.abs(gap[:, s] - o[:, 0, None]) < 6.0)
                active[:, s] &= ~(same & new[:, None])
                # a free slot, else the oldest
                slot = np.argmax(np.where(active[:, s], age[:, s], np.inf), axis=1)
                rr, ss = rows_r[new], slot[new]
                gap[rr, s, ss] = o[new, 0]
                ground[rr, s, ss] = np.maximum(speed[new] + o[new, 4], 0.0)
                clear[rr, s, ss] = _CLEAR[np.clip(o[new, 3].astype(np.int64), 0, _CLASSES - 1)]
                age[rr, s, ss] = 0.0
                active[rr, s, ss] = True
        self.gap[r], self.ground[r], self.clear[r] = gap, ground, clear
        self.age[r], self.active[r] = age, active
        beside = active & (gap < BESIDE_FRONT)
        out = np.empty((len(r), len(MEMORY_FEATURES)))
        out[:, 0] = np.minimum(self.time[r], p.warmup)
        for s in range(len(SIDES)):
            out[:, 1 + 2 * s] = beside[:, s].any(axis=1)
            out[:, 2 + 2 * s] = np.min(np.where(beside[:, s], age[:, s], p.memory_time),
                                       axis=1)
        return out

    def update_scene(self, scene: Any, dt: float, row: int = 0) -> np.ndarray:
        """`update` of one env from one `planning.scene.Scene`; (len(MEMORY_FEATURES),)."""
        objects = np.asarray(scene.objects, np.float64).reshape(1, -1, 5)
        return self.update(objects, np.ones(objects.shape[:2], bool), np.array([scene.speed]),
                           np.array([scene.lane_offset]), np.array([scene.lane_width]),
                           np.array([scene.lane_seen]), dt, rows=[row])[0]


__all__ = ["MEMORY_FEATURES", "NEUTRAL_MEMORY", "SCALES", "SIDES", "NeighbourMemory"]
