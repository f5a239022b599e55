"""SafetyShield on hand-made scenes (what it lets through, what it replaces and with what),
ShieldedActions in the env, and the rl-shield planner kind."""

from __future__ import annotations

import numpy as np
import pytest

from planning.evaluate import build_planner
from planning.policy import PolicyPlanner
from planning.rule_based import RuleParams
from planning.shield import SafetyShield
from planning.wrappers import ShieldedActions, make_planner_env
from sim.actions import FASTER, IDLE, LANE_LEFT, LANE_RIGHT, SLOWER
from sim.types import CAR
from tests.planning.test_rule_based import NO_WARMUP, SLOW_AHEAD, scene


def test_free_road_lets_the_policy_choose() -> None:
    for action in (IDLE, FASTER, SLOWER):
        shield = SafetyShield(NO_WARMUP)
        assert shield.filter(scene(speed=20.0), action) == action
        assert shield.vetoed == 0
    assert SafetyShield(NO_WARMUP).filter(scene(), LANE_LEFT) == LANE_LEFT
    assert SafetyShield(NO_WARMUP).filter(scene(), LANE_RIGHT) == LANE_RIGHT


def test_lane_change_into_an_occupied_or_missing_lane_is_replaced() -> None:
    beside = scene([(2.0, 3.5, CAR, 25.0)])
    shield = SafetyShield(NO_WARMUP)
    assert shield.filter(beside, LANE_LEFT) not in (LANE_LEFT, LANE_RIGHT)
    assert shield.vetoed == 1
    assert SafetyShield(NO_WARMUP).filter(scene(left=False), LANE_LEFT) == IDLE


def test_lane_change_waits_for_the_warm_up() -> None:
    """Right after reset, what is beside the ego was never seen."""
    assert SafetyShield().filter(scene(), LANE_LEFT) == IDLE
    assert SafetyShield(RuleParams(warmup=0.0)).filter(scene(), LANE_LEFT) == LANE_LEFT


def test_no_speeding_up_into_a_slow_car_and_braking_forced() -> None:
    blocked = scene([SLOW_AHEAD], left=False, right=False)
    assert SafetyShield(NO_WARMUP).filter(blocked, FASTER) == SLOWER
    assert SafetyShield(NO_WARMUP).filter(blocked, IDLE) == SLOWER
    far = scene([(60.0, 0.0, CAR, 25.0)], speed=25.0, left=False, right=False)
    shield = SafetyShield(NO_WARMUP)
    assert [shield.filter(far, FASTER) for _ in range(3)][-1] == IDLE, (
        "FASTER stops at the safe speed behind a car at the same speed")


def test_bad_action_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        SafetyShield().filter(scene(), 7)
    with pytest.raises(ValueError, match="out of range"):
        SafetyShield().advise(scene(), -1)
    with pytest.raises(ValueError, match="allowed: false, true, advise"):
        make_planner_env(source="privileged", shield="maybe")  # type: ignore[arg-type]
    from planning.batch_vec import BatchPlannerVecEnv

    with pytest.raises(ValueError, match="allowed: false, true, advise"):
        BatchPlannerVecEnv(2, source="privileged", shield="on")


def test_the_adviser_judges_and_follows_the_policy() -> None:
    """`advise` gives the verdict `filter` would and lets the proposed action run: its
    copy of the controller follows what runs, so its verdicts judge the car as driven."""
    blocked = scene([SLOW_AHEAD], left=False, right=False)
    adviser = SafetyShield(NO_WARMUP)
    assert adviser.advise(blocked, FASTER) == SLOWER and adviser.vetoed == 1
    far = scene([(60.0, 0.0, CAR, 25.0)], speed=25.0, left=False, right=False)
    shield, adviser = SafetyShield(NO_WARMUP), SafetyShield(NO_WARMUP)
    filtered = [shield.filter(far, FASTER) for _ in range(4)]
    advised = [adviser.advise(far, FASTER) for _ in range(4)]
    assert filtered[-1] == IDLE and advised[:2] == filtered[:2] and advised[-1] == SLOWER
    assert shield.mem.target_speed is not None and adviser.mem.target_speed is not None
    assert adviser.mem.target_speed > shield.mem.target_speed  # it pressed FASTER 4 times
    # a lane change it advises against still runs: its copy of the controller changes lane
    beside = scene([(2.0, 3.5, CAR, 25.0)])
    adviser = SafetyShield(NO_WARMUP)
    assert adviser.advise(beside, LANE_LEFT) != LANE_LEFT
    assert adviser.mem.target_lane == adviser.mem.lane + 1


def test_random_policy_crashes_less_behind_the_shield() -> None:
    """The same random action sequence, 6 episodes on the exact scene, with and without."""
    crashes: dict[bool | str, int] = {}
    for shield in (False, True, "advise"):
        rng, n = np.random.default_rng(0), 0
        for ep in range(6):
            env = make_planner_env(source="privileged", family=("highway", "rural",
                                                                "urban")[ep % 3], shield=shield)
            env.reset(seed=7000 + ep)
            for _ in range(150):
                a = int(rng.choice(5, p=[0.1, 0.3, 0.1, 0.4, 0.1]))
                _, _, term, trunc, info = env.step(a)
                if shield is True:
                    assert info["shield_vetoed"] == (info["executed_action"] != a)
                elif shield == "advise":  # judged, not replaced: it drives as without
                    assert info["executed_action"] == a
                if term or trunc:
                    n += bool(info["events"]["collision"] or info["events"]["off_road"])
                    break
            env.close()
        crashes[shield] = n
    assert crashes[False] >= 4, crashes
    assert crashes[True] <= 1, crashes
    assert crashes["advise"] == crashes[False], crashes


def test_shielded_env_checks() -> None:
    env = make_planner_env(source="privileged", shield=True)
    assert isinstance(env, ShieldedActions)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(IDLE)
    env.reset(seed=1)
    assert env.scene is not None
    env.close()
    with pytest.raises(ValueError, match="meta actions"):
        make_planner_env(source="privileged", action_type="continuous", shield=True)


class _Always:
    """A stand-in SB3 model that always proposes one action."""

    def __init__(self, action: int) -> None:
        self.action = action

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[int, None]:
        return self.action, None


def test_rl_shield_kind_filters_the_policy() -> None:
    planner, _ = build_planner("rl-shield", model=_Always(FASTER), perceiver=object())
    assert isinstance(planner, PolicyPlanner) and planner.shield is not None
    planner.reset()
    blocked = scene([SLOW_AHEAD], left=False, right=False)
    assert planner.act(blocked) == SLOWER
    bare, _ = build_planner("rl", model=_Always(FASTER), perceiver=object())
    assert bare.act(blocked) == FASTER


def test_rl_shield_defaults_to_its_own_shipped_policy() -> None:
    from planning.evaluate import (
        DEFAULT_POLICY,
        DEFAULT_SHIELD_POLICY,
        default_policy,
        prepare_planners,
    )

    assert default_policy("rl-shield") == DEFAULT_SHIELD_POLICY
    assert default_policy("rl") == DEFAULT_POLICY
    assert default_policy("rl-shield", policy=DEFAULT_POLICY) == DEFAULT_POLICY
    planners, _ = prepare_planners(["rl-shield"], device="cpu")
    planner, _ = planners["rl-shield"]
    assert isinstance(planner, PolicyPlanner) and planner.shield is not None
