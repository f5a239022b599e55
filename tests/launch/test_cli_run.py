"""Smoke tests of `drivestack run` on tiny launch files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from typer.testing import CliRunner

import launch.runner
from launch.cli import app
from launch.overlays import video_frame_shape

runner = CliRunner()

TINY = """
family: highway
episodes: 1
seed: 0
max_steps: 20
camera: {width: 160, height: 96}
video: {enabled: true, fps: 15, episodes: 1}
overlays: true
"""


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_help_lists_the_run_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "run" in result.output


def test_run_writes_metrics_and_a_video(write_launch, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write_launch(TINY)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output

    doc = json.loads((out / "metrics.json").read_text())
    assert doc == _last_json(result.stdout), "the last stdout line is metrics.json"
    (ep,) = doc["episodes"]
    assert ep["steps"] == 20 and ep["end"] == "max_steps" and ep["error"] is None
    assert ep["family"] == "highway" and ep["n_lanes"] >= 1
    assert 0.0 < ep["route_completion"] < 1.0 and ep["mean_speed"] > 0.0
    assert ep["duration"] == pytest.approx(20 / 15)
    assert doc["summary"]["episodes"] == 1 and doc["config"]["max_steps"] == 20

    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["steps"] == "20" and rows[0]["video"] == ep["video"]

    video = out / ep["video"]
    assert video.stat().st_size > 0
    frames = iio.imread(video, plugin="FFMPEG", index=None)
    assert frames.shape == (21, *video_frame_shape((96, 160), (480, 480)))  # reset + 20
    assert frames.mean() > 10
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".drivestack.json", "metrics.csv", "metrics.json", ep["video"]]), "no temp files left"
    assert doc["complete"] is True and doc["episodes_planned"] == 1


def test_options_override_the_launch_file(write_launch, tmp_path: Path) -> None:
    path = write_launch(TINY.replace("max_steps: 20", "max_steps: 3")
                        .replace("enabled: true", "enabled: false"))
    out = tmp_path / "o"
    result = runner.invoke(app, ["run", str(path), "--episodes", "2", "--seed", "5",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = _last_json(result.stdout)
    assert [e["seed"] for e in doc["episodes"]] == [5, 6]
    assert [e["video"] for e in doc["episodes"]] == [None, None]
    assert not list(out.glob("*.mp4"))


@pytest.mark.parametrize(("text", "needles"), [
    ("episodes: 1\nbogus: 2\n", ["bad.yaml", "bogus", "allowed keys", "episodes"]),
    ("scenario: {n_cars: 2}\n", ["bad.yaml", "scenario.n_cars", "vehicles"]),
    ("family: mars\n", ["bad.yaml", "family", "'mars'", "highway", "rural", "urban"]),
    ("episodes: [1\n", ["bad.yaml", "not valid YAML"]),
    ("seed: -1\n", ["bad.yaml", "seed", "greater than or equal to 0"]),
    ("camera: {fov_deg: 200}\n", ["bad.yaml", "camera.fov_deg", "[10, 150]"]),
])
def test_bad_launch_file_exits_2_with_a_message(write_launch, text: str, needles: list[str]
                                               ) -> None:
    result = runner.invoke(app, ["run", str(write_launch(text, name="bad.yaml"))])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.stderr


def test_output_folder_that_cannot_be_made_exits_2(write_launch, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["run", str(write_launch(TINY)), "--out", str(blocker / "x")])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "out:" in result.stderr and "Traceback" not in result.output


def test_bad_option_value_is_a_usage_error(write_launch) -> None:
    result = runner.invoke(app, ["run", str(write_launch(TINY)), "--episodes", "0"])
    assert result.exit_code == 2 and "episodes" in result.output


def test_missing_launch_file_in_a_real_process(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    proc = subprocess.run([sys.executable, "-m", "launch", "run", str(missing)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "missing.yaml" in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


class _FailingDriver:
    """Drives straight, then raises on its third action."""

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    decision_every, hold, perception = 1, None, None

    def act(self, env: object) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("driver broke")
        return np.zeros(2, np.float32)


def test_an_episode_that_raises_is_recorded_and_the_run_goes_on(
    write_launch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch.runner, "make_driver", lambda *a, **k: _FailingDriver())
    path = write_launch(TINY.replace("episodes: 1", "episodes: 2"))
    out = tmp_path / "err"
    result = runner.invoke(app, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 1
    assert "driver broke" in result.stderr and "Traceback" not in result.output
    doc = json.loads((out / "metrics.json").read_text())
    assert [e["end"] for e in doc["episodes"]] == ["error", "error"]
    assert [e["steps"] for e in doc["episodes"]] == [2, 2]
    assert "RuntimeError: driver broke (at step 3)" == doc["episodes"][0]["error"]
    assert (out / doc["episodes"][0]["video"]).stat().st_size > 0, "the frames so far are kept"
    assert doc["summary"]["errors"] == 2
