"""The batched planner env (`BatchPlannerVecEnv`): env by env the same observations,
rewards and ends as `make_planner_env` with the privileged source; deterministic emulated
noise; and a short PPO run on it through `train_planner`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from planning.batch_vec import BatchPlannerVecEnv
from planning.features import FEATURE_NAMES
from planning.train import PlannerTraining, train_planner
from planning.wrappers import make_planner_env


@pytest.mark.parametrize("feature_set", ["control", "memory"])
def test_privileged_batch_matches_the_per_env_stack(feature_set: str) -> None:
    families = ("urban", "highway")
    n = 4
    vec = BatchPlannerVecEnv(n, families=families, source="privileged", feature_set=feature_set)
    vec.seed(100)
    obs = vec.reset()
    envs = [make_planner_env("privileged", families[i % 2], feature_set=feature_set)
            for i in range(n)]
    one = [e.reset(seed=100 + i)[0] for i, e in enumerate(envs)]
    np.testing.assert_array_equal(obs, np.stack(one))
    rng = np.random.default_rng(0)
    alive = np.ones(n, bool)
    compared = ended = 0
    for _ in range(120):
        actions = rng.integers(0, 5, n)
        obs, rewards, dones, infos = vec.step(actions)
        for i, env in enumerate(envs):
            if not alive[i]:
                continue
            o, r, term, trunc, _ = env.step(int(actions[i]))
            assert bool(dones[i]) == (term or trunc)
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-5)
            if term or trunc:  # the last observation of the episode
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                assert infos[i]["TimeLimit.truncated"] == (trunc and not term)
                if feature_set == "memory":  # the next episode starts with no memory
                    assert obs[i][FEATURE_NAMES.index("time")] == 0.0
                    assert o[FEATURE_NAMES.index("time")] > 0.0
                alive[i] = False
                ended += 1
            else:
                np.testing.assert_array_equal(obs[i], o)
                compared += 1
    assert compared > 200 and ended >= 1, (compared, ended)


@pytest.mark.parametrize("shield", [True, "advise"])
def test_the_batched_shield_matches_the_per_env_shield(shield: bool | str) -> None:
    """shield=True: each env's actions pass its own SafetyShield as `ShieldedActions`
    filters them per env: the same executed actions, vetoes, observations and ends.
    shield="advise": the same verdicts, and the policy's own actions run."""
    families = ("urban", "highway", "rural")
    n = 3
    vec = BatchPlannerVecEnv(n, families=families, source="privileged", shield=shield,
                             shield_penalty=1.0)
    vec.seed(300)
    obs = vec.reset()
    envs = [make_planner_env("privileged", families[i], shield=shield, shield_penalty=1.0)
            for i in range(n)]
    np.testing.assert_array_equal(obs, np.stack([e.reset(seed=300 + i)[0]
                                                 for i, e in enumerate(envs)]))
    rng = np.random.default_rng(1)
    alive = np.ones(n, bool)
    vetoed = compared = 0
    for _ in range(150):
        actions = rng.integers(0, 5, n)
        obs, rewards, dones, infos = vec.step(actions)
        for i, env in enumerate(envs):
            if not alive[i]:
                continue
            o, r, term, trunc, info = env.step(int(actions[i]))
            assert infos[i]["executed_action"] == info["executed_action"]
            assert infos[i]["shield_vetoed"] == info["shield_vetoed"]
            if shield == "advise":
                assert info["executed_action"] == actions[i]
            vetoed += int(info["shield_vetoed"])
            assert bool(dones[i]) == (term or trunc)
            assert rewards[i] == pytest.approx(r, rel=1e-5, abs=1e-5)
            if term or trunc:
                alive[i] = False
            else:  # a heading error may differ in its last float32 bit (batched trig)
                np.testing.assert_allclose(obs[i], o, rtol=1e-6, atol=1e-6)
                compared += 1
    assert vetoed > 20 and compared > 150, (vetoed, compared)
    assert all(sh.vetoed >= 0 for sh in vec.shields or ())


