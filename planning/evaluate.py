"""The driving benchmark: planners driven over a fixed scenario suite, with per-episode
metrics and aggregates in the CARLA Leaderboard style.

- A `Suite` is one or more sets (e.g. "nominal": day/clear; "adverse": night, fog, rain)
  of families x conditions x seeds, with a cap on steps per episode.
- `run_episode(planner, source, env, seed, max_steps)` drives one episode through
  `planning.rollout` (the planner asked every `DECISION_EVERY` steps) with the
  `DrivingStatistics` listener.
- `run_suite` drives every case of a suite with one planner; `summarize` aggregates.

Driving score (CARLA Leaderboard): route completion x infraction penalty, the penalty
being the product over infractions of a per-type coefficient (`PENALTIES`): collision
with a pedestrian or cyclist 0.50, with a vehicle (cars and trucks, stalled ones too)
0.60, with a static object (cones) 0.65, leaving the road 0.70. In a survival set an
episode succeeds when it ends by completing the route, by the sim's time limit or by the
suite's step cap, without a collision or leaving the road. In a route set (CARLA
Leaderboard style: `SuiteSet.route`) each episode is a route the ego can finish at the
speed limit within its time budget (`route_budget`), and it succeeds only when it
completes the route without a collision or leaving the road.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from planning.listeners import DrivingStatistics
from planning.policy import PolicyPlanner, load_policy
from planning.rollout import DECISION_EVERY, Listener, PlannerAgent, rollout
from planning.rule_based import Planner, RulePlanner
from planning.shield import SafetyShield
from planning.sources import PerceptionSource, PrivilegedSource, SceneSource
from sim.config import family_config
from sim.env import DrivingEnv
from sim.fanout import Fanout, ordered_map
from sim.types import CAR, CONE, CYCLIST, PEDESTRIAN, TRUCK, CameraSpec

PENALTIES: dict[str, float] = {"pedestrian": 0.50, "vehicle": 0.60, "static": 0.65,
                               "off_road": 0.70}
"""Driving-score coefficient of one infraction of each type (CARLA Leaderboard values for
pedestrians, vehicles and static objects; off-road takes the 0.70 of a red light)."""
COLLISION_GROUP: dict[int, str] = {CAR: "vehicle", TRUCK: "vehicle", PEDESTRIAN: "pedestrian",
                                   CYCLIST: "pedestrian", CONE: "static"}
"""Class id -> collision type of `PENALTIES`."""
PLANNERS: tuple[str, ...] = ("rl", "rl-shield", "rule", "privileged", "rule-privileged")
"""Planner kinds: the shipped RL policy (alone, and behind the `SafetyShield`) and the
rule-based planner with perception in the loop, the privileged RL policy and the
rule-based planner on the exact scene."""
PERCEPTION_KINDS = frozenset({"rl", "rl-shield", "rule"})
RL_KINDS = frozenset({"rl", "rl-shield", "privileged"})
WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_POLICY = WEIGHTS / "planner.zip"
"""The shipped RL policy (trained on the emulated perception source)."""
DEFAULT_SHIELD_POLICY = WEIGHTS / "planner_shield.zip"
"""The shipped RL policy trained behind the `SafetyShield` (emulated perception source),
the `rl-shield` kind's default."""
DEFAULT_PRIVILEGED_POLICY = WEIGHTS / "planner_privileged.zip"
"""The shipped privileged RL policy (trained on the exact scene)."""


def default_policy(kind: str, policy: Path | None = None,
                   privileged_policy: Path | None = None) -> Path:
    """The policy file an RL kind loads: the given one, else the shipped default."""
    if kind == "privileged":
        return privileged_policy or DEFAULT_PRIVILEGED_POLICY
    return policy or (DEFAULT_SHIELD_POLICY if kind == "rl-shield" else DEFAULT_POLICY)


ROUTE_TIME_FACTOR = 2.0
"""A route's time budget: this many times the time to drive it at the speed limit, ..."""
ROUTE_START_SLACK = 10.0
"""... plus this many seconds to get up to speed [s]."""


