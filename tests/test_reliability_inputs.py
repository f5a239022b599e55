"""Every bad input gets one clear message (issue 13): launch files and the env API.

The contract held here:
- `load_launch` returns a valid config (every float finite) or raises `LaunchConfigError`
  with a message of at most a few KB, whatever the YAML holds; anchors, aliases, duplicate
  keys, files over MAX_LAUNCH_BYTES and deep nesting are refused by name.
- Sim constructors (CameraSpec, ScenarioConfig, Scenario, RewardWeights, the envs' dt,
  camera and scenario arguments) refuse NaN, infinities and out-of-range values, naming
  the key and the range.
- `DrivingEnv.step` / `BatchDrivingEnv.step` either step (the observation finite) or raise
  ValueError naming the action space; `set_state` checks the state it is given; a fresh
  `gym.make` env restores a state with `reset(options={"state": ...})`.

Regression tests first, then the Hypothesis properties (long variants marked `slow`).
"""

from __future__ import annotations

import copy
import math
import pickle
import typing
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as npst
from pydantic import BaseModel

import sim  # noqa: F401  (registers the drivestack/ ids)
from launch.config import (
    DatasetConfig,
    LaunchConfigError,
    RunConfig,
    TrainPerceptionConfig,
    TrainPlannerConfig,
    load_launch,
)
from launch.eval_suite import EvalConfig, SuiteConfig
from launch.loader import MAX_LAUNCH_BYTES, model_in
from sim.actions import meta_action
from sim.config import ScenarioConfig, family_config, sample_scenario
from sim.env import DrivingEnv
from sim.rewards import RewardWeights
from sim.types import CameraSpec
from sim.vector import BatchDrivingEnv
from sim.world.batch import BatchWorld
from sim.world.world import World

MAX_MESSAGE = 4096
"""Longest error message allowed [characters]."""
SMALL = {"width": 64, "height": 48}
LAUNCH_MODELS: list[type[BaseModel]] = [RunConfig, DatasetConfig, TrainPerceptionConfig,
                                        TrainPlannerConfig, EvalConfig, SuiteConfig]


def _launch_error(path: Path, model: type[BaseModel] = RunConfig) -> str:
    with pytest.raises(LaunchConfigError) as info:
        load_launch(path, model)
    message = str(info.value)
    assert len(message) <= MAX_MESSAGE, message[:300]
    return message


