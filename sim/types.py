"""Plain data types that cross package boundaries (numpy only, no torch).

All quantities are SI (metres, seconds, radians) unless a suffix says otherwise.
Image coordinates are pixels, x to the right, y down, origin at the top-left corner.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("car", "truck", "pedestrian", "cyclist", "cone")
"""Class id -> name. Stalled vehicles are cars or trucks with zero speed."""

CAR, TRUCK, PEDESTRIAN, CYCLIST, CONE = range(len(CLASS_NAMES))

MARKING_NAMES: tuple[str, ...] = ("dashed", "solid", "double")
"""Lane-boundary marking type id -> name."""

DASHED, SOLID, DOUBLE = range(len(MARKING_NAMES))

ABSENT = -2.0
"""Lane x value where a boundary is absent at a row (TuSimple's convention)."""


def check_number(name: str, value: Any, lo: float, hi: float, *, unit: str = "",
                 integer: bool = False, open_lo: bool = False, open_hi: bool = False) -> None:
    """Raise ValueError naming `name` and the allowed range unless `value` is a real,
    finite number (an int when `integer`) in the range; bools are not numbers here."""
    kinds: tuple[type, ...] = (int, np.integer) if integer else (int, float, np.integer,
                                                                np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, bool | np.bool_)
    if ok:
        v = float(value)
        ok = bool(np.isfinite(v)) and (lo < v if open_lo else lo <= v) and (
            v < hi if open_hi else v <= hi)
    if not ok:
        kind = "an integer" if integer else "a finite number"
        span = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"{name}: must be {kind} in {span}{' ' + unit if unit else ''}, "
                         f"got {text}")


@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera mounted on the ego, looking forward."""

    width: int = 320
    """Image width [px]."""
    height: int = 192
    """Image height [px]."""
    fov_deg: float = 70.0
    """Horizontal field of view [deg]."""
    mount_height: float = 1.4
    """Height of the optical centre above the ground [m]."""
    mount_forward: float = 1.8
    """Position of the optical centre ahead of the ego's reference point (rear axle) [m]."""
    pitch_deg: float = 4.0
    """Downward pitch of the optical axis [deg]."""
    near: float = 0.5
    """Near clipping distance [m]."""
    far: float = 180.0
    """Far drawing distance [m]."""

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            try:
                check_number(name, getattr(self, name), 16, 4096, unit="px", integer=True)
            except ValueError as exc:
                raise ValueError(f"width, height: {self.width!r}x{self.height!r} must be "
                                 f"integers in 16..4096 px ({exc})") from None
        check_number("fov_deg", self.fov_deg, 10.0, 150.0, unit="deg")
        check_number("pitch_deg", self.pitch_deg, -30.0, 45.0, unit="deg")
        check_number("mount_height", self.mount_height, 0.2, 10.0, unit="m", open_lo=True)
        check_number("mount_forward", self.mount_forward, -10.0, 10.0, unit="m")
        check_number("near", self.near, 0.05, 10.0, unit="m")
        check_number("far", self.far, 1.0, 2000.0, unit="m")
        if not self.near < self.far:
            raise ValueError(f"near, far: {self.near}, {self.far} need 0.05 <= near < far")

    @property
    def focal_px(self) -> float:
        """Focal length [px] (square pixels)."""
        return 0.5 * self.width / float(np.tan(np.radians(self.fov_deg) / 2.0))

    @property
    def K(self) -> np.ndarray:  # noqa: N802 - the usual name for intrinsics
        """3x3 intrinsic matrix."""
        f = self.focal_px
        return np.array(
            [[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]]
        )

    @property
    def horizon_y(self) -> float:
        """Image row of the horizon of a flat ground [px]."""
        return self.height / 2.0 - self.focal_px * float(np.tan(np.radians(self.pitch_deg)))


@dataclass
class EgoState:
    """The ego vehicle: a kinematic bicycle referenced at the rear axle."""

    x: float
    """World x [m]."""
    y: float
    """World y [m]."""
    yaw: float
    """Heading [rad], counter-clockwise from world x."""
    speed: float
    """Longitudinal speed [m/s]."""
    steer: float = 0.0
    """Front-wheel steering angle [rad]."""
    accel: float = 0.0
    """Longitudinal acceleration applied in the last step [m/s^2]."""
    s: float = 0.0
    """Frenet arc length of the body centre along the road centerline [m]."""
    d: float = 0.0
    """Frenet lateral offset of the body centre, left positive [m]."""
    length: float = 4.6
    """Body length [m]."""
    width: float = 1.9
    """Body width [m]."""
    wheelbase: float = 2.8
    """Distance rear axle to front axle [m]."""

    def check(self) -> None:
        """Raise ValueError naming the first field that is not a finite number in its
        range (wide ranges: they catch corruption, not unusual driving)."""
        for name, (lo, hi, unit) in _EGO_RANGES.items():
            check_number(f"ego.{name}", getattr(self, name), lo, hi, unit=unit,
                         open_lo=name in ("length", "width", "wheelbase"))


