"""planning.rollout: one rollout for run, eval, the recorder and replay. The metrics of
`drivestack run` and `drivestack eval` are pinned against the two loops it replaced
(tests/planning/_legacy_loops.py, the code of commit 40d36d8) on the same seeds."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401
from launch.runner import make_driver, run_episode
from planning.evaluate import Case, build_planner, make_env, scenario_config
from planning.evaluate import run_episode as eval_episode
from planning.rollout import (
    DECISION_EVERY,
    ActionReplay,
    AutopilotAgent,
    Collect,
    Listener,
    PlannerAgent,
    Step,
    rollout,
)
from planning.wrappers import DecisionEvery
from sim.actions import IDLE
from tests.planning._legacy_loops import (
    LegacyAutopilotDriver,
    LegacyPlannerDriver,
    legacy_eval_episode,
    legacy_run_episode,
)


@pytest.fixture(scope="module")
def perceiver() -> Any:
    from perception.perceiver import Perceiver

    return Perceiver(device="cpu")


NEW_FIELDS = ("speed_limit", "min_ttc", "shield_interventions", "route")
"""EpisodeResult fields added after the old loop (issue 15): not in its results."""


def _same(a: Any, b: Any) -> None:
    da, db = asdict(a), asdict(b)
    da.pop("wall_time"), db.pop("wall_time")
    if hasattr(a, "speed_limit") and hasattr(b, "speed_limit") and a.speed_limit == 0.0:
        for k in NEW_FIELDS:  # the old loop leaves them at their defaults
            da.pop(k), db.pop(k)
    assert da == db


def _run_env(action_type: str) -> gym.Env:
    return gym.make("drivestack/Highway-v0", obs_type="camera", action_type=action_type,
                    render_mode="rgb_array")


@pytest.mark.parametrize("seed", [0, 5])
def test_run_metrics_match_the_old_loop_autopilot(seed: int) -> None:
    env = _run_env("continuous")
    old = legacy_run_episode(env, LegacyAutopilotDriver(), episode=0, seed=seed, max_steps=80)
    new = run_episode(env, make_driver("autopilot"), episode=0, seed=seed, max_steps=80)
    _same(old, new)
    assert new.steps == 80 and new.distance > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_run_metrics_and_video_match_the_old_loop_rl_privileged(seed: int) -> None:
    env = _run_env("meta")
    planner, source = build_planner("privileged")
    old_frames: list[np.ndarray] = []
    new_frames: list[np.ndarray] = []
    old = legacy_run_episode(env, LegacyPlannerDriver(planner, source), episode=3, seed=seed,
                             max_steps=60, on_frame=old_frames.append)
    new = run_episode(env, make_driver("privileged"), episode=3, seed=seed, max_steps=60,
                      on_frame=new_frames.append)
    _same(old, new)
    assert len(old_frames) == len(new_frames) == 61
    assert all(np.array_equal(a, b) for a, b in zip(old_frames, new_frames, strict=True))


def test_run_with_perception_matches_the_old_loop(perceiver: Any) -> None:
    """The rule planner on perception, with perception drawn in the video: the rollout
    reuses the decision frames' perception; frames and metrics are unchanged."""
    env = _run_env("meta")
    planner, source = build_planner("rule", perceiver=perceiver)
    old_frames: list[np.ndarray] = []
    new_frames: list[np.ndarray] = []
    old = legacy_run_episode(env, LegacyPlannerDriver(planner, source), episode=0, seed=4,
                             max_steps=12, on_frame=old_frames.append, perceiver=perceiver)
    new = run_episode(env, make_driver("rule", perceiver), episode=0, seed=4, max_steps=12,
                      on_frame=new_frames.append, perceiver=perceiver)
    _same(old, new)
    assert all(np.array_equal(a, b) for a, b in zip(old_frames, new_frames, strict=True))


CASES = [Case("nominal", "highway", "day", "clear", 11), Case("adverse", "urban", "night",
                                                               "fog", 12),
         Case("nominal", "rural", "day", "clear", 13)]


@pytest.mark.parametrize("kind", ["rule-privileged", "privileged"])
def test_eval_metrics_match_the_old_loop(kind: str) -> None:
    env = make_env(False)
    planner, source = build_planner(kind)
    for case in CASES:
        env.config = scenario_config(case)
        old = legacy_eval_episode(planner, source, env, case.seed, 240, name=kind, case=case)
        new = eval_episode(planner, source, env, case.seed, 240, name=kind, case=case)
        _same(old, new)


def test_eval_metrics_match_on_an_episode_that_crashes() -> None:
    """An always-faster planner collides; end reason and infractions agree."""
    from planning.rule_based import RulePlanner
    from planning.sources import PrivilegedSource
    from sim.actions import FASTER

    class Faster(RulePlanner):
        def act(self, scene: Any) -> int:
            return FASTER

    env = make_env(False)
    ends = set()
    for seed in (3, 8):
        old = legacy_eval_episode(Faster(), PrivilegedSource(), env, seed, 400)
        new = eval_episode(Faster(), PrivilegedSource(), env, seed, 400)
        _same(old, new)
        ends.add(new.end)
    assert ends & {"collision", "off_road"}, "the test needs a crash to pin"


