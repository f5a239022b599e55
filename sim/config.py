"""Typed, validated scenario configuration and its seeded sampling.

A `ScenarioConfig` holds ranges and weights; `sample_scenario(config, rng)` draws one
concrete `Scenario` from it. Every random choice of an episode comes from that draw and
from the world's own generator, so the same config and seed give the same world.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sim.types import check_number

Family = Literal["highway", "rural", "urban"]
TimeOfDay = Literal["day", "dusk", "night"]
Weather = Literal["clear", "fog", "rain"]

FAMILIES: tuple[str, ...] = ("highway", "rural", "urban")


def takes_number(annotation: Any) -> bool:
    """Whether a pydantic field's annotation holds ints or floats (in any nesting)."""
    if annotation in (int, float):
        return True
    return any(takes_number(a) for a in typing.get_args(annotation))


def refuse_bools(value: Any, annotation: Any) -> Any:
    """`value`, unless it is a bool (or a list or tuple holding one) where `annotation`
    takes numbers: YAML's `true` is a mistake there, not 1 (pydantic would read it as 1)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, bool) for v in items) and takes_number(annotation):
        raise ValueError(f"{value!r} holds a boolean; a number goes here")
    return value


class StrictModel(BaseModel):
    """A frozen pydantic model for settings: unknown keys, NaN and infinities (also inside
    tuples and dicts) and booleans where numbers go are refused. The base of
    `ScenarioConfig` and of every launch-file model (launch/config.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return value if field is None else refuse_bools(value, field.annotation)


MAX_WEIGHT = 1e6
"""Largest weight of a condition (weights are relative; their sum must stay finite)."""
Weight = Annotated[float, Field(ge=0.0, le=MAX_WEIGHT)]
"""A sampling weight: finite, >= 0 (and at most MAX_WEIGHT)."""
_LaneCount = Annotated[int, Field(ge=1, le=5)]
_LaneWidth = Annotated[float, Field(ge=2.5, le=4.5)]
_SpeedLimit = Annotated[float, Field(gt=0.0, le=45.0)]
_Vehicles = Annotated[int, Field(ge=0, le=200)]
_Walkers = Annotated[int, Field(ge=0, le=200)]
_Obstacles = Annotated[int, Field(ge=0, le=50)]
_Noise = Annotated[float, Field(ge=0.0, le=64.0)]
_Exposure = Annotated[float, Field(ge=0.1, le=4.0)]


def _check_range(name: str, lo: float, hi: float) -> None:
    if lo > hi:
        raise ValueError(f"{name}: lower bound {lo} is above upper bound {hi}")


class ScenarioConfig(StrictModel):
    """Ranges from which each episode's scenario is drawn (all SI units)."""

    family: Family = "highway"
    lanes: tuple[_LaneCount, _LaneCount] = Field((3, 4), description="lane count range, 1..5")
    lane_width: tuple[_LaneWidth, _LaneWidth] = Field(
        (3.3, 3.8), description="lane width range [m], in [2.5, 4.5]")
    shoulder_width: float = Field(2.0, ge=0.0, le=5.0, description="paved shoulder [m]")
    min_radius: float = Field(400.0, ge=150.0, le=100_000.0,
                              description="tightest curve radius [m]")
    road_length: float = Field(1500.0, ge=200.0, le=20000.0, description="route length [m]")
    speed_limit: tuple[_SpeedLimit, _SpeedLimit] = Field(
        (25.0, 33.0), description="speed limit range [m/s], in (0, 45]")
    vehicles: tuple[_Vehicles, _Vehicles] = Field(
        (12, 20), description="cars and trucks around the ego, 0..200")
    truck_fraction: float = Field(0.2, ge=0.0, le=1.0)
    cyclists: tuple[_Walkers, _Walkers] = Field((0, 0), description="0..200")
    pedestrians: tuple[_Walkers, _Walkers] = Field((0, 0), description="0..200")
    crossing_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of pedestrians that cross the road"
    )
    cone_groups: tuple[_Obstacles, _Obstacles] = Field(
        (0, 1), description="lane closures marked by cones, 0..50")
    stalled: tuple[_Obstacles, _Obstacles] = Field(
        (0, 1), description="stalled vehicles blocking a lane, 0..50")
    clutter: Literal["sparse", "rural", "urban"] = "sparse"
    time_of_day: dict[TimeOfDay, Weight] = Field(
        default_factory=lambda: {"day": 0.8, "dusk": 0.12, "night": 0.08},  # type: ignore[arg-type,dict-item]
        description="weights of each time of day",
    )
    weather: dict[Weather, Weight] = Field(
        default_factory=lambda: {"clear": 0.85, "fog": 0.08, "rain": 0.07},  # type: ignore[arg-type,dict-item]
        description="weights of each weather",
    )
    sensor_noise: tuple[_Noise, _Noise] = Field(
        (0.0, 4.0), description="pixel noise std range [0-255 levels], in [0, 64]")
    exposure: tuple[_Exposure, _Exposure] = Field(
        (0.85, 1.15), description="image gain range, in [0.1, 4]")
    episode_seconds: float = Field(90.0, gt=0.0, le=3600.0)

    @model_validator(mode="after")
    def _check(self) -> ScenarioConfig:
        ranges = {
            "lanes": self.lanes,
            "lane_width": self.lane_width,
            "speed_limit": self.speed_limit,
            "vehicles": self.vehicles,
            "cyclists": self.cyclists,
            "pedestrians": self.pedestrians,
            "cone_groups": self.cone_groups,
            "stalled": self.stalled,
            "sensor_noise": self.sensor_noise,
            "exposure": self.exposure,
        }
        for name, (lo, hi) in ranges.items():
            _check_range(name, lo, hi)
            if lo < 0:
                raise ValueError(f"{name}: values must be >= 0, got {lo}")
        if not (1 <= self.lanes[0] and self.lanes[1] <= 5):
            raise ValueError(f"lanes: must lie in 1..5, got {self.lanes}")
        if not (2.5 <= self.lane_width[0] and self.lane_width[1] <= 4.5):
            raise ValueError(f"lane_width: must lie in [2.5, 4.5] m, got {self.lane_width}")
        if self.speed_limit[0] <= 0 or self.speed_limit[1] > 45:
            raise ValueError(f"speed_limit: must lie in (0, 45] m/s, got {self.speed_limit}")
        if self.vehicles[1] > 200:
            raise ValueError(f"vehicles: at most 200, got {self.vehicles}")
        for name, weights in (("time_of_day", self.time_of_day), ("weather", self.weather)):
            if not weights or sum(weights.values()) <= 0 or min(weights.values()) < 0:
                raise ValueError(f"{name}: weights must be >= 0 with a positive sum")
        return self


