"""BatchVecEnv: a BatchDrivingEnv behind SB3's VecEnv, same-step autoreset included."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402

from planning.batch_vec import BatchVecEnv  # noqa: E402
from sim.env import DrivingEnv  # noqa: E402


def test_steps_match_single_envs_and_hand_over_terminal_observations() -> None:
    vec = BatchVecEnv(2, family="highway", obs_type="state")
    vec.seed(4)
    obs = vec.reset()
    singles = [DrivingEnv(family="highway", obs_type="state") for _ in range(2)]
    s_obs = [env.reset(seed=4 + i)[0] for i, env in enumerate(singles)]
    np.testing.assert_array_equal(obs, np.stack(s_obs))
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(80):
        actions = rng.uniform(-1, 1, (2, 2)).astype(np.float32)
        obs, rewards, dones, infos = vec.step(actions)
        for i, env in enumerate(singles):
            o, r, term, trunc, _ = env.step(actions[i])
            assert rewards[i] == pytest.approx(r, abs=1e-5)
            assert dones[i] == (term or trunc)
            if dones[i]:
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                assert infos[i]["TimeLimit.truncated"] == (trunc and not term)
                o, _ = env.reset()
                ends += 1
            np.testing.assert_array_equal(obs[i], o)
    assert ends >= 1, "the comparison must cover an episode end"


def test_ppo_learns_on_the_batch() -> None:
    vec = BatchVecEnv(4, family="rural", obs_type="state")
    model = PPO("MlpPolicy", vec, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    with pytest.raises(AttributeError, match="vec.env"):
        vec.env_method("reset")
