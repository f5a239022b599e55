"""Road geometry: Frenet <-> world, continuity, curvature limits, lanes and markings."""

from __future__ import annotations

import numpy as np
import pytest

from sim.types import DASHED, DOUBLE, SOLID
from sim.world.road import DS, ROAD_HEAD, ROAD_TAIL, Road, make_road


def _road(seed: int = 0, **kw: object) -> Road:
    args: dict[str, object] = dict(n_lanes=3, lane_width=3.5, shoulder_width=2.0,
                                   min_radius=150.0, route_length=1500.0, family="rural")
    args.update(kw)
    return make_road(np.random.default_rng(seed), **args)  # type: ignore[arg-type]


def _piece_masks(road: Road, s: np.ndarray) -> dict[str, np.ndarray]:
    """Which query points fall on a straight, an arc or a clothoid sample interval."""
    i = ((s - road.s[0]) / DS).astype(np.int64)
    k0, k1 = road.kappa[i], road.kappa[i + 1]
    return {
        "straight": (k0 == 0) & (k1 == 0),
        "arc": (k0 != 0) & (k0 == k1),
        "clothoid": k0 != k1,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frenet_world_round_trip_on_every_piece_kind(seed: int) -> None:
    road = _road(seed)
    rng = np.random.default_rng(seed + 100)
    s = rng.uniform(road.s[0] + 35.0, road.s_max - 35.0, 6000)
    d = rng.uniform(-road.paved_half_width, road.paved_half_width, s.size)
    x, y, _ = road.to_world(s, d)
    s2, d2 = road.to_frenet(x, y, s)
    masks = _piece_masks(road, s)
    for name, m in masks.items():
        assert m.sum() > 200, f"seed {seed}: too few samples on {name} pieces"
    st = masks["straight"]
    assert s2[st] == pytest.approx(s[st], abs=1e-9)
    assert d2[st] == pytest.approx(d[st], abs=1e-9)
    # on curved pieces the foot point is searched among samples DS apart: the along-track
    # error is bounded by |d| * kappa * DS / 2 (< 0.02 m here), the lateral one is tiny
    curved = ~st
    bound = np.abs(d[curved]) * np.abs(road.kappa).max() * DS / 2 + 1e-6
    assert np.all(np.abs(s2[curved] - s[curved]) <= bound)
    assert d2[curved] == pytest.approx(d[curved], abs=1e-3)


def test_to_frenet_tolerates_an_imprecise_hint() -> None:
    road = _road(3)
    s = np.linspace(50.0, 1400.0, 300)
    d = np.linspace(-5.0, 5.0, 300)
    x, y, _ = road.to_world(s, d)
    s2, d2 = road.to_frenet(x, y, s + 20.0)
    assert s2 == pytest.approx(s, abs=0.02)
    assert d2 == pytest.approx(d, abs=1e-3)


def test_to_world_returns_the_centerline_heading_and_offsets_perpendicular() -> None:
    road = _road(4)
    s = np.linspace(0.0, 1500.0, 101)
    x0, y0, h = road.to_world(s, 0.0)
    x1, y1, h1 = road.to_world(s, 2.0)
    assert h == pytest.approx(h1)
    assert h == pytest.approx(road.heading_at(s))
    # d > 0 is to the left of the direction of travel
    assert np.hypot(x1 - x0, y1 - y0) == pytest.approx(np.full(s.size, 2.0))
    assert (x1 - x0) == pytest.approx(-2.0 * np.sin(h))
    assert (y1 - y0) == pytest.approx(2.0 * np.cos(h))


@pytest.mark.parametrize("seed", range(5))
def test_centerline_is_continuous_and_consistent_with_heading(seed: int) -> None:
    road = _road(seed)
    step = np.hypot(np.diff(road.x), np.diff(road.y))
    assert step == pytest.approx(np.full(step.size, DS), rel=1e-6)
    dh = np.diff(road.heading)
    assert np.abs(dh).max() <= np.abs(road.kappa).max() * DS + 1e-12
    chord = np.arctan2(np.diff(road.y), np.diff(road.x))
    mid = 0.5 * (road.heading[1:] + road.heading[:-1])
    assert np.angle(np.exp(1j * (chord - mid))) == pytest.approx(np.zeros(chord.size), abs=1e-9)
    # curvature is the derivative of heading (trapezoid rule)
    assert dh == pytest.approx(0.5 * (road.kappa[1:] + road.kappa[:-1]) * DS, abs=1e-12)
    assert road.s[0] == -ROAD_TAIL
    assert road.s_max == pytest.approx(road.route_length + ROAD_HEAD, abs=DS)
    assert np.all(road.kappa[road.s <= 0.0] == 0.0), "the road behind the start is straight"


@pytest.mark.parametrize("min_radius", [150.0, 400.0, 900.0])
@pytest.mark.parametrize("seed", [0, 7])
def test_curvature_respects_min_radius(min_radius: float, seed: int) -> None:
    road = _road(seed, min_radius=min_radius, route_length=4000.0)
    kappa = np.abs(road.kappa)
    assert kappa.max() <= 1.0 / min_radius + 1e-12
    assert kappa.max() > 0.0, "a 4 km road should have curves"
    arc = (road.kappa[1:] == road.kappa[:-1]) & (road.kappa[1:] != 0)
    assert arc.any(), "arcs (constant curvature) exist"
    assert (road.kappa[1:] != road.kappa[:-1]).any(), "clothoids (ramps) exist"


@pytest.mark.parametrize("n_lanes", [1, 2, 3, 4, 5])
def test_lane_center_boundary_and_lane_of_agree(n_lanes: int) -> None:
    road = _road(1, n_lanes=n_lanes, lane_width=3.25)
    lanes = np.arange(n_lanes)
    bounds = road.boundary_d(np.arange(n_lanes + 1))
    assert bounds[0] == pytest.approx(-road.half_width)
    assert bounds[-1] == pytest.approx(road.half_width)
    assert np.diff(bounds) == pytest.approx(np.full(n_lanes, 3.25))
    assert road.half_width == pytest.approx(0.5 * n_lanes * 3.25)
    assert road.paved_half_width == pytest.approx(road.half_width + road.shoulder_width)
    centers = road.lane_center(lanes)
    assert centers == pytest.approx(0.5 * (bounds[:-1] + bounds[1:]))
    assert np.array_equal(road.lane_of(centers), lanes)
    eps = 1e-6
    assert np.array_equal(road.lane_of(bounds[:-1] + eps), lanes)
    assert np.array_equal(road.lane_of(bounds[1:] - eps), lanes)
    # off the lanes, lane_of clips to the nearest lane
    assert road.lane_of(-road.paved_half_width - 5.0) == 0
    assert road.lane_of(road.paved_half_width + 5.0) == n_lanes - 1
    assert len(road.markings) == n_lanes + 1
    assert road.markings[0] == SOLID
    assert all(m == DASHED for m in road.markings[1:-1])
    assert road.markings[-1] in (SOLID, DOUBLE)


@pytest.mark.parametrize("n_lanes", [0, 6, -1])
def test_bad_lane_count_is_rejected(n_lanes: int) -> None:
    with pytest.raises(ValueError, match="n_lanes"):
        _road(0, n_lanes=n_lanes)


def test_make_road_is_deterministic_per_seed() -> None:
    a, b = _road(42), _road(42)
    for name in ("s", "x", "y", "heading", "kappa"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.markings == b.markings
    c = _road(43)
    assert not np.array_equal(a.kappa, c.kappa)
    assert not np.allclose(a.heading[:1], c.heading[:1])


def test_highway_edges_are_solid_and_other_families_may_use_double() -> None:
    hw = [_road(seed, family="highway").markings[-1] for seed in range(20)]
    assert set(hw) == {SOLID}
    rural = [_road(seed, family="rural").markings[-1] for seed in range(20)]
    assert DOUBLE in rural


@pytest.mark.parametrize("family,length,period", [("highway", 3.0, 12.0), ("urban", 3.0, 9.0)])
def test_painted_dash_pattern(family: str, length: float, period: float) -> None:
    road = _road(5, family=family)
    assert (road.dash_length, road.dash_period) == (length, period)
    s = np.arange(0.0, 600.0, 0.01)
    dashed = 1  # the first lane line of a three-lane road
    assert road.markings[dashed] == DASHED
    p = road.painted(dashed, s)
    assert np.array_equal(p, road.painted(dashed, s + period))
    assert p.mean() == pytest.approx(length / period, abs=0.01)
    # each dash is one run of `length` metres, starting at multiples of the period
    starts = s[1:][p[1:] & ~p[:-1]]
    assert np.mod(starts + 1e-6, period) == pytest.approx(np.zeros(starts.size), abs=0.02)
    assert road.painted(0, s).all(), "the solid right edge is painted everywhere"
    assert road.painted(road.n_lanes, s).all()
