"""Smoke tests of `drivestack eval-perception` with the shipped detector weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launch.cli import app
from perception.datasets import DatasetPlan, generate

pytest.importorskip("ultralytics")
runner = CliRunner()


def test_eval_prints_a_table_and_a_json_report(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    data = tmp_path / "ds"
    generate(DatasetPlan(frames=6, frames_per_episode=2, stride=3, warmup=6), data)
    result = runner.invoke(app, ["eval-perception", "--data", str(data), "--split", "train",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["split"] == "train" and 0.0 <= report["all"]["mAP50"] <= 1.0
    assert "mAP50-95" in report["all"] and "per_class_mAP50-95" in report
    assert "mAP50" in result.stderr  # the table


@pytest.mark.parametrize(("args", "needle"), [
    (["--split", "holdout"], "allowed: train, val, test"),
    (["--weights", "nope.pt"], "weights"),
    (["--refiner", "nope.pt"], "refiner weights nope.pt not found"),
    (["--no-refine", "--refiner", "x.pt"], "--no-refine"),
])
def test_bad_options_are_one_clear_error(tmp_path: Path, args: list[str], needle: str) -> None:
    data = tmp_path / "ds"
    generate(DatasetPlan(frames=2, frames_per_episode=2, stride=3, warmup=6), data)
    result = runner.invoke(app, ["eval-perception", "--data", str(data), "--split", "train",
                                 *args])
    assert result.exit_code == 2 and needle in result.stderr


def test_missing_dataset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["eval-perception", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "drivestack dataset" in result.stderr


def test_run_with_perception_adds_a_prediction_panel(write_launch, tmp_path: Path) -> None:
    import imageio.v3 as iio

    out = tmp_path / "run"
    launch = write_launch("family: highway\nepisodes: 1\nmax_steps: 3\nperception: true\n"
                          "video: {enabled: true, episodes: 1}\n")
    result = runner.invoke(app, ["run", str(launch), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = iio.imread(out / "episode_000.mp4", index=1)
    # ground truth (640) + predictions (640) + bird's-eye view scaled to 384 high
    assert frame.shape[:2] == (384, 640 + 640 + 384)