def _bomb(levels: int) -> str:
    """A "billion laughs" YAML: each level nine aliases of the one before."""
    names = "abcdefghijkl"
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['x'] * 9)}]"]
    for i in range(1, levels):
        prev = names[i - 1]
        lines.append(f"{names[i]}: &{names[i]} [{', '.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\n"


# -- launch files: YAML ---------------------------------------------------------------


def test_alias_bomb_is_one_short_error(write_yaml: Callable[..., Path]) -> None:
    """9**6 strings behind 300 bytes: the message used to print all of them."""
    msg = _launch_error(write_yaml(_bomb(6)))
    assert "aliases" in msg and "line 1" in msg
    assert len(_bomb(9)) < 500
    assert "aliases" in _launch_error(write_yaml(_bomb(9)))


def test_anchors_and_aliases_are_refused_even_when_harmless(write_yaml: Callable[..., Path]
                                                            ) -> None:
    msg = _launch_error(write_yaml("episodes: &n 2\nseed: *n\n"))
    assert "anchors and aliases" in msg and "line 1" in msg


@pytest.mark.parametrize(("text", "key", "line"), [
    ("episodes: 1\nseed: 0\nepisodes: 2\n", "'episodes'", "line 3"),
    ("scenario:\n  lanes: [1, 2]\n  lanes: [2, 3]\n", "'lanes'", "line 3"),
])
def test_duplicate_keys_are_refused_by_name_and_line(write_yaml: Callable[..., Path],
                                                     text: str, key: str, line: str) -> None:
    msg = _launch_error(write_yaml(text))
    assert "duplicate key" in msg and key in msg and line in msg and "first at line" in msg


@pytest.mark.parametrize("text", [
    "episodes: [" + ", ".join(["-1"] * 20_000) + "]\n",
    "family: '" + "x" * 20_000 + "'\n",
    "scenario: {" + ", ".join(f"k{i}: {i}" for i in range(2_000)) + "}\n",
    "video: {" + "k" * 900 + ": 1}\n",
], ids=["long list", "long string", "many bad keys", "long key"])
def test_error_messages_are_bounded(write_yaml: Callable[..., Path], text: str) -> None:
    _launch_error(write_yaml(text))  # at most MAX_MESSAGE characters


def test_a_huge_file_is_refused_unread(write_yaml: Callable[..., Path]) -> None:
    text = "episodes: 2\n" + "# padding\n" * (MAX_LAUNCH_BYTES // 10 + 1)
    assert "larger than" in _launch_error(write_yaml(text))


@pytest.mark.parametrize("depth", [40, 5_000])
def test_deep_nesting_is_refused(write_yaml: Callable[..., Path], depth: int) -> None:
    msg = _launch_error(write_yaml("episodes: " + "[" * depth + "]" * depth + "\n"))
    assert "nested deeper" in msg


def test_an_int_too_long_to_read_is_a_launch_error(write_yaml: Callable[..., Path]) -> None:
    assert "cannot read" in _launch_error(write_yaml("episodes: " + "9" * 5_000 + "\n"))


# -- launch files: NaN, infinities, ranges ----------------------------------------------


@pytest.mark.parametrize(("model", "text", "key"), [
    (RunConfig, "camera: {mount_height: .nan}", "camera.mount_height"),
    (RunConfig, "camera: {mount_forward: .nan}", "camera.mount_forward"),
    (RunConfig, "camera: {mount_forward: .inf}", "camera.mount_forward"),
    (RunConfig, "camera: {fov_deg: .nan}", "camera.fov_deg"),
    (RunConfig, "camera: {pitch_deg: .nan}", "camera.pitch_deg"),
    (RunConfig, "camera: {mount_height: 1.0e+9}", "camera.mount_height"),
    (RunConfig, "scenario: {speed_limit: [10, .nan]}", "scenario.speed_limit[1]"),
    (RunConfig, "scenario: {exposure: [.nan, 1.0]}", "scenario.exposure[0]"),
    (RunConfig, "scenario: {exposure: [1.0, .inf]}", "scenario.exposure[1]"),
    (RunConfig, "scenario: {sensor_noise: [0, .inf]}", "scenario.sensor_noise[1]"),
    (RunConfig, "scenario: {sensor_noise: [0, .nan]}", "scenario.sensor_noise[1]"),
    (RunConfig, "scenario: {min_radius: .inf}", "scenario.min_radius"),
    (RunConfig, "scenario: {lane_width: [3.0, .nan]}", "scenario.lane_width[1]"),
    (RunConfig, "scenario: {weather: {fog: .nan, clear: 1}}", "scenario.weather.fog"),
    (RunConfig, "scenario: {time_of_day: {day: .inf}}", "scenario.time_of_day.day"),
    (DatasetConfig, "families: {highway: .nan, rural: 1}", "families.highway"),
    (DatasetConfig, "time_of_day: {day: .inf}", "time_of_day.day"),
    (DatasetConfig, "weather: {clear: 1, fog: .nan}", "weather.fog"),
    (DatasetConfig, "camera: {mount_height: .inf}", "camera.mount_height"),
    (TrainPerceptionConfig, "lanes: {lr: .inf}", "lanes.lr"),
    (TrainPerceptionConfig, "refiner: {iou_weight: .inf}", "refiner.iou_weight"),
    (TrainPerceptionConfig, "detector: {hours: .inf}", "detector.hours"),
    (TrainPerceptionConfig, "detector: {lr0: .nan}", "detector.lr0"),
    (TrainPlannerConfig, "learning_rate: .inf", "learning_rate"),
    (TrainPlannerConfig, "scenario: {speed_limit: [10, .nan]}", "scenario.speed_limit[1]"),
    (EvalConfig, "camera: {mount_height: .nan}", "camera.mount_height"),
])
def test_nan_and_infinities_are_refused_naming_key_and_range(
        write_yaml: Callable[..., Path], model: type[BaseModel], text: str, key: str) -> None:
    msg = _launch_error(write_yaml(text + "\n"), model)
    assert key in msg
    assert "allowed" in msg or " in " in msg  # the range: "allowed: x > 0 ..." or "in [a, b]"


@pytest.mark.parametrize(("model", "text", "device"), [
    (TrainPerceptionConfig, "device: cpu", "cpu"),
    (TrainPerceptionConfig, "device: 0", "0"),
    (TrainPerceptionConfig, "device: '1'", "1"),
    (TrainPerceptionConfig, "device: cuda", "0"),
    (TrainPerceptionConfig, "device: cuda:1", "1"),
    (TrainPerceptionConfig, "device: MPS", "mps"),
    (EvalConfig, "device: auto", "auto"),
    (TrainPlannerConfig, "device: cuda:0", "cuda:0"),
    (TrainPlannerConfig, "device: auto", "auto"),
])
def test_good_devices_load_in_the_spelling_their_library_reads(
        write_yaml: Callable[..., Path], model: type[BaseModel], text: str, device: str
) -> None:
    assert load_launch(write_yaml(text + "\n"), model).device == device  # type: ignore[attr-defined]


@pytest.mark.parametrize(("model", "text"), [
    (TrainPerceptionConfig, "device: gpu"),
    (TrainPerceptionConfig, "device: cuda:x"),
    (TrainPerceptionConfig, "device: '0,1'"),
    (TrainPerceptionConfig, "device: [0]"),
    (EvalConfig, "device: tpu"),
    (TrainPlannerConfig, "device: mps0"),
    (TrainPlannerConfig, "device: 0"),
    (TrainPlannerConfig, "device: true"),
])
def test_bad_devices_list_the_allowed_ones(write_yaml: Callable[..., Path],
                                          model: type[BaseModel], text: str) -> None:
    msg = _launch_error(write_yaml(text + "\n"), model)
    assert "device" in msg and "allowed: auto | cpu | cuda | cuda:N" in msg


# -- sim constructors -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fov_deg", "mount_height", "mount_forward", "pitch_deg",
                                  "near", "far"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e9, "1.5", True])
