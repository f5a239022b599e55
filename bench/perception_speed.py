"""Perception speed: latency per frame and throughput at batch 1 / 8 / 64 of the
detector alone, the lane models alone, and the whole Perceiver (detector + lanes).

    python bench/perception_speed.py [--device cpu|0|auto] [--seconds 5]

Frames are real simulator frames (320x192, highway, day). The detector is the shipped
YOLO11n, twice: PyTorch at 320x320 (letterboxed; fp16 on CUDA) and its ONNX Runtime
export at the camera's 192x320 (CPU). The lane models are the shipped one
(perception/weights/lanes.pt) and, when present, the other backbone's run in
runs/lanes/{cnn,vit}/best.pt. "both" is `Perceiver()` as `drivestack run` uses it.
Prints readable lines and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import sim
from perception.detector import DEFAULT_ONNX, DEFAULT_WEIGHTS
from perception.lanes import DEFAULT_LANE_WEIGHTS, load_lane_model
from perception.metrics import box_iou
from perception.perceiver import Perceiver
from sim.autopilot import Autopilot

RUNS = Path("runs/lanes")


def frames(n: int) -> list[np.ndarray]:
    env = gym.make("drivestack/Highway-v0", scenario=sim.family_config(
        "highway", time_of_day={"day": 1}, weather={"clear": 1})).unwrapped
    env.reset(seed=0)
    pilot, out = Autopilot(), []
    while len(out) < n:
        env.step(pilot.act(env.world))
        out.append(env.frame.image.copy())
    return out


def measure(perceiver: Any, images: list[np.ndarray], batch: int, seconds: float
            ) -> dict[str, float]:
    perceiver(images[:batch])  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        k = (n * batch) % (len(images) - batch + 1)
        perceiver(images[k: k + batch])
        n += 1
    wall = time.perf_counter() - start
    return {"batch": batch, "ms_per_frame": round(1000 * wall / (n * batch), 2),
            "frames_per_s": round(n * batch / wall, 1), "batches": n}


class LaneOnly:
    """The lane model alone, called like a Perceiver (frames in, decoded lanes out)."""

    def __init__(self, path: Path, device: str) -> None:
        import torch

        self.device = "cuda:0" if device not in ("cpu", "mps") else device
        self.model, self.spec, _ = load_lane_model(path, self.device)
        self.half = self.device.startswith("cuda")
        if self.half:
            self.model = self.model.half()
        self.torch = torch

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        from perception.lanes import decode

        with self.torch.inference_mode():
            x = self.torch.from_numpy(np.stack(frames)).to(self.device)
            return decode(self.model(x).float().cpu(), self.spec)[0]


class BatchedPipeline:
    """Detector network + NMS + lane network on a whole uint8 batch, without ultralytics'
    per-image pre- and post-processing: frames go to the device as one (B, 192, 320, 3)
    tensor through a pinned buffer (both sides multiples of 32, so no letterbox), fp16 on
    CUDA; one batched NMS over all frames (torchvision `batched_nms`, boxes kept apart per
    frame and class), lanes decoded on the device, one copy back. This is the path a
    batched renderer or the data engine's offline labelling would feed; returns, per
    frame, the (n, 6) boxes xyxy/conf/class and the decoded lane x (slots, rows).

    Kept as it was when measured on the H200 (bench/README.md). The package's
    `perception.raw_detector.RawDetector`, which `Perceiver` uses on CUDA, grew out of it
    (same network, input and NMS) but uploads the frames on its own, apart from the lane
    model; it has not been timed on a GPU."""

    def __init__(self, device: str, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 100) -> None:
        import torch
        from ultralytics import YOLO

        from perception.offline import ultralytics_offline

        ultralytics_offline()
        self.torch, self.conf, self.iou, self.max_det = torch, conf, iou, max_det
        self.device = "cuda:0" if device not in ("cpu", "mps") else device
        self.half = self.device.startswith("cuda")
        torch.backends.cudnn.benchmark = True
        det = YOLO(str(DEFAULT_WEIGHTS)).model.fuse().to(self.device).eval()
        lanes, self.spec, _ = load_lane_model(DEFAULT_LANE_WEIGHTS, self.device)
        self.det, self.lanes = (det.half(), lanes.half()) if self.half else (det, lanes)
        self.pinned: Any = None

    def __call__(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        import torchvision

        from perception.lanes import decode

        torch = self.torch
        b = len(frames)
        if self.half:
            if self.pinned is None or self.pinned.shape[0] < b:
                self.pinned = torch.empty((b, *frames[0].shape), dtype=torch.uint8,
                                          pin_memory=True)
            host = self.pinned[:b]
            np.stack(frames, out=host.numpy())
            x = host.to(self.device, non_blocking=True)
        else:
            x = torch.from_numpy(np.stack(frames))
        with torch.inference_mode():
            img = x.permute(0, 3, 1, 2).to(torch.float16 if self.half else torch.float32)
            pred = self.det(img / 255.0)
            pred = (pred[0] if isinstance(pred, (list, tuple)) else pred).float()  # (B, 4+C, A)
            boxes_cxcywh, scores = pred[:, :4].transpose(1, 2), pred[:, 4:].transpose(1, 2)
            conf, cls = scores.max(-1)  # (B, A)
            keep = conf > self.conf
            frame, anchor = keep.nonzero(as_tuple=True)
            bx = boxes_cxcywh[frame, anchor]
            xyxy = torch.cat([bx[:, :2] - bx[:, 2:] / 2, bx[:, :2] + bx[:, 2:] / 2], 1)
            c, k = conf[frame, anchor], cls[frame, anchor]
            kept = torchvision.ops.batched_nms(xyxy, c, frame * scores.shape[-1] + k, self.iou)
            kept = kept[torch.sort(frame[kept], stable=True).indices]  # by frame, then score
            out = torch.cat([xyxy[kept], c[kept, None], k[kept, None].float()], 1)
            owner = frame[kept]
            xs, _ = decode(self.lanes(x), self.spec)
            out_h, owner_h = out.cpu().numpy(), owner.cpu().numpy()
        per_frame = np.split(out_h, np.searchsorted(owner_h, np.arange(1, b)))
        return [(d[: self.max_det], xs[i]) for i, d in enumerate(per_frame)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--batched-only", action="store_true",
                   help="only the batched pipeline, at batch 1..1024 (the GPU figure)")
    args = p.parse_args()
    images = frames(128)
    fig: dict[str, object] = {"machine": platform.machine(), "cpu_threads": os.cpu_count()}
    if args.batched_only:
        pipe = BatchedPipeline(args.device)
        agree = _agreement(pipe, Perceiver(device=args.device, conf=0.25), images[:8])
        fig["batched_vs_perceiver_boxes"] = agree
        print(f"batched pipeline vs Perceiver on 8 frames: {agree}")
        for batch in (1, 8, 64, 256, 1024):
            many = (images * (batch // len(images) + 2))[: batch + len(images)]
            r = measure(pipe, many, batch, args.seconds)
            fig[f"batched_pipeline_batch_{batch}"] = {**r, "device": args.device}
            print(f"[batched pipeline] batch {batch}: {r['ms_per_frame']} ms/frame, "
                  f"{r['frames_per_s']} frames/s")
        fig["target_frames_per_s_gpu"] = 5000
        print(json.dumps(fig))
        return
    backends: dict[str, Any] = {
        "detector_pytorch_320": Perceiver(weights=DEFAULT_WEIGHTS, device=args.device,
                                          imgsz=320, lanes=False)}
    if DEFAULT_ONNX.is_file() and args.device == "cpu":
        backends["detector_onnxruntime_192x320"] = Perceiver(weights=DEFAULT_ONNX,
                                                             device="cpu", lanes=False)
    lane_files = {"shipped": DEFAULT_LANE_WEIGHTS, "cnn_run": RUNS / "cnn" / "best.pt",
                  "vit_run": RUNS / "vit" / "best.pt"}
    for name, path in lane_files.items():
        if path.is_file():
            backends[f"lanes_{name}"] = LaneOnly(path, args.device)
    backends["both_perceiver"] = Perceiver(device=args.device)
    for name, model in backends.items():
        for batch in (1, 8, 64):
            r = measure(model, images, batch, args.seconds)
            fig[f"{name}_batch_{batch}"] = {**r, "device": args.device}
            print(f"[{name}] batch {batch}: {r['ms_per_frame']} ms/frame, "
                  f"{r['frames_per_s']} frames/s")
    both = fig["both_perceiver_batch_1"]["ms_per_frame"]  # type: ignore[index]
    fig["target_ms_both_models"] = 20.0
    fig["both_ms_batch_1"] = both
    print(f"detector + lanes (Perceiver) at batch 1: {both} ms/frame (target <= 20 ms on "
          "2 CPU cores)")
    print(json.dumps(fig))


def _agreement(pipe: BatchedPipeline, perceiver: Perceiver, images: list[np.ndarray]
               ) -> dict[str, float]:
    """How far the batched path's boxes are from the Perceiver's on the same frames (the
    Perceiver letterboxes to 320x320, so small differences are expected)."""
    ours = pipe(images)
    theirs = perceiver(images)
    n_ours = sum(len(b) for b, _ in ours)
    n_theirs = sum(len(p.detections.boxes_xyxy) for p in theirs)
    matched = 0
    for (b, _), p in zip(ours, theirs, strict=True):
        ref = p.detections.boxes_xyxy
        if len(b) and len(ref):
            matched += int((box_iou(b[:, :4], ref).max(1) >= 0.7).sum())
    return {"boxes_batched": n_ours, "boxes_perceiver": n_theirs, "matched_iou_0.7": matched}


if __name__ == "__main__":
    main()
