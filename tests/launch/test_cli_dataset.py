"""Smoke tests of `drivestack dataset` on a tiny launch file."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from launch.cli import app

runner = CliRunner()
TINY = "frames: 4\nframes_per_episode: 2\nstride: 2\nwarmup: 2\ncamera: {width: 96, height: 64}\n"


def test_dataset_command_writes_a_dataset(write_launch, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = runner.invoke(app, ["dataset", "--config", str(write_launch(TINY)),
                                 "--out", str(out), "--seed", "20"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert sum(summary["frames"].values()) == 4
    assert (out / "data.yaml").exists() and (out / "annotations" / "train.json").exists()


def test_bad_dataset_launch_file_names_the_key(write_launch) -> None:
    bad = write_launch("frames: 4\nweather: {snow: 1.0}\n", name="bad.yaml")
    result = runner.invoke(app, ["dataset", str(bad)])
    assert result.exit_code == 2
    for needle in ("bad.yaml", "weather", "snow", "clear"):
        assert needle in result.stderr
