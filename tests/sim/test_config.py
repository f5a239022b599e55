"""Scenario configuration: strict validation with messages naming the key, family
defaults, and seeded sampling that respects ranges and weights."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import pytest
from pydantic import ValidationError

from sim.config import (
    FAMILIES,
    FAMILY_DEFAULTS,
    ScenarioConfig,
    family_config,
    sample_scenario,
)


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ValidationError, match="lane_count"):
        ScenarioConfig(lane_count=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="colour"):
        family_config("urban", colour="red")


@pytest.mark.parametrize(
    "key,value",
    [
        ("lanes", (3, 2)),
        ("lane_width", (3.8, 3.3)),
        ("speed_limit", (30.0, 20.0)),
        ("vehicles", (10, 5)),
        ("cyclists", (2, 1)),
        ("pedestrians", (4, 0)),
        ("cone_groups", (1, 0)),
        ("stalled", (2, 1)),
        ("sensor_noise", (3.0, 1.0)),
        ("exposure", (1.2, 0.9)),
    ],
)
def test_lower_bound_above_upper_bound_names_the_key(key: str, value: tuple) -> None:
    with pytest.raises(ValueError, match=rf"{key}: lower bound .* above upper bound"):
        ScenarioConfig(**{key: value})


@pytest.mark.parametrize("lanes", [(0, 3), (1, 6), (0, 0), (6, 6)])
def test_lanes_outside_1_to_5_are_rejected(lanes: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="lanes"):
        ScenarioConfig(lanes=lanes)


@pytest.mark.parametrize("lanes", [(1, 1), (1, 5), (5, 5)])
def test_lanes_inside_1_to_5_are_accepted(lanes: tuple[int, int]) -> None:
    assert ScenarioConfig(lanes=lanes).lanes == lanes


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lane_width": (2.0, 3.0)}, "lane_width"),
        ({"speed_limit": (0.0, 10.0)}, "speed_limit"),
        ({"speed_limit": (20.0, 60.0)}, "speed_limit"),
        ({"vehicles": (-1, 3)}, "vehicles"),
        ({"vehicles": (10, 500)}, "vehicles"),
        ({"min_radius": 50.0}, "min_radius"),
        ({"road_length": 10.0}, "road_length"),
        ({"truck_fraction": 1.5}, "truck_fraction"),
        ({"episode_seconds": 0.0}, "episode_seconds"),
        ({"shoulder_width": -1.0}, "shoulder_width"),
        ({"time_of_day": {"day": -1.0, "night": 2.0}}, "time_of_day"),
        ({"time_of_day": {"day": 0.0}}, "time_of_day"),
        ({"time_of_day": {}}, "time_of_day"),
        ({"time_of_day": {"noon": 1.0}}, "time_of_day"),
        ({"weather": {"snow": 1.0}}, "weather"),
        ({"family": "offroad"}, "family"),
        ({"clutter": "jungle"}, "clutter"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScenarioConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    cfg = ScenarioConfig()
    with pytest.raises(ValidationError):
        cfg.lanes = (1, 1)  # type: ignore[misc]


def test_family_config_unknown_family_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown family 'mars'; allowed: highway, rural, urban"):
        family_config("mars")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_defaults_are_valid_and_overridable(family: str) -> None:
    cfg = family_config(family)
    assert cfg.family == family
    for key, value in FAMILY_DEFAULTS[family].items():
        assert getattr(cfg, key) == value, key
    over = family_config(family, lanes=(2, 2), episode_seconds=5.0)
    assert over.lanes == (2, 2) and over.episode_seconds == 5.0
    assert over.speed_limit == cfg.speed_limit


def test_sample_scenario_is_deterministic_per_seed() -> None:
    cfg = family_config("urban")
    assert sample_scenario(cfg, 7) == sample_scenario(cfg, 7)
    draws = {tuple(sorted(asdict(sample_scenario(cfg, s)).items())) for s in range(30)}
    assert len(draws) == 30, "different seeds give different scenarios"
    assert sample_scenario(cfg, 7).seed == 7


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_scenario_respects_ranges(family: str) -> None:
    cfg = family_config(family, lanes=(2, 4), pedestrians=(1, 3))
    scs = [sample_scenario(cfg, s) for s in range(300)]
    ints = {"n_lanes": cfg.lanes, "n_vehicles": cfg.vehicles, "n_cyclists": cfg.cyclists,
            "n_pedestrians": cfg.pedestrians, "n_cone_groups": cfg.cone_groups,
            "n_stalled": cfg.stalled}
    for name, (lo, hi) in ints.items():
        values = {getattr(sc, name) for sc in scs}
        assert values == set(range(lo, hi + 1)), f"{name}: both ends inclusive, all reached"
    floats = {"lane_width": cfg.lane_width, "speed_limit": cfg.speed_limit,
              "noise_std": cfg.sensor_noise, "exposure": cfg.exposure}
    for name, (lo, hi) in floats.items():
        values = [getattr(sc, name) for sc in scs]
        assert all(lo <= v <= hi for v in values), name
        if hi > lo:
            assert max(values) - min(values) > 0.8 * (hi - lo), f"{name}: covers the range"
    for sc in scs:
        assert sc.family == family
        assert sc.min_radius == cfg.min_radius and sc.road_length == cfg.road_length
        assert sc.episode_seconds == cfg.episode_seconds
        assert sc.clutter == cfg.clutter


def test_time_of_day_and_weather_follow_their_weights() -> None:
    only = ScenarioConfig(time_of_day={"night": 1.0}, weather={"fog": 1.0})
    assert {(sample_scenario(only, s).time_of_day, sample_scenario(only, s).weather)
            for s in range(50)} == {("night", "fog")}
    zero = ScenarioConfig(time_of_day={"day": 0.0, "dusk": 1.0}, weather={"clear": 0.0,
                                                                           "rain": 3.0})
    assert {sample_scenario(zero, s).time_of_day for s in range(50)} == {"dusk"}
    assert {sample_scenario(zero, s).weather for s in range(50)} == {"rain"}
    cfg = ScenarioConfig(time_of_day={"day": 0.6, "dusk": 0.3, "night": 0.1},
                         weather={"clear": 1.0, "fog": 1.0, "rain": 2.0})
    n = 3000
    tod = Counter(sample_scenario(cfg, s).time_of_day for s in range(n))
    wx = Counter(sample_scenario(cfg, s).weather for s in range(n))
    for name, p in {"day": 0.6, "dusk": 0.3, "night": 0.1}.items():
        assert tod[name] / n == pytest.approx(p, abs=0.035), name
    for name, p in {"clear": 0.25, "fog": 0.25, "rain": 0.5}.items():
        assert wx[name] / n == pytest.approx(p, abs=0.035), name