FAMILY_DEFAULTS: dict[str, dict[str, object]] = {
    "highway": {},
    "rural": {
        "lanes": (1, 2),
        "lane_width": (3.0, 3.5),
        "shoulder_width": 1.0,
        "min_radius": 150.0,
        "speed_limit": (18.0, 25.0),
        "vehicles": (4, 8),
        "truck_fraction": 0.15,
        "cyclists": (0, 2),
        "pedestrians": (0, 2),
        "crossing_fraction": 0.0,
        "cone_groups": (0, 1),
        "stalled": (0, 0),
        "clutter": "rural",
    },
    "urban": {
        "lanes": (2, 3),
        "lane_width": (3.0, 3.5),
        "shoulder_width": 2.5,
        "min_radius": 150.0,
        "road_length": 800.0,
        "speed_limit": (11.0, 15.0),
        "vehicles": (8, 14),
        "truck_fraction": 0.1,
        "cyclists": (1, 3),
        "pedestrians": (3, 8),
        "crossing_fraction": 0.4,
        "cone_groups": (0, 1),
        "stalled": (0, 1),
        "clutter": "urban",
    },
}


def family_config(family: str, **overrides: object) -> ScenarioConfig:
    """The default `ScenarioConfig` of a scenario family, with optional overrides."""
    if family not in FAMILY_DEFAULTS:
        raise ValueError(f"unknown family {family!r}; allowed: {', '.join(FAMILIES)}")
    values = {"family": family, **FAMILY_DEFAULTS[family], **overrides}
    return ScenarioConfig.model_validate(values)