def test_camera_spec_refuses_non_finite_and_out_of_range(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        CameraSpec(**{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "value"), [
    ("speed_limit", (10.0, math.nan)), ("exposure", (math.nan, 1.0)),
    ("exposure", (0.0, 1.0)), ("exposure", (1.0, 100.0)), ("sensor_noise", (0.0, math.inf)),
    ("sensor_noise", (0.0, 1e6)), ("min_radius", math.inf), ("min_radius", math.nan),
    ("lane_width", (3.0, math.nan)), ("road_length", math.nan),
    ("shoulder_width", math.nan), ("truck_fraction", math.nan),
    ("crossing_fraction", math.inf), ("episode_seconds", math.nan),
    ("time_of_day", {"day": math.nan}), ("weather", {"clear": 1.0, "fog": math.inf}),
    ("weather", {"clear": 1e308, "fog": 1e308}), ("pedestrians", (0, 10**6)),
])
def test_scenario_config_refuses_non_finite_and_out_of_range(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=key):
        ScenarioConfig(**{key: value})


@pytest.mark.parametrize(("name", "value"), [
    ("speed_limit", math.nan), ("exposure", math.inf), ("noise_std", math.nan),
    ("min_radius", math.inf), ("lane_width", math.nan), ("n_lanes", 0),
    ("n_lanes", 2.0), ("weather", "snow"), ("episode_seconds", -1.0),
])
def test_a_hand_made_scenario_is_checked(name: str, value: object) -> None:
    good = sample_scenario(family_config("highway"), 0)
    with pytest.raises(ValueError, match=name):
        replace(good, **{name: value})


@pytest.mark.parametrize("value", [math.nan, math.inf, "big", None])
def test_reward_weights_refuse_non_numbers(value: object) -> None:
    with pytest.raises((ValueError, TypeError), match="progress"):
        RewardWeights.from_dict({"progress": value})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="progress"):
        RewardWeights(progress=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("env_cls", [DrivingEnv, BatchDrivingEnv])
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"dt": math.nan}, ValueError, "dt"), ({"dt": math.inf}, ValueError, "dt"),
    ({"dt": 0.0}, ValueError, "dt"), ({"dt": 5.0}, ValueError, "dt"),
    ({"dt": "0.1"}, ValueError, "dt"),
    ({"camera": "wide"}, TypeError, "camera"), ({"camera": {"zoom": 2}}, ValueError, "zoom"),
    ({"camera": {"mount_height": math.nan}}, ValueError, "mount_height"),
    ({"scenario": "highway"}, TypeError, "scenario"),
    ({"scenario": {"speed_limit": (10.0, math.nan)}}, ValueError, "speed_limit"),
    ({"labels": "no"}, TypeError, "labels"),
    ({"reward_weights": {"progress": math.nan}}, ValueError, "progress"),
])
def test_env_constructors_refuse_bad_arguments(env_cls: type, kwargs: dict[str, Any],
                                               error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        env_cls(**kwargs)


# -- the env API: actions ---------------------------------------------------------------


@pytest.fixture(scope="module")
def meta_env() -> Iterator[gym.Env]:
    env = gym.make("drivestack/Highway-v0", obs_type="state", action_type="meta",
                   camera=SMALL)
    env.reset(seed=0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def cont_env() -> Iterator[gym.Env]:
    env = gym.make("drivestack/Highway-v0", obs_type="state", camera=SMALL)
    env.reset(seed=0)
    yield env
    env.close()


@pytest.mark.parametrize("bad", [2.5, [1, 2], np.array([[1]]), np.array([1]), "left", None,
                                 math.nan, math.inf, 5, -1, True, np.bool_(False), b"1",
                                 np.array(["1"]), {"a": 1}, 1 + 0j])
def test_bad_meta_actions_name_the_action_space(meta_env: gym.Env, bad: object) -> None:
    step = meta_env.unwrapped.world.state.step
    with pytest.raises(ValueError, match=r"meta action .*Discrete\(5\)"):
        meta_env.step(bad)
    assert meta_env.unwrapped.world.state.step == step  # nothing moved


@pytest.mark.parametrize("good", [0, 4, np.int64(2), np.uint8(3), np.array(1), 2.0,
                                  np.float32(4.0)])
def test_meta_actions_of_any_integer_kind_are_accepted(good: object) -> None:
    assert meta_action(good) == int(np.asarray(good).item())


@pytest.mark.parametrize("bad", [[True, False], [[0.1, 0.2]], [[0.1], [0.2, 0.3]],
                                 [None, None], np.array([1 + 1j, 0]), "ab", None])
def test_bad_continuous_actions_name_the_action_space(cont_env: gym.Env, bad: object) -> None:
    with pytest.raises(ValueError, match=r"continuous action .*Box\(-1, 1, \(2,\)\)"):
        cont_env.step(bad)


@pytest.mark.parametrize(("action_type", "bad"), [
    ("meta", [True, False]), ("meta", [[1], [2]]), ("meta", [None, 1]), ("meta", [1, 5]),
    ("meta", "ab"), ("continuous", [[0.0, 0.0], [0.0]]), ("continuous", [[True, True]] * 2),
    ("continuous", [[0.0, math.inf], [0.0, 0.0]]), ("continuous", np.zeros((2, 2), complex)),
])
def test_bad_batch_actions_name_the_action_space(action_type: str, bad: object) -> None:
    vec = BatchDrivingEnv(2, obs_type="state", action_type=action_type, camera=SMALL)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"Discrete\(5\)|Box\(-1, 1"):
        vec.step(bad)


# -- the env API: set_state -------------------------------------------------------------


def _state_after(steps: int, action_type: str = "meta") -> Any:
    env = DrivingEnv(obs_type="state", action_type=action_type, camera=SMALL)
    env.reset(seed=4)
    for _ in range(steps):
        env.step(1 if action_type == "meta" else np.zeros(2))
    return env.get_state()


def _damage(state: Any, where: str, value: Any) -> Any:
    bad = copy.deepcopy(state)
    *path, last = where.split(".")
    node = bad
    for part in path:
        node = getattr(node, part)
    if isinstance(node, dict):
        node[last] = value
    else:
        object.__setattr__(node, last, value)  # also into the frozen Scenario
    return bad


def _nan_at(column: str) -> Callable[[Any], np.ndarray]:
    def value(state: Any) -> np.ndarray:
        v = getattr(state.actors, column).astype(np.float64)
        v[0] = np.nan
        return v
    return value


def _rows(make: Callable[[int], Any]) -> Callable[[Any], Any]:
    """A column value of the state's own length."""
    return lambda state: make(len(state.actors))


@pytest.mark.parametrize(("where", "value", "match"), [
    ("ego.speed", math.nan, "ego.speed"), ("ego.x", math.inf, "ego.x"),
    ("ego.wheelbase", 0.0, "ego.wheelbase"), ("ego.steer", "left", "ego.steer"),
    ("actors.s", _nan_at("s"), "actors.s"), ("actors.speed", _nan_at("speed"), "actors.speed"),
    ("actors.s", np.zeros(3), "actors.s"), ("actors.cls", _rows(lambda n: np.full(n, 9)),
                                            "actors.cls"),
    ("actors.active", _rows(lambda n: [True] * n), "actors.active"),
    ("actors.color", _rows(lambda n: np.zeros((n, 3), np.float32)), "actors.color"),
    ("actors.length", _rows(lambda n: np.zeros(n)), "actors.length"),
    ("scenario.speed_limit", math.nan, "speed_limit"),
    ("scenario.n_lanes", 9, "n_lanes"), ("scenario.weather", "snow", "weather"),
    ("step", -1, "step"), ("time", math.nan, "time"), ("rng_state", {}, "rng_state"),
    ("rng_state", {"bit_generator": "MT19937"}, "rng_state"), ("ego", None, "ego"),
    ("extra.prev_accel", math.nan, "prev_accel"), ("extra.dt", math.nan, "dt"),
    ("extra.controller", "fast", "controller"), ("extra.surprise", 1, "surprise"),
])
def test_set_state_refuses_a_damaged_state_and_keeps_its_own(where: str, value: Any,
                                                            match: str) -> None:
    state = _state_after(5)
    if callable(value):
        value = value(state)
    env = DrivingEnv(obs_type="state", action_type="meta", camera=SMALL)
    env.reset(seed=1)
    before = env.get_state()
    with pytest.raises((ValueError, TypeError), match=match):
        env.set_state(_damage(state, where, value))
    after = env.get_state()
    assert after.scenario == before.scenario and after.ego == before.ego
    assert after.actors.s.tobytes() == before.actors.s.tobytes()


def test_set_state_refuses_a_controller_aiming_off_the_road() -> None:
    state = _state_after(3)
    state.extra["controller"].target_lane = state.scenario.n_lanes
    with pytest.raises(ValueError, match="target_lane"):
        DrivingEnv(obs_type="state", action_type="meta", camera=SMALL).set_state(state)


@pytest.mark.parametrize("action_type", ["meta", "continuous"])
def test_a_fresh_gym_make_env_restores_a_state_without_a_reset(action_type: str) -> None:
    """get_state from env A, restore it in a fresh env B (raw and through gym.make),
    step both with the same actions: identical frames and rewards."""
    kwargs = {"obs_type": "camera", "action_type": action_type, "camera": SMALL}
    a = gym.make("drivestack/Urban-v0", **kwargs)
    a.reset(seed=7)
    acts = [1, 3, 0, 1, 4, 2, 1] if action_type == "meta" else [
        np.array([0.1 * k - 0.3, 0.5], np.float32) for k in range(7)]
    for act in acts[:4]:
        a.step(act)
    state = pickle.loads(pickle.dumps(a.unwrapped.get_state()))

    raw = DrivingEnv(family="urban", **kwargs)  # never reset
    raw.set_state(copy.deepcopy(state))
    wrapped = gym.make("drivestack/Urban-v0", **kwargs)  # never reset
    obs_b, _ = wrapped.reset(options={"state": copy.deepcopy(state)})
    assert np.array_equal(obs_b, a.unwrapped._observe())
    for act in acts:
        want = a.step(act)
        for env in (raw, wrapped):
            got = env.step(act)
            assert np.array_equal(got[0], want[0]) and got[1:4] == want[1:4]
    a.close()
    wrapped.close()


def test_reset_with_a_state_and_a_scenario_seed_is_refused() -> None:
    env = DrivingEnv(obs_type="state", camera=SMALL)
    with pytest.raises(ValueError, match="exclude"):
        env.reset(options={"state": _state_after(1, "continuous"), "scenario_seed": 3})


def test_a_bare_world_state_still_restores() -> None:
    bare = World(sample_scenario(family_config("rural"), 3)).get_state()
    env = DrivingEnv(obs_type="state", action_type="meta", camera=SMALL)
    env.set_state(bare)
    obs, *_ = env.step(1)
    assert np.isfinite(obs).all()


def _column_with(column: str, row: Callable[[Any], int],
                 value: Callable[[Any], Any]) -> Callable[[Any], np.ndarray]:
    """The state's own column with one row set to value(state)."""
    def make(state: Any) -> np.ndarray:
        v = getattr(state.actors, column).copy()
        v[row(state)] = value(state)
        return v
    return make


def _cone_shape_on_a_car(state: Any) -> np.ndarray:
    shape = state.actors.shape.copy()
    shape[int(np.flatnonzero(state.actors.cls == 0)[0])] = 8  # "cone" on a car
    return shape


# (where, value, the field named, the value named): states that pass every type and range
# check but do not fit their own scenario or road; each used to be accepted
_INCONSISTENT = [
    pytest.param("actors.target_lane", _column_with("target_lane", lambda s: 0,
                                                    lambda s: s.scenario.n_lanes),
                 "actors.target_lane", "got 4", id="target_lane-past-the-road"),  # IndexError
    pytest.param("actors.track_id", _column_with("track_id", lambda s: 1,
                                                 lambda s: s.actors.track_id[0]),
                 "actors.track_id", "1 is held by rows [0, 1]", id="duplicate-track_id"),
    pytest.param("actors.track_id", _column_with("track_id", lambda s: 2, lambda s: 0),
                 "actors.track_id", "0 at active row 2", id="active-track_id-0"),
    pytest.param("next_track_id", lambda s: int(s.actors.track_id.max()), "next_track_id",
                 "got 12", id="next_track_id-at-an-id"),
    pytest.param("next_track_id", lambda s: 3, "next_track_id", "got 3",
                 id="next_track_id-below-ids"),
    pytest.param("ego.s", 1e5, "ego.s", "got 100000.0", id="ego-past-the-road"),
    pytest.param("ego.d", -40.0, "ego.d", "got -40.0", id="ego-beside-the-road"),
    pytest.param("ego.x", lambda s: s.ego.x + 20.0, "ego", "ego.s=", id="ego-pose-vs-s-d"),
    pytest.param("actors.s", _column_with("s", lambda s: 3, lambda s: 1e5), "actors.s",
                 "100000.0 at active row 3", id="actor-past-the-road"),
    pytest.param("actors.s", _column_with("s", lambda s: 3, lambda s: s.ego.s - 500.0),
                 "actors.s", "at active row 3", id="actor-far-behind-the-ego"),
    pytest.param("actors.d", _column_with("d", lambda s: 3, lambda s: 60.0), "actors.d",
                 "60.0 at active row 3", id="actor-beside-the-road"),
    pytest.param("scenario.n_vehicles", 0, "actors", "n_vehicles=0", id="n_vehicles-0"),
    pytest.param("scenario.n_pedestrians", lambda s: s.scenario.n_pedestrians + 1, "actors",
                 "n_pedestrians=", id="one-pedestrian-too-many"),
    pytest.param("scenario.n_stalled", lambda s: s.scenario.n_stalled + 1, "actors",
                 "n_stalled=", id="one-stalled-too-many"),
    pytest.param("actors.desired_speed", _column_with("desired_speed", lambda s: 0,
                                                      lambda s: 0.0),
                 "actors", "11 rows of moving cars and trucks", id="a-car-parked-by-hand"),
    pytest.param("actors.shape", _cone_shape_on_a_car, "actors.shape", "8 (cone)",
                 id="cone-body-on-a-car"),
    pytest.param("time", 99.0, "time", "99.0", id="time-vs-step"),
]


@pytest.mark.parametrize(("where", "value", "field", "named"), _INCONSISTENT)
def test_set_state_refuses_a_state_that_does_not_fit_its_scenario(
        where: str, value: Any, field: str, named: str) -> None:
    """QA of issue 13 (T3, S9): each of these was accepted; the first one then raised
    IndexError in traffic.py at the next step, the others gave a silently wrong episode
    (an ego 100 km down a 1.5 km road ends at once with route_completion 1.0)."""
    state = _state_after(5)
    if callable(value):
        value = value(state)
    bad = _damage(state, where, value)
    env = DrivingEnv(obs_type="state", action_type="meta", camera=SMALL)
    env.reset(seed=1)  # another scenario: a refused state must not rebuild the road
    before, road = env.get_state(), env.world.road if env.world else None
    with pytest.raises(ValueError, match=field.replace(".", r"\.")) as err:
        env.set_state(bad)
    assert named in str(err.value), str(err.value)
    after = env.get_state()
    assert after.scenario == before.scenario and after.ego == before.ego
    assert after.actors.s.tobytes() == before.actors.s.tobytes()
    assert env.world is not None and env.world.road is road
    fresh = DrivingEnv(obs_type="state", action_type="meta", camera=SMALL)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        fresh.set_state(bad)
    assert fresh.world is None  # a fresh env stays fresh
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        World(state.scenario).set_state(bad)
    env.set_state(state)  # the undamaged state restores


def test_states_the_world_makes_fit_their_road() -> None:
    """The road checks refuse no state the sim makes: actors that dense traffic and many
    obstacles put past the end of a short road at the start, a batch's worlds."""
    base = sample_scenario(family_config("rural"), 2)
    crowded = replace(base, road_length=200.0, n_lanes=1, n_vehicles=60, n_cone_groups=12,
                      n_stalled=6)
    world, other = World(crowded), World(base)
    assert world.get_state().actors.s.max() > world.road.s_max  # placed past the end
    for _ in range(20):
        other.set_state(world.get_state())
        world.step(0.0, 0.5)
    batch = BatchWorld([base, crowded, sample_scenario(family_config("highway"), 5)])
    for _ in range(30):
        batch.step(np.zeros(3), np.full(3, 0.5))
    for b in range(len(batch)):
        other.set_state(batch.world_state(b))
    env = DrivingEnv(obs_type="state", action_type="meta", camera=SMALL)
    env.set_state(batch.world_state(2))
    assert np.isfinite(env.step(1)[0]).all()


# -- properties: launch files -----------------------------------------------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324]),
    st.text(max_size=12), st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "0", "mps",
                                           "highway", "day", "fog", "ppo", "rl", "jpg"]),
)
YAML_VALUES = st.recursive(
    _SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)


