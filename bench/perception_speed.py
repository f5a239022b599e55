"""Perception speed: latency per frame and throughput at batch 1 / 8 / 64 of the
detector alone, the box refiner alone, the lane models alone, and the whole Perceiver
(detector + refiner + lanes).

    python bench/perception_speed.py [--device cpu|0|auto] [--seconds 5]

Frames are real simulator frames (320x192, highway, day). The detector is the shipped
YOLO11n: PyTorch at the size it was trained at (ultralytics' predict; fp16 on CUDA) and,
on the CPU, its ONNX export (the camera's 320x192 scaled to that size) on each CPU
runtime, OpenVINO and ONNX Runtime (perception/onnx_cpu.py).
`--detectors a.pt,b.pt` measures other detectors beside it in the same run (each also as
its ONNX export on the CPU, alone and inside a Perceiver with the shipped lanes).
The lane models are the shipped one
(perception/weights/lanes.pt) and, when present, the other backbone's run in
runs/lanes/{cnn,vit}/best.pt. The refiner (perception/refine.py) is timed on the shipped
detector's boxes at conf 0.25. "both" is `Perceiver()` as `drivestack run` uses it
(cpu_runtime "auto"); "both_perceiver_onnxruntime" the same on ONNX Runtime only,
"both_perceiver_no_refine" without the refiner.
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
from perception.detector import DEFAULT_WEIGHTS, cached_onnx
from perception.lanes import DEFAULT_LANE_WEIGHTS, load_lane_model
from perception.metrics import box_iou
from perception.onnx_cpu import RUNTIMES, openvino_available
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


class LaneOnnxOnly:
    """The lane model's ONNX export alone (`perception.lane_onnx`) on a CPU runtime, as
    `Perceiver` runs it on the CPU."""

    def __init__(self, path: Path, runtime: str) -> None:
        from perception.lane_onnx import OnnxLanes

        self.onnx = OnnxLanes(path, runtime)
        _, self.spec, _ = load_lane_model(path, "cpu")

    def __call__(self, frames: list[np.ndarray]) -> np.ndarray:
        import torch

        from perception.lanes import decode

        return decode(torch.from_numpy(self.onnx(np.stack(frames))), self.spec)[0]


class RefinerOnly:
    """The box refiner alone, on the shipped detector's boxes (conf 0.25) of the frames,
    found once beforehand."""

    def __init__(self, device: str, images: list[np.ndarray], runtime: str = "auto") -> None:
        from perception.detector import resolve_device, torch_device
        from perception.refine import load_refiner

        device = resolve_device(device)
        det = Perceiver(device=device, lanes=False, refine=False)
        self.boxes = {id(f): p.detections.rows()
                      for f, p in zip(images, det(images), strict=True)}
        self.refiner = load_refiner(device=torch_device(device), cpu_runtime=runtime)
        n = sum(len(b) for b in self.boxes.values())
        print(f"refiner: {n / len(images):.1f} boxes a frame at conf 0.25")

    def __call__(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return self.refiner(frames, [self.boxes[id(f)] for f in frames])


class BatchedPipeline:
    """Detector network + NMS + lane network on a whole uint8 batch, without ultralytics'
    per-image pre- and post-processing: `RawDetector` uploads the frames once as a
    (B, 192, 320, 3) tensor through a pinned buffer, scales them on the GPU to the size the
    detector was trained at (no letterbox padding) and runs the fused YOLO11n in fp16 on
    CUDA with one batched NMS over all frames; the lane model runs on the same uploaded
    tensor and decodes on the device. This is the path a batched renderer or the data
    engine's offline labelling would feed; returns, per frame, the (n, 6) boxes
    xyxy/conf/class and the decoded lane x (slots, rows). (The H200 figures in
    bench/README.md were taken with this class's first form, which held the same steps
    inline, before they moved into `RawDetector`.)"""

    def __init__(self, device: str, conf: float = 0.25, max_det: int = 100) -> None:
        import torch

        from perception.raw_detector import RawDetector

        self.torch = torch
        self.device = "cuda:0" if device not in ("cpu", "mps") else device
        torch.backends.cudnn.benchmark = True
        self.det = RawDetector(DEFAULT_WEIGHTS, "0" if self.device.startswith("cuda")
                               else self.device, 192, 320, conf=conf, max_det=max_det)
        lanes, self.spec, _ = load_lane_model(DEFAULT_LANE_WEIGHTS, self.device)
        self.lanes = lanes.half() if self.det.half else lanes

    def __call__(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        from perception.lanes import decode

        x = self.det.upload(frames)
        boxes = self.det.detect(x)
        with self.torch.inference_mode():
            xs, _ = decode(self.lanes(x), self.spec)
        return list(zip(boxes, xs, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--detectors", default="",
                   help="comma-separated .pt detectors to measure beside the shipped one")
    p.add_argument("--rtdetr", action="store_true",
                   help="also time RT-DETR-l (built untrained from its yaml: speed does not "
                        "depend on the weights) through ultralytics' predict")
    p.add_argument("--batched-only", action="store_true",
                   help="only the batched pipeline, at batch 1..1024 (the GPU figure)")
    args = p.parse_args()
    images = frames(128)
    fig: dict[str, object] = {"machine": platform.machine(), "cpu_threads": os.cpu_count()}
    if args.batched_only:
        pipe = BatchedPipeline(args.device)
        agree = _agreement(pipe, Perceiver(device=args.device, conf=0.25, refine=False),
                           images[:8])
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
    backends = _backends(args, images)
    for name, model in backends.items():
        for batch in (1, 8, 64):
            r = measure(model, images, batch, args.seconds)
            fig[f"{name}_batch_{batch}"] = {**r, "device": args.device}
            print(f"[{name}] batch {batch}: {r['ms_per_frame']} ms/frame, "
                  f"{r['frames_per_s']} frames/s")
    fig["perceiver_runtimes"] = backends["both_perceiver"].runtimes
    print(f"Perceiver() runs: {fig['perceiver_runtimes']}")
    both = fig["both_perceiver_batch_1"]["ms_per_frame"]  # type: ignore[index]
    fig["target_ms_both_models"] = 20.0
    fig["both_ms_batch_1"] = both
    print(f"detector + lanes (Perceiver) at batch 1: {both} ms/frame (target <= 20 ms on "
          "2 CPU cores)")
    print(json.dumps(fig))


def _backends(args: argparse.Namespace, images: list[np.ndarray]) -> dict[str, Any]:
    """Everything timed, by name: detectors, refiner, lanes, Perceivers."""
    backends: dict[str, Any] = {}
    runtimes = [r for r in RUNTIMES if r != "openvino" or openvino_available()]
    for pt in [DEFAULT_WEIGHTS] + [Path(x) for x in args.detectors.split(",") if x]:
        label = "" if pt == DEFAULT_WEIGHTS else f"{pt.parents[2].name}_"
        torch_det = Perceiver(weights=pt, device=args.device, lanes=False, refine=False)
        backends[f"detector_{label}pytorch_{torch_det.imgsz}"] = torch_det
        if args.device == "cpu":
            onnx = cached_onnx(pt, 192, 320)
            for runtime in runtimes:
                det = Perceiver(weights=onnx, device="cpu", lanes=False, refine=False,
                                cpu_runtime=runtime)
                h, w = det.imgsz  # type: ignore[misc]
                backends[f"detector_{label}{runtime}_{w}x{h}"] = det
            if label:
                backends[f"both_{label}perceiver"] = Perceiver(weights=onnx, device="cpu")
    if args.rtdetr:
        backends["detector_rtdetr_l_pytorch_480"] = _rtdetr(args.device)
    backends["refiner"] = RefinerOnly(args.device, images)  # "auto": ONNX Runtime on the CPU
    if args.device == "cpu" and openvino_available():
        backends["refiner_openvino"] = RefinerOnly("cpu", images, "openvino")
    lane_files = {"shipped": DEFAULT_LANE_WEIGHTS, "cnn_run": RUNS / "cnn" / "best.pt",
                  "vit_run": RUNS / "vit" / "best.pt"}
    for name, path in lane_files.items():
        if path.is_file():
            backends[f"lanes_{name}"] = LaneOnly(path, args.device)
            if args.device == "cpu":
                for runtime in runtimes:
                    backends[f"lanes_{name}_{runtime}"] = LaneOnnxOnly(path, runtime)
    if args.device == "cpu":
        backends["both_perceiver_torch_lanes"] = Perceiver(device="cpu", lane_backend="torch")
        backends["both_perceiver_onnxruntime"] = Perceiver(device="cpu",
                                                           cpu_runtime="onnxruntime")
    backends["both_perceiver"] = Perceiver(device=args.device)
    backends["both_perceiver_no_refine"] = Perceiver(device=args.device, refine=False)
    if args.device == "cpu":
        backends["both_perceiver_int8"] = Perceiver(device="cpu", int8=True)
        if openvino_available():
            bf16 = Perceiver(device="cpu", bf16=True)
            print(f"Perceiver(bf16=True): the detector runs in {bf16.raw.session.precision}")
            backends["both_perceiver_bf16"] = bf16
    return backends


def _rtdetr(device: str) -> Perceiver:
    """RT-DETR-l from its yaml (untrained; the 80 classes of the yaml, which change only
    its last layers), saved as a checkpoint and run by the Perceiver at input 480, as the
    shipped YOLO11n."""
    import tempfile

    from perception.offline import ultralytics_offline

    ultralytics_offline()
    from ultralytics import RTDETR

    model = RTDETR("rtdetr-l.yaml")
    path = Path(tempfile.mkdtemp()) / "rtdetr-l.pt"
    model.save(str(path))
    return Perceiver(weights=path, device=device, lanes=False, refine=False, imgsz=480)


def _agreement(pipe: BatchedPipeline, perceiver: Perceiver, images: list[np.ndarray]
               ) -> dict[str, float]:
    """How far the batched path's boxes are from the Perceiver's on the same frames (the
    Perceiver's ultralytics path resizes with OpenCV, the batched one on the GPU, so
    small differences are expected)."""
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