@dataclass(frozen=True)
class SuiteSet:
    """One named group of scenarios: families x conditions x seeds."""

    name: str
    families: tuple[str, ...]
    conditions: tuple[tuple[str, str], ...]
    """(time of day, weather) pairs."""
    seeds: tuple[int, ...]
    route: bool = False
    """Route episodes: success = the route completed without a collision or leaving the
    road, within the route's time budget (`route_budget`) instead of the suite's step
    cap."""
    road_length: float | None = None
    """Route sets: the route's length [m] (None: the family's)."""


@dataclass(frozen=True)
class Case:
    """One episode of a suite."""

    set: str
    family: str
    time_of_day: str
    weather: str
    seed: int


@dataclass(frozen=True)
class Suite:
    """Scenario sets and the cap on steps per episode (the sim's own episodes end after
    `episode_seconds`, 90 s = 1350 steps)."""

    sets: tuple[SuiteSet, ...]
    max_steps: int
    decision_every: int = DECISION_EVERY
    """Env steps per planner decision."""

    def cases(self, seed_offset: int = 0, limit: int | None = None) -> list[Case]:
        """Every case, sets in order, each seed shifted by `seed_offset`; the first
        `limit` only when given."""
        out = [Case(s.name, fam, tod, weather, seed + seed_offset)
               for s in self.sets for fam in s.families for tod, weather in s.conditions
               for seed in s.seeds]
        return out if limit is None else out[:limit]


@dataclass
class EpisodeResult:
    """What one episode did (SI units)."""

    planner: str
    set: str
    family: str
    time_of_day: str
    weather: str
    seed: int
    steps: int
    duration: float
    """Simulated time [s]."""
    distance: float
    """Arc length advanced along the route [m]."""
    route_completion: float
    """Fraction of the route driven, 0..1."""
    collisions_vehicle: int
    collisions_pedestrian: int
    """Collisions with pedestrians or cyclists."""
    collisions_static: int
    off_road: int
    mean_speed: float
    """[m/s]"""
    jerk: float
    """Mean |d accel / dt| of the ego [m/s^3]."""
    success: bool
    driving_score: float
    end: str
    """collision | off_road | route_complete | time_limit | max_steps | error"""
    wall_time: float
    """[s]"""
    error: str | None = None
    speed_limit: float = 0.0
    """The road's speed limit [m/s] (mean speed against it: `speed_ratio`)."""
    min_ttc: float | None = None
    """Smallest time-to-collision with an object ahead over the episode [s] (None: never
    closing on anything)."""
    shield_interventions: int = 0
    """Decisions a safety shield overrode (rl-shield)."""
    route: bool = False
    """A route episode: success needs the route completed (`route_complete`)."""

    @property
    def collisions(self) -> int:
        return self.collisions_vehicle + self.collisions_pedestrian + self.collisions_static


def driving_score(route_completion: float, infractions: Mapping[str, int]) -> float:
    """Route completion x the product of PENALTIES[type] ** count over infractions."""
    bad = sorted(set(infractions) - set(PENALTIES))
    if bad:
        raise ValueError(f"unknown infraction type(s) {bad}; allowed: {sorted(PENALTIES)}")
    penalty = math.prod(PENALTIES[k] ** int(n) for k, n in infractions.items())
    return float(route_completion) * penalty


def collision_types(track_ids: Iterable[int], actor_track_ids: np.ndarray,
                    actor_classes: np.ndarray) -> dict[str, int]:
    """Count of collided actors per collision type, from their track ids and the world's
    actor table (unknown ids count as vehicles)."""
    out = {"vehicle": 0, "pedestrian": 0, "static": 0}
    for tid in track_ids:
        k = np.flatnonzero(np.asarray(actor_track_ids) == tid)
        cls = int(np.asarray(actor_classes)[k[0]]) if k.size else CAR
        out[COLLISION_GROUP.get(cls, "vehicle")] += 1
    return out


def scenario_config(case: Case, suite_set: SuiteSet | None = None) -> Any:
    """The family's `ScenarioConfig` pinned to the case's time of day and weather; for a
    route set, with its road length and no time limit of the sim's own (the route's
    budget caps the episode)."""
    extra: dict[str, Any] = {}
    if suite_set is not None and suite_set.route:
        extra["episode_seconds"] = 3600.0
        if suite_set.road_length is not None:
            extra["road_length"] = suite_set.road_length
    return family_config(case.family, time_of_day={case.time_of_day: 1.0},
                         weather={case.weather: 1.0}, **extra)


