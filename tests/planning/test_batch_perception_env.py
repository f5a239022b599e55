"""The batched planner env with perception in the loop (issue 17): frames drawn by the
device camera (here on the CPU) and perceived as a batch give, env by env, the features,
rewards and ends of `make_planner_env("perception")`, through an episode end."""

from __future__ import annotations

import numpy as np
import pytest

from planning.batch_vec import BatchPlannerVecEnv
from planning.wrappers import make_planner_env


def test_perception_batch_matches_the_per_env_stack() -> None:
    families = ("urban", "highway", "rural")
    n = 3
    # every feature, the memory included (the default set is a prefix of them)
    vec = BatchPlannerVecEnv(n, families=families, source="perception", feature_set="memory")
    vec.seed(300)
    obs = vec.reset()
    envs = [make_planner_env("perception", families[i], feature_set="memory") for i in range(n)]
    one = [e.reset(seed=300 + i)[0] for i, e in enumerate(envs)]
    # the batched ONNX lane model may round its last bits otherwise than at batch 1
    np.testing.assert_allclose(obs, np.stack(one), atol=1e-4)
    rng = np.random.default_rng(1)
    alive = np.ones(n, bool)
    compared = 0
    for t in range(40):
        actions = rng.integers(0, 5, n) if t % 4 else np.full(n, 0)  # lane changes left
        obs, rewards, dones, infos = vec.step(actions)
        for i, env in enumerate(envs):
            if not alive[i]:
                continue
            o, r, term, trunc, _ = env.step(int(actions[i]))
            assert bool(dones[i]) == (term or trunc)
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-5)
            if term or trunc:
                np.testing.assert_allclose(infos[i]["terminal_observation"], o, atol=1e-4)
                alive[i] = False
            else:
                np.testing.assert_allclose(obs[i], o, atol=1e-4)
            compared += 1
    assert compared > 40 and not alive.all(), "steps compared, through an episode end"
    assert np.abs(obs).sum() > 0
    vec.close()


def test_perception_source_refuses_the_shield() -> None:
    with pytest.raises(ValueError, match="shield"):
        BatchPlannerVecEnv(2, source="perception", shield=True)


def test_ppo_trains_with_perception_in_the_loop(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from planning.train import PlannerTraining, train_planner

    cfg = PlannerTraining(out=tmp_path / "run", source="perception", n_envs=2,
                          total_timesteps=64, n_steps=16, batch_size=32, n_epochs=1,
                          eval_every=10_000, eval_episodes=1, checkpoint_every=10_000,
                          env_kwargs={"perceiver_device": "cpu", "render_threads": 1,
                                      "scenario": {"episode_seconds": 6.0}})
    summary = train_planner(cfg)
    assert summary["completed"] and summary["timesteps"] >= 64
    assert (tmp_path / "run" / "final.zip").is_file()
