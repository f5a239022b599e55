"""bench/planner_speed.py runs and prints its figures, the batched path and PPO beside
today's SubprocVecEnv path (figures are not asserted: benches never assert on time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_planner_speed_prints_the_batched_and_ppo_keys(tmp_path: Path) -> None:
    launches = []
    for name, extra in (("sub", "vec_env: subprocess\nn_envs: 2\n"),
                        ("batch", "vec_env: batch\nbatch_workers: 2\nn_envs: 4\n")):
        f = tmp_path / f"{name}.yaml"
        f.write_text(extra + "n_steps: 32\nbatch_size: 64\n")
        launches.append(str(f))
    out = subprocess.run(
        [sys.executable, "bench/planner_speed.py", "--quick", "--sources", "privileged",
         "--envs", "1", "--batch-envs", "4", "--batch-workers", "1", "2",
         "--ppo-decisions", "128", "--ppo-launch", *launches, "--ppo-sources", "emulated",
         "privileged", "--no-closed-loop"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    fig = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("train_privileged_n1", "train_privileged_batch_n4_w1",
                "train_privileged_batch_n4_w2", "ppo_subprocess_emulated",
                "ppo_batch_emulated", "ppo_batch_privileged", "ppo_subprocess_privileged"):
        assert key in fig, key
        assert fig[key]["decisions_per_s"] > 0
    assert fig["train_privileged_batch_n4_w2"]["vec_env"] == "ParallelBatchVecEnv"
    assert fig["ppo_batch_emulated"]["decisions"] >= 128
    assert fig["ppo_batch_emulated"]["batch_workers"] == 2
    assert "ppo_batch_emulated_target_met" in fig["summary"]
    assert "[PPO emulated]" in out.stdout