def _keys(model: type[BaseModel], prefix: str = "", depth: int = 0) -> list[str]:
    """Every dotted key of a launch model, nested models included."""
    out = []
    for name, info in model.model_fields.items():
        out.append(prefix + name)
        nested = model_in(info.annotation)
        if nested is not None and depth < 2:
            out += _keys(nested, f"{prefix}{name}.", depth + 1)
    return out


def _nest(key: str, value: Any) -> dict[str, Any]:
    *parents, last = key.split(".")
    data: dict[str, Any] = {last: value}
    for part in reversed(parents):
        data = {part: data}
    return data


def _floats_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_floats_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_floats_finite(v) for v in value)
    return True


def _check_load(path: Path, model: type[BaseModel]) -> None:
    """The contract: a valid config with finite floats, or one bounded LaunchConfigError."""
    try:
        cfg = load_launch(path, model)
    except LaunchConfigError as exc:
        assert 0 < len(str(exc)) <= MAX_MESSAGE
        return
    assert isinstance(cfg, model)
    assert _floats_finite(cfg.model_dump()), cfg


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "launch.yaml"


def _launch_property(examples: int) -> Callable[..., None]:
    @settings(max_examples=examples, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(data=st.data())
    def check(fuzz_file: Path, model: type[BaseModel], data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(_keys(model)), min_size=1, max_size=3))
        doc: dict[str, Any] = {}
        for key in keys:
            nested = _nest(key, data.draw(YAML_VALUES, label=key))
            top = next(iter(nested))
            if isinstance(doc.get(top), dict) and isinstance(nested[top], dict):
                doc[top].update(nested[top])
            else:
                doc.update(nested)
        fuzz_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
        _check_load(fuzz_file, model)

    return check


