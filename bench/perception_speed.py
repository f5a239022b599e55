"""Perception speed: detector latency per frame and throughput at batch 1 / 8 / 64.

    python bench/perception_speed.py [--device cpu|0|auto] [--seconds 5]

Frames are real simulator frames (320x192, highway, day). The detector is the shipped
YOLO11n through `perception.Perceiver`, twice: PyTorch at 320x320 (letterboxed; fp16 on
CUDA) and its ONNX Runtime export at the camera's 192x320 (CPU).
The lane model is not built yet, so the "both together" figure is the detector alone.
Prints readable lines and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import gymnasium as gym
import numpy as np

import sim
from perception.detector import DEFAULT_ONNX, DEFAULT_WEIGHTS
from perception.perceiver import Perceiver
from sim.autopilot import Autopilot


def frames(n: int) -> list[np.ndarray]:
    env = gym.make("drivestack/Highway-v0", scenario=sim.family_config(
        "highway", time_of_day={"day": 1}, weather={"clear": 1})).unwrapped
    env.reset(seed=0)
    pilot, out = Autopilot(), []
    while len(out) < n:
        env.step(pilot.act(env.world))
        out.append(env.frame.image.copy())
    return out


def measure(perceiver: Perceiver, images: list[np.ndarray], batch: int, seconds: float
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    images = frames(128)
    fig: dict[str, object] = {"machine": platform.machine(), "cpu_threads": os.cpu_count()}
    backends = {"pytorch_320": Perceiver(weights=DEFAULT_WEIGHTS, device=args.device, imgsz=320)}
    if DEFAULT_ONNX.is_file():
        backends["onnxruntime_192x320"] = Perceiver(weights=DEFAULT_ONNX, device="cpu")
    for name, perceiver in backends.items():
        for batch in (1, 8, 64):
            r = measure(perceiver, images, batch, args.seconds)
            fig[f"{name}_batch_{batch}"] = {**r, "device": perceiver.device}
            print(f"[detector {name}] batch {batch}: {r['ms_per_frame']} ms/frame, "
                  f"{r['frames_per_s']} frames/s")
    best = min(v["ms_per_frame"] for k, v in fig.items()  # type: ignore[union-attr]
               if k.endswith("_batch_1"))
    fig["target_ms_both_models"] = 20.0
    fig["detector_ms_batch_1"] = latency = best
    print(f"detector alone at batch 1: {latency} ms/frame (target for detector + lanes: "
          "<= 20 ms on 2 CPU cores)")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