def route_budget(env: DrivingEnv, seed: int) -> int:
    """Steps a route episode may take: the env reset on `seed`, the time to drive from
    the ego's start to the route's end at the speed limit, x ROUTE_TIME_FACTOR, plus
    ROUTE_START_SLACK."""
    env.reset(seed=seed, options={"scenario_seed": seed})
    assert env.world is not None
    w = env.world
    left = max(float(w.road.route_length) - float(w.state.ego.s), 0.0)
    seconds = left / float(w.scenario.speed_limit) * ROUTE_TIME_FACTOR + ROUTE_START_SLACK
    return int(math.ceil(seconds / env.dt))


def make_env(camera_frames: bool, camera: CameraSpec | None = None) -> DrivingEnv:
    """A meta-action env: camera observations when the source needs frames, else the
    state vector (no rendering)."""
    return DrivingEnv(obs_type="camera" if camera_frames else "state", action_type="meta",
                      camera=camera)


def make_perceiver(device: str = "auto", camera: CameraSpec | None = None
                   ) -> tuple[Any, str | None]:
    """The shipped perceiver on `device`, and a note when it runs without a lane model
    (no shipped lane weights: no lane changes or lane offsets from perception)."""
    from perception.lanes import DEFAULT_LANE_WEIGHTS
    from perception.perceiver import Perceiver  # torch loads only when asked for

    lanes = DEFAULT_LANE_WEIGHTS.is_file()
    perceiver = Perceiver(device=device, camera=camera, lanes=lanes)
    note = None if lanes else (f"perception ran without a lane model ({DEFAULT_LANE_WEIGHTS} "
                               "is missing): no lanes are seen")
    return perceiver, note


def build_planner(kind: str, *, policy: Path | None = None,
                  privileged_policy: Path | None = None, perceiver: Any = None,
                  model: Any = None) -> tuple[Planner, SceneSource]:
    """The planner and scene source of a kind in PLANNERS (`perceiver` is needed by the
    perception kinds; the RL kinds use `model` if given, else load their policy file,
    by default the shipped one)."""
    if kind not in PLANNERS:
        raise ValueError(f"unknown planner {kind!r}; allowed: {', '.join(PLANNERS)}")
    if kind in PERCEPTION_KINDS and perceiver is None:
        raise ValueError(f"planner {kind!r} needs a perceiver (perception in the loop)")
    source: SceneSource = (PerceptionSource(perceiver) if kind in PERCEPTION_KINDS
                           else PrivilegedSource())
    if kind in ("rule", "rule-privileged"):
        return RulePlanner(), source
    if model is None:
        model = load_policy(default_policy(kind, policy, privileged_policy))
    return PolicyPlanner(model, SafetyShield() if kind == "rl-shield" else None), source


def prepare_planners(kinds: Iterable[str], *, policy: Path | None = None,
                     privileged_policy: Path | None = None, device: str = "auto",
                     camera: CameraSpec | None = None
                     ) -> tuple[dict[str, tuple[Planner, SceneSource]], list[str]]:
    """{kind: (planner, source)} for `kinds` (policies load first, so that a bad file
    fails before the slow perceiver loads; the perception kinds share one perceiver)
    and notes on how perception runs."""
    kinds = list(dict.fromkeys(kinds))
    if bad := [k for k in kinds if k not in PLANNERS]:
        raise ValueError(f"unknown planner(s) {bad}; allowed: {', '.join(PLANNERS)}")
    models = {k: load_policy(default_policy(k, policy, privileged_policy))
              for k in kinds if k in RL_KINDS}
    perceiver, notes = None, []
    if PERCEPTION_KINDS & set(kinds):
        perceiver, note = make_perceiver(device, camera)
        notes += [f"perception on device {perceiver.device!r}", *([note] if note else [])]
    return {k: build_planner(k, perceiver=perceiver, model=models.get(k)) for k in kinds}, notes


