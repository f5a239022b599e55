"""PyTorch models exported to ONNX and run on the CPU.

An export is made locally, without any network, the first time it is needed, and kept in
the drivestack cache (`$DRIVESTACK_CACHE`, default `~/.cache/drivestack`) under the
SHA-256 of the weights it came from (new weights get a new export). The lane model
(perception/lane_onnx.py), the box refiner (perception/refine.py) and the detector
(perception/raw_detector.py) run this way.

Two runtimes read the same `.onnx` file (`CPU_RUNTIMES`):

- OpenVINO, when it is installed (it is a dependency), in float32 (`INFERENCE_PRECISION_HINT
  f32`: on CPUs with bf16 or AMX units it would otherwise run in bf16 and move boxes by
  up to 2 px) with the latency hint. On the 2-core CI machine it runs the 480x288
  detector in about 10 ms against 14.5 ms for ONNX Runtime, with the same outputs
  (1e-4 px; bench/README.md).
- ONNX Runtime, with threads that do not spin after a call (spinning threads slow down
  what runs next on the same cores: the detector, the planner).

"auto" takes OpenVINO, and ONNX Runtime for a graph OpenVINO cannot read or compile.
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


CPU_RUNTIMES = ("auto", "openvino", "onnxruntime")


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def check_runtime(runtime: str) -> str:
    """`runtime` if it is one of CPU_RUNTIMES and can run here; one clear error if not."""
    if runtime not in CPU_RUNTIMES:
        raise ValueError(f"cpu_runtime={runtime!r}; allowed: {', '.join(CPU_RUNTIMES)}")
    if runtime == "openvino" and not openvino_available():
        raise ValueError("cpu_runtime='openvino' but OpenVINO is not installed "
                         "(pip install openvino); 'auto' falls back to ONNX Runtime")
    return runtime


class OnnxRunner:
    """`runner(x) -> first output` for an `.onnx` file on the CPU, on `runtime` (see the
    module docstring). `runtime_used` says which one runs it; `input_shape` is the
    input's shape, None for a dynamic axis."""

    def __init__(self, path: Path | str, runtime: str = "auto") -> None:
        self.path = Path(path)
        check_runtime(runtime)
        self._request: Any = None
        if runtime != "onnxruntime" and openvino_available():
            try:
                self._openvino()
            except Exception:
                if runtime == "openvino":
                    raise
                self._request = None  # a graph OpenVINO cannot take: ONNX Runtime
        if self._request is None:
            self._onnxruntime()

    def _openvino(self) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.path))
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_PRECISION_HINT": "f32"})
        self._request = compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in shape]
        self.runtime_used = "openvino"

    def _onnxruntime(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(self.path), opts,
                                             providers=["CPUExecutionProvider"])
        inp = self._session.get_inputs()[0]
        self._name = inp.name
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.runtime_used = "onnxruntime"

    def __call__(self, x: Any) -> Any:
        if self._request is not None:  # outputs are copies (share_outputs=False)
            return self._request.infer({0: x})[0]
        return self._session.run(None, {self._name: x})[0]


class CpuSession:
    """The cached export of `weights` on the CPU (`OnnxRunner`): made by `export(out)`
    when missing, and again, once, when the cached file cannot be loaded."""

    def __init__(self, kind: str, weights: Path | str,
                 export: Callable[[Path], Path], runtime: str = "auto") -> None:
        check_runtime(runtime)
        self.path = cache_path(kind, weights)
        if not self.path.is_file():
            export(self.path)
        try:
            self.runner = OnnxRunner(self.path, runtime)
        except Exception:  # a cache file cut short or damaged: make it again, once
            self.path.unlink(missing_ok=True)
            export(self.path)
            self.runner = OnnxRunner(self.path, runtime)

    def __call__(self, x: Any) -> Any:
        return self.runner(x)