def test_the_shield_penalty_is_taken_off_each_vetoed_decision() -> None:
    def run(penalty: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
        vec = BatchPlannerVecEnv(3, source="privileged", shield=True, shield_penalty=penalty)
        vec.seed(40)
        vec.reset()
        env = make_planner_env("privileged", "highway", shield=True, shield_penalty=penalty)
        env.reset(seed=40)
        rng = np.random.default_rng(2)
        rewards, vetoed, single = [], [], []
        for _ in range(40):
            actions = rng.integers(0, 5, 3)
            _, r, _, infos = vec.step(actions)
            rewards.append(r)
            vetoed.append([i["shield_vetoed"] for i in infos])
            single.append(env.step(int(actions[0]))[1])
        return np.array(rewards), np.array(vetoed), single

    r0, v0, s0 = run(0.0)
    r2, v2, s2 = run(2.5)
    np.testing.assert_array_equal(v0, v2)
    assert v0.sum() > 5
    np.testing.assert_allclose(r0 - r2, 2.5 * v0, atol=1e-4)
    np.testing.assert_allclose(np.array(s0) - np.array(s2), 2.5 * v0[:, 0], atol=1e-4)
    with pytest.raises(ValueError, match="shield_penalty"):
        BatchPlannerVecEnv(2, shield_penalty=1.0)
    with pytest.raises(ValueError, match="shield_penalty"):
        make_planner_env("privileged", shield_penalty=1.0)
    with pytest.raises(ValueError, match="shield_penalty"):
        BatchPlannerVecEnv(2, shield=True, shield_penalty=float("nan"))
    from launch.config import TrainPlannerConfig

    with pytest.raises(ValueError, match="shield_penalty"):
        TrainPlannerConfig(shield_penalty=1.0)
    assert TrainPlannerConfig(shield=True, shield_penalty=1.0).shield_penalty == 1.0
    advised = TrainPlannerConfig(shield="advise", shield_penalty=1.0)
    from launch.cli import planner_job

    assert planner_job(advised).env_kwargs["shield"] == "advise"
    with pytest.raises(ValueError, match="shield"):
        TrainPlannerConfig(shield="maybe")


def test_emulated_noise_is_seeded_and_applied() -> None:
    def run(noise_seed: int) -> np.ndarray:
        vec = BatchPlannerVecEnv(6, source="emulated", noise_seed=noise_seed)
        vec.seed(7)
        out = [vec.reset()]
        for _ in range(20):
            out.append(vec.step(np.full(6, 2))[0])
        return np.stack(out)

    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    exact = BatchPlannerVecEnv(6, source="privileged")
    exact.seed(7)
    assert not np.array_equal(exact.reset(), a[0])
    assert np.isfinite(a).all() and np.abs(a).max() <= 5.0


def test_bad_arguments_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="source"):
        BatchPlannerVecEnv(2, source="lidar")
    with pytest.raises(ValueError, match="families"):
        BatchPlannerVecEnv(2, families=("moon",))
    with pytest.raises(ValueError, match="num_envs"):
        BatchPlannerVecEnv(0)
    with pytest.raises(ValueError, match="vec_env=batch"):
        PlannerTraining(out=Path("x"), algo="sac")
    with pytest.raises(ValueError, match="perceiver_device: for source perception only"):
        PlannerTraining(out=Path("x"), env_kwargs={"perceiver_device": "cpu"})
    PlannerTraining(out=Path("x"), source="perception",
                    env_kwargs={"perceiver_device": "cpu", "render_threads": 2})
    PlannerTraining(out=Path("x"), env_kwargs={"shield": True})  # batched since issue 15


def test_ppo_trains_on_the_batched_env(tmp_path: Path) -> None:
    cfg = PlannerTraining(out=tmp_path / "run", n_envs=8, total_timesteps=512, n_steps=32,
                          batch_size=64, eval_every=256, eval_episodes=1,
                          checkpoint_every=256, env_kwargs={"scenario": {
                              "episode_seconds": 6.0}})
    summary = train_planner(cfg)
    assert summary["completed"] and summary["timesteps"] >= 512
    assert (tmp_path / "run" / "final.zip").is_file()
    doc = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert doc["config"]["vec_env"] == "batch"