def run_episode(planner: Planner, source: SceneSource, env: DrivingEnv, seed: int,
                max_steps: int, decision_every: int = DECISION_EVERY, *, name: str = "",
                case: Case | None = None, listeners: Sequence[Listener] = (),
                route: bool = False) -> EpisodeResult:
    """Drive one episode of the env's current scenario config, reset with `seed`, for at
    most `max_steps` steps (planning.rollout, with `DrivingStatistics` and `listeners`).
    An exception ends the episode with end="error". `route`: success needs the route
    completed."""
    stats = DrivingStatistics(name, case, seed, route=route)
    rollout(env, PlannerAgent(planner, source, decision_every), seed=seed,
            scenario_seed=seed, max_steps=max_steps, listeners=[stats, *listeners],
            catch_reset=False)
    result: EpisodeResult = stats.result
    return result


def run_suite(planner: Planner, source: SceneSource, suite: Suite, *, name: str = "",
              camera: CameraSpec | None = None, seed_offset: int = 0,
              limit: int | None = None,
              on_episode: Callable[[EpisodeResult], None] | None = None
              ) -> list[EpisodeResult]:
    """Every case of `suite` with one planner and its scene source."""
    env = make_env(source.needs_camera, camera)
    sets = {s.name: s for s in suite.sets}
    out = []
    try:
        for case in suite.cases(seed_offset, limit):
            the_set = sets[case.set]
            env.config = scenario_config(case, the_set)
            steps = route_budget(env, case.seed) if the_set.route else suite.max_steps
            result = run_episode(planner, source, env, case.seed, steps,
                                 suite.decision_every, name=name, case=case,
                                 route=the_set.route)
            out.append(result)
            if on_episode is not None:
                on_episode(result)
    finally:
        env.close()
    return out


def summarize(results: list[EpisodeResult]) -> dict[str, Any]:
    """Aggregates over episodes: rates, means and infractions per 100 km (None when no
    distance was driven)."""
    n = len(results)
    km = sum(max(r.distance, 0.0) for r in results) / 1000.0

    def mean(key: str) -> float:
        return float(np.mean([getattr(r, key) for r in results])) if n else 0.0

    def per_100km(count: int) -> float | None:
        return 100.0 * count / km if km > 0 else None

    return {
        "episodes": n,
        "success_rate": mean("success"),
        "route_completion": mean("route_completion"),
        "collisions_per_100km": per_100km(sum(r.collisions for r in results)),
        "offroad_per_100km": per_100km(sum(r.off_road for r in results)),
        "mean_speed": mean("mean_speed"),
        "speed_ratio": (float(np.mean([r.mean_speed / r.speed_limit for r in results
                                       if r.speed_limit > 0])) if n else 0.0),
        "min_ttc": (min([r.min_ttc for r in results if r.min_ttc is not None], default=None)),
        "shield_interventions_per_km": (sum(r.shield_interventions for r in results) / km
                                        if km > 0 else None),
        "jerk": mean("jerk"),
        "driving_score": mean("driving_score"),
        "distance_km": km,
        "collisions": {"vehicle": sum(r.collisions_vehicle for r in results),
                       "pedestrian": sum(r.collisions_pedestrian for r in results),
                       "static": sum(r.collisions_static for r in results)},
        "off_road": sum(r.off_road for r in results),
        "errors": sum(r.error is not None for r in results),
    }


def evaluate(planners: Mapping[str, tuple[Planner, SceneSource]], suite: Suite, *,
             camera: CameraSpec | None = None, seed_offset: int = 0,
             limit: int | None = None, notes: list[str] | None = None,
             on_episode: Callable[[EpisodeResult], None] | None = None) -> dict[str, Any]:
    """Run the suite with every planner (see `prepare_planners`); the `report`."""
    results: list[EpisodeResult] = []
    for name, (planner, source) in planners.items():
        results += run_suite(planner, source, suite, name=name, camera=camera,
                             seed_offset=seed_offset, limit=limit, on_episode=on_episode)
    return report(results, suite, seed_offset, notes)


