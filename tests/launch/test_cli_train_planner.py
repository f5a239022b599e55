"""`drivestack train-planner`: a tiny-budget PPO run writes its models, checkpoints, logs
and summary; resuming continues the step count; bad launch files name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launch.cli import app

pytest.importorskip("stable_baselines3")
runner = CliRunner()
TINY = """
out: {out}
source: {source}
families: [highway, urban]
total_timesteps: 256
n_envs: 2
n_steps: 64
batch_size: 64
net_arch: [16]
eval_every: 128
eval_episodes: 1
checkpoint_every: 128
vec_env: dummy
scenario: {{episode_seconds: 4}}
"""


def _train(write_launch, out: Path, *extra: str, source: str = "emulated") -> dict:
    launch = write_launch(TINY.format(out=out, source=source))
    result = runner.invoke(app, ["train-planner", str(launch), "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tiny_run_writes_models_and_resumes(write_launch, tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    out = tmp_path / "run"
    summary = _train(write_launch, out)
    assert summary["timesteps"] == 256 == summary["trained_now"]
    for name in ("final.zip", "best_model.zip", "summary.json", "eval/evaluations.npz"):
        assert (out / name).is_file(), name
    checkpoints = sorted((out / "checkpoints").glob("planner_*_steps.zip"))
    assert checkpoints and any((out / "tb").rglob("events.out.tfevents.*"))
    model = PPO.load(out / "final.zip", device="cpu")
    assert model.observation_space.shape == (64,) and model.action_space.n == 5
    # resume from the first checkpoint (128 steps) up to 384: 256 more steps
    resumed = _train(write_launch, out, "--resume", str(checkpoints[0]), "--timesteps", "384")
    assert resumed["timesteps"] == 384 and resumed["trained_now"] == 256


def test_privileged_source_trains_too(write_launch, tmp_path: Path) -> None:
    summary = _train(write_launch, tmp_path / "priv", source="privileged")
    assert summary["config"]["source"] == "privileged" and summary["timesteps"] == 256
    assert summary["imitation"] == {}


def test_imitation_warm_start_clones_the_rule_planner(write_launch, tmp_path: Path) -> None:
    out = tmp_path / "bc"
    launch = write_launch(TINY.format(out=out, source="emulated")
                          + "imitation_steps: 300\nimitation_epochs: 20\n")
    result = runner.invoke(app, ["train-planner", str(launch), "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["imitation"]["steps"] == 300 and (out / "imitation.zip").is_file()
    # a random 5-way policy agrees ~20 %; cloning must do clearly better
    assert summary["imitation"]["accuracy"] >= 0.45


@pytest.mark.parametrize(("text", "needles"), [
    ("algo: dqn\n", ("algo", "'ppo'", "'sac'")),
    ("source: camera\n", ("source", "'emulated'", "'privileged'")),
    ("families: [desert]\n", ("families", "'highway'")),
    ("n_envs: 0\n", ("n_envs",)),
    ("scenario: {lanes_count: 3}\n", ("scenario", "lanes_count")),
])
def test_bad_launch_files_name_the_key(write_launch, text: str, needles: tuple) -> None:
    bad = write_launch(text, name="bad.yaml")
    result = runner.invoke(app, ["train-planner", str(bad)])
    assert result.exit_code == 2
    for needle in ("bad.yaml", *needles):
        assert needle in result.stderr, result.stderr


def test_missing_checkpoint_is_one_clear_error(write_launch, tmp_path: Path) -> None:
    launch = write_launch(TINY.format(out=tmp_path / "r", source="privileged"))
    result = runner.invoke(app, ["train-planner", str(launch), "--resume",
                                 str(tmp_path / "nope.zip")])
    assert result.exit_code == 2 and "nope.zip not found" in result.stderr
