"""DrivingEnv: the gymnasium and SB3 contracts, input validation, info contents,
rendering, termination and truncation."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import fields

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from sim import ENV_IDS
from sim.env import DrivingEnv
from sim.observation import STATE_DIM
from sim.rewards import RewardWeights
from sim.types import CAR
from tests.conftest import SMALL_CAMERA

OBS_TYPES = ["camera", "state", "dict"]
ACTION_TYPES = ["continuous", "meta"]
EVENT_KEYS = {"collision", "off_road", "min_ttc", "hard_brake", "npc_collisions",
              "collided_track_ids"}
GT_KEYS = {"boxes_xyxy", "class_ids", "track_ids", "distance", "visible_fraction",
           "truncation", "occluded", "lanes", "ego_lane_offset", "ego_heading_error", "ego_lane"}
LANE_KEYS = {"rows", "xs", "visible", "boundary_ids", "marking", "ego_boundaries", "painted"}


@pytest.mark.parametrize("action_type", ACTION_TYPES)
@pytest.mark.parametrize("obs_type", OBS_TYPES)
@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_gymnasium_and_sb3_env_checkers_pass(env_id: str, obs_type: str,
                                             action_type: str) -> None:
    env = gym.make(env_id, obs_type=obs_type, action_type=action_type,
                   camera=dict(SMALL_CAMERA), render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning is a failure
        gym_check_env(env.unwrapped)
    sb3_check_env(env.unwrapped, warn=True, skip_render_check=False)
    env.close()


def test_registered_ids_and_families() -> None:
    assert set(ENV_IDS.values()) == {"highway", "rural", "urban"}
    for env_id, family in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.kwargs["family"] == family
        env = gym.make(env_id, obs_type="state")
        env.reset(seed=0)
        assert env.unwrapped.world.scenario.family == family
        env.close()


@pytest.fixture
def cont_env(make_env: Callable[..., gym.Env]) -> gym.Env:
    env = make_env("highway", obs_type="camera")
    env.reset(seed=0)
    return env


@pytest.mark.parametrize("bad", [[np.nan, 0.0], [0.0, np.inf], [np.nan, np.nan]])
def test_nan_or_inf_action_raises_a_clear_error(cont_env: gym.Env, bad: list[float]) -> None:
    with pytest.raises(ValueError, match="NaN or inf"):
        cont_env.step(np.array(bad, np.float32))


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((2, 2)), np.zeros(1), 0.5])
def test_wrong_action_shape_raises(cont_env: gym.Env, bad: object) -> None:
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        cont_env.step(bad)


def test_continuous_actions_out_of_the_box_are_clipped(cont_env: gym.Env) -> None:
    cont_env.step(np.array([5.0, -5.0], np.float32))
    ego = cont_env.unwrapped.world.state.ego
    assert ego.steer == pytest.approx(0.55)  # MAX_STEER
    assert ego.accel >= -8.0 - 1e-9


@pytest.mark.parametrize("bad", [5, -1, 1.5, np.nan, [1, 2]])
def test_meta_action_out_of_range_raises(make_env: Callable[..., gym.Env], bad: object) -> None:
    env = make_env("rural", obs_type="state", action_type="meta")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="meta action"):
        env.step(bad)


def test_meta_actions_change_the_target_lane_and_speed(make_env: Callable[..., gym.Env]) -> None:
    env = make_env("highway", obs_type="state", action_type="meta",
                   scenario={"lanes": (3, 3), "vehicles": (0, 0)})
    env.reset(seed=1)
    ctrl = env.unwrapped._controller
    lane0, v0 = ctrl.target_lane, ctrl.target_speed
    env.step(3)  # FASTER
    assert ctrl.target_speed == pytest.approx(v0 + 2.5)
    env.step(4)  # SLOWER
    assert ctrl.target_speed == pytest.approx(v0)
    move = 0 if lane0 < 2 else 2  # LANE_LEFT if there is room, else LANE_RIGHT
    env.step(move)
    target = ctrl.target_lane
    assert target == lane0 + (1 if move == 0 else -1)
    for _ in range(90):
        env.step(1)  # IDLE: the controller drives into the target lane
    world = env.unwrapped.world
    assert int(world.road.lane_of(world.state.ego.d)) == target


def test_step_before_reset_raises_runtime_error() -> None:
    env = DrivingEnv(obs_type="state")
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        env.get_state()
    env_r = DrivingEnv(obs_type="state", render_mode="rgb_array")
    with pytest.raises(RuntimeError, match="reset"):
        env_r.render()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"obs_type": "pixels"}, "camera, state, dict"),
        ({"render_mode": "human"}, "rgb_array"),
        ({"family": "offroad"}, "highway, rural, urban"),
        ({"action_type": "joystick"}, "continuous"),
        ({"reward_weights": {"speed": 1.0}}, "progress"),
        ({"camera": {"width": 4}}, "width, height"),
        ({"scenario": {"lanes": (0, 9)}}, "lanes"),
    ],
)
def test_bad_constructor_arguments_name_the_allowed_values(kwargs: dict[str, object],
                                                           match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DrivingEnv(**kwargs)  # type: ignore[arg-type]


def test_info_has_events_rewards_and_ground_truth_contract(cont_env: gym.Env) -> None:
    _, reward, _, _, info = cont_env.step(np.array([0.0, 0.2], np.float32))
    assert set(info["events"]) == EVENT_KEYS
    names = {f.name for f in fields(RewardWeights)}
    assert set(info["rewards"]) == names
    w = RewardWeights()
    assert reward == pytest.approx(sum(getattr(w, k) * v for k, v in info["rewards"].items()))
    gt = info["ground_truth"]
    assert set(gt) == GT_KEYS
    n = gt["boxes_xyxy"].shape[0]
    assert gt["boxes_xyxy"].dtype == np.float32 and gt["boxes_xyxy"].shape == (n, 4)
    for key, dtype in (("class_ids", np.int64), ("track_ids", np.int64),
                       ("visible_fraction", np.float32), ("distance", np.float32),
                       ("truncation", np.float32), ("occluded", np.bool_)):
        assert gt[key].dtype == dtype, key
        assert gt[key].shape == (n,), key
    assert n > 0, "seed 0 shows traffic ahead"
    assert set(gt["lanes"]) == LANE_KEYS
    b, r = gt["lanes"]["xs"].shape
    assert gt["lanes"]["rows"].shape == (r,) and gt["lanes"]["visible"].shape == (b, r)
    for k in ("step", "speed", "route_completion", "scenario"):
        assert k in info
    assert 0.0 <= info["route_completion"] <= 1.0


def test_reset_info_and_state_mode_labels(make_env: Callable[..., gym.Env]) -> None:
    env = make_env("urban", obs_type="state")
    obs, info = env.reset(seed=3)
    assert obs.shape == (STATE_DIM,) and obs.dtype == np.float32
    assert info["rewards"] == {} and set(info["events"]) == EVENT_KEYS
    assert "ground_truth" not in info, "state obs skips rendering by default"
    env2 = make_env("urban", obs_type="state", labels=True)
    _, info2 = env2.reset(seed=3)
    assert set(info2["ground_truth"]) == GT_KEYS


def test_render_returns_the_birdseye_view(make_env: Callable[..., gym.Env]) -> None:
    env = make_env("highway", obs_type="state", render_mode="rgb_array")
    env.reset(seed=2)
    img = env.render()
    assert isinstance(img, np.ndarray) and img.shape == (480, 480, 3) and img.dtype == np.uint8
    assert img.std() > 5, "not a blank image"
    env.step(np.array([0.0, 0.0], np.float32))
    assert not np.array_equal(env.render(), img), "the view follows the episode"
    quiet = make_env("highway", obs_type="state")
    quiet.reset(seed=2)
    assert quiet.render() is None


def _clear_actors(env: gym.Env) -> None:
    a = env.unwrapped.world.state.actors
    a.active[:] = False
    a.desired_speed[:] = 0.0  # nothing respawns
    a.cls[:] = CAR


def _drive_until_terminated(env: gym.Env, action: list[float], max_steps: int
                            ) -> tuple[float, bool, dict]:
    """Repeat `action` until the episode terminates; fail the test if it never does."""
    for _ in range(max_steps):
        _, reward, terminated, truncated, info = env.step(np.array(action, np.float32))
        if terminated:
            return float(reward), bool(truncated), info
    pytest.fail(f"action {action} never terminated the episode in {max_steps} steps")


def test_collision_with_a_stalled_car_terminates(make_env: Callable[..., gym.Env]) -> None:
    env = make_env("highway", obs_type="state")
    env.reset(seed=4)
    _clear_actors(env)
    w = env.unwrapped.world
    a, e = w.state.actors, w.state.ego
    a.active[0], a.s[0], a.d[0], a.speed[0], a.v_lat[0] = True, e.s + 25.0, e.d, 0.0, 0.0
    a.length[0], a.width[0], a.height[0] = 4.5, 1.8, 1.45
    stalled = int(a.track_id[0])
    reward, truncated, info = _drive_until_terminated(env, [0.0, 1.0], 120)
    assert info["step"] < 60
    ev = info["events"]
    assert ev["collision"] and not ev["off_road"] and not truncated
    assert ev["collided_track_ids"] == [stalled]
    assert info["rewards"]["collision"] == 1.0
    assert reward < -5.0


def test_leaving_the_road_terminates(make_env: Callable[..., gym.Env]) -> None:
    env = make_env("rural", obs_type="state")
    env.reset(seed=4)
    _clear_actors(env)
    _, truncated, info = _drive_until_terminated(env, [1.0, 0.3], 300)
    ev = info["events"]
    assert ev["off_road"] and not ev["collision"] and not truncated
    w = env.unwrapped.world
    assert abs(w.state.ego.d) > w.road.paved_half_width
    assert info["step"] < 150


def test_episode_is_truncated_at_its_time_limit(make_env: Callable[..., gym.Env]) -> None:
    env = make_env("highway", obs_type="state", scenario={"episode_seconds": 1.0})
    env.reset(seed=5)
    _clear_actors(env)
    steps = 0
    while True:
        _, _, terminated, truncated, _ = env.step(np.array([0.0, 0.0], np.float32))
        steps += 1
        assert not terminated
        if truncated:
            break
        assert steps < 100
    assert steps == 15  # 1 s at 15 Hz


def test_episode_is_truncated_at_the_route_end(make_env: Callable[..., gym.Env]) -> None:
    from sim.autopilot import Autopilot

    env = make_env("highway", obs_type="state", scenario={"road_length": 200.0})
    env.reset(seed=6)
    _clear_actors(env)
    ap = Autopilot()
    for _ in range(600):
        _, _, terminated, truncated, info = env.step(ap.act(env.unwrapped.world))
        assert not terminated
        if truncated:
            break
    assert truncated
    assert info["route_completion"] == 1.0
    assert env.unwrapped.world.state.ego.s >= 200.0


def _mutable_leaves(obj: object, path: str = "info") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    if isinstance(obj, (dict, list, np.ndarray)):
        out.append((path, obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _mutable_leaves(v, f"{path}[{k!r}]")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _mutable_leaves(v, f"{path}[{i}]")
    return out


@pytest.mark.parametrize("obs_type", OBS_TYPES)
def test_infos_share_no_mutable_object_between_calls(make_env: Callable[..., gym.Env],
                                                     obs_type: str) -> None:
    """Users keep infos: reset and step must hand out fresh dicts, lists and arrays."""
    env = make_env("urban", obs_type=obs_type)
    _, info0 = env.reset(seed=0)
    _, _, _, _, info1 = env.step(np.zeros(2, np.float32))
    _, _, _, _, info2 = env.step(np.zeros(2, np.float32))
    ids0 = {id(o): p for p, o in _mutable_leaves(info0)}
    for later in (info1, info2):
        shared = [p for p, o in _mutable_leaves(later) if id(o) in ids0]
        assert not shared, f"shared with the reset info: {shared}"
    ids1 = {id(o) for _, o in _mutable_leaves(info1)}
    assert not [p for p, o in _mutable_leaves(info2) if id(o) in ids1]
