"""The two CPU runtimes for ONNX exports: OpenVINO and ONNX Runtime give the outputs of the
PyTorch module, "auto" falls back to ONNX Runtime for a graph OpenVINO cannot take, bad
names get one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import perception.onnx_cpu as onnx_cpu
from perception.onnx_cpu import OnnxRunner, check_runtime, export_module

pytest.importorskip("openvino")


def _export(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 2, 3, stride=2)).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    return model, export_module(model, torch.zeros(1, 3, 16, 16), tmp_path / "m.onnx",
                                "x", "y")


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime", "auto"])
def test_each_runtime_gives_the_modules_outputs(tmp_path: Path, runtime: str) -> None:
    model, path = _export(tmp_path)
    run = OnnxRunner(path, runtime)
    assert run.runtime_used == ("openvino" if runtime == "auto" else runtime)
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


def test_auto_falls_back_when_openvino_cannot_take_the_graph(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = _export(tmp_path)

    def cannot(self: OnnxRunner) -> None:
        raise RuntimeError("OpConversionFailure")

    monkeypatch.setattr(OnnxRunner, "_openvino", cannot)
    assert OnnxRunner(path, "auto").runtime_used == "onnxruntime"
    with pytest.raises(RuntimeError, match="OpConversionFailure"):
        OnnxRunner(path, "openvino")


def test_bad_runtime_names_and_a_missing_openvino(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = _export(tmp_path)
    with pytest.raises(ValueError, match="cpu_runtime='tensorrt'; allowed: auto, openvino, "
                                         "onnxruntime"):
        OnnxRunner(path, "tensorrt")
    monkeypatch.setattr(onnx_cpu, "openvino_available", lambda: False)
    with pytest.raises(ValueError, match="OpenVINO is not installed"):
        check_runtime("openvino")
    assert OnnxRunner(path, "auto").runtime_used == "onnxruntime"


def test_a_damaged_file_is_one_error_from_each_runtime(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx file")
    for runtime in ("openvino", "onnxruntime", "auto"):
        with pytest.raises(Exception):  # noqa: B017 (each runtime has its own class)
            OnnxRunner(path, runtime)
