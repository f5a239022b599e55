"""PyTorch models exported to ONNX and run on the CPU.

An export is made locally, without any network, the first time it is needed, and kept in
the drivestack cache (`$DRIVESTACK_CACHE`, default `~/.cache/drivestack`) under the
SHA-256 of the weights it came from (new weights get a new export). The lane model
(perception/lane_onnx.py), the box refiner (perception/refine.py) and the detector
(perception/raw_detector.py) run this way.

Two runtimes read the same `.onnx` file (`CPU_RUNTIMES`):

- OpenVINO, when it is installed (it is a dependency), in float32 (`INFERENCE_PRECISION_HINT
  f32`: on CPUs with bf16 or AMX units it would otherwise run in bf16 and move boxes by
  up to 2 px), with the latency hint, its threads not pinned to cores, and its
  telemetry off (`perception.offline.openvino_offline`). On the 2-core CI machine it
  runs the 480x288 detector in 11.5-11.8 ms a frame against 16.3-17.0 ms for ONNX
  Runtime, with the same outputs (1e-4 px; bench/README.md).
- ONNX Runtime, with threads that do not spin after a call (spinning threads slow down
  what runs next on the same cores: the detector, the planner).

"auto" takes OpenVINO, and ONNX Runtime (with a warning) for a graph OpenVINO cannot
compile. The box refiner is the exception: its "auto" is ONNX Runtime, faster on its few
patches a frame (perception.refine.load_refiner).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from perception.offline import cache_dir, openvino_offline
from sim.fanout import CPU_THREADS_ENV


def cpu_threads() -> int:
    """Threads a session may use: `$DRIVESTACK_CPU_THREADS` (`sim.fanout.CPU_THREADS_ENV`,
    set in workers that share the cores), 0 when unset (the runtime's default, every
    core); a bad value is one clear error."""
    raw = os.environ.get(CPU_THREADS_ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) > 1024:
        raise ValueError(f"${CPU_THREADS_ENV}={raw!r}; must be an integer 0..1024")
    return int(raw)


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


RUNTIMES = ("openvino", "onnxruntime")
"""The CPU runtimes, fastest first."""
CPU_RUNTIMES = ("auto", *RUNTIMES)


class UnreadableModel(ValueError):
    """A model file drivestack will not use: it does not parse (cut short, damaged, not the
    format), fails its checksums, holds weights that are not finite or not the model's, or
    would need unpickling (code) to load. `str(err)` names the file and the problem."""


def check_zip_checksums(path: Path | str, what: str) -> None:
    """`UnreadableModel` unless `path` is a zip (the format of `torch.save` and of SB3
    policies) whose every entry matches the CRC-32 stored for it: a flipped bit anywhere
    in the weights fails here, before anything reads them (`torch.load` does not check)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise UnreadableModel(f"{what} {path}: not a PyTorch zip checkpoint ({exc})") from None
    if bad is not None:
        raise UnreadableModel(f"{what} {path} is damaged: its entry {bad} fails its "
                              "checksum")


def load_checkpoint(path: Path | str, what: str) -> Any:
    """What `torch.save` wrote to `path`, read without unpickling (torch `weights_only`:
    tensors and plain data only) after its zip checksums (`check_zip_checksums`), on the
    CPU. `UnreadableModel` naming the file, and the Python objects a crafted file asks
    for, for anything else."""
    import pickle

    check_zip_checksums(path, what)
    try:
        return quiet_load(path)
    except pickle.UnpicklingError as exc:
        raise UnreadableModel(
            f"{what} {path} holds Python objects{refused_global(exc)} besides tensors and "
            "plain data; loading them would run code from the file: refused") from None
    except Exception as exc:
        raise UnreadableModel(f"{what} {path}: not a readable PyTorch checkpoint "
                              f"({type(exc).__name__}: {brief(exc)})") from None


