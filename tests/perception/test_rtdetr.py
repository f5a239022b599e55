"""RT-DETR, the transformer option: it trains offline from its yaml, and the Perceiver runs
it through ultralytics' predict; our batched YOLO path refuses it (its output is not a
YOLO detect head's) instead of reading garbage boxes from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from perception.datasets import DatasetPlan, generate
from perception.onnx_cpu import export_module
from perception.perceiver import Detections, Perceiver
from perception.raw_detector import NotYoloHead, RawDetector, yolo_anchors
from sim.types import CameraSpec

pytest.importorskip("ultralytics")
CAMERA = CameraSpec(width=96, height=64)


def test_rtdetr_trains_and_runs_through_predict(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from perception.detector import DetectorTraining, train_detector

    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "ds"
    generate(DatasetPlan(frames=8, frames_per_episode=2, stride=2, warmup=4, camera=CAMERA),
             data)
    result = train_detector(DetectorTraining(  # about 12 s on 2 CPU cores
        data=data / "data.yaml", out=tmp_path / "run", architecture="rtdetr-l", epochs=1,
        imgsz=96, batch=4, workers=0, device="cpu"))
    weights = Path(result["weights"])
    assert weights.is_file() and "metrics/mAP50-95(B)" in result["metrics"]
    p = Perceiver(weights=weights, device="cpu", camera=CAMERA, lanes=False, conf=0.0)
    assert p.runtimes["detector"] == "ultralytics" and p.raw is None
    [out] = p([np.zeros((64, 96, 3), np.uint8)])
    assert isinstance(out.detections, Detections)
    with pytest.raises(NotYoloHead, match="RT-DETR"):
        RawDetector(weights, "cpu", 64, 96)


def test_an_export_without_a_yolo_head_is_refused(tmp_path: Path) -> None:
    class QueryHead(torch.nn.Module):  # RT-DETR's output: (B, 300 queries, 4 + classes)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((1, 2, 3))[:, None, None].expand(-1, 300, 9)

    class YoloHead(torch.nn.Module):  # (B, 4 + classes, anchors)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((1, 2, 3))[:, None, None].expand(-1, 9, yolo_anchors(64, 96))

    example = torch.zeros(1, 3, 64, 96)
    bad = export_module(QueryHead(), example, tmp_path / "q.onnx", "images", "output0")
    with pytest.raises(NotYoloHead, match=r"not a YOLO detect head's .*RT-DETR export"):
        RawDetector(bad, "cpu", 64, 96, runtime="onnxruntime")
    # the same check passes a head of the right shape (a fixed batch, as ultralytics exports)
    good = tmp_path / "y.onnx"
    torch.onnx.export(YoloHead(), (example,), str(good), input_names=["images"],
                      output_names=["output0"], opset_version=17, dynamo=False)
    det = RawDetector(good, "cpu", 64, 96, runtime="onnxruntime")
    assert det.input_hw == (64, 96) and yolo_anchors(64, 96) == 8 * 12 + 4 * 6 + 2 * 3
