"""Actors as a struct of arrays, the ego's kinematic bicycle, and oriented-box collisions."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sim.types import CAR, CLASS_NAMES, CONE, CYCLIST, PEDESTRIAN, TRUCK, EgoState

# Body variants per class; each has a (length, width, height) [m] and an IDM profile.
BODY_SHAPES: dict[int, tuple[str, ...]] = {
    CAR: ("sedan", "suv", "van"),
    TRUCK: ("box_truck", "semi"),
    PEDESTRIAN: ("adult", "child"),
    CYCLIST: ("bicycle",),
    CONE: ("cone",),
}
SHAPE_SIZE: dict[str, tuple[float, float, float]] = {
    "sedan": (4.5, 1.8, 1.45),
    "suv": (4.8, 1.95, 1.75),
    "van": (5.2, 2.0, 2.2),
    "box_truck": (8.0, 2.45, 3.4),
    "semi": (15.5, 2.55, 3.9),
    "adult": (0.5, 0.6, 1.75),
    "child": (0.4, 0.5, 1.25),
    "bicycle": (1.8, 0.6, 1.75),
    "cone": (0.4, 0.4, 0.7),
}
SHAPE_NAMES: tuple[str, ...] = tuple(SHAPE_SIZE)
"""Global shape id -> name (the renderer builds each shape from parts)."""

MAX_LANES = 5
"""Most lanes a road has (`Scenario.n_lanes`)."""
MAX_STEER = 0.55
"""Largest front-wheel angle [rad]."""
MAX_ACCEL = 3.0
"""Ego throttle limit [m/s^2]."""
MAX_BRAKE = 8.0
"""Ego brake limit [m/s^2]."""


@dataclass
class ActorTable:
    """Every non-ego actor, one row each. Positions live in the road's Frenet frame."""

    track_id: np.ndarray
    """(N,) int64, stable while the actor lives; a respawned actor gets a new one."""
    cls: np.ndarray
    """(N,) int64 class id."""
    shape: np.ndarray
    """(N,) int64 index into SHAPE_NAMES."""
    active: np.ndarray
    """(N,) bool: inactive rows are parked and ignored everywhere."""
    s: np.ndarray
    """(N,) arc length [m]."""
    d: np.ndarray
    """(N,) lateral offset, left positive [m]."""
    speed: np.ndarray
    """(N,) speed along s [m/s] (pedestrians: signed)."""
    v_lat: np.ndarray
    """(N,) lateral speed [m/s]."""
    accel: np.ndarray
    """(N,) last longitudinal acceleration [m/s^2]."""
    target_lane: np.ndarray
    """(N,) int64 lane being driven to (vehicles); -1 for others."""
    desired_speed: np.ndarray
    """(N,) IDM desired speed [m/s]."""
    headway: np.ndarray
    """(N,) IDM time headway [s]."""
    lc_timer: np.ndarray
    """(N,) seconds until the next lane change may start."""
    cross_state: np.ndarray
    """(N,) int64 pedestrians: 0 walks along, 1 waits to cross, 2 crosses."""
    length: np.ndarray
    """(N,) [m]"""
    width: np.ndarray
    """(N,) [m]"""
    height: np.ndarray
    """(N,) [m]"""
    color: np.ndarray
    """(N, 3) uint8 RGB body colour."""

    def __len__(self) -> int:
        return int(self.s.shape[0])

    def check(self, n_lanes: int = MAX_LANES) -> None:
        """Raise TypeError or ValueError naming the first column that is not an array of
        the table's length, dtype kind and range (NaN and infinities included), a lane
        index (`target_lane`) that is not -1 or a lane of a road of `n_lanes` lanes, or a
        body `shape` that is not one of its class's."""
        n = None
        for f in fields(self):
            v = getattr(self, f.name)
            name = f"actors.{f.name}"
            if not isinstance(v, np.ndarray):
                raise TypeError(f"{name}: must be a numpy array, got {type(v).__name__}")
            n = v.shape[0] if n is None and v.ndim >= 1 else n
            shape = (n, 3) if f.name == "color" else (n,)
            if v.shape != shape:
                raise ValueError(f"{name}: must have shape {shape} (one row per actor), "
                                 f"got {v.shape}")
            kinds, lo, hi = _COLUMNS[f.name]
            if f.name == "target_lane":  # indexes the road's lanes (traffic.py): follow it
                hi = min(hi, n_lanes - 1)
            if v.dtype.kind not in kinds:
                raise ValueError(f"{name}: dtype {v.dtype} is not allowed (kind {kinds!r})")
            if v.size and v.dtype.kind in "iuf":
                bad = ~(np.isfinite(v) & (v >= lo) & (v <= hi))
                if bad.any():
                    where = " (-1: none, else a lane of the scenario's road)" \
                        if f.name == "target_lane" else ""
                    raise ValueError(f"{name}: values must be finite and in [{lo:g}, {hi:g}]"
                                     f"{where}, got {v[bad][0].item()!r} at row "
                                     f"{int(np.flatnonzero(bad)[0])}")
        bad = ~_BODY_OF[self.cls, self.shape]
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            cls, body = int(self.cls[i]), int(self.shape[i])
            raise ValueError(f"actors.shape: {body} ({SHAPE_NAMES[body]}) at row {i} is not a "
                             f"body of its class actors.cls={cls} ({CLASS_NAMES[cls]}); "
                             f"allowed: {', '.join(BODY_SHAPES[cls])}")

    def copy(self) -> ActorTable:
        return ActorTable(**{f.name: getattr(self, f.name).copy() for f in fields(self)})

    @property
    def yaw_rel(self) -> np.ndarray:
        """Heading relative to the road [rad]."""
        walker = self.cls == PEDESTRIAN
        along = np.where(walker, self.speed, np.maximum(np.abs(self.speed), 3.0))
        return np.arctan2(self.v_lat, np.where(np.abs(along) > 0.05, along, 0.05))

    @property
    def is_vehicle(self) -> np.ndarray:
        """Rows driven by IDM + MOBIL (moving cars, trucks, cyclists)."""
        kind = (self.cls != PEDESTRIAN) & (self.cls != CONE)
        return self.active & kind & (self.desired_speed > 0)

    @staticmethod
    def empty(n: int) -> ActorTable:
        z = np.zeros(n)
        zi = np.zeros(n, dtype=np.int64)
        return ActorTable(
            track_id=zi.copy(), cls=zi.copy(), shape=zi.copy(), active=np.zeros(n, bool),
            s=z.copy(), d=z.copy(), speed=z.copy(), v_lat=z.copy(), accel=z.copy(),
            target_lane=zi - 1, desired_speed=z.copy(), headway=z + 1.5, lc_timer=z.copy(),
            cross_state=zi.copy(), length=z + 1.0, width=z + 1.0, height=z + 1.0,
            color=np.zeros((n, 3), np.uint8),
        )


