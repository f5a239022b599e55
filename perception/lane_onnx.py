"""The lane model exported to ONNX, for the CPU.

ONNX Runtime runs the shipped CNN lane model in about half the time PyTorch takes on the
CPU, OpenVINO (the default where installed) faster still (bench/README.md). The repo
ships only the PyTorch weights: the ONNX export is made locally, without any network,
the first time a `Perceiver` needs it, and kept in the drivestack cache under the
SHA-256 of the weights it came from, so new weights get a new export and a broken file
is made again (perception/onnx_cpu.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from perception.lanes import load_lane_model
from perception.onnx_cpu import CpuSession, cache_path, export_module


def export_lane_onnx(weights: Path | str, out: Path | str) -> Path:
    """Export lane weights to ONNX (uint8 (B, H, W, 3) in, logits out, any batch size),
    written atomically to `out`."""
    import torch

    model, spec, _ = load_lane_model(weights, "cpu")
    example = torch.zeros((1, spec.height, spec.width, 3), dtype=torch.uint8)
    return export_module(model, example, out, "images", "logits")


def cached_export(weights: Path | str) -> Path:
    """The ONNX export of `weights` in the drivestack cache, made if missing."""
    path = cache_path("lanes", weights)
    return path if path.is_file() else export_lane_onnx(weights, path)


class OnnxLanes:
    """Lane logits from the ONNX export on the CPU (`runtime`: perception/onnx_cpu.py):
    `(frames uint8 (B, H, W, 3)) -> (B, L, R, cells + 1)`."""

    def __init__(self, weights: Path | str, runtime: str = "auto") -> None:
        self._run = CpuSession("lanes", weights, lambda out: export_lane_onnx(weights, out),
                               runtime)
        self.path = self._run.path
        self.runtime_used = self._run.runtime_used

    def __call__(self, frames: np.ndarray) -> Any:
        return self._run(np.ascontiguousarray(frames, np.uint8))