@dataclass(frozen=True)
class PlannerSpec:
    """What a worker needs to build the planners of `prepare_planners` itself (planners
    hold models and sessions that do not travel between processes)."""

    kinds: tuple[str, ...]
    policy: Path | None = None
    privileged_policy: Path | None = None
    device: str = "auto"
    camera: CameraSpec | None = None


def evaluate_fanout(spec: PlannerSpec, suite: Suite, fanout: Fanout, *,
                    seed_offset: int = 0, limit: int | None = None,
                    notes: list[str] | None = None,
                    on_episode: Callable[[EpisodeResult], None] | None = None
                    ) -> dict[str, Any]:
    """`evaluate` with the episodes fanned out (`sim.fanout`: local processes or Ray
    tasks), each worker building the planners of `spec` once. The episodes come back in
    the serial order, each from its own seed with a reset planner: the same report as
    `evaluate` (wall times aside)."""
    sets = {s.name: s for s in suite.sets}
    jobs = [(kind, case, sets[case.set], suite.max_steps, suite.decision_every)
            for kind in dict.fromkeys(spec.kinds) for case in suite.cases(seed_offset, limit)]
    results = []
    for result in ordered_map(_EvalWorker, spec, _eval_job, jobs, fanout,
                              close=_EvalWorker.close):
        results.append(result)
        if on_episode is not None:
            on_episode(result)
    return report(results, suite, seed_offset, notes)


class _EvalWorker:
    """A worker's planners (built from a `PlannerSpec`) and one env per observation kind."""

    def __init__(self, spec: PlannerSpec) -> None:
        self.spec = spec
        self.planners, _ = prepare_planners(spec.kinds, policy=spec.policy,
                                            privileged_policy=spec.privileged_policy,
                                            device=spec.device, camera=spec.camera)
        self.envs: dict[bool, DrivingEnv] = {}

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def _eval_job(worker: _EvalWorker, job: tuple[str, Case, SuiteSet, int, int]) -> EpisodeResult:
    kind, case, the_set, max_steps, decision_every = job
    planner, source = worker.planners[kind]
    if source.needs_camera not in worker.envs:
        worker.envs[source.needs_camera] = make_env(source.needs_camera, worker.spec.camera)
    env = worker.envs[source.needs_camera]
    env.config = scenario_config(case, the_set)
    steps = route_budget(env, case.seed) if the_set.route else max_steps
    return run_episode(planner, source, env, case.seed, steps, decision_every, name=kind,
                       case=case, route=the_set.route)


HEADLINE = ("success_rate", "route_completion", "collisions_per_100km", "offroad_per_100km",
            "driving_score")
"""The aggregates of the `drivestack eval` contract."""


def report(results: list[EpisodeResult], suite: Suite, seed_offset: int = 0,
           notes: list[str] | None = None) -> dict[str, Any]:
    """The evaluation document: per planner and set (and "all" sets) aggregates, the
    episodes, the suite and notes (e.g. how perception ran)."""
    planners: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r.planner for r in results):
        mine = [r for r in results if r.planner == name]
        sets = {s.name: summarize([r for r in mine if r.set == s.name]) for s in suite.sets
                if any(r.set == s.name for r in mine)}
        planners[name] = {**sets, "all": summarize(mine)}
    plain_suite = json.loads(json.dumps(asdict(suite)))  # tuples -> lists, as in eval.json
    return {"suite": plain_suite, "seed_offset": seed_offset, "planners": planners,
            "episodes": [asdict(r) for r in results], "notes": list(notes or [])}


def headline(document: dict[str, Any], set_name: str = "nominal") -> dict[str, Any]:
    """The `drivestack eval` JSON line: the HEADLINE aggregates on `set_name` (or on all
    sets when the suite has no such set) for one planner, or under `planners` for
    several."""
    def pick(agg: dict[str, Any]) -> dict[str, Any]:
        chosen = agg.get(set_name, agg["all"])
        return {"set": set_name if set_name in agg else "all",
                **{k: chosen[k] for k in HEADLINE}}

    planners = document["planners"]
    if len(planners) == 1:
        [(name, agg)] = planners.items()
        return {"planner": name, **pick(agg)}
    return {"planners": {name: pick(agg) for name, agg in planners.items()}}