def test_ppo_trains_behind_the_shield_on_the_batched_env(tmp_path: Path) -> None:
    cfg = PlannerTraining(out=tmp_path / "run", n_envs=6, total_timesteps=192, n_steps=32,
                          batch_size=64, eval_every=192, eval_episodes=1,
                          checkpoint_every=192, env_kwargs={"shield": True, "scenario": {
                              "episode_seconds": 4.0}})
    summary = train_planner(cfg)
    assert summary["completed"] and summary["timesteps"] >= 192
    doc = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert doc["config"]["env_kwargs"]["shield"] is True


def test_the_best_model_is_chosen_on_every_family(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation env holds one env per family (it used to be the first family's
    only), on seeds apart from the training envs'."""
    import planning.train as train

    made: list[tuple[int, int, str | None]] = []
    real = train.make_vec

    def spy(cfg: PlannerTraining, seed: int, n: int, kind: str | None = None) -> object:
        made.append((seed, n, kind))
        return real(cfg, seed, n, kind)

    monkeypatch.setattr(train, "make_vec", spy)
    cfg = PlannerTraining(out=tmp_path / "run", n_envs=4, total_timesteps=128, n_steps=32,
                          batch_size=64, eval_every=64, eval_episodes=3,
                          checkpoint_every=128, env_kwargs={"scenario": {
                              "episode_seconds": 3.0}})
    train.train_planner(cfg)
    (train_seed, n_train, _), (eval_seed, n_eval, kind) = made
    assert n_train == 4 and n_eval == len(cfg.families) == 3 and kind == "dummy"
    assert eval_seed >= train_seed + n_train
    ends = np.load(tmp_path / "run" / "eval" / "evaluations.npz")["ep_lengths"]
    assert ends.shape[1] == 3, "3 episodes per evaluation, split over the 3 envs"


def test_parallel_workers_step_the_same_envs() -> None:
    from planning.batch_vec import ParallelBatchVecEnv

    one = BatchPlannerVecEnv(5, source="privileged")
    two = ParallelBatchVecEnv(5, workers=2, source="privileged")
    try:
        one.seed(3)
        two.seed(3)
        np.testing.assert_array_equal(one.reset(), two.reset())
        rng = np.random.default_rng(0)
        for _ in range(60):
            a = rng.integers(0, 5, 5)
            r1, r2 = one.step(a), two.step(a)
            for x, y in zip(r1[:3], r2[:3], strict=True):
                np.testing.assert_array_equal(x, y)
            assert [sorted(i) for i in r1[3]] == [sorted(i) for i in r2[3]]
    finally:
        two.close()
    assert not any(p.is_alive() for p in two.processes)
    with pytest.raises(RuntimeError, match="failed to start"):
        ParallelBatchVecEnv(4, workers=2, families=("moon",))


def test_reward_weights_reach_both_training_paths(tmp_path: Path) -> None:
    from launch.cli import planner_job
    from launch.config import TrainPlannerConfig

    cfg = TrainPlannerConfig(out=tmp_path, reward_weights={"progress": 0.0, "ttc": 0.0,
                                                           "lane_center": 0.0,
                                                           "overspeed": 0.0, "comfort": 0.0})
    job = planner_job(cfg)
    assert job.env_kwargs["reward_weights"]["progress"] == 0.0
    from planning.train import make_vec

    for kind in ("batch", "dummy"):
        vec = make_vec(job, 0, 2, kind)
        vec.reset()
        _, rewards, dones, _ = vec.step(np.full(2, 1))
        assert np.all(rewards[~dones] == 0.0), (kind, rewards)
        vec.close()
    with pytest.raises(ValueError, match="unknown reward term"):
        TrainPlannerConfig(reward_weights={"speeding": 1.0})


def test_batch_workers_end_with_a_killed_parent(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from planning.batch_vec import ParallelBatchVecEnv\n"
        "if __name__ == '__main__':\n"
        "    vec = ParallelBatchVecEnv(4, workers=2, source='privileged')\n"
        "    print(' '.join(str(p.pid) for p in vec.processes), flush=True)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[2])
    assert parent.stdout is not None
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        status = Path(f"/proc/{pid}/stat")
        return not (status.exists() and status.read_text().split()[2] == "Z")

    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)
