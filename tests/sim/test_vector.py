"""BatchDrivingEnv: N envs in one BatchWorld behave as N DrivingEnvs, byte for byte,
through gymnasium's next-step autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401  (registers the ids and their vector entry point)
from sim.env import DrivingEnv
from sim.vector import BatchDrivingEnv


def _compare(family: str, obs_type: str, action_type: str, steps: int, seed: int,
             same_step: bool = False) -> int:
    n = 3
    vec = BatchDrivingEnv(n, family=family, obs_type=obs_type, action_type=action_type,
                          autoreset_mode="SameStep" if same_step else "NextStep")
    singles = [DrivingEnv(family=family, obs_type=obs_type, action_type=action_type)
               for _ in range(n)]
    v_obs, _ = vec.reset(seed=seed)
    s_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(seed)
    done = np.zeros(n, bool)
    ends = 0
    for step in range(steps):
        for i in range(n):
            _equal_obs(v_obs, i, s_obs[i], obs_type, f"step {step} env {i}")
        if action_type == "continuous":
            actions = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
            actions[:, 0] *= 0.3  # steer gently: episodes last a while, some still end
        else:
            actions = rng.integers(0, 5, n)
        v_obs, v_rew, v_term, v_trunc, v_info = vec.step(actions)
        for i, env in enumerate(singles):
            if done[i]:  # next-step autoreset: the vector env restarted env i
                s_obs[i], info = env.reset()
                assert v_rew[i] == 0.0 and not v_term[i] and not v_trunc[i]
                done[i] = False
                continue
            s_obs[i], rew, term, trunc, info = env.step(actions[i])
            assert v_rew[i] == pytest.approx(rew, abs=1e-12), (step, i)
            assert (v_term[i], v_trunc[i]) == (term, trunc), (step, i)
            if same_step and (term or trunc):  # restarted at once: the end goes to final_*
                assert v_info["_final_obs"][i]
                final = v_info["final_obs"][i]
                for key in ("camera", "state") if obs_type == "dict" else (None,):
                    np.testing.assert_array_equal(final[key] if key else final,
                                                  s_obs[i][key] if key else s_obs[i])
                assert v_info["final_info"]["events"]["collision"][i] == info["events"][
                    "collision"]
                s_obs[i], _ = env.reset()
                ends += 1
                continue
            for k, v in info["events"].items():
                if k in v_info["events"]:
                    assert v_info["events"][k][i] == pytest.approx(v), (step, i, k)
            if obs_type != "state":
                np.testing.assert_array_equal(v_info["ground_truth"][i]["boxes_xyxy"],
                                              info["ground_truth"]["boxes_xyxy"])
            done[i] = term or trunc
            ends += int(done[i])
    return ends


def _equal_obs(v_obs: object, i: int, s_obs: object, obs_type: str, where: str) -> None:
    if obs_type == "dict":
        np.testing.assert_array_equal(v_obs["camera"][i], s_obs["camera"], err_msg=where)  # type: ignore[index]
        np.testing.assert_array_equal(v_obs["state"][i], s_obs["state"], err_msg=where)  # type: ignore[index]
    else:
        np.testing.assert_array_equal(v_obs[i], s_obs, err_msg=where)  # type: ignore[index]


def test_vector_envs_equal_single_envs_through_autoresets() -> None:
    ends = _compare("highway", "dict", "continuous", steps=90, seed=5)
    assert ends >= 1, "the comparison must cover an autoreset"


def test_same_step_autoreset_matches_single_envs() -> None:
    ends = _compare("highway", "dict", "continuous", steps=90, seed=5, same_step=True)
    assert ends >= 1, "the comparison must cover an autoreset"


def test_meta_actions_and_state_observations_match_too() -> None:
    _compare("urban", "state", "meta", steps=40, seed=1)


def test_make_vec_uses_the_batched_env_and_is_deterministic() -> None:
    def rollout() -> np.ndarray:
        envs = gym.make_vec("drivestack/Rural-v0", num_envs=2,
                            vectorization_mode="vector_entry_point")
        assert isinstance(envs, BatchDrivingEnv)
        assert envs.observation_space.shape == (2, 192, 320, 3)
        assert envs.action_space.shape == (2, 2)
        obs, _ = envs.reset(seed=3)
        for _ in range(5):
            obs, *_ = envs.step(np.zeros((2, 2), np.float32))
        return obs

    np.testing.assert_array_equal(rollout(), rollout())


def test_bad_input_gives_one_clear_error() -> None:
    vec = BatchDrivingEnv(2)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros((2, 2)))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        vec.step(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        vec.step(np.array([[0.0, np.nan], [0.0, 0.0]]))
    meta = BatchDrivingEnv(2, action_type="meta")
    meta.reset(seed=0)
    for bad in ([0, 7], [0, 1.5], ["a", "b"], [0]):
        with pytest.raises(ValueError, match="integers in 0..4"):
            meta.step(np.array(bad))
    with pytest.raises(ValueError, match="3 seeds for 2 envs"):
        vec.reset(seed=[1, 2, 3])
    with pytest.raises(ValueError, match="num_envs"):
        BatchDrivingEnv(0)
    with pytest.raises(ValueError, match="obs_type"):
        BatchDrivingEnv(2, obs_type="lidar")
    with pytest.raises(ValueError):
        BatchDrivingEnv(2, autoreset_mode="Sometimes")
