"""The detector network without ultralytics' per-image pre- and post-processing.

For frames whose sides are multiples of 32 (the camera's 320x192) no letterbox is needed:
a whole uint8 batch goes to the network as one tensor and one class-aware
`torchvision.ops.batched_nms` call covers every frame. Two backends:

- ONNX Runtime on the CPU, for an `.onnx` export (`perception.detector.export_onnx`),
  with its own session whose threads do not spin after a call (spinning threads of the
  session ultralytics makes steal the cores from the lane model that runs next);
- the fused PyTorch model of a `.pt` file, in fp16 on CUDA, through a pinned host
  buffer (the batched GPU path: bench/README.md).

Boxes match ultralytics' `predict` on the same weights (same confidence, class-aware NMS
at IoU 0.7, boxes clipped to the frame); `tests/perception/test_perceiver.py` checks it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from perception.offline import ultralytics_offline

NMS_IOU = 0.7
"""ultralytics' default NMS IoU for `predict`."""
MAX_DET = 300
"""ultralytics' default cap on boxes per frame."""


class RawDetector:
    """`detector(frames)` -> per frame an (n, 6) float32 array: x0, y0, x1, y1, score,
    class id, by falling score."""

    def __init__(self, weights: Path | str, device: str, height: int, width: int,
                 conf: float = 0.25, iou: float = NMS_IOU, max_det: int = MAX_DET) -> None:
        if height % 32 or width % 32:
            raise ValueError(f"frames of {width}x{height}: both sides must be multiples of 32")
        import torch

        self.torch = torch
        self.weights, self.height, self.width = Path(weights), height, width
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.device = f"cuda:{device}" if device.isdigit() else device
        self.session: Any = None
        self.model: Any = None
        self.pinned: Any = None
        if self.weights.suffix == ".onnx":
            if self.device != "cpu":
                raise ValueError("the ONNX detector runs on the CPU; use the .pt on a GPU")
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(self.weights), opts,
                                                providers=["CPUExecutionProvider"])
            shape = self.session.get_inputs()[0].shape
            if list(shape[2:]) != [height, width]:
                raise ValueError(f"{self.weights} takes {shape[3]}x{shape[2]} frames, not "
                                 f"{width}x{height}")
            self.batch_dim = shape[0] if isinstance(shape[0], int) else None
        else:
            ultralytics_offline()
            from ultralytics import YOLO

            net: Any = YOLO(str(self.weights)).model
            model = net.fuse().to(self.device).eval()
            self.half = self.device.startswith("cuda")
            self.model = model.half() if self.half else model

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        torch = self.torch
        if not frames:
            return []
        if self.session is not None:
            x = np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2), np.float32) / 255.0
            name = self.session.get_inputs()[0].name
            step = self.batch_dim or len(frames)  # a fixed-batch export runs frame by frame
            pred = np.concatenate([self.session.run(None, {name: x[i: i + step]})[0]
                                   for i in range(0, len(x), step)])
            return [self._nms_host(p) for p in pred]
        if self.half:
            if self.pinned is None or self.pinned.shape[0] < len(frames):
                self.pinned = torch.empty((len(frames), *frames[0].shape), dtype=torch.uint8,
                                          pin_memory=True)
            host = self.pinned[: len(frames)]
            np.stack(frames, out=host.numpy())
            x_t = host.to(self.device, non_blocking=True)
        else:
            x_t = torch.from_numpy(np.stack(frames))
        with torch.inference_mode():
            img = x_t.permute(0, 3, 1, 2).to(torch.float16 if self.half else torch.float32)
            out = self.model(img / 255.0)
            pred = (out[0] if isinstance(out, (list, tuple)) else out).float()
            return self._nms(pred, len(frames))

    def _nms_host(self, pred: np.ndarray) -> np.ndarray:
        """One frame's (4 + classes, anchors) output on the host: the confidence filter in
        numpy (few anchors pass), then NMS; the same result as `_nms`."""
        import torchvision

        torch = self.torch
        scores = pred[4:]
        conf = scores.max(0)
        keep = conf > self.conf
        if not keep.any():
            return np.zeros((0, 6), np.float32)
        b, c, k = pred[:4, keep].T, conf[keep], scores[:, keep].argmax(0)
        xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
        kept = torchvision.ops.batched_nms(torch.from_numpy(xyxy), torch.from_numpy(c),
                                           torch.from_numpy(k), self.iou).numpy()
        kept = kept[: self.max_det]
        xyxy = xyxy[kept]  # clipped after NMS, as ultralytics does
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, self.width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, self.height)
        return np.concatenate([xyxy, c[kept, None], k[kept, None]], 1).astype(np.float32)

    def _nms(self, pred: Any, n: int) -> list[np.ndarray]:
        """(B, 4 + classes, anchors) raw output -> per frame boxes after class-aware NMS."""
        import torchvision

        torch = self.torch
        with torch.inference_mode():
            boxes, scores = pred[:, :4].transpose(1, 2), pred[:, 4:].transpose(1, 2)
            conf, cls = scores.max(-1)
            frame, anchor = (conf > self.conf).nonzero(as_tuple=True)
            b = boxes[frame, anchor]
            xyxy = torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            c, k = conf[frame, anchor], cls[frame, anchor]
            kept = torchvision.ops.batched_nms(xyxy, c, frame * scores.shape[-1] + k, self.iou)
            kept = kept[torch.sort(frame[kept], stable=True).indices]  # by frame, then score
            xyxy = xyxy[kept]  # clipped after NMS, as ultralytics does
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, self.width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, self.height)
            rows = torch.cat([xyxy, c[kept, None], k[kept, None].float()], 1).cpu()
            owner = frame[kept].cpu().numpy()
        per_frame = np.split(rows.numpy().astype(np.float32),
                             np.searchsorted(owner, np.arange(1, n)))
        return [d[: self.max_det] for d in per_frame]
