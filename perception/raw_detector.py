"""The detector network without ultralytics' per-image pre- and post-processing.

The network runs at the size it was trained at: the frame scaled by one factor on both
axes (320x192 frames go to a detector trained at 480 as 480x288, resized bilinearly as
ultralytics' letterbox does, and the boxes are scaled back). When that size has sides
that are multiples of 32 no letterbox padding is needed: a whole batch goes to the network
as one tensor and one class-aware `torchvision.ops.batched_nms` call covers every frame.
Two backends:

- an `.onnx` export (`perception.detector.export_onnx`) on the CPU, on OpenVINO or ONNX
  Runtime (`runtime`, perception/onnx_cpu.py: "auto" takes OpenVINO, about 1.4x faster
  here), in its own session (the threads of the session ultralytics makes spin after a
  call and steal the cores from the lane model that runs next);
- the fused PyTorch model of a `.pt` file, in fp16 on CUDA, through a pinned host
  buffer (the batched GPU path: bench/README.md).

Boxes match ultralytics' `predict` on the same weights (same confidence, class-aware NMS
at IoU 0.7, boxes clipped to the frame); `tests/perception/test_perceiver.py` checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.detector import load_detector, model_imgsz, network_input, torch_device
from perception.onnx_cpu import OnnxRunner
from sim.types import check_number

NMS_IOU = 0.7
"""ultralytics' default NMS IoU for `predict`."""
MAX_DET = 300
"""ultralytics' default cap on boxes per frame."""
MIN_IMGSZ, MAX_IMGSZ = 32, 4096
"""The input sizes [px] a detector runs at: a multiple of its largest stride (32), at
most 4096 (a 4096x4096 float input is 200 MB a frame; the shipped detectors run at 320
and 480)."""


def check_imgsz(imgsz: object) -> int:
    """`imgsz` if it is an integer multiple of 32 in MIN_IMGSZ..MAX_IMGSZ px; one
    ValueError naming `imgsz` and the range otherwise (an input of 100000 px exhausts
    memory before anything else complains)."""
    check_number("imgsz", imgsz, MIN_IMGSZ, MAX_IMGSZ, integer=True, unit="px")
    size = int(imgsz)  # type: ignore[call-overload]
    if size % 32:
        raise ValueError(f"imgsz: must be a multiple of 32 (the detector's largest stride) "
                         f"in [{MIN_IMGSZ}, {MAX_IMGSZ}] px, got {size}")
    return size


def check_trained_imgsz(size: int, weights: Path | str) -> int:
    """`size`, the training size a detector file keeps (its default input size), if it is
    in MIN_IMGSZ..MAX_IMGSZ px; ValueError naming the file otherwise."""
    check_number(f"imgsz (the training size kept in {weights})", size, MIN_IMGSZ, MAX_IMGSZ,
                 integer=True, unit="px")
    return size


class NotYoloHead(ValueError):
    """Weights whose network is not a YOLO detect head (RT-DETR): ultralytics' predict
    runs them."""


