"""Vector envs in spawned subprocesses: gymnasium AsyncVectorEnv and SB3 SubprocVecEnv."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv

from sim.observation import STATE_DIM
from tests.sim import _vec_helpers as helpers


def _single_reset(env_id: str, seed: int, **kwargs: object) -> np.ndarray:
    env = gym.make(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    env.close()
    return obs


@pytest.mark.parametrize("thunk", [helpers.make_prefixed, helpers.make_plain],
                         ids=["sim-prefixed-id", "plain-id"])
def test_async_vector_env_spawn_state_obs(thunk) -> None:  # type: ignore[no-untyped-def]
    venv = AsyncVectorEnv([thunk, thunk], context="spawn")
    try:
        obs, infos = venv.reset(seed=[10, 11])
        assert obs.shape == (2, STATE_DIM) and obs.dtype == np.float32
        # a child gives the same first observation as an env made in this process
        assert np.array_equal(obs[0], _single_reset("drivestack/Highway-v0", 10,
                                                    obs_type="state"))
        assert not np.array_equal(obs[0], obs[1])
        venv.action_space.seed(0)
        for _ in range(5):
            obs, rew, term, trunc, infos = venv.step(venv.action_space.sample())
            assert obs.shape == (2, STATE_DIM)
            assert rew.shape == (2,) and np.all(np.isfinite(rew))
            assert term.dtype == bool and trunc.dtype == bool
        assert "events" in infos
    finally:
        venv.close(terminate=True)


def test_async_vector_env_spawn_camera_obs() -> None:
    venv = AsyncVectorEnv([helpers.make_camera, helpers.make_camera], context="spawn")
    try:
        h, w = helpers.SMALL["height"], helpers.SMALL["width"]
        obs, _ = venv.reset(seed=3)
        assert obs.shape == (2, h, w, 3) and obs.dtype == np.uint8
        assert np.array_equal(obs[0], _single_reset("drivestack/Urban-v0", 3,
                                                    camera=dict(helpers.SMALL)))
        for _ in range(3):
            obs, rew, *_ = venv.step(np.zeros((2, 2), np.float32))
        assert obs.std() > 1.0, "real frames, not blank buffers"
    finally:
        venv.close(terminate=True)  # a failed reset_wait would make a plain close hang


def test_sync_vector_env_camera_obs_batches_infos() -> None:
    """Same as above in-process: gymnasium batches info arrays per key, so every info
    entry must stack across envs (ground truth has one row per object, which varies)."""
    venv = gym.vector.SyncVectorEnv([helpers.make_camera, helpers.make_camera])
    try:
        obs, infos = venv.reset(seed=3)
        assert obs.shape[0] == 2
        obs, *_ , infos = venv.step(np.zeros((2, 2), np.float32))
        assert "ground_truth" in infos
    finally:
        venv.close()


def test_sb3_subproc_vec_env_spawn() -> None:
    from stable_baselines3.common.vec_env import SubprocVecEnv

    venv = SubprocVecEnv([helpers.make_plain_continuous_rural] * 2, start_method="spawn")
    try:
        venv.seed(5)
        obs = venv.reset()
        assert obs.shape == (2, STATE_DIM)
        rng = np.random.default_rng(0)
        for _ in range(5):
            actions = rng.uniform(-0.2, 0.2, (2, 2)).astype(np.float32)
            obs, rewards, dones, infos = venv.step(actions)
            assert obs.shape == (2, STATE_DIM) and np.all(np.isfinite(obs))
            assert rewards.shape == (2,) and dones.shape == (2,)
            assert len(infos) == 2 and "events" in infos[0]
    finally:
        venv.close()


def test_helpers_module_does_not_import_sim() -> None:
    """The prefixed-id test is only meaningful if the helper module leaves `sim` alone."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(helpers.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {
        n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
    assert "sim" not in names and not any(str(n).startswith("sim.") for n in names)
    assert "tests.sim._vec_helpers" in sys.modules
