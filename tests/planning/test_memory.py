"""The planner's memory of its neighbours (planning/memory.py) on crafted scene sequences:
what it must remember and when it must forget; the same memory in every path (per env,
batched, deployed)."""

from __future__ import annotations

import numpy as np
import pytest

from planning.features import FEATURE_NAMES, FEATURE_SCALES, features
from planning.memory import MEMORY_FEATURES, NEUTRAL_MEMORY, NeighbourMemory
from planning.scene import Scene
from sim.types import CAR, CONE

DT = 0.2
LEFT, LEFT_AGE, RIGHT, RIGHT_AGE = (MEMORY_FEATURES.index(n) for n in (
    "left_beside", "left_beside_age", "right_beside", "right_beside_age"))


def _scene(objects: list[list[float]], offset: float = 0.0, seen: bool = True,
           speed: float = 20.0) -> Scene:
    return Scene(speed=speed, speed_limit=25.0, lane_offset=offset, heading_error=0.0,
                 lane_seen=seen, left_lane=True, right_lane=True, lane_width=3.5,
                 objects=np.array(objects, np.float32).reshape(-1, 5))


def _drive(memory: NeighbourMemory, scenes: list[Scene]) -> np.ndarray:
    return np.stack([memory.update_scene(s, DT) for s in scenes])


def test_a_car_overtaken_on_the_left_is_beside_until_it_has_fallen_back() -> None:
    # a car 10 m ahead in the left lane, the ego 5 m/s faster: seen for 2 decisions, then
    # out of the camera's view; predicted gap 10 - 5 t
    m = NeighbourMemory(1)
    seen = [_scene([[10.0 - 5 * DT * k, 3.5, 1, CAR, -5.0]]) for k in range(2)]
    out = _drive(m, seen + [_scene([])] * 30)
    gap = 10.0 - 5.0 * DT * np.arange(32)  # predicted after each decision
    clear = 5.2 + 4.6 + 3.0  # the car's length + the ego's + 3 m
    want = (gap < 4.0) & (gap > -clear)
    assert np.array_equal(out[:, LEFT].astype(bool), want)
    assert want.sum() == 16  # 4 m down to -12.8 m at 1 m a decision
    assert not out[:, RIGHT].any()
    # the age of what is beside: time since it was last seen (decision 1)
    k = np.flatnonzero(want)
    assert out[k, LEFT_AGE] == pytest.approx((k - 1) * DT)
    assert np.all(out[~want, LEFT_AGE] == 20.0)  # the cap when nothing is beside
    # time runs from the first decision, capped at the warm-up
    assert out[0, 0] == 0.0 and out[5, 0] == pytest.approx(1.0)
    assert out[-1, 0] == pytest.approx(6.2)
    assert _drive(m, [_scene([])] * 30)[-1, 0] == 10.0


def test_what_is_not_remembered() -> None:
    m = NeighbourMemory(1)
    # far (>= 15 m), two lanes away, or pulling away: never beside
    far = [_scene([[20.0, 3.5, 1, CAR, -5.0]])] + [_scene([])] * 10
    assert not _drive(m, far)[:, LEFT].any()
    m.reset()
    two = [_scene([[8.0, 7.0, 2, CAR, -5.0]])] + [_scene([])] * 10
    assert not _drive(m, two)[:, [LEFT, RIGHT]].any()
    m.reset()
    away = [_scene([[8.0, -3.5, -1, CAR, 3.0]])] + [_scene([])] * 10
    assert not _drive(m, away)[:, RIGHT].any()  # it stays 8 m ahead, then is forgotten
    # forgotten after memory_time even if it never fell back (a standing car beside a
    # standing ego)
    m.reset()
    stay = _drive(m, [_scene([[1.0, 3.5, 1, CONE, 0.0]], speed=0.0)]
                  + [_scene([], speed=0.0)] * 110)
    assert stay[1:100, LEFT].all() and not stay[101:, LEFT].any()