def yolo_anchors(height: int, width: int) -> int:
    """Anchor points of a YOLO detect head (strides 8, 16, 32) at a height x width input."""
    return sum(-(-height // s) * -(-width // s) for s in (8, 16, 32))


class RawDetector:
    """`detector(frames)` -> per frame an (n, 6) float32 array: x0, y0, x1, y1, score,
    class id, by falling score."""

    def __init__(self, weights: Path | str, device: str, height: int, width: int,
                 conf: float = 0.25, iou: float = NMS_IOU, max_det: int = MAX_DET,
                 imgsz: int | None = None, runtime: str = "auto", bf16: bool = False
                 ) -> None:
        check_number("conf", conf, 0.0, 1.0)
        check_number("iou", iou, 0.0, 1.0)
        check_number("max_det", max_det, 1, 100_000, integer=True)
        if imgsz is not None:
            check_imgsz(imgsz)
        import torch

        self.torch = torch
        self.weights, self.height, self.width = Path(weights), height, width
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.device = torch_device(device)
        self.session: Any = None
        self.model: Any = None
        self.pinned: Any = None
        if bf16 and self.weights.suffix != ".onnx":
            raise ValueError("bf16 is for an ONNX export on the CPU (OpenVINO); on CUDA the "
                             "PyTorch model runs in fp16")
        if self.weights.suffix == ".onnx":
            if self.device != "cpu":
                raise ValueError("the ONNX detector runs on the CPU; use the .pt on a GPU")
            self.session = OnnxRunner(self.weights, runtime, bf16)
            shape = self.session.input_shape
            if len(shape) != 4 or None in shape[2:]:
                raise ValueError(f"{self.weights}: expected a fixed (B, 3, H, W) input, "
                                 f"got {shape}")
            self.input_hw = (int(shape[2]), int(shape[3]))
            self.batch_dim = shape[0]
            out = self.session.output_shape
            if len(out) != 3 or out[2] != yolo_anchors(*self.input_hw):
                raise NotYoloHead(f"{self.weights}: output {out} is not a YOLO detect head's "
                                  f"(B, 4 + classes, {yolo_anchors(*self.input_hw)}); an "
                                  "RT-DETR export? Pass its .pt (ultralytics' predict)")
        else:
            yolo = load_detector(self.weights)  # safe load, checked weights
            from ultralytics.nn.tasks import RTDETRDetectionModel

            if isinstance(yolo.model, RTDETRDetectionModel):
                raise NotYoloHead(f"{self.weights} is an RT-DETR model; its output is not a "
                                  "YOLO detect head's: it runs through ultralytics' predict")
            self.input_hw = network_input(
                height, width, imgsz or check_trained_imgsz(model_imgsz(yolo), self.weights))
            net: Any = yolo.model
            model = net.fuse().to(self.device).eval()
            self.half = self.device.startswith("cuda")
            self.model = model.half() if self.half else model
        in_h, in_w = self.input_hw
        if in_h * width != in_w * height or in_h % 32 or in_w % 32:
            raise ValueError(
                f"{self.weights} takes {in_w}x{in_h} frames: frames of {width}x{height} "
                "must scale to that by one factor, both sides multiples of 32")
        self.scale = in_w / width
        """Network input over frame size (1.5 for a detector trained at 480 on 320x192)."""

    @property
    def runtime(self) -> str:
        """What runs the network: "openvino", "onnxruntime" or "torch"."""
        return self.session.runtime_used if self.session is not None else "torch"

    def _resized(self, frames: list[np.ndarray]) -> np.ndarray:
        """The frames at the network's input size (bilinear, as ultralytics' letterbox)."""
        if self.scale == 1.0:
            return np.stack(frames)
        in_h, in_w = self.input_hw
        return np.stack([cv2.resize(f, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
                         for f in frames])

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if not frames:
            return []
        if self.session is not None:
            x = np.ascontiguousarray(self._resized(frames).transpose(0, 3, 1, 2),
                                     np.float32) / 255.0
            step = self.batch_dim or len(frames)  # a fixed-batch export runs frame by frame
            pred = np.concatenate([self.session(x[i: i + step])
                                   for i in range(0, len(x), step)])
            # the confidence filter in numpy (few anchors pass; small torch ops on the CPU
            # cost more than the network's tail), the NMS on what is left
            scores = pred[:, 4:]
            conf = scores.max(1)
            frame, anchor = np.nonzero(conf > self.conf)
            t = self.torch.from_numpy
            return self._suppress(t(frame), t(pred[frame, :4, anchor]), t(conf[frame, anchor]),
                                  t(scores[frame, :, anchor].argmax(1)), len(frames))
        return self.detect(self.upload(frames))

    def upload(self, frames: list[np.ndarray]) -> Any:
        """The frames as one uint8 (B, H, W, 3) tensor on the model's device (through a
        pinned host buffer on CUDA), to share with another model (the lane model)."""
        torch = self.torch
        if self.model is None:
            raise ValueError("upload/detect are the PyTorch path; this detector runs ONNX")
        if not self.half:
            return torch.from_numpy(np.stack(frames))
        if self.pinned is None or self.pinned.shape[0] < len(frames):
            self.pinned = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8,
                                      pin_memory=True)
        host = self.pinned[: len(frames)]
        np.stack(frames, out=host.numpy())
        return host.to(self.device, non_blocking=True)

    def detect(self, x: Any) -> list[np.ndarray]:
        """Boxes of an uploaded uint8 (B, H, W, 3) batch (see `upload`)."""
        torch = self.torch
        with torch.inference_mode():
            if self.scale != 1.0 and not x.is_cuda:  # OpenCV's resize, as ultralytics
                x = torch.from_numpy(self._resized(list(x.numpy())))
            img = x.permute(0, 3, 1, 2).to(torch.float16 if self.half else torch.float32)
            if self.scale != 1.0 and x.is_cuda:
                img = torch.nn.functional.interpolate(img, size=self.input_hw, mode="bilinear",
                                                      align_corners=False)
            out = self.model(img / 255.0)
            pred = (out[0] if isinstance(out, (list, tuple)) else out).float()  # (B, 4+C, A)
            conf, cls = pred[:, 4:].max(1)
            frame, anchor = (conf > self.conf).nonzero(as_tuple=True)
            return self._suppress(frame, pred[frame, :4, anchor], conf[frame, anchor],
                                  cls[frame, anchor], len(x))

    def _suppress(self, frame: Any, cxcywh: Any, conf: Any, cls: Any, n: int
                  ) -> list[np.ndarray]:
        """Candidates (frame index, box, score, class) of a batch of `n` frames -> per frame
        the boxes left by class-aware NMS, by falling score, clipped to the frame."""
        import torchvision

        torch = self.torch
        with torch.inference_mode():
            b = cxcywh.float() / self.scale  # back to frame pixels
            xyxy = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            groups = frame * (int(cls.max()) + 1 if len(cls) else 1) + cls
            kept = torchvision.ops.batched_nms(xyxy, conf.float(), groups, self.iou)
            kept = kept[torch.sort(frame[kept], stable=True).indices]  # by frame, then score
            xyxy = xyxy[kept]  # clipped after NMS, as ultralytics does
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, self.width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, self.height)
            rows = torch.cat([xyxy, conf[kept, None].float(), cls[kept, None].float()], 1)
            owner = frame[kept].cpu().numpy()
            rows_h = rows.cpu().numpy().astype(np.float32)
        per_frame = np.split(rows_h, np.searchsorted(owner, np.arange(1, n)))
        return [d[: self.max_det] for d in per_frame]
