"""Planner env wrappers: decision spacing, scene observations from each source, the
env checkers, and vectorized (spawned subprocess) use."""

from __future__ import annotations

import pickle
import time
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import SubprocVecEnv

import sim  # noqa: F401  (registers the drivestack/ ids)
from perception.detector import DEFAULT_WEIGHTS
from perception.lanes import DEFAULT_LANE_WEIGHTS
from perception.perceiver import Detections, Perception
from planning.features import (
    CLIP,
    DEFAULT_FEATURE_SET,
    FEATURE_DIM,
    FEATURE_NAMES,
    FEATURE_SCALES,
    FEATURE_SETS,
    features,
)
from planning.memory import NeighbourMemory
from planning.noise import PerceptionNoise
from planning.sources import PrivilegedSource
from planning.wrappers import (
    DecisionEvery,
    EmulatedPerceptionObservation,
    PerceptionObservation,
    PrivilegedObservation,
    SceneObservation,
    make_planner_env,
)
from sim.actions import FASTER, IDLE, LANE_LEFT
from sim.env import DrivingEnv

SMALL = {"width": 160, "height": 96}
QUIET_ROAD = {"lanes": (4, 4), "vehicles": (0, 0), "cone_groups": (0, 0), "stalled": (0, 0)}


class CountingEnv(gym.Env):
    """Records the actions it gets; its observation is the step count; ends at `end_at`."""

    observation_space = spaces.Box(0.0, 1e6, shape=(1,), dtype=np.float32)

    def __init__(self, action_space: spaces.Space, end_at: int = 1000) -> None:
        self.action_space = action_space
        self.end_at = end_at
        self.actions: list[Any] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.actions = []
        return np.zeros(1, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.actions.append(action)
        n = len(self.actions)
        return np.array([n], np.float32), 0.5, n >= self.end_at, False, {"n": n}


# -- DecisionEvery ------------------------------------------------------------------------
def test_meta_action_is_sent_once_then_idle() -> None:
    env = DecisionEvery(CountingEnv(spaces.Discrete(5)), 3)
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step(FASTER)
    assert env.unwrapped.actions == [FASTER, IDLE, IDLE]
    assert obs[0] == 3 and reward == pytest.approx(1.5) and info["decision_steps"] == 3
    assert info["n"] == 3 and not term and not trunc  # the last step's info


def test_continuous_action_is_held() -> None:
    env = DecisionEvery(CountingEnv(spaces.Box(-1, 1, (2,), np.float32)), 4)
    env.reset(seed=0)
    a = np.array([0.3, -0.2], np.float32)
    env.step(a)
    assert len(env.unwrapped.actions) == 4
    assert all(np.array_equal(x, a) for x in env.unwrapped.actions)


def test_decision_stops_early_when_the_episode_ends() -> None:
    env = DecisionEvery(CountingEnv(spaces.Discrete(5), end_at=5), 3)
    env.reset(seed=0)
    env.step(IDLE)
    obs, reward, term, _, info = env.step(IDLE)
    assert term and info["decision_steps"] == 2 and obs[0] == 5
    assert reward == pytest.approx(1.0)


@pytest.mark.parametrize("k", [0, -2, 1.5, True])
def test_bad_k_is_named(k: Any) -> None:
    with pytest.raises(ValueError, match="k "):
        DecisionEvery(CountingEnv(spaces.Discrete(5)), k)


def _quiet_env(decision_every: int) -> tuple[gym.Env, DrivingEnv, int]:
    """A privileged planner env on an empty 4-lane road, reset where the ego starts in one
    of the two rightmost lanes (so two lanes are free to its left)."""
    env = make_planner_env("privileged", decision_every=decision_every, scenario=QUIET_ROAD)
    base = env.unwrapped
    assert isinstance(base, DrivingEnv)
    for seed in range(50):
        env.reset(seed=seed)
        assert base.world is not None
        lane = int(base.world.road.lane_of(base.world.state.ego.d))
        if lane <= 1:
            return env, base, lane
    raise AssertionError("no seed starts the ego in lane 0 or 1")


def test_lane_left_once_moves_one_lane() -> None:
    env, base, lane = _quiet_env(decision_every=5)
    _, _, _, _, info = env.step(LANE_LEFT)
    assert info["decision_steps"] == 5 and info["step"] == 5  # k env steps per decision
    for _ in range(25):  # 125 steps: 8 s to settle in the new lane
        _, _, term, trunc, info = env.step(IDLE)
        assert not (term or trunc)
    assert info["step"] == 130
    assert base._controller is not None and base._controller.target_lane == lane + 1
    assert base.world is not None
    ego = base.world.state.ego
    assert int(base.world.road.lane_of(ego.d)) == lane + 1
    assert abs(ego.d - float(base.world.road.lane_center(lane + 1))) < 0.3


# -- scene observations -------------------------------------------------------------------
class CountingSource:
    """The privileged scene, counting calls and resets."""

    needs_camera = False

    def __init__(self) -> None:
        self.calls = self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def __call__(self, env: DrivingEnv) -> Any:
        self.calls += 1
        return PrivilegedSource()(env)


def test_scene_observation_is_the_feature_vector_of_its_scene() -> None:
    source = CountingSource()
    env = SceneObservation(DecisionEvery(gym.make("drivestack/Highway-v0", obs_type="state",
                                                  action_type="meta"), 2), source,
                           feature_set="memory")
    assert env.observation_space == spaces.Box(-CLIP, CLIP, (FEATURE_DIM,), np.float32)
    obs, _ = env.reset(seed=1)
    assert source.resets == 1 and source.calls == 1
    # the scene's features, with the memory of an episode's first decision
    memory = NeighbourMemory(1)
    assert env.scene is not None and np.array_equal(
        obs, features(env.scene, memory.update_scene(env.scene, 2 / 15)))
    assert obs[FEATURE_NAMES.index("time")] == 0.0
    obs, *_ = env.step(IDLE)
    assert source.calls == 2  # one scene per decision, not per env step
    assert obs.dtype == np.float32 and obs.shape == (FEATURE_DIM,)
    assert obs[FEATURE_NAMES.index("lane_seen")] == 1.0
    assert obs[FEATURE_NAMES.index("time")] * FEATURE_SCALES["time"] == pytest.approx(2 / 15)
    assert np.array_equal(obs, features(env.scene, memory.update_scene(env.scene, 2 / 15)))
    obs, _ = env.reset(seed=2)
    assert source.resets == 2 and obs[FEATURE_NAMES.index("time")] == 0.0


class FakePerceiver:
    """Sees nothing: no objects, no lanes; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, frames: list[np.ndarray]) -> list[Perception]:
        assert all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
        self.calls += 1
        empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                           np.zeros(0, np.int64), np.zeros(0, np.float32))
        return [Perception(empty) for _ in frames]


def test_perception_observation_runs_the_perceiver_per_decision() -> None:
    perceiver = FakePerceiver()
    raw = gym.make("drivestack/Highway-v0", obs_type="camera", action_type="meta", camera=SMALL)
    env = PerceptionObservation(DecisionEvery(raw, 3), perceiver)
    obs, _ = env.reset(seed=0)
    env.step(IDLE)
    env.step(IDLE)
    assert perceiver.calls == 3
    assert env.scene is not None and not env.scene.lane_seen
    assert obs[FEATURE_NAMES.index("lane_seen")] == 0.0


def test_perception_on_an_env_without_camera_frames_is_refused() -> None:
    raw = gym.make("drivestack/Highway-v0", obs_type="state", action_type="meta")
    with pytest.raises(ValueError, match="obs_type='camera'"):
        PerceptionObservation(raw, FakePerceiver())
    labelled = gym.make("drivestack/Highway-v0", obs_type="state", labels=True, camera=SMALL)
    PerceptionObservation(labelled, FakePerceiver())  # labels render the camera: fine


def test_scene_observation_needs_a_driving_env() -> None:
    with pytest.raises(TypeError, match="DrivingEnv"):
        PrivilegedObservation(CountingEnv(spaces.Discrete(5)))


def test_emulated_observation_uses_its_noise() -> None:
    raw = gym.make("drivestack/Highway-v0", obs_type="state", action_type="meta")
    env = EmulatedPerceptionObservation(raw, PerceptionNoise(lane_miss_rate=1.0), seed=0)
    obs, _ = env.reset(seed=0)
    assert obs[FEATURE_NAMES.index("lane_seen")] == 0.0


DEFAULT_DIM = FEATURE_SETS[DEFAULT_FEATURE_SET]


def test_the_feature_set_is_a_prefix_of_the_features() -> None:
    envs = {name: make_planner_env("privileged", seed=0, feature_set=name)
            for name in FEATURE_SETS}
    obs = {name: env.reset(seed=3)[0] for name, env in envs.items()}
    for _ in range(4):
        obs = {name: env.step(2)[0] for name, env in envs.items()}  # a lane change right
    full = obs["memory"]
    for name, o in obs.items():
        assert o.shape == (FEATURE_SETS[name],) == envs[name].observation_space.shape
        assert np.array_equal(o, full[:len(o)])
    assert make_planner_env("privileged").observation_space.shape == (DEFAULT_DIM,)
    with pytest.raises(ValueError, match="feature_set='all'; allowed: control, path, memory"):
        make_planner_env("privileged", feature_set="all")


# -- make_planner_env ---------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("source", ["privileged", "emulated"])
def test_planner_env_passes_the_env_checkers(source: str) -> None:
    env = make_planner_env(source, seed=0, feature_set="memory")
    assert env.observation_space.shape == (FEATURE_DIM,)
    assert isinstance(env.action_space, spaces.Discrete) and env.action_space.n == 5
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=False)
    assert env.spec is not None
    remade = env.spec.make()  # the wrappers record their arguments
    assert type(remade) is type(env) and remade.get_wrapper_attr("k") == 3


def test_emulated_planner_env_replays_an_episode() -> None:
    env = make_planner_env("emulated", seed=3)

    def episode() -> np.ndarray:
        obs = [env.reset(seed=11)[0]]
        obs += [env.step(a)[0] for a in (IDLE, FASTER, LANE_LEFT, IDLE)]
        return np.stack(obs)

    first = episode()
    np.testing.assert_array_equal(first, episode())
    exact, _ = make_planner_env("privileged").reset(seed=11)
    assert not np.array_equal(first[0], exact)  # the noise shows


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source": "lidar"}, "source='lidar'; allowed: privileged, emulated, perception"),
    ({"family": "offroad"}, "family='offroad'; allowed: highway, rural, urban"),
    ({"decision_every": 0}, "k "),
    ({"seed": -1}, "seed"),
    ({"scenario": {"family": "urban"}}, "differs from family='highway'"),
    ({"scenario": {"lanes": (9, 9)}}, "lanes"),
])
def test_bad_planner_env_arguments_are_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_planner_env(**kwargs)


@pytest.mark.skipif(not (DEFAULT_LANE_WEIGHTS.is_file() and DEFAULT_WEIGHTS.is_file()),
                    reason="shipped perception weights not present yet")
def test_perception_planner_env_with_the_shipped_perceiver() -> None:
    t0 = time.perf_counter()
    env = make_planner_env("perception", seed=0)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(IDLE)
    assert env.observation_space.contains(obs)
    assert isinstance(env, PerceptionObservation)
    assert env.source.last_perception is not None  # type: ignore[attr-defined]
    sb3_check_env(env, warn=False)
    assert time.perf_counter() - t0 < 20.0


def test_planner_envs_run_in_spawned_subprocesses() -> None:
    thunks = [partial(make_planner_env, "emulated", decision_every=2, seed=i) for i in range(2)]
    assert pickle.loads(pickle.dumps(thunks[0])).keywords == {"decision_every": 2, "seed": 0}
    venv = SubprocVecEnv(thunks, start_method="spawn")
    try:
        venv.seed(5)
        obs = venv.reset()
        assert obs.shape == (2, DEFAULT_DIM) and obs.dtype == np.float32
        for _ in range(3):
            obs, rewards, _, infos = venv.step(np.array([IDLE, FASTER]))
        assert rewards.shape == (2,) and [i["decision_steps"] for i in infos] == [2, 2]
        assert not np.array_equal(obs[0], obs[1])
    finally:
        venv.close()
