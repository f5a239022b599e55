"""ultralytics trains and predicts, and the Perceiver exports and runs its models on both
CPU runtimes, with the network made unreachable, and nothing tries to connect."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perception.datasets import DatasetPlan, generate
from sim.types import CameraSpec

pytest.importorskip("ultralytics")

GUARD = textwrap.dedent("""
    import json, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled by the test")
    socket.socket.connect = refuse
    socket.getaddrinfo = refuse
    socket.create_connection = refuse
    from perception.detector import DetectorTraining, train_detector
    result = train_detector(DetectorTraining(
        data=sys.argv[1], out=sys.argv[2], epochs=1, imgsz=96, batch=4, workers=0,
        device="cpu"))
    from perception.detector import export_onnx
    onnx = export_onnx(result["weights"], 64, 96)
    from ultralytics import YOLO
    preds = YOLO(result["weights"]).predict(sys.argv[3], imgsz=96, device="cpu", verbose=False)
    preds += YOLO(str(onnx), task="detect").predict(sys.argv[3], imgsz=(64, 96), device="cpu",
                                                    verbose=False)
    import numpy as np
    from perception.perceiver import Perceiver
    from sim.types import CameraSpec
    runtimes = []
    for runtime in ("openvino", "onnxruntime"):  # the trained export, both CPU runtimes
        p = Perceiver(weights=onnx, device="cpu", camera=CameraSpec(width=96, height=64),
                      lanes=False, cpu_runtime=runtime)
        p([np.zeros((64, 96, 3), np.uint8)])
        runtimes.append(p.raw.session.runtime_used)
    shipped = Perceiver(device="cpu")  # exports the shipped models into the empty cache
    preds += [shipped([np.zeros((192, 320, 3), np.uint8)])]
    print(json.dumps({"attempts": attempts, "predictions": len(preds), "runtimes": runtimes,
                      "weights": result["weights"]}))
""")


def test_training_and_inference_never_touch_the_network(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    generate(DatasetPlan(frames=12, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), data)
    env = {**os.environ, "DRIVESTACK_CACHE": str(tmp_path / "cache")}
    env.pop("YOLO_CONFIG_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", GUARD, str(data / "data.yaml"), str(tmp_path / "run"),
         str(data / "images" / "train")],
        capture_output=True, text=True, env=env, timeout=600,
        cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [], f"tried to connect: {report['attempts']}"
    assert report["predictions"] > 0 and Path(report["weights"]).is_file()
    assert report["runtimes"] == ["openvino", "onnxruntime"]
    fonts = tmp_path / "cache" / "ultralytics" / "Ultralytics"
    assert (fonts / "Arial.ttf").is_file(), "the font comes from matplotlib, not the network"
