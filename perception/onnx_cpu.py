"""Small PyTorch models on ONNX Runtime, for the CPU: an export made locally, without any
network, the first time it is needed, kept in the drivestack cache (`$DRIVESTACK_CACHE`,
default `~/.cache/drivestack`) under the SHA-256 of the weights it came from (new weights
get a new export), and a session whose threads do not spin after a call (spinning
threads slow down what runs next on the same cores: the detector, the planner). The lane
model (perception/lane_onnx.py) and the box refiner (perception/refine.py) run this way.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perception.offline import cache_dir


def export_module(model: Any, example: Any, out: Path | str, input_name: str,
                  output_name: str) -> Path:
    """Export a module to ONNX (any batch size), written atomically to `out`."""
    import torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on tracing
            torch.onnx.export(
                model.eval(), (example,), tmp, input_names=[input_name],
                output_names=[output_name], opset_version=17,
                dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                dynamo=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def cache_path(kind: str, weights: Path | str) -> Path:
    """Where the export of `weights` lives: $DRIVESTACK_CACHE/{kind}_onnx/{kind}-{sha}.onnx."""
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    return cache_dir() / f"{kind}_onnx" / f"{kind}-{digest}.onnx"


class CpuSession:
    """ONNX Runtime on the CPU for the cached export of `weights` (made by `export(out)`
    when missing, and again, once, when the cached file cannot be loaded)."""

    def __init__(self, kind: str, weights: Path | str,
                 export: Callable[[Path], Path]) -> None:
        import onnxruntime as ort

        self.path = cache_path(kind, weights)
        if not self.path.is_file():
            export(self.path)
        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception:  # a cache file cut short or damaged: make it again, once
            self.path.unlink(missing_ok=True)
            export(self.path)
            self.session = ort.InferenceSession(str(self.path), opts,
                                                providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def __call__(self, x: Any) -> Any:
        return self.session.run(None, {self.name: x})[0]
