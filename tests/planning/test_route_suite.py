"""Route sets of the driving benchmark: each episode is a route with a time budget, and
success means the route was completed without a collision or leaving the road."""

from __future__ import annotations

import math

from planning.evaluate import (
    ROUTE_START_SLACK,
    ROUTE_TIME_FACTOR,
    Case,
    Suite,
    SuiteSet,
    build_planner,
    make_env,
    route_budget,
    run_suite,
    scenario_config,
    summarize,
)
from sim.actions import SLOWER


class Crawler:
    """Always slower: never finishes a route, never hits anything."""

    overridden = False

    def reset(self) -> None:
        pass

    def act(self, scene: object) -> int:
        return SLOWER


def test_route_success_needs_the_route_completed() -> None:
    sets = (SuiteSet("route_nominal", ("highway",), (("day", "clear"),), (3000,),
                     route=True, road_length=300.0),
            SuiteSet("nominal", ("highway",), (("day", "clear"),), (3000,)))
    suite = Suite(sets=sets, max_steps=90)
    planner, source = build_planner("rule-privileged")
    results = run_suite(planner, source, suite, name="rule-privileged")
    routes = [r for r in results if r.set == "route_nominal"]
    assert all(r.route and r.end == "route_complete" and r.success for r in routes), routes
    assert all(r.steps > 90 for r in routes), "a route's budget replaces the step cap"
    assert all(r.speed_limit > 0 and (r.min_ttc is None or r.min_ttc > 0) for r in routes)
    crawl = run_suite(Crawler(), source, suite, name="crawler")  # type: ignore[arg-type]
    by_set = {r.set: r for r in crawl}
    assert by_set["route_nominal"].end == "max_steps" and not by_set["route_nominal"].success
    assert by_set["nominal"].success, "surviving is success in a survival set"
    agg = summarize([r for r in crawl if r.set == "route_nominal"])
    assert agg["success_rate"] == 0.0 and agg["speed_ratio"] < 0.5


def test_route_budget_is_the_time_at_the_limit_with_margin() -> None:
    env = make_env(camera_frames=False)
    the_set = SuiteSet("r", ("urban",), (("day", "clear"),), (5,), route=True,
                       road_length=400.0)
    env.config = scenario_config(Case("r", "urban", "day", "clear", 5), the_set)
    steps = route_budget(env, 5)
    w = env.world
    assert w is not None and w.scenario.episode_seconds == 3600.0
    left = w.road.route_length - w.state.ego.s
    want = (left / w.scenario.speed_limit * ROUTE_TIME_FACTOR + ROUTE_START_SLACK) / env.dt
    assert steps == math.ceil(want)
    assert 300 < left <= 400