test_any_yaml_value_loads_or_is_one_bounded_error = pytest.mark.parametrize(
    "model", LAUNCH_MODELS, ids=lambda m: m.__name__)(_launch_property(200))
test_any_yaml_value_loads_or_is_one_bounded_error_long = pytest.mark.slow(
    pytest.mark.parametrize("model", LAUNCH_MODELS, ids=lambda m: m.__name__)(
        _launch_property(2_000)))


def _float_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every float in a plain (JSON-like) dump."""
    if isinstance(value, float):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _float_leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _float_leaves(v, (*path, i))


def _optional_floats(model: type[BaseModel], path: tuple[str, ...] = ()
                     ) -> Iterator[tuple[str, ...]]:
    """Paths of `float | None` fields whose default is None (no float in the dump)."""
    for name, info in model.model_fields.items():
        nested = model_in(info.annotation)
        if nested is not None:
            if info.default is not None:  # an optional section left out has no floats
                yield from _optional_floats(nested, (*path, name))
        elif info.default is None and float in typing.get_args(info.annotation):
            yield (*path, name)


FLOAT_PATHS = {m: sorted({*_float_leaves(m().model_dump(mode="json")), *_optional_floats(m)},
                         key=str) for m in LAUNCH_MODELS}
"""Every float of each launch model (from its defaults and its optional float fields)."""


def _with(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize("model", [m for m in LAUNCH_MODELS if FLOAT_PATHS[m]],
                         ids=lambda m: m.__name__)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_float_anywhere_loads_finite_or_is_one_bounded_error(
        fuzz_file: Path, model: type[BaseModel], data: st.DataObject) -> None:
    """Every float of a full launch file, set to any float (NaN, infinities, huge, tiny,
    negative): the config loads with finite floats in range, or one clear error."""
    path = data.draw(st.sampled_from(FLOAT_PATHS[model]), label="key")
    value = data.draw(st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                                st.floats()), label="value")
    doc = _with(model().model_dump(mode="json"), path, value)
    fuzz_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    _check_load(fuzz_file, model)


def test_every_launch_model_has_floats_to_fuzz() -> None:
    assert all(FLOAT_PATHS[m] for m in LAUNCH_MODELS if m is not SuiteConfig)
    assert ("camera", "mount_height") in FLOAT_PATHS[RunConfig]
    assert ("scenario", "speed_limit", 1) in FLOAT_PATHS[RunConfig]
    assert ("detector", "lr0") in FLOAT_PATHS[TrainPerceptionConfig]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet="{}[]:-&*!|>'\",# \n.a1",
                                                     max_size=120)))
def test_any_text_as_a_launch_file_loads_or_is_one_bounded_error(fuzz_file: Path,
                                                                 text: str) -> None:
    fuzz_file.write_text(text, encoding="utf-8")
    _check_load(fuzz_file, RunConfig)


# -- properties: env actions ------------------------------------------------------------

_DTYPES = st.one_of(npst.floating_dtypes(), npst.integer_dtypes(), npst.boolean_dtypes(),
                    npst.complex_number_dtypes(), npst.unicode_string_dtypes(max_len=2))
ACTIONS = st.one_of(
    npst.arrays(_DTYPES, npst.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)),
    npst.arrays(npst.floating_dtypes(), st.sampled_from([(), (1,), (2,), (2, 2)])),
    npst.arrays(np.int64, st.sampled_from([(), (2,)]), elements=st.integers(-2, 6)),
    _SCALARS, st.lists(st.one_of(st.floats(), st.integers(-3, 7)), max_size=3),
    st.integers(-2, 7),
)


def _is_meta(action: Any) -> bool:
    """What `meta_action` accepts: one whole number in 0..4 (no bool, str, axis)."""
    a = action
    if isinstance(a, np.ndarray):
        if a.shape != () or a.dtype.kind not in "iuf":
            return False
        a = a.item()
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(a, bool) or not isinstance(a, int | float):
        return False
    return math.isfinite(a) and float(a).is_integer() and 0 <= a <= 4


def _is_continuous(action: Any) -> bool:
    try:
        a = np.asarray(action)
    except (ValueError, TypeError):
        return False
    return a.shape == (2,) and a.dtype.kind in "iuf" and bool(
        np.isfinite(a.astype(np.float64)).all())


def _step_or_clear_error(env: gym.Env, action: Any, valid: bool, space: str) -> None:
    if not valid:
        with pytest.raises(ValueError, match=space):
            env.step(action)
        return
    obs, reward, terminated, truncated, _ = env.step(action)
    assert np.isfinite(obs).all() and math.isfinite(reward)
    if terminated or truncated:
        env.reset()


def _action_property(examples: int) -> Callable[..., None]:
    @settings(max_examples=examples, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(action=ACTIONS)
    def check(meta_env: gym.Env, cont_env: gym.Env, action: Any) -> None:
        _step_or_clear_error(meta_env, action, _is_meta(action), r"Discrete\(5\)")
        _step_or_clear_error(cont_env, action, _is_continuous(action), r"Box\(-1, 1")

    return check


test_any_action_steps_or_is_one_clear_error = _action_property(400)
test_any_action_steps_or_is_one_clear_error_long = pytest.mark.slow(_action_property(3_000))


@pytest.fixture(scope="module")
def vec_envs() -> dict[str, BatchDrivingEnv]:
    envs = {t: BatchDrivingEnv(2, obs_type="state", action_type=t, camera=SMALL)
            for t in ("meta", "continuous")}
    for env in envs.values():
        env.reset(seed=0)
    return envs


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.one_of(
    ACTIONS, npst.arrays(_DTYPES, st.sampled_from([(2,), (2, 2), (2, 1), (1, 2)]))))
def test_any_batch_action_steps_or_is_one_clear_error(vec_envs: dict[str, BatchDrivingEnv],
                                                      action: Any) -> None:
    for action_type, env in vec_envs.items():
        try:
            a = np.asarray(action)
        except (ValueError, TypeError):
            a = np.asarray(None)
        if action_type == "meta":
            valid = a.shape == (2,) and all(_is_meta(x) for x in a)
        else:
            valid = a.shape == (2, 2) and all(_is_continuous(x) for x in a)
        if not valid:
            with pytest.raises(ValueError, match=r"Discrete\(5\)|Box\(-1, 1"):
                env.step(action)
            continue
        obs, rewards, *_ = env.step(action)
        assert np.isfinite(obs).all() and np.isfinite(rewards).all()


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """write_yaml(text) -> the path of a launch file holding `text`."""

    def write(text: str, name: str = "launch.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write

