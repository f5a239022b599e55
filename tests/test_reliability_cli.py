"""Reliability: command-line input that used to pass silently or exhaust the machine is
one `error:` line (exit 2) before any work: booleans for numbers, counts out of range, a
device this machine lacks, a resume with nothing to resume, repeated suite seeds, a
policy the driver does not use, an inference size that does not fit in memory, a dataset
warm-up longer than its episodes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launch.cli import app
from launch.config import RunConfig, TrainPlannerConfig, load_launch
from launch.eval_suite import SuiteConfig
from launch.loader import LaunchConfigError
from perception.datasets import DatasetPlan

runner = CliRunner()


def _file(tmp_path: Path, text: str, name: str = "launch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize(("model", "text", "key"), [
    (RunConfig, "episodes: true\n", "episodes"),
    (RunConfig, "video: {episodes: false}\n", "video.episodes"),
    (RunConfig, "scenario: {vehicles: [true, 3]}\n", "scenario.vehicles"),
    (TrainPlannerConfig, "net_arch: [64, true]\n", "net_arch"),
])
def test_a_boolean_where_a_number_goes_is_refused(tmp_path: Path, model: type, text: str,
                                                  key: str) -> None:
    """`episodes: true` used to run one episode."""
    with pytest.raises(LaunchConfigError, match=f"{key}: .*boolean"):
        load_launch(_file(tmp_path, text), model)


@pytest.mark.parametrize(("model", "text", "key"), [
    (TrainPlannerConfig, "decision_every: 1000000\n", "decision_every"),
    (TrainPlannerConfig, "n_envs: 100000\n", "n_envs"),
    (RunConfig, "episodes: 99999999999999999999\n", "episodes"),
])
def test_counts_have_upper_bounds(tmp_path: Path, model: type, text: str, key: str) -> None:
    with pytest.raises(LaunchConfigError, match=f"{key}: .*less than or equal"):
        load_launch(_file(tmp_path, text), model)


def test_a_policy_the_autopilot_would_ignore_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchConfigError, match="policy: the autopilot drives without"):
        load_launch(_file(tmp_path, "driver: autopilot\npolicy: p.zip\n"), RunConfig)


def test_repeated_suite_seeds_are_refused(tmp_path: Path) -> None:
    """`seeds: [1, 1, 1]` used to run one scenario three times, counted as three."""
    text = "nominal: {families: [highway], seeds: [1, 2, 1]}\n"
    with pytest.raises(LaunchConfigError, match=r"seeds: \[1\] given more than once"):
        load_launch(_file(tmp_path, text), SuiteConfig)


def test_a_warmup_longer_than_any_episode_is_refused() -> None:
    """It used to render episodes forever without recording a frame."""
    with pytest.raises(ValueError, match="warmup: 100000 steps; an episode"):
        DatasetPlan(warmup=100_000)


def test_inference_size_is_bounded_before_memory_runs_out(tmp_path: Path) -> None:
    """`--imgsz 100000` used to be killed by the kernel at 24 GB."""
    result = runner.invoke(app, ["eval-perception", "--data", str(tmp_path),
                                 "--imgsz", "100000"])
    assert result.exit_code == 2 and "4096" in result.output


def test_resume_with_nothing_to_resume_is_refused(tmp_path: Path) -> None:
    """`train-perception --resume` used to train from scratch when there was no run."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.yaml").write_text("names: {0: car}\n")
    result = runner.invoke(app, ["train-perception", "--data", str(data), "--out",
                                 str(tmp_path / "runs"), "--model", "lanes", "--resume"])
    assert result.exit_code == 2 and "nothing to continue" in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_a_cuda_device_this_machine_lacks_is_refused(tmp_path: Path) -> None:
    """`device: cuda:99` used to train on the CPU and report cuda:99."""
    import torch

    missing = f"cuda:{torch.cuda.device_count() + 7}"
    spec = _file(tmp_path, f"device: '{missing}'\n")
    result = runner.invoke(app, ["train-planner", str(spec), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "CUDA device" in result.output, result.output
    assert not (tmp_path / "p").exists(), "refused before anything is written"


def test_eval_refuses_a_policy_its_planner_does_not_use(tmp_path: Path) -> None:
    """`eval --planner rule --policy p.zip` used to run and ignore the policy."""
    result = runner.invoke(app, ["eval", "--planner", "rule", "--policy", "/none/p.zip",
                                 "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "drives without an RL policy" in result.output


@pytest.mark.parametrize("text", ['{"images": [', "[]", '{"images": [{"id": 1}], '
                                  '"annotations": []}'])
def test_a_damaged_coco_file_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "test.json").write_text(text)
    result = runner.invoke(app, ["eval-perception", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "test.json" in result.output, result.output


def test_the_empty_episode_guard_stops_a_dataset(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    import perception.datasets
    from perception.datasets import generate

    def empty(*args: object) -> object:
        yield from itertools.repeat([])  # every episode ends before its first frame

    monkeypatch.setattr(perception.datasets, "_episodes", empty)
    with pytest.raises(ValueError, match="episodes in a row ended before"):
        generate(DatasetPlan(frames=2), tmp_path / "ds")
    assert not (tmp_path / "ds").exists() and list(tmp_path.iterdir()) == []