@dataclass(frozen=True)
class Scenario:
    """One concrete episode setting, drawn from a `ScenarioConfig`."""

    family: str
    seed: int
    n_lanes: int
    lane_width: float
    shoulder_width: float
    min_radius: float
    road_length: float
    speed_limit: float
    n_vehicles: int
    truck_fraction: float
    n_cyclists: int
    n_pedestrians: int
    crossing_fraction: float
    n_cone_groups: int
    n_stalled: int
    clutter: str
    time_of_day: str
    weather: str
    noise_std: float
    exposure: float
    episode_seconds: float

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first field that is not of its type and range
        (the ranges of `ScenarioConfig`); a restored or hand-made scenario goes through
        here (`World.set_state`), an unpickled one is checked by calling it."""
        for name, allowed in (("family", FAMILIES), ("clutter", CLUTTERS),
                              ("time_of_day", TIMES_OF_DAY), ("weather", WEATHERS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"{name}: {value!r:.60} is not allowed; allowed: "
                                 f"{', '.join(allowed)}")
        for name, (lo, hi, unit) in _SCENARIO_RANGES.items():
            check_number(name, getattr(self, name), lo, hi, unit=unit,
                         integer=name in _SCENARIO_INTS, open_lo=name in _SCENARIO_OPEN)


CLUTTERS: tuple[str, ...] = ("sparse", "rural", "urban")
TIMES_OF_DAY: tuple[str, ...] = ("day", "dusk", "night")
WEATHERS: tuple[str, ...] = ("clear", "fog", "rain")
_SCENARIO_RANGES: dict[str, tuple[float, float, str]] = {
    "seed": (0, 2**63 - 1, ""),
    "n_lanes": (1, 5, ""),
    "lane_width": (2.5, 4.5, "m"),
    "shoulder_width": (0.0, 5.0, "m"),
    "min_radius": (150.0, 100_000.0, "m"),
    "road_length": (200.0, 20_000.0, "m"),
    "speed_limit": (0.0, 45.0, "m/s"),
    "n_vehicles": (0, 200, ""),
    "truck_fraction": (0.0, 1.0, ""),
    "n_cyclists": (0, 200, ""),
    "n_pedestrians": (0, 200, ""),
    "crossing_fraction": (0.0, 1.0, ""),
    "n_cone_groups": (0, 50, ""),
    "n_stalled": (0, 50, ""),
    "noise_std": (0.0, 64.0, "levels of 255"),
    "exposure": (0.1, 4.0, ""),
    "episode_seconds": (0.0, 3600.0, "s"),
}
"""Allowed range of each number of a `Scenario` (those of `ScenarioConfig`)."""
_SCENARIO_INTS = {"seed", "n_lanes", "n_vehicles", "n_cyclists", "n_pedestrians",
                  "n_cone_groups", "n_stalled"}
_SCENARIO_OPEN = {"speed_limit", "episode_seconds"}
assert set(_SCENARIO_RANGES) | {"family", "clutter", "time_of_day", "weather"} == {
    f.name for f in fields(Scenario)}, "every field of Scenario has a range"


def pick_weighted(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One key of `weights`, drawn with probability proportional to its weight."""
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _randint(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def sample_scenario(config: ScenarioConfig, seed: int) -> Scenario:
    """Draw a concrete scenario from `config`; the same seed gives the same scenario."""
    rng = np.random.default_rng([int(seed), 0x5CE7])
    return Scenario(
        family=config.family,
        seed=int(seed),
        n_lanes=_randint(rng, config.lanes),
        lane_width=_uniform(rng, config.lane_width),
        shoulder_width=config.shoulder_width,
        min_radius=config.min_radius,
        road_length=config.road_length,
        speed_limit=_uniform(rng, config.speed_limit),
        n_vehicles=_randint(rng, config.vehicles),
        truck_fraction=config.truck_fraction,
        n_cyclists=_randint(rng, config.cyclists),
        n_pedestrians=_randint(rng, config.pedestrians),
        crossing_fraction=config.crossing_fraction,
        n_cone_groups=_randint(rng, config.cone_groups),
        n_stalled=_randint(rng, config.stalled),
        clutter=config.clutter,
        time_of_day=pick_weighted(rng, {str(k): v for k, v in config.time_of_day.items()}),
        weather=pick_weighted(rng, {str(k): v for k, v in config.weather.items()}),
        noise_std=_uniform(rng, config.sensor_noise),
        exposure=_uniform(rng, config.exposure),
        episode_seconds=config.episode_seconds,
    )
