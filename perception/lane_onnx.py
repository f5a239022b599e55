"""The lane model on ONNX Runtime, for the CPU.

ONNX Runtime runs the shipped CNN lane model in about half the time PyTorch takes on the
CPU (bench/README.md). The repo ships only the PyTorch weights: the ONNX export is made
locally, without any network, the first time a `Perceiver` needs it, and kept in the
drivestack cache (`$DRIVESTACK_CACHE`, default `~/.cache/drivestack`) under the SHA-256 of
the weights it came from, so new weights get a new export and a broken file is made again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from perception.lanes import load_lane_model
from perception.offline import cache_dir


def export_lane_onnx(weights: Path | str, out: Path | str) -> Path:
    """Export lane weights to ONNX (uint8 (B, H, W, 3) in, logits out, any batch size),
    written atomically to `out`."""
    import torch

    model, spec, _ = load_lane_model(weights, "cpu")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing
            torch.onnx.export(
                model, (torch.zeros((1, spec.height, spec.width, 3), dtype=torch.uint8),),
                tmp, input_names=["images"], output_names=["logits"], opset_version=17,
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def cached_export(weights: Path | str) -> Path:
    """The ONNX export of `weights` in the drivestack cache, made if missing."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    path = cache_dir() / "lanes_onnx" / f"lanes-{digest}.onnx"
    return path if path.is_file() else export_lane_onnx(weights, path)


class OnnxLanes:
    """Lane logits from ONNX Runtime: `(frames uint8 (B, H, W, 3)) -> (B, L, R, cells + 1)`.
    Its own session, with thread spinning off (spinning threads slow down what runs
    next on the same cores, the detector or the planner)."""

    def __init__(self, weights: Path | str) -> None:
        import onnxruntime as ort

        self.path = cached_export(weights)
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception:  # a cache file cut short or damaged: make it again, once
            self.path.unlink(missing_ok=True)
            self.path = cached_export(weights)
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def __call__(self, frames: np.ndarray) -> Any:
        return self.session.run(None, {self.name: np.ascontiguousarray(frames, np.uint8)})[0]
