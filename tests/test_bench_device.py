"""The issue-17 benches run on the CPU and print their keys (figures are not asserted:
benches never assert on time); the agreement figures are (the CPU path draws the host
kernels' frames exactly)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> dict:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_device_render_bench_prints_agreement_and_rates() -> None:
    fig = _run("bench/device_render.py", "--quick")
    agree = fig["agreement"]["cpu"]
    assert agree["pixels_equal"] == 1.0 and agree["ids_equal"] == 1.0
    assert agree["max_box_diff_px"] == 0.0 and agree["frames_with_other_label_count"] == 0
    [run] = fig["runs"]
    assert run["worlds"] == 8 and run["host"]["frames_per_s"] > 0
    row = run["device:cpu"]
    for key in ("frames_per_s", "record_ms", "fill_and_passes_ms", "with_labels_frames_per_s"):
        assert row[key] > 0, key


def test_closed_loop_bench_runs_perception_and_the_policy() -> None:
    fig = _run("bench/gpu_closed_loop.py", "--quick")
    [run] = fig["runs"]
    assert run["envs"] == 4 and run["steps"] >= 3 and run["decisions_per_s"] > 0
    assert set(run["stage_ms_per_step"]) == {"physics_and_render", "perception",
                                             "scenes_and_features", "policy"}
    assert all(v > 0 for v in run["stage_ms_per_step"].values())
    assert run["tensor_path"] is False  # the CPU perceiver (ONNX) reads host memory