def test_the_prediction_follows_the_egos_own_speed() -> None:
    # overtaking a 15 m/s car at 20 m/s, seen last 2 m ahead on the left: at a constant
    # ego speed it falls back past the ego (to -12.8 m) within 3 s; if the ego then slows to the
    # car's speed, the car stays level with it (the gap rate of the sighting would have
    # dropped it: urban 7029 in docs/models.md)
    last = [_scene([[2.0, 3.5, 1, CAR, -5.0]])]
    m = NeighbourMemory(1)
    constant = _drive(m, last + [_scene([])] * 20)[:, LEFT]
    assert constant[:15].all() and not constant[15:].any()
    m.reset()
    slowed = _drive(m, last + [_scene([], speed=15.0)] * 20)[:, LEFT]
    assert slowed.all()
    # the ego speeds up to 25 m/s instead: the car falls back sooner (the first step at
    # the mean of the two speeds: 2 - 1.5 - 2 k)
    m.reset()
    faster = _drive(m, last + [_scene([], speed=25.0)] * 20)[:, LEFT]
    assert faster[:8].all() and not faster[8:].any()
    with pytest.raises(ValueError, match="speed is NaN"):
        m.update_scene(_scene([], speed=float("nan")), DT)


def test_a_lane_change_or_a_reset_forgets() -> None:
    m = NeighbourMemory(1)
    car = _scene([[3.0, -3.5, -1, CAR, -1.0]], offset=1.5)
    out = _drive(m, [car, _scene([], offset=1.6)])
    assert out[-1, RIGHT] == 1.0
    # the offset jumps from +1.6 to -1.8 (more than 0.6 lane widths): the ego is now in
    # the lane to its left, the memory is void
    assert _drive(m, [_scene([], offset=-1.8)])[0, RIGHT] == 0.0
    # an unseen lane does not count as a jump, nor move the reference
    _drive(m, [car])
    assert _drive(m, [_scene([], offset=0.0, seen=False)])[0, RIGHT] == 1.0
    m.reset()
    first = _drive(m, [_scene([])])[0]
    assert first[0] == 0.0 and first[RIGHT] == 0.0


def test_seen_again_replaces_and_slots_are_reused() -> None:
    m = NeighbourMemory(1)
    # the same car seen for 20 decisions takes one slot, not twenty
    _drive(m, [_scene([[3.0, 3.5, 1, CAR, 0.0]])] * 20)
    assert m.active[0, 0].sum() == 1
    # five cars 7 m apart seen at once (in gap order): four slots, the fifth takes the
    # oldest one's (here the first's)
    m.reset()
    cars = [[g, 3.5, 1, CAR, -1.0] for g in (-14.0, -7.0, 0.0, 7.0, 14.0)]
    assert _drive(m, [_scene(cars)])[0, LEFT] == 1.0
    assert m.active[0, 0].sum() == 4
    assert sorted(m.gap[0, 0]) == [-7.0, 0.0, 7.0, 14.0]


def test_the_memory_of_a_batch_is_each_envs_memory() -> None:
    rng = np.random.default_rng(0)
    n, steps = 5, 40
    batch, single = NeighbourMemory(n), [NeighbourMemory(1) for _ in range(n)]
    for t in range(steps):
        scenes = []
        for _ in range(n):
            k = int(rng.integers(0, 4))
            obj = np.stack([rng.uniform(-3, 20, k), rng.uniform(-5, 5, k),
                            rng.integers(-1, 2, k), rng.choice([CAR, CONE], k),
                            rng.uniform(-6, 2, k)], axis=1) if k else np.zeros((0, 5))
            scenes.append(_scene(obj.tolist(), offset=float(rng.uniform(-1.9, 1.9)),
                                 seen=bool(rng.random() > 0.1),
                                 speed=float(rng.uniform(0.0, 30.0))))
        m = max(len(s.objects) for s in scenes)
        objects = np.zeros((n, m, 5))
        valid = np.zeros((n, m), bool)
        for b, s in enumerate(scenes):
            objects[b, :len(s.objects)] = s.objects
            valid[b, :len(s.objects)] = True
        rows = np.arange(n) if t % 7 else np.array([1, 3])  # a partial update now and then
        if t == 20:
            batch.reset([2])
            single[2].reset()
        got = batch.update(objects[rows], valid[rows],
                           np.array([scenes[b].speed for b in rows]),
                           np.array([scenes[b].lane_offset for b in rows]),
                           np.full(len(rows), 3.5),
                           np.array([scenes[b].lane_seen for b in rows]), DT, rows)
        for k, b in enumerate(rows):
            assert np.array_equal(got[k], single[b].update_scene(scenes[b], DT))


