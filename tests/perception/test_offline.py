"""ultralytics trains and predicts, and the Perceiver exports and runs its models on both
CPU runtimes, with the network made unreachable, and nothing tries to connect."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from perception.datasets import DatasetPlan, generate
from perception.onnx_cpu import RUNTIMES, openvino_available
from sim.types import CameraSpec

pytest.importorskip("ultralytics")

SITECUSTOMIZE = textwrap.dedent("""
    # Loaded by every Python process of the test, children included (forked or spawned):
    # each attempt to reach the network is refused and logged to a file.
    import os, socket
    def refuse(*args, **kwargs):
        with open(os.environ["NET_GUARD_LOG"], "a") as log:
            log.write(f"{os.getpid()} {args[:2]!r}\\n")
        raise OSError("network disabled by the test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.getaddrinfo = refuse
    socket.create_connection = refuse
""")

JOB = textwrap.dedent("""
    import json, sys
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
    from perception.onnx_cpu import RUNTIMES, openvino_available
    from perception.perceiver import Perceiver
    from sim.types import CameraSpec
    runtimes = []
    for runtime in RUNTIMES:  # the trained export, on each CPU runtime
        if runtime == "openvino" and not openvino_available():
            continue
        p = Perceiver(weights=onnx, device="cpu", camera=CameraSpec(width=96, height=64),
                      lanes=False, cpu_runtime=runtime)
        p([np.zeros((64, 96, 3), np.uint8)])
        runtimes.append(p.runtimes["detector"])
    shipped = Perceiver(device="cpu")  # exports the shipped models into the empty cache
    preds += [shipped([np.zeros((192, 320, 3), np.uint8)])]
    print(json.dumps({"predictions": len(preds), "runtimes": runtimes,
                      "weights": result["weights"]}))
""")


def test_training_and_inference_never_touch_the_network(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    generate(DatasetPlan(frames=12, frames_per_episode=2, stride=2, warmup=4,
                         camera=CameraSpec(width=96, height=64)), data)
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "network_attempts.log"
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DRIVESTACK_CACHE": str(tmp_path / "cache"), "HOME": str(home),
           "NET_GUARD_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")])}
    env.pop("YOLO_CONFIG_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", JOB, str(data / "data.yaml"), str(tmp_path / "run"),
         str(data / "images" / "train")],
        capture_output=True, text=True, env=env, timeout=600,
        cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    time.sleep(1)  # a child process that something forked off may still be trying
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"tried to connect:\n{attempts}"
    assert report["predictions"] > 0 and Path(report["weights"]).is_file()
    assert report["runtimes"] == [r for r in RUNTIMES
                                  if r != "openvino" or openvino_available()]
    assert not (home / "intel").exists(), "OpenVINO's telemetry wrote its client id"
    fonts = tmp_path / "cache" / "ultralytics" / "Ultralytics"
    assert (fonts / "Arial.ttf").is_file(), "the font comes from matplotlib, not the network"