def quiet_load(source: Any) -> Any:
    """`torch.load(source, weights_only=True)` on the CPU, without torch's warnings (its
    note on a pickle protocol other than its own comes before the refusal of a crafted
    file; drivestack's error says what matters)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(source, map_location="cpu", weights_only=True)


def refused_global(exc: BaseException) -> str:
    """" (name)" of the Python object torch's `weights_only` unpickler refused, from its
    message; "" if it names none."""
    import re

    found = re.search(r"GLOBAL (\S+)", str(exc))
    return f" ({found.group(1)})" if found else ""


def brief(exc: BaseException, limit: int = 300) -> str:
    """An error's message on one line, at most `limit` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dtype_kind(dtype: Any) -> str:
    """The kind of a torch dtype: "floating", "integer", "bool", "complex" or "other"
    (quantized, ...)."""
    import torch

    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "floating"
    if dtype == torch.bool:
        return "bool"
    if dtype in {getattr(torch, name, torch.int64) for name in (
            "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64")}:
        return "integer"
    return "other"


def check_tensor(name: str, value: Any, path: Path | str, what: str, want: Any = None,
                 error: type[ValueError] = UnreadableModel) -> None:
    """`error` naming `what`, `path` and `name` unless `value` is a tensor of real numbers
    (never complex), of the dtype kind of `want` (the model's own tensor or dtype, when
    given: floating where the model's is floating, integer where it is integer, as
    BatchNorm's `num_batches_tracked`), and finite when floating."""
    import torch

    if not isinstance(value, torch.Tensor):
        kind_of = type(value).__name__
        article = "an" if kind_of[:1] in "aeiou" else "a"
        raise error(f"{what} {path}: {name} is {article} {kind_of}, not a tensor")
    kind = dtype_kind(value.dtype)
    if want is not None:
        want_dtype = want.dtype if isinstance(want, torch.Tensor) else want
        if kind != dtype_kind(want_dtype):
            raise error(f"{what} {path}: {name} holds {value.dtype} values; the model's are "
                        f"{want_dtype} ({dtype_kind(want_dtype)}): not this model's weights")
    if kind in ("complex", "other"):
        raise error(f"{what} {path}: {name} holds {value.dtype} values, not real numbers: "
                    "not this model's weights")
    if kind == "floating" and not bool(torch.isfinite(value).all()):
        raise error(f"{what} {path}: {name} holds NaN or infinite values (a damaged file)")


def check_finite(tensors: Any, path: Path | str, what: str, want: Any = None,
                 error: type[ValueError] = UnreadableModel) -> None:
    """`error` (default `UnreadableModel`) naming the first entry of `tensors` (a name ->
    tensor mapping, e.g. a state dict) that is not a tensor, holds complex numbers, holds
    a NaN or an infinity, or (with `want`, the fresh model's state dict or a name -> dtype
    mapping) is not of the dtype kind of the model's entry of that name (`check_tensor`).
    Entries `want` lacks are left to the caller's key check."""
    if not isinstance(tensors, Mapping):
        raise error(f"{what} {path}: its weights are a {type(tensors).__name__}, not a "
                    "state dict")
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise error(f"{what} {path}: it holds a key {name!r}, not a name")
        check_tensor(name, value, path, what, None if want is None else want.get(name),
                     error)


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def check_runtime(runtime: str, here: bool = True) -> str:
    """`runtime` if it is one of CPU_RUNTIMES and (`here`) can run on this machine; one
    clear error if not."""
    if runtime not in CPU_RUNTIMES:
        raise ValueError(f"cpu_runtime={runtime!r}; allowed: {', '.join(CPU_RUNTIMES)}")
    if here and runtime == "openvino" and not openvino_available():
        raise ValueError("cpu_runtime='openvino' but OpenVINO is not installed "
                         "(pip install openvino); 'auto' falls back to ONNX Runtime")
    return runtime