def test_the_features_scale_the_memory_and_default_to_neutral() -> None:
    scene = _scene([[3.0, 3.5, 1, CAR, -1.0]])
    mem = NeighbourMemory(1)
    vec = features(scene, mem.update_scene(scene, DT))
    v = dict(zip(FEATURE_NAMES, vec, strict=True))
    assert v["left_beside"] == 1.0 and v["left_beside_age"] == 0.0 and v["time"] == 0.0
    assert v["right_beside"] == 0.0 and v["right_beside_age"] == 1.0
    assert FEATURE_SCALES["time"] == 10.0 and FEATURE_SCALES["left_beside_age"] == 20.0
    neutral = dict(zip(FEATURE_NAMES, features(scene), strict=True))
    assert [neutral[n] for n in MEMORY_FEATURES] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert np.array_equal(NEUTRAL_MEMORY / [FEATURE_SCALES[n] for n in MEMORY_FEATURES],
                          [1.0, 0.0, 1.0, 0.0, 1.0])


def test_the_deployed_policy_remembers_and_forgets_with_its_episode() -> None:
    from gymnasium import spaces

    from planning.features import CLIP, FEATURE_DIM
    from planning.policy import PolicyPlanner

    seen: list[np.ndarray] = []

    class Model:
        observation_space = spaces.Box(-CLIP, CLIP, shape=(FEATURE_DIM,))

        def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[int, None]:
            seen.append(obs)
            return 1, None

    planner = PolicyPlanner(Model())
    planner.reset()
    for s in [_scene([[3.0, 3.5, 1, CAR, -1.0]]), _scene([])]:
        planner.act(s)
    i = FEATURE_NAMES.index("left_beside")
    assert seen[1][i] == 1.0 and seen[1][FEATURE_NAMES.index("time")] == pytest.approx(0.02)
    planner.reset()
    planner.act(_scene([]))
    assert seen[2][i] == 0.0 and seen[2][FEATURE_NAMES.index("time")] == 0.0


@pytest.mark.parametrize("every", [3, 6])
def test_the_agent_times_the_planners_memory_at_its_own_cadence(every: int) -> None:
    """`PlannerAgent` deciding every `every` steps tells the planner (and its shield) how
    far apart its decisions are: a memory timed for 3 steps would misplace a remembered
    neighbour when the eval runs at another `--decision-every`."""
    from planning.policy import PolicyPlanner
    from planning.rollout import PlannerAgent
    from planning.rule_based import RulePlanner
    from planning.shield import SafetyShield
    from planning.sources import PrivilegedSource
    from sim.env import DrivingEnv

    class Model:
        def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[int, None]:
            return 1, None

    env = DrivingEnv(obs_type="state", action_type="meta")
    env.reset(seed=0)
    policy, rule = PolicyPlanner(Model(), SafetyShield()), RulePlanner()
    for planner in (policy, rule):
        agent = PlannerAgent(planner, PrivilegedSource(), every)
        agent.reset()
        agent.act(env)
    assert policy.decision_dt == pytest.approx(every * env.dt)
    assert policy.shield is not None
    assert policy.shield.params.decision_dt == pytest.approx(every * env.dt)
    assert rule.params.decision_dt == pytest.approx(every * env.dt)
    with pytest.raises(ValueError, match="decision_dt: must be a finite number"):
        policy.set_decision_dt(float("nan"))
    env.close()
