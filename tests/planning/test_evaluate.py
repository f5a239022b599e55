"""The driving benchmark: driving-score arithmetic, collision classes, aggregates, one
episode's metrics, the report files on a two-episode suite, and one short episode with
perception in the loop (rule-based and RL planners)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from planning.eval_report import write_report
from planning.evaluate import (
    HEADLINE,
    PENALTIES,
    Case,
    EpisodeResult,
    Suite,
    SuiteSet,
    collision_types,
    driving_score,
    evaluate,
    headline,
    make_env,
    prepare_planners,
    report,
    run_episode,
    scenario_config,
    summarize,
)
from planning.sources import PrivilegedSource
from sim.actions import FASTER
from sim.outputs import MARKER, read_marker
from sim.types import CAR, CONE, CYCLIST, PEDESTRIAN, TRUCK

TWO = Suite((SuiteSet("nominal", ("highway",), (("day", "clear"),), (1000, 1001)),),
            max_steps=60)


def test_driving_score_is_route_completion_times_penalties() -> None:
    assert driving_score(0.8, {}) == pytest.approx(0.8)
    assert driving_score(0.8, {"vehicle": 1}) == pytest.approx(0.8 * 0.60)
    assert driving_score(1.0, {"pedestrian": 1, "off_road": 1}) == pytest.approx(0.50 * 0.70)
    assert driving_score(0.5, {"vehicle": 2, "static": 1, "pedestrian": 0}) == pytest.approx(
        0.5 * 0.60 ** 2 * 0.65)
    assert PENALTIES == {"pedestrian": 0.50, "vehicle": 0.60, "static": 0.65, "off_road": 0.70}
    with pytest.raises(ValueError, match="red_light"):
        driving_score(1.0, {"red_light": 1})


def test_collision_types_from_track_ids_and_classes() -> None:
    ids = np.array([5, 7, 9, 11, 13])
    classes = np.array([CAR, TRUCK, PEDESTRIAN, CYCLIST, CONE])
    assert collision_types([5, 7, 9, 11, 13], ids, classes) == {
        "vehicle": 2, "pedestrian": 2, "static": 1}
    assert collision_types([13, 404], ids, classes) == {
        "vehicle": 1, "pedestrian": 0, "static": 1}, "an unknown id counts as a vehicle"
    assert collision_types([], ids, classes) == {"vehicle": 0, "pedestrian": 0, "static": 0}


def _result(distance: float, success: bool = True, vehicle: int = 0, off_road: int = 0,
            score: float = 1.0, planner: str = "rule") -> EpisodeResult:
    return EpisodeResult(planner=planner, set="nominal", family="highway", time_of_day="day",
                         weather="clear", seed=0, steps=10, duration=1.0, distance=distance,
                         route_completion=0.5, collisions_vehicle=vehicle,
                         collisions_pedestrian=0, collisions_static=0, off_road=off_road,
                         mean_speed=10.0, jerk=1.0, success=success, driving_score=score,
                         end="max_steps", wall_time=0.0)


def test_summarize_rates_and_per_100km() -> None:
    agg = summarize([_result(400.0), _result(600.0, False, vehicle=1, off_road=1, score=0.42)])
    assert agg["success_rate"] == 0.5 and agg["episodes"] == 2
    assert agg["collisions_per_100km"] == pytest.approx(100.0)  # 1 in 1 km
    assert agg["offroad_per_100km"] == pytest.approx(100.0)
    assert agg["driving_score"] == pytest.approx(0.71)
    assert agg["collisions"] == {"vehicle": 1, "pedestrian": 0, "static": 0}
    assert summarize([_result(0.0)])["collisions_per_100km"] is None


def test_headline_keys_for_one_and_several_planners() -> None:
    one = report([_result(500.0)], TWO)
    assert headline(one) == {"planner": "rule", "set": "nominal",
                             **{k: one["planners"]["rule"]["nominal"][k] for k in HEADLINE}}
    two = headline(report([_result(500.0), _result(500.0, planner="rl")], TWO))
    assert set(two) == {"planners"} and set(two["planners"]) == {"rule", "rl"}
    assert set(two["planners"]["rl"]) == {"set", *HEADLINE}


def test_suite_cases_offset_and_limit() -> None:
    suite = Suite((SuiteSet("nominal", ("highway", "urban"), (("day", "clear"),), (1, 2)),
                   SuiteSet("adverse", ("rural",), (("night", "fog"),), (7,))), 30)
    cases = suite.cases(seed_offset=100)
    assert [(c.set, c.family, c.seed) for c in cases] == [
        ("nominal", "highway", 101), ("nominal", "highway", 102), ("nominal", "urban", 101),
        ("nominal", "urban", 102), ("adverse", "rural", 107)]
    assert cases[-1].time_of_day == "night" and cases[-1].weather == "fog"
    assert len(suite.cases(limit=2)) == 2


class _Always:
    def __init__(self, action: int) -> None:
        self.action = action

    def reset(self) -> None:
        pass

    def act(self, scene: object) -> int:
        return self.action


@pytest.mark.parametrize(("family", "seed", "kind"), [("highway", 3, "vehicle"),
                                                      ("rural", 5, "pedestrian")])
def test_a_collision_ends_the_episode_and_counts_by_class(family: str, seed: int,
                                                          kind: str) -> None:
    """Always FASTER runs into something: a car on highway seed 3, a cyclist or a
    pedestrian on rural seed 5 (the sim is deterministic)."""
    env = make_env(camera_frames=False)
    env.config = scenario_config(Case("nominal", family, "day", "clear", seed))
    r = run_episode(_Always(FASTER), PrivilegedSource(), env, seed, 300)
    assert r.end == "collision" and not r.success and r.steps < 300
    assert getattr(r, f"collisions_{kind}") == r.collisions == 1
    assert r.driving_score == pytest.approx(r.route_completion * PENALTIES[kind])
    assert r.distance == pytest.approx(r.route_completion * env.world.road.route_length)


def test_report_files_on_a_two_episode_suite(tmp_path: Path) -> None:
    planners, notes = prepare_planners(["rule-privileged"])
    assert notes == []
    doc = evaluate(planners, TWO)
    (ep0, ep1) = doc["episodes"]
    assert [ep0["seed"], ep1["seed"]] == [1000, 1001]
    assert ep0["steps"] == 60 and ep0["end"] == "max_steps" and ep0["success"]
    assert 25.0 < ep0["distance"] < 60 * 40.0 / 15 and ep0["mean_speed"] > 10.0
    files = write_report(doc, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [MARKER, *(p.name for p in files)]), "no temp files left"
    assert read_marker(tmp_path)["complete"] is True
    with open(tmp_path / "episodes.csv", newline="") as f:
        assert [r["seed"] for r in csv.DictReader(f)] == ["1000", "1001"]
    with open(tmp_path / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["planner"] == "rule-privileged" and float(row["success_rate"]) == 1.0
    md = (tmp_path / "summary.md").read_text()
    assert "| rule-privileged | exact scene | nominal | 2 | 100% |" in md
    assert json.loads((tmp_path / "eval.json").read_text()) == doc
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PPO planner trained for 64 steps on the privileged planner env."""
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from planning.wrappers import make_planner_env

    model = PPO("MlpPolicy", make_planner_env(source="privileged", seed=0), n_steps=32,
                batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=64)
    path = tmp_path_factory.mktemp("policy") / "tiny.zip"
    model.save(str(path))
    return path


def test_perception_in_the_loop_rule_and_rl(tiny_policy: Path) -> None:
    pytest.importorskip("ultralytics")
    suite = Suite((SuiteSet("nominal", ("highway",), (("day", "clear"),), (1000,)),), 30)
    planners, notes = prepare_planners(["rule", "rl"], policy=tiny_policy, device="cpu")
    assert any("perception on device 'cpu'" in n for n in notes)
    assert planners["rule"][1] is not planners["rl"][1]
    assert planners["rule"][1].perceiver is planners["rl"][1].perceiver  # type: ignore[attr-defined]
    doc = evaluate(planners, suite, notes=notes)
    for ep in doc["episodes"]:
        assert ep["steps"] == 30 and ep["error"] is None and ep["distance"] > 0
    assert [ep["planner"] for ep in doc["episodes"]] == ["rule", "rl"]
    assert planners["rule"][1].last_perception is not None  # type: ignore[attr-defined]