def check_onnx(path: Path) -> None:
    """`UnreadableModel` unless `path` parses as an ONNX model whose floating weights
    (initializers) are all finite (checked before a runtime sees it: OpenVINO tries each
    of its frontends on a damaged file and prints their complaints)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UnreadableModel(f"{path}: not a readable ONNX model ({exc})") from exc
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
              onnx.TensorProto.BFLOAT16}
    for init in model.graph.initializer:
        if init.data_type in floats and init.data_location != onnx.TensorProto.EXTERNAL:
            if not np.isfinite(numpy_helper.to_array(init).astype(np.float32)).all():
                raise UnreadableModel(f"{path}: weight {init.name} holds NaN or infinite "
                                      "values (a damaged file)")


class OnnxRunner:
    """`runner(x) -> first output` for an `.onnx` file on the CPU, on `runtime` (see the
    module docstring). `runtime_used` says which one runs it; `input_shape` and
    `output_shape` are the first input's and output's shapes, None for a dynamic axis.
    One caller at a time: an OpenVINO request is not thread-safe.

    `bf16`: OpenVINO in bfloat16 where the CPU has bf16 units (AMX, AVX512-BF16; else it
    stays float32: `precision` says which): the detector about 2x faster on the CI
    machine, its boxes off by up to 2 px, which the refiner takes back (docs/models.md).
    Only OpenVINO runs it.

    Errors: `UnreadableModel` for a file that does not parse; ValueError when the
    runtime asked for cannot run a readable model ("auto" warns and takes ONNX Runtime
    when OpenVINO cannot, unless `bf16`)."""

    def __init__(self, path: Path | str, runtime: str = "auto", bf16: bool = False) -> None:
        self.path = Path(path)
        check_runtime(runtime)
        if bf16 and (runtime == "onnxruntime" or not openvino_available()):
            raise ValueError("bf16 runs on OpenVINO only: cpu_runtime='auto' or 'openvino', "
                             "with OpenVINO installed (pip install openvino)")
        check_onnx(self.path)
        self._request: Any = None
        self.precision = "f32"
        if runtime != "onnxruntime" and openvino_available():
            try:
                self._openvino(bf16)
            except Exception as exc:
                if runtime == "openvino" or bf16:
                    raise ValueError(f"{self.path}: OpenVINO cannot run it ({exc})") from exc
                warnings.warn(f"{self.path.name} runs on ONNX Runtime: OpenVINO cannot run "
                              f"it ({str(exc).strip().splitlines()[-1]})", stacklevel=2)
                self._request = None
        if self._request is None:
            try:
                self._onnxruntime()
            except Exception as exc:
                raise ValueError(f"{self.path}: ONNX Runtime cannot run it ({exc})") from exc

    def _openvino(self, bf16: bool) -> None:
        openvino_offline()
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.path))
        # float32 unless asked: left to itself OpenVINO runs bf16 on CPUs with AMX or
        # AVX512-BF16 units (boxes move by up to 2 px). No pinning: threads float like
        # ONNX Runtime's, so several processes with a Perceiver each do not crowd onto
        # the same cores.
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                                  "ENABLE_CPU_PINNING": False}
        if threads := cpu_threads():
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(model, "CPU", config)
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._request = compiled.create_infer_request()
        self.input_shape, self.output_shape = (
            [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            for port in (model.inputs[0], model.outputs[0]))
        self.runtime_used = "openvino"

    def _onnxruntime(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads := cpu_threads():
            opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(self.path), opts,
                                             providers=["CPUExecutionProvider"])
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self._name = inp.name
        self.input_shape, self.output_shape = (
            [d if isinstance(d, int) else None for d in port.shape] for port in (inp, out))
        self.runtime_used = "onnxruntime"

    def __call__(self, x: Any) -> Any:
        if self._request is not None:  # outputs are copies (share_outputs=False)
            return self._request.infer({0: x})[0]
        return self._session.run(None, {self._name: x})[0]


def open_cached(path: Path, runtime: str, export: Callable[[Path], Path]) -> OnnxRunner:
    """An `OnnxRunner` for a cached export at `path`, made by `export(path)` when missing,
    and again, once, when the file does not parse (cut short by a crash, damaged). A
    readable file that the runtime cannot run is an error, not a reason to export again."""
    check_runtime(runtime)
    if not path.is_file():
        export(path)
    try:
        return OnnxRunner(path, runtime)
    except UnreadableModel:
        path.unlink(missing_ok=True)
        export(path)
        return OnnxRunner(path, runtime)


class CpuSession:
    """The cached export of `weights` on the CPU (`open_cached`)."""

    def __init__(self, kind: str, weights: Path | str,
                 export: Callable[[Path], Path], runtime: str = "auto") -> None:
        self.path = cache_path(kind, weights)
        self.runner = open_cached(self.path, runtime, export)
        self.runtime_used = self.runner.runtime_used

    def __call__(self, x: Any) -> Any:
        return self.runner(x)