def test_cadence_is_defined_once() -> None:
    """Run, eval, training and their launch files all take DECISION_EVERY, and no other
    module spells the number out as a default."""
    import inspect
    import re
    from pathlib import Path

    from launch.config import TrainPlannerConfig
    from launch.eval_suite import EvalConfig
    from planning.train import PlannerTraining
    from planning.wrappers import make_planner_env

    assert PlannerAgent(None, None).decision_every == DECISION_EVERY
    assert inspect.signature(eval_episode).parameters["decision_every"].default \
        == DECISION_EVERY
    assert inspect.signature(make_planner_env).parameters["decision_every"].default \
        == DECISION_EVERY
    assert PlannerTraining.__dataclass_fields__["decision_every"].default == DECISION_EVERY
    assert EvalConfig.model_fields["decision_every"].default == DECISION_EVERY
    assert TrainPlannerConfig.model_fields["decision_every"].default == DECISION_EVERY
    root = Path(__file__).resolve().parents[2]
    literal = re.compile(r"decision_every\s*:\s*int\s*=\s*\d|decision_every=\d|"
                         r"decision_every\s*:\s*int\s*=\s*Field\(default=\d")
    spelled = [str(p) for pkg in ("sim", "perception", "planning", "data_engine", "launch")
               for p in (root / pkg).rglob("*.py") if literal.search(p.read_text())]
    assert spelled == []
    assert DecisionEvery(make_env(False), DECISION_EVERY).k == DECISION_EVERY


class _Count:
    """A planner that counts decisions and always keeps lane."""

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def act(self, scene: Any) -> int:
        self.calls += 1
        return IDLE


def test_listener_sees_every_moment_with_action_and_truth() -> None:
    from planning.sources import PrivilegedSource

    env = make_env(True)
    env.config = scenario_config(CASES[0])
    planner = _Count()
    seen = Collect(frames=True)
    end = rollout(env, PlannerAgent(planner, PrivilegedSource()), seed=1, scenario_seed=1,
                  max_steps=10, listeners=[seen])
    steps = seen.steps
    assert [s.index for s in steps] == list(range(11)) and end.steps == 10
    assert [s.decided for s in steps] == [i % DECISION_EVERY == 0 for i in range(10)] + [False]
    assert planner.calls == 4
    assert steps[-1].action is None and all(s.action == IDLE for s in steps[:-1])
    assert all(s.ground_truth is not None for s in steps)
    assert len(seen.images) == 11 and seen.images[0].shape == (192, 320, 3)
    assert steps[0].reward == 0.0 and "collision" in steps[3].events
    assert steps[-1].state().step == 10
    assert end.end == "max_steps" and seen.end is end


def _autopilot_env() -> Any:
    from sim.env import DrivingEnv

    return DrivingEnv(obs_type="camera", action_type="continuous")


def test_perceive_every_frame_runs_perception_where_the_agent_did_not(perceiver: Any) -> None:
    env = _autopilot_env()
    calls: list[int] = []

    def counting(frames: list[np.ndarray]) -> list[Any]:
        calls.append(len(frames))
        return perceiver(frames)

    seen = Collect()
    end = rollout(env, AutopilotAgent(), seed=2, max_steps=4, listeners=[seen],
                  perceiver=counting, perceive_every_frame=True)
    assert end.end == "max_steps", end.error
    assert len(calls) == 5 and all(s.perception is not None for s in seen.steps)
    seen2 = Collect()
    rollout(env, AutopilotAgent(), seed=2, max_steps=4, listeners=[seen2], perceiver=counting)
    assert len(calls) == 5 and all(s.perception is None for s in seen2.steps)


def test_action_replay_reproduces_a_rollout_from_a_saved_state() -> None:
    env = _autopilot_env()
    first = Collect(frames=True)
    rollout(env, AutopilotAgent(), seed=6, max_steps=20, listeners=[first])
    actions = [s.action for s in first.steps[5:-1]]
    start = first.steps[5]
    # the state at index 5 is gone (the env moved on): take it from a rerun up to there

    class Keep(Listener):
        def on_step(self, step: Step) -> None:
            if step.index == 5:
                self.state = step.state()

    keep = Keep()
    rollout(env, AutopilotAgent(), seed=6, max_steps=5, listeners=[keep])
    replay = Collect(frames=True)
    rollout(_autopilot_env(), ActionReplay(actions), state=keep.state, listeners=[replay],
            max_steps=len(actions))
    assert start.index == 5 and len(replay.images) == len(actions) + 1
    assert all(np.array_equal(a, b) for a, b in zip(first.images[5:], replay.images,
                                                     strict=True))


def test_an_error_in_a_listener_ends_the_episode_as_an_error() -> None:
    class Broken(Listener):
        def on_step(self, step: Step) -> None:
            if step.index == 2:
                raise RuntimeError("listener broke")

    end = rollout(_autopilot_env(), AutopilotAgent(), seed=0, max_steps=10,
                  listeners=[Broken()])
    assert end.end == "error" and end.error == "RuntimeError: listener broke (at step 3)"
