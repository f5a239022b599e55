"""Smoke tests of `drivestack train-perception` (one tiny epoch on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from launch.cli import app
from perception.datasets import DatasetPlan, generate
from perception.refine import load_refiner
from sim.types import CameraSpec

pytest.importorskip("ultralytics")
runner = CliRunner()


def test_train_perception_writes_weights(write_launch, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    data = tmp_path / "ds"
    generate(DatasetPlan(frames=8, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), data)
    launch = write_launch(
        f"data: {data}\nout: {tmp_path / 'runs'}\ndevice: cpu\n"
        "detector: {epochs: 1, imgsz: 96, batch: 4, workers: 0}\n"
        "refiner: {epochs: 1, batch: 8}\nlanes: {epochs: 1, batch: 4}\n")
    result = runner.invoke(app, ["train-perception", str(launch)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    det, lanes, ref = report["detector"], report["lanes"], report["refiner"]
    assert Path(det["weights"]).is_file() and Path(det["onnx"]).is_file()
    assert "metrics/mAP50-95(B)" in det["metrics"]
    # the refiner learned the boxes of the detector trained in the same run
    assert Path(ref["weights"]) == tmp_path / "runs" / "refiner" / "refiner.pt"
    facts = json.loads((tmp_path / "runs" / "refiner" / "results.json").read_text())
    assert ref["detector"] == det["weights"]
    assert ref["train_patches"] > 0 and facts["train_patches"] == ref["train_patches"]
    assert set(facts["val"]) == {"detector", "refined"}
    assert load_refiner(ref["weights"]).spec.width == 16
    assert Path(lanes["weights"]) == tmp_path / "runs" / "lanes" / "cnn" / "best.pt"
    assert Path(lanes["weights"]).is_file() and 0.0 <= lanes["best_val_f1"] <= 1.0
    # only the ViT lane model, then resumed (nothing left: same epochs)
    for extra in ([], ["--resume"]):
        result = runner.invoke(app, ["train-perception", str(launch), "--model", "lanes",
                                     "--backbone", "vit", *extra])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert set(report) == {"lanes"} and "/lanes/vit/" in report["lanes"]["weights"]


def test_missing_dataset_is_one_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train-perception", "--data", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "data.yaml not found" in result.stderr and "drivestack dataset" in result.stderr


@pytest.mark.parametrize(("text", "needles"), [
    ("lanes: {backbone: resnet}\n", ("lanes.backbone", "'cnn'", "'vit'")),
    ("models: [segmenter]\n", ("models", "'detector'", "'lanes'")),
])
def test_bad_lane_settings_name_the_key(write_launch, text: str, needles: tuple) -> None:
    bad = write_launch(text, name="bad.yaml")
    result = runner.invoke(app, ["train-perception", str(bad)])
    assert result.exit_code == 2
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_bad_architecture_names_the_allowed_ones(write_launch) -> None:
    bad = write_launch("detector: {architecture: yolov3}\n", name="bad.yaml")
    result = runner.invoke(app, ["train-perception", str(bad)])
    assert result.exit_code == 2
    for needle in ("bad.yaml", "detector.architecture", "yolo11n", "rtdetr-l"):
        assert needle in result.stderr
