"""Launch models of `drivestack eval`: the scenario suite (families x conditions x seeds,
in a "nominal" set and an optional "adverse" one) and the eval job around it.

A suite is either the `suite:` section of the eval launch file or a file of its own
(`--suite FILE`, the same keys at the top level). Both are strict like every launch model:
unknown keys are errors naming the allowed ones; families, times of day and weathers are
checked against their allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import Field, model_validator

from launch.config import (
    PERCEPTION_DEVICES,
    CameraConfig,
    Family,
    PerceptionDevice,
    TimeOfDay,
    Weather,
    _Strict,
)
from launch.loader import short
from planning.evaluate import PLANNERS, Suite, SuiteSet
from planning.rollout import DECISION_EVERY

PlannerChoice = Literal["rl", "rl-shield", "rule", "privileged", "rule-privileged", "all"]
DEFAULT_EVAL_LAUNCH = Path(__file__).with_name("eval.yaml")
"""The packaged launch file of `drivestack eval`."""
SMOKE_SUITE = Path(__file__).with_name("eval_smoke.yaml")
"""A two-episode suite for smoke tests (`--suite launch/eval_smoke.yaml`)."""
MAX_SEED = 2**31 - 1
"""Largest scenario seed and seed offset (a seed and its offset add up below 2**32)."""
assert set(get_args(PlannerChoice)) == {*PLANNERS, "all"}, "PlannerChoice != PLANNERS"


class ConditionConfig(_Strict):
    """One rendering condition of a suite set."""

    time_of_day: TimeOfDay = "day"
    weather: Weather = "clear"


class SetConfig(_Strict):
    """One group of scenarios: every family x every condition x every seed."""

    families: list[Family] = Field(default=["highway", "rural", "urban"], min_length=1)
    conditions: list[ConditionConfig] = Field(default=[ConditionConfig()], min_length=1)
    seeds: list[int] = Field(min_length=1, description="scenario seeds (each >= 0)")
    road_length: float | None = Field(default=None, ge=200.0, le=20000.0, description=(
        "route sets: route length [m] (null: the family's)"))

    @model_validator(mode="after")
    def _check_seeds(self) -> SetConfig:
        bad = [s for s in self.seeds if not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"seeds: must be in 0..{MAX_SEED}, got {short(bad)}")
        twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if twice:
            raise ValueError(f"seeds: {short(twice)} given more than once; each seed is one "
                             "scenario, and a repeat would count the same episode twice")
        return self

    def suite_set(self, name: str, route: bool = False) -> SuiteSet:
        return SuiteSet(name=name, families=tuple(self.families),
                        conditions=tuple((c.time_of_day, c.weather) for c in self.conditions),
                        seeds=tuple(self.seeds), route=route,
                        road_length=self.road_length if route else None)


SUITE_SETS = ("nominal", "adverse", "route_nominal", "route_adverse")


class SuiteConfig(_Strict):
    """The scenario suite: `nominal` (the targets are reported on it) and an optional
    `adverse` set (night, fog, rain), each families x conditions x seeds."""

    max_steps: int = Field(default=600, ge=1, le=1350,
                           description="cap on steps per episode (15 Hz; the sim's "
                                       "episodes end at 90 s = 1350 steps)")
    nominal: SetConfig | None = Field(
        default=SetConfig(seeds=list(range(1000, 1010))), description=(
            "the survival set; a suite file that names other sets and not this one runs "
            "only those"))
    adverse: SetConfig | None = None
    route_nominal: SetConfig | None = Field(default=None, description=(
        "route episodes (CARLA Leaderboard style): success = the route completed without "
        "a collision or leaving the road within its time budget"))
    route_adverse: SetConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _only_the_sets_named(cls, data: Any) -> Any:
        if isinstance(data, dict) and "nominal" not in data and any(
                data.get(k) is not None for k in SUITE_SETS if k != "nominal"):
            return {**data, "nominal": None}
        return data

    @model_validator(mode="after")
    def _survival_only_lengths(self) -> SuiteConfig:
        if not any(getattr(self, k) is not None for k in SUITE_SETS):
            raise ValueError(f"the suite needs at least one set of {', '.join(SUITE_SETS)}")
        for name in ("nominal", "adverse"):
            part = getattr(self, name)
            if part is not None and part.road_length is not None:
                raise ValueError(f"{name}.road_length: only route sets (route_nominal, "
                                 "route_adverse) take a road length")
        return self

    def suite(self, decision_every: int = DECISION_EVERY) -> Suite:
        """The planning-side `Suite` these settings describe."""
        sets = tuple(part.suite_set(name, route=name.startswith("route_"))
                     for name in SUITE_SETS if (part := getattr(self, name)) is not None)
        return Suite(sets=sets, max_steps=self.max_steps, decision_every=decision_every)


class EvalConfig(_Strict):
    """Launch file of `drivestack eval`: which planners, on which suite, with which
    policies, written where."""

    planner: PlannerChoice = Field(
        default="all", description="rl | rl-shield | rule | privileged | rule-privileged | all")
    policy: Path | None = Field(
        default=None, description=("RL policy zip; default: planning/weights/planner.zip "
                                   "(rl), planning/weights/planner_shield.zip (rl-shield)"))
    privileged_policy: Path | None = Field(
        default=None,
        description="privileged RL policy zip; default: planning/weights/planner_privileged.zip")
    device: PerceptionDevice = Field(
        default="auto", description=f"perception device: {PERCEPTION_DEVICES}")
    seed: int = Field(default=0, ge=0, le=MAX_SEED,
                      description="offset added to every scenario seed")
    episodes: int | None = Field(default=None, ge=1,
                                 description="run only the first N episodes of the suite")
    decision_every: int = Field(default=DECISION_EVERY, ge=1, description="env steps per decision")
    out: Path = Field(default=Path("runs/eval"), description="output folder")
    camera: CameraConfig = CameraConfig()
    suite: SuiteConfig = SuiteConfig()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The planner kinds to run (all of PLANNERS for "all")."""
        return PLANNERS if self.planner == "all" else (self.planner,)

    @model_validator(mode="after")
    def _policies_used(self) -> EvalConfig:
        """A policy no planner of the run drives with is a mistake, not a no-op."""
        if self.policy is not None and not {"rl", "rl-shield"} & set(self.kinds):
            raise ValueError(f"policy: planner {self.planner!r} drives without an RL policy; "
                             "it is for rl, rl-shield or all")
        if self.privileged_policy is not None and "privileged" not in self.kinds:
            raise ValueError(f"privileged_policy: planner {self.planner!r} does not use it; "
                             "it is for privileged or all")
        return self
