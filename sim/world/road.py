"""Procedural roads: a centerline of straight, clothoid and arc pieces, lanes and markings.

The reference line (d = 0) is the middle of the carriageway. Lanes are numbered from the
right (lane 0) to the left; lane boundaries from the right road edge (0) to the left road
edge (n_lanes). All lanes carry traffic in the direction of increasing s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.types import DASHED, DOUBLE, SOLID

DS = 0.5
"""Centerline sampling step [m]."""
ROAD_TAIL = 60.0
"""Road drawn behind the route start [m]."""
ROAD_HEAD = 260.0
"""Road drawn past the route end, so the camera always sees road ahead [m]."""


@dataclass(frozen=True)
class Road:
    """A sampled centerline with lanes; all methods are vectorized over points."""

    s: np.ndarray
    """(M,) arc length of the samples, starting at -ROAD_TAIL [m]."""
    x: np.ndarray
    """(M,) world x of the centerline [m]."""
    y: np.ndarray
    """(M,) world y of the centerline [m]."""
    heading: np.ndarray
    """(M,) centerline heading [rad] (continuous, not wrapped)."""
    kappa: np.ndarray
    """(M,) signed curvature [1/m], left turns positive."""
    n_lanes: int
    lane_width: float
    """[m]"""
    shoulder_width: float
    """Paved shoulder beyond each edge line [m]."""
    markings: tuple[int, ...]
    """Marking type of each boundary, right edge first (len n_lanes + 1)."""
    dash_length: float = 3.0
    """Painted length of a dash [m]."""
    dash_period: float = 12.0
    """Dash plus gap [m]."""
    route_length: float = 1000.0
    """Length the ego is asked to drive, from s = 0 [m]."""

    @property
    def half_width(self) -> float:
        """Distance from the reference line to each edge line [m]."""
        return 0.5 * self.n_lanes * self.lane_width

    @property
    def paved_half_width(self) -> float:
        """Edge line plus shoulder [m]."""
        return self.half_width + self.shoulder_width

    @property
    def s_max(self) -> float:
        return float(self.s[-1])

    def lane_center(self, lane: np.ndarray | int) -> np.ndarray:
        """Lateral offset of a lane's centre [m]."""
        return (np.asarray(lane) + 0.5) * self.lane_width - self.half_width

    def boundary_d(self, index: np.ndarray | int) -> np.ndarray:
        """Lateral offset of a lane boundary [m]."""
        return np.asarray(index) * self.lane_width - self.half_width

    def boundaries(self) -> np.ndarray:
        """(n_lanes + 1,) lateral offsets of every lane boundary, right edge first [m]."""
        return self.boundary_d(np.arange(self.n_lanes + 1))

    def lane_of(self, d: np.ndarray | float) -> np.ndarray:
        """Lane index containing lateral offset d, clipped to the road's lanes."""
        lane = np.floor((np.asarray(d) + self.half_width) / self.lane_width)
        return np.minimum(np.maximum(lane, 0), self.n_lanes - 1).astype(np.int64)

    def _index(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = (np.asarray(s, dtype=np.float64) - self.s[0]) / DS
        f = np.minimum(np.maximum(f, 0.0), len(self.s) - 1.000001)
        i = f.astype(np.int64)
        return i, f - i

    def heading_at(self, s: np.ndarray | float) -> np.ndarray:
        i, t = self._index(np.asarray(s))
        return self.heading[i] * (1.0 - t) + self.heading[i + 1] * t

    def curvature_at(self, s: np.ndarray | float) -> np.ndarray:
        i, t = self._index(np.asarray(s))
        return self.kappa[i] * (1.0 - t) + self.kappa[i + 1] * t

    def to_world(
        self, s: np.ndarray | float, d: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frenet (s, d) -> world (x, y, heading of the centerline at s)."""
        i, t = self._index(np.asarray(s))
        x = self.x[i] * (1.0 - t) + self.x[i + 1] * t
        y = self.y[i] * (1.0 - t) + self.y[i + 1] * t
        h = self.heading[i] * (1.0 - t) + self.heading[i + 1] * t
        d = np.asarray(d, dtype=np.float64)
        return x - d * np.sin(h), y + d * np.cos(h), h

    def to_frenet(
        self, x: np.ndarray | float, y: np.ndarray | float, s_hint: np.ndarray | float,
        window: float = 30.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) -> Frenet (s, d), searching within `window` m of `s_hint`."""
        x = np.atleast_1d(np.asarray(x, dtype=np.float64))
        y = np.atleast_1d(np.asarray(y, dtype=np.float64))
        hint = np.broadcast_to(np.asarray(s_hint, dtype=np.float64), x.shape)
        n_win = int(window / DS)
        i0, _ = self._index(hint - window)
        idx = np.minimum(i0[:, None] + np.arange(2 * n_win + 1)[None, :], len(self.s) - 1)
        d2 = (self.x[idx] - x[:, None]) ** 2 + (self.y[idx] - y[:, None]) ** 2
        best = idx[np.arange(len(x)), np.argmin(d2, axis=1)]
        h = self.heading[best]
        dx, dy = x - self.x[best], y - self.y[best]
        along = dx * np.cos(h) + dy * np.sin(h)
        lateral = -dx * np.sin(h) + dy * np.cos(h)
        return self.s[best] + along, lateral

    def painted(self, boundary: int, s: np.ndarray) -> np.ndarray:
        """Whether the marking of `boundary` is painted at arc lengths s (dashes have gaps)."""
        s = np.asarray(s)
        if self.markings[boundary] != DASHED:
            return np.ones(s.shape, dtype=bool)
        return np.mod(s, self.dash_period) < self.dash_length


def _curvature_profile(rng: np.random.Generator, total: float, min_radius: float) -> np.ndarray:
    """Piecewise curvature: straight, clothoid in, arc, clothoid out, repeated."""
    n = int(np.ceil(total / DS)) + 1
    kappa = np.zeros(n)
    i = int(rng.uniform(20, 120) / DS)  # straight start
    while i < n:
        radius = rng.uniform(min_radius, 4.0 * min_radius)
        k = rng.choice([-1.0, 1.0]) / radius
        max_turn = np.radians(rng.uniform(15.0, 80.0))
        arc_len = min(max_turn * radius, rng.uniform(40.0, 250.0))
        clo_len = rng.uniform(30.0, 80.0)
        ramp = np.linspace(0.0, k, int(clo_len / DS), endpoint=False)
        piece = np.concatenate([ramp, np.full(int(arc_len / DS), k), ramp[::-1]])
        j = min(n, i + len(piece))
        kappa[i:j] = piece[: j - i]
        i = j + int(rng.uniform(60.0, 300.0) / DS)  # straight between curves
    return kappa


def make_road(
    rng: np.random.Generator,
    *,
    n_lanes: int,
    lane_width: float,
    shoulder_width: float,
    min_radius: float,
    route_length: float,
    family: str = "highway",
) -> Road:
    """Generate a road from `rng`: the same generator state gives the same road."""
    if not 1 <= n_lanes <= 5:
        raise ValueError(f"n_lanes={n_lanes} must be in 1..5")
    total = ROAD_TAIL + route_length + ROAD_HEAD
    kappa = _curvature_profile(rng, total, min_radius)
    kappa[: int(ROAD_TAIL / DS) + 1] = 0.0  # straight behind the start
    heading0 = rng.uniform(-np.pi, np.pi)
    k_mid = 0.5 * (kappa[1:] + kappa[:-1])
    heading = heading0 + np.concatenate([[0.0], np.cumsum(k_mid * DS)])
    h_mid = 0.5 * (heading[1:] + heading[:-1])
    x = np.concatenate([[0.0], np.cumsum(np.cos(h_mid) * DS)])
    y = np.concatenate([[0.0], np.cumsum(np.sin(h_mid) * DS)])
    s = np.arange(len(kappa)) * DS - ROAD_TAIL
    left_edge = DOUBLE if family in ("rural", "urban") and rng.random() < 0.7 else SOLID
    markings = (SOLID,) + (DASHED,) * (n_lanes - 1) + (left_edge,)
    dash_length, dash_period = (3.0, 12.0) if family == "highway" else (3.0, 9.0)
    return Road(
        s=s, x=x, y=y, heading=heading, kappa=kappa, n_lanes=n_lanes,
        lane_width=lane_width, shoulder_width=shoulder_width, markings=markings,
        dash_length=dash_length, dash_period=dash_period, route_length=route_length,
    )
