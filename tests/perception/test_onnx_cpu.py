"""The two CPU runtimes for ONNX exports: OpenVINO and ONNX Runtime give the outputs of the
PyTorch module; "auto" warns and falls back to ONNX Runtime for a graph OpenVINO cannot
take; a damaged cached export is made again under either runtime; bad names and damaged
files get one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import perception.onnx_cpu as onnx_cpu
from perception.onnx_cpu import (
    RUNTIMES,
    OnnxRunner,
    UnreadableModel,
    check_runtime,
    export_module,
    open_cached,
    openvino_available,
)

needs_openvino = pytest.mark.skipif(not openvino_available(), reason="OpenVINO not installed")
EVERY = [pytest.param(r, marks=needs_openvino) if r == "openvino" else r for r in RUNTIMES]


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 2, 3, stride=2)).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model


def _export(model: nn.Module, out: Path) -> Path:
    return export_module(model, torch.zeros(1, 3, 16, 16), out, "x", "y")


@pytest.mark.parametrize("runtime", [*EVERY, "auto"])
def test_each_runtime_gives_the_modules_outputs(tmp_path: Path, runtime: str) -> None:
    model = _model()
    run = OnnxRunner(_export(model, tmp_path / "m.onnx"), runtime)
    fastest = "openvino" if openvino_available() else "onnxruntime"
    assert run.runtime_used == (fastest if runtime == "auto" else runtime)
    assert run.input_shape == [None, 3, 16, 16]
    for batch in (1, 3):  # any batch size: the export's batch axis is dynamic
        x = np.random.default_rng(batch).random((batch, 3, 16, 16), np.float32) * 4 - 2
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = run(x)
        assert got.shape == expected.shape == (batch, 2, 7, 7)
        assert np.allclose(got, expected, atol=1e-4)
    first = run(x)
    run(x * 0)
    assert np.allclose(first, expected, atol=1e-4), "outputs are copies, not shared buffers"


@needs_openvino
def test_auto_warns_and_falls_back_when_openvino_cannot_take_the_graph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _export(_model(), tmp_path / "m.onnx")

    def cannot(self: OnnxRunner, bf16: bool) -> None:
        raise RuntimeError("OpConversionFailure: Gather-17")

    monkeypatch.setattr(OnnxRunner, "_openvino", cannot)
    with pytest.warns(UserWarning, match="runs on ONNX Runtime: OpenVINO cannot run it"):
        assert OnnxRunner(path, "auto").runtime_used == "onnxruntime"
    with pytest.raises(ValueError, match="OpenVINO cannot run it.*OpConversionFailure"):
        OnnxRunner(path, "openvino")
    with pytest.raises(ValueError, match="OpenVINO cannot run it"):  # bf16: no fallback
        OnnxRunner(path, "auto", bf16=True)
    # a readable file that the runtime cannot run is not exported again
    made = []
    with pytest.raises(ValueError, match="OpenVINO cannot run it"):
        open_cached(path, "openvino", lambda out: made.append(out) or out)
    assert made == [] and path.is_file()


def test_bad_runtime_names_and_a_missing_openvino(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _export(_model(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="cpu_runtime='tensorrt'; allowed: auto, openvino, "
                                         "onnxruntime"):
        OnnxRunner(path, "tensorrt")
    monkeypatch.setattr(onnx_cpu, "openvino_available", lambda: False)
    with pytest.raises(ValueError, match="OpenVINO is not installed"):
        check_runtime("openvino")
    assert check_runtime("openvino", here=False) == "openvino"  # e.g. a GPU Perceiver
    assert OnnxRunner(path, "auto").runtime_used == "onnxruntime"


@pytest.mark.parametrize("runtime", [*EVERY, "auto"])
def test_a_damaged_file_is_one_clear_error(tmp_path: Path, runtime: str) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx file")
    with pytest.raises(UnreadableModel, match="broken.onnx: not a readable ONNX model"):
        OnnxRunner(path, runtime)


@pytest.mark.parametrize("runtime", [*EVERY, "auto"])
def test_a_damaged_cached_export_is_made_again_once(tmp_path: Path, runtime: str) -> None:
    model = _model()
    path = tmp_path / "cache" / "m.onnx"
    made: list[Path] = []

    def export(out: Path) -> Path:
        made.append(out)
        return _export(model, out)

    open_cached(path, runtime, export)  # missing: made
    open_cached(path, runtime, export)  # there: used as it is
    assert len(made) == 1
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a crash
    x = np.ones((1, 3, 16, 16), np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.allclose(open_cached(path, runtime, export)(x), expected, atol=1e-4)
    assert len(made) == 2


@needs_openvino
def test_bf16_runs_on_openvino_only_and_stays_close(tmp_path: Path) -> None:
    model = _model()
    path = _export(model, tmp_path / "m.onnx")
    run = OnnxRunner(path, "auto", bf16=True)
    assert run.runtime_used == "openvino"
    assert run.precision in ("bf16", "f32")  # f32 on CPUs without bf16 units
    assert OnnxRunner(path, "auto").precision == "f32"
    x = np.random.default_rng(0).random((2, 3, 16, 16), np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    # bf16 keeps 8 bits of mantissa: about 2-3 significant digits
    assert np.allclose(run(x), expected, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="bf16 runs on OpenVINO only"):
        OnnxRunner(path, "onnxruntime", bf16=True)