_EGO_RANGES: dict[str, tuple[float, float, str]] = {
    "x": (-1e6, 1e6, "m"), "y": (-1e6, 1e6, "m"), "yaw": (-1e4, 1e4, "rad"),
    "speed": (0.0, 100.0, "m/s"), "steer": (-1.0, 1.0, "rad"),
    "accel": (-100.0, 100.0, "m/s^2"), "s": (-1e6, 1e6, "m"), "d": (-1e3, 1e3, "m"),
    "length": (0.0, 30.0, "m"), "width": (0.0, 10.0, "m"), "wheelbase": (0.0, 30.0, "m"),
}


class _Record:
    """Dataclass mixin: read fields as items too (`gt["boxes_xyxy"]`), and compare
    array fields by value, so records work in gymnasium infos and its checkers."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(f"{key!r}; available: {', '.join(self.keys())}")
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]  # type: ignore[arg-type]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(_same(getattr(self, k), getattr(other, k)) for k in self.keys())

    __hash__ = None  # type: ignore[assignment]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(
            np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    return bool(a == b)


@dataclass(eq=False)
class LaneLabels(_Record):
    """Lane boundaries as image polylines sampled at fixed rows (TuSimple style)."""

    rows: np.ndarray
    """(R,) int image rows at which x is sampled [px]."""
    xs: np.ndarray
    """(B, R) float32 x position of each boundary at each row [px]; ABSENT (-2, as in
    TuSimple) where the boundary is not in the image at that row."""
    visible: np.ndarray
    """(B, R) bool: the boundary is in the image and not hidden by an object at that point."""
    boundary_ids: np.ndarray
    """(B,) int boundary index, 0 = right road edge, counting to the left."""
    marking: np.ndarray
    """(B,) int marking type (see MARKING_NAMES)."""
    ego_boundaries: tuple[int, int]
    """Indices (into the B rows) of the right and left boundary of the ego lane."""
    painted: np.ndarray
    """(B, R) bool: paint lies under that point (False in the gaps of a dashed line)."""


@dataclass(eq=False)
class GroundTruth(_Record):
    """Exact labels of one frame, from the instance-id buffer and the geometry.

    Fields read as attributes or items: `gt.boxes_xyxy` or `gt["boxes_xyxy"]`."""

    boxes_xyxy: np.ndarray
    """(N, 4) float32 boxes clipped to the image [px]."""
    class_ids: np.ndarray
    """(N,) int64 class ids (see CLASS_NAMES)."""
    track_ids: np.ndarray
    """(N,) int64 ids stable over an episode."""
    distance: np.ndarray
    """(N,) float32 distance from the camera to the object's nearest footprint point [m]."""
    visible_fraction: np.ndarray
    """(N,) float32 visible pixels / pixels of the object drawn alone on an unbounded image."""
    truncation: np.ndarray
    """(N,) float32 fraction of the object's silhouette outside the image."""
    occluded: np.ndarray
    """(N,) bool: more than half of its in-image silhouette is hidden by something in front."""
    lanes: LaneLabels
    """Lane boundary polylines."""
    ego_lane_offset: float
    """Ego body centre minus the ego lane centre, left positive [m]."""
    ego_heading_error: float
    """Ego yaw minus the road heading [rad]."""
    ego_lane: int
    """Index of the lane the ego is in (0 = rightmost)."""

    def __len__(self) -> int:
        """Number of labelled objects."""
        return int(self.boxes_xyxy.shape[0])

    def __bool__(self) -> bool:
        return True  # a frame without objects still has labels (lanes, ego offset)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of arrays (lanes nested), as put in `info["ground_truth"]`."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lanes"}
        out["lanes"] = {f.name: getattr(self.lanes, f.name) for f in fields(self.lanes)}
        return out


@dataclass
class Frame:
    """One camera frame with its ground truth."""

    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    ground_truth: GroundTruth
    step: int
    """Step index within the episode."""
    ids: np.ndarray | None = None
    """(H, W) int16 instance-id buffer (see sim.render.raster for the encoding)."""


@dataclass
class Events:
    """What happened in one step."""

    collision: bool = False
    """The ego's box overlaps an actor's box."""
    off_road: bool = False
    """The ego left the paved road (shoulder included)."""
    min_ttc: float = float("inf")
    """Smallest time to collision with an actor ahead in the ego's path [s]."""
    hard_brake: bool = False
    """The ego decelerated harder than 4 m/s^2."""
    npc_collisions: int = 0
    """Pairs of non-ego actors whose boxes overlap (should stay 0)."""
    collided_track_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, float | bool | int | list[int]]:
        return {
            "collision": self.collision,
            "off_road": self.off_road,
            "min_ttc": self.min_ttc,
            "hard_brake": self.hard_brake,
            "npc_collisions": self.npc_collisions,
            "collided_track_ids": list(self.collided_track_ids),
        }
