#!/usr/bin/env python
"""The batched camera on the host (`BatchCamera`) and on a device (`DeviceCamera`), side
by side in one run, with an agreement check (issue 17).

    python bench/device_render.py            # CPU: the kernels vs the device path on the CPU
    python bench/device_render.py --devices cpu cuda --worlds 64 1024 4096   # on a GPU machine
    python bench/device_render.py --quick                 # smoke check

For each batch size B and each device, a batch of B worlds (the three families, every
time of day and weather) steps with a fixed control; only the rendering is timed:
- `host`: `BatchCamera.render` (images and labels in host memory, one core);
- `device:<d>[:threads<k>] images`: `DeviceCamera.render` (images and id buffers on the
  device); its stages: `record` (the kernels' geometry on the host, in k threads,
  `--threads`) and `fill` (the upload, the row fill and the per-pixel passes,
  synchronised);
- `device:<d> +labels`: the same and every frame's labels (`DeviceFrames.ground_truth`,
  which copies the id buffers to the host).
Agreement (first batch size, after a few steps): images and id buffers of the device
path against `BatchCamera` on the same states: the share of equal pixels and the largest
box difference. GPU memory per 1,000 worlds is torch's peak allocation over the run.

Prints human-readable lines, then ONE JSON object with all figures as the last line.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sim.config import family_config, sample_scenario  # noqa: E402
from sim.render.batch import BatchCamera  # noqa: E402
from sim.render.device import DeviceCamera  # noqa: E402
from sim.types import CameraSpec  # noqa: E402
from sim.world.batch import BatchWorld  # noqa: E402

FAMILIES = ("highway", "rural", "urban")
LOOKS = (("day", "clear"), ("night", "clear"), ("dusk", "rain"), ("day", "fog"),
         ("night", "fog"), ("day", "rain"))


def scenarios(n: int, seed: int = 0) -> list:
    """n scenarios: the families in turn, every look in turn, seeds from `seed`."""
    out = []
    for i in range(n):
        sc = sample_scenario(family_config(FAMILIES[i % 3]), seed + i)
        t, w = LOOKS[(i // 3) % len(LOOKS)]
        out.append(dataclasses.replace(sc, time_of_day=t, weather=w))
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(batch: BatchWorld) -> None:
    n = len(batch)
    batch.step(np.zeros(n), np.full(n, 0.5))


def timed(fn: Any, seconds: float, device: str) -> tuple[float, int]:
    """Calls of fn() in `seconds` (at least 3): (seconds per call, calls)."""
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        fn()
        sync(device)
        n += 1
    return (time.perf_counter() - t0) / n, n


def agreement(spec: CameraSpec, n: int, device: str) -> dict[str, Any]:
    """Device frames against the host kernels on the same states."""
    batch = BatchWorld(scenarios(n, 500))
    host, dev = BatchCamera(spec, n), DeviceCamera(spec, n, device)
    equal_px = equal_ids = total = 0
    box_diff = 0.0
    label_count_diff = 0
    for k in range(12):
        step(batch)
        if k % 4 != 3:
            continue
        want = host.render(batch)
        got = dev.render(batch).frames()
        for w, g in zip(want, got, strict=True):
            equal_px += int((w.image == g.image).all(-1).sum())
            equal_ids += int((w.ids == g.ids).sum())
            total += w.ids.size
            a, b = w.ground_truth.boxes_xyxy, g.ground_truth.boxes_xyxy
            if a.shape == b.shape:
                box_diff = max(box_diff, float(np.abs(a - b).max(initial=0.0)))
            else:
                label_count_diff += 1
    return {"pixels_equal": equal_px / total, "ids_equal": equal_ids / total,
            "max_box_diff_px": box_diff, "frames_with_other_label_count": label_count_diff}


def bench(spec: CameraSpec, n: int, devices: list[str], seconds: float, host_max: int,
          threads: list[int]) -> dict[str, Any]:
    batch = BatchWorld(scenarios(n))
    for _ in range(5):
        step(batch)
    res: dict[str, Any] = {"worlds": n}
    if n <= host_max:  # one core's rate does not grow with the batch
        host = BatchCamera(spec, n)
        per, _ = timed(lambda: host.render(batch), seconds, "cpu")
        res["host"] = {"frames_per_s": n / per}
    for d, th in ((d, th) for d in devices for th in threads):
        if d.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        cam = DeviceCamera(spec, n, d, threads=th)
        per, _ = timed(lambda cam=cam: cam.render(batch), seconds, d)
        views = [batch.view(b, batch.actor_poses()) for b in range(n)]

        def record(cam: DeviceCamera = cam, views: list = views) -> None:
            cam.record_batch(batch, views)

        per_rec, _ = timed(record, seconds / 2, "cpu")
        per_lab, _ = timed(lambda cam=cam: cam.render(batch).ground_truth(), seconds, d)
        row = {"frames_per_s": n / per, "record_ms": 1e3 * per_rec,
               "fill_and_passes_ms": 1e3 * max(per - per_rec, 0.0),
               "with_labels_frames_per_s": n / per_lab}
        if d.startswith("cuda"):
            row["gpu_mem_mb_per_1000_worlds"] = (torch.cuda.max_memory_allocated() / 2**20
                                                 * 1000 / n)
        res[f"device:{d}" + (f":threads{th}" if th > 1 else "")] = row
        cam.close()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[32, 128])
    p.add_argument("--devices", nargs="+", default=["cpu"])
    p.add_argument("--seconds", type=float, default=5.0, help="timed budget per figure")
    p.add_argument("--threads", type=int, nargs="+", default=[1],
                   help="host threads recording the polygons (DeviceCamera(threads=))")
    p.add_argument("--host-max", type=int, default=1024,
                   help="time the host kernels only up to this many worlds")
    p.add_argument("--quick", action="store_true", help="smoke check: 8 worlds, 0.5 s")
    args = p.parse_args()
    if args.quick:
        args.worlds, args.seconds = [8], 0.5
    spec = CameraSpec()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                           "cpu": cpu, "threads": torch.get_num_threads(), "gpu": gpu,
                           "camera": [spec.width, spec.height], "runs": []}
    print(f"CPU {cpu}, GPU {gpu}, camera {spec.width}x{spec.height}")
    out["agreement"] = {d: agreement(spec, min(args.worlds[0], 24), d) for d in args.devices}
    for d, a in out["agreement"].items():
        print(f"agreement {d}: pixels equal {a['pixels_equal']:.4%}, ids equal "
              f"{a['ids_equal']:.4%}, largest box difference {a['max_box_diff_px']:.1f} px, "
              f"frames with another label count {a['frames_with_other_label_count']}")
    for n in args.worlds:
        r = bench(spec, n, args.devices, args.seconds, args.host_max, args.threads)
        out["runs"].append(r)
        if "host" in r:
            print(f"B={n}: host kernels {r['host']['frames_per_s']:,.0f} frames/s")
        for key in (k for k in r if k.startswith("device:")):
            x, d = r[key], key[len("device:"):]
            mem = (f", {x['gpu_mem_mb_per_1000_worlds']:,.0f} MB GPU per 1,000 worlds"
                   if "gpu_mem_mb_per_1000_worlds" in x else "")
            print(f"  device {d}: {x['frames_per_s']:,.0f} frames/s (record {x['record_ms']:.1f} ms"
                  f" on the host, fill + passes {x['fill_and_passes_ms']:.1f} ms), with labels "
                  f"{x['with_labels_frames_per_s']:,.0f} frames/s{mem}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
