"""The reward terms that read the traffic around the ego: the time gap (`headway`) and the
lateral clearance to what is beside it (`side`)."""

from __future__ import annotations

import math

import pytest

from sim.env import DrivingEnv
from sim.rewards import HEADWAY_TARGET, SIDE_TARGET, RewardWeights, reward_terms
from sim.types import Events
from sim.world.world import SIDE_REACH, min_headway, min_side_gap


def _one_actor_ahead(gap: float, lateral: float = 0.0, speed: float = 20.0) -> DrivingEnv:
    """An env whose only active actor is `gap` m ahead of the ego's front, `lateral` m to
    its left; the ego drives at `speed`."""
    env = DrivingEnv(obs_type="state", action_type="meta")
    env.reset(seed=4)
    assert env.world is not None
    a, ego = env.world.state.actors, env.world.state.ego
    a.active[:] = False
    a.active[0] = True
    a.s[0] = ego.s + 0.5 * (a.length[0] + ego.length) + gap
    a.d[0] = ego.d + lateral
    ego.speed = speed
    return env


def test_min_headway_is_the_time_gap_to_what_is_ahead_in_the_path() -> None:
    env = _one_actor_ahead(10.0)
    assert env.world is not None
    w = env.world
    assert min_headway(w.state.actors, w.state.ego) == pytest.approx(0.5)
    terms = reward_terms(w, Events(), 0.0)
    assert terms["headway"] == pytest.approx(1.0 - 0.5 / HEADWAY_TARGET)
    # far enough: no penalty; beside (next lane) or behind: none either
    for env in (_one_actor_ahead(30.0), _one_actor_ahead(10.0, lateral=3.5),
                _one_actor_ahead(-12.0)):
        assert env.world is not None
        assert reward_terms(env.world, Events(), 0.0)["headway"] == 0.0
    behind = _one_actor_ahead(-12.0)
    assert behind.world is not None
    assert math.isinf(min_headway(behind.world.state.actors, behind.world.state.ego))
    # standing in a queue: the speed counts as 1 m/s, so 2 m is a 2 s gap
    queue = _one_actor_ahead(2.0, speed=0.0)
    assert queue.world is not None
    assert min_headway(queue.world.state.actors, queue.world.state.ego) == pytest.approx(2.0)


def test_headway_is_off_by_default_and_weighed_when_asked() -> None:
    assert RewardWeights().headway == 0.0
    env = DrivingEnv(obs_type="state", action_type="meta", reward_weights={"headway": -2.0})
    env.reset(seed=4)
    _, reward, _, _, info = env.step(1)
    w = RewardWeights(headway=-2.0)
    assert reward == pytest.approx(sum(getattr(w, k) * v for k, v in info["rewards"].items()))


def test_min_side_gap_is_the_lateral_clearance_to_what_is_beside() -> None:
    # level with the ego, 0.6 m clear of it on its left: no penalty (SIDE_TARGET 0.5 m)
    env = _one_actor_ahead(0.0)
    assert env.world is not None
    a, ego = env.world.state.actors, env.world.state.ego
    a.s[0] = ego.s
    half = 0.5 * (a.width[0] + ego.width)
    a.d[0] = ego.d + half + 0.6
    assert min_side_gap(a, ego) == pytest.approx(0.6)
    assert reward_terms(env.world, Events(), 0.0)["side"] == 0.0
    a.d[0] = ego.d - (half + 0.2)  # on the right, 0.2 m clear
    assert reward_terms(env.world, Events(), 0.0)["side"] == pytest.approx(1 - 0.2 / SIDE_TARGET)
    a.d[0] = ego.d + half - 0.3  # overlapping: capped at 1
    assert reward_terms(env.world, Events(), 0.0)["side"] == 1.0
    # ahead or behind, out of reach along the road: not beside
    for ds in (0.5 * (a.length[0] + ego.length) + SIDE_REACH + 0.1,
               -0.5 * (a.length[0] + ego.length) - SIDE_REACH - 0.1):
        a.s[0] = ego.s + ds
        assert math.isinf(min_side_gap(a, ego))
        assert reward_terms(env.world, Events(), 0.0)["side"] == 0.0
    a.s[0] = ego.s + 0.5 * (a.length[0] + ego.length) + SIDE_REACH - 0.1  # within reach
    assert min_side_gap(a, ego) == pytest.approx(half - 0.3 - half)
    a.active[0] = False
    assert math.isinf(min_side_gap(a, ego))


def test_the_batch_gives_the_same_side_term() -> None:
    import numpy as np

    from sim.vector import BatchDrivingEnv

    batch = BatchDrivingEnv(3, obs_type="state", action_type="meta")
    batch.reset(seed=[5, 6, 7])
    singles = [DrivingEnv(obs_type="state", action_type="meta") for _ in range(3)]
    for env, seed in zip(singles, (5, 6, 7), strict=True):
        env.reset(seed=seed)
    fired = 0
    for t in range(120):
        actions = np.array([(0, 2, 3, 1)[(t // 7 + k) % 4] for k in range(3)])
        _, _, term, trunc, info = batch.step(actions)
        for k, env in enumerate(singles):
            one = env.step(int(actions[k]))[4]
            assert info["rewards"]["side"][k] == pytest.approx(one["rewards"]["side"])
            fired += one["rewards"]["side"] > 0
        if (term | trunc).any():
            break
    assert fired  # the lane changes of these seeds crowd someone (the test compares values)
    assert RewardWeights().side == 0.0