_BODY_OF = np.zeros((CONE + 1, len(SHAPE_NAMES)), bool)
"""_BODY_OF[cls, shape]: whether shape is a body of class cls."""
for _cls, _names in BODY_SHAPES.items():
    _BODY_OF[_cls, [SHAPE_NAMES.index(_n) for _n in _names]] = True

_INT, _FLOAT = "iu", "fiu"
_COLUMNS: dict[str, tuple[str, float, float]] = {
    "track_id": (_INT, 0, 2**62), "cls": (_INT, 0, CONE), "shape": (_INT, 0, len(SHAPE_NAMES) - 1),
    "active": ("b", 0, 1), "s": (_FLOAT, -1e6, 1e6), "d": (_FLOAT, -1e3, 1e3),
    "speed": (_FLOAT, -100.0, 100.0), "v_lat": (_FLOAT, -50.0, 50.0),
    "accel": (_FLOAT, -100.0, 100.0), "target_lane": (_INT, -1, MAX_LANES - 1),
    "desired_speed": (_FLOAT, 0.0, 100.0), "headway": (_FLOAT, 0.0, 100.0),
    "lc_timer": (_FLOAT, 0.0, 1e4), "cross_state": (_INT, 0, 2),
    "length": (_FLOAT, 0.01, 50.0), "width": (_FLOAT, 0.01, 10.0),
    "height": (_FLOAT, 0.01, 20.0), "color": ("u", 0, 255),
}
"""Allowed dtype kinds and range of each `ActorTable` column (what `check` holds)."""


def step_bicycle(ego: EgoState, steer: Any, accel: Any, dt: float) -> None:
    """Advance the ego's kinematic bicycle (rear-axle reference) by dt, in place.
    Fields may be floats or (B,) arrays (a batch of egos, see `sim.world.batch`)."""
    steer = np.minimum(np.maximum(steer, -MAX_STEER), MAX_STEER)
    accel = np.minimum(np.maximum(accel, -MAX_BRAKE), MAX_ACCEL)
    v0 = ego.speed
    v1 = np.maximum(v0 + accel * dt, 0.0)
    v_mid = 0.5 * (v0 + v1)
    yaw_mid = ego.yaw + 0.5 * v_mid / ego.wheelbase * np.tan(steer) * dt
    ego.x += v_mid * np.cos(yaw_mid) * dt
    ego.y += v_mid * np.sin(yaw_mid) * dt
    ego.yaw += v_mid / ego.wheelbase * np.tan(steer) * dt
    ego.accel = (v1 - v0) / dt
    ego.speed = v1
    ego.steer = steer


def box_corners(
    cx: np.ndarray, cy: np.ndarray, yaw: np.ndarray, length: np.ndarray, width: np.ndarray
) -> np.ndarray:
    """(N, 4, 2) corners of oriented boxes, counter-clockwise from front-left."""
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = 0.5 * np.asarray(length), 0.5 * np.asarray(width)
    lx = np.stack([hl, -hl, -hl, hl], axis=-1)
    ly = np.stack([hw, hw, -hw, -hw], axis=-1)
    x = np.asarray(cx)[..., None] + lx * c[..., None] - ly * s[..., None]
    y = np.asarray(cy)[..., None] + lx * s[..., None] + ly * c[..., None]
    return np.stack([x, y], axis=-1)


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Separating-axis test for pairs of oriented boxes given as (P, 4, 2) corners."""
    overlap = np.ones(a.shape[0], dtype=bool)
    for box in (a, b):
        edges = box[:, [1, 3]] - box[:, [0, 0]]  # two edge directions per box
        axes = np.stack([-edges[..., 1], edges[..., 0]], axis=-1)  # (P, 2, 2)
        pa = np.einsum("pcx,pkx->pkc", a, axes)
        pb = np.einsum("pcx,pkx->pkc", b, axes)
        sep = (pa.max(-1) < pb.min(-1)) | (pb.max(-1) < pa.min(-1))
        overlap &= ~sep.any(-1)
    return overlap


def frenet_extents(
    length: np.ndarray, width: np.ndarray, yaw_rel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Half extents along s and d of boxes turned by yaw_rel from the road direction."""
    c, s = np.abs(np.cos(yaw_rel)), np.abs(np.sin(yaw_rel))
    return 0.5 * (length * c + width * s), 0.5 * (length * s + width * c)
