"""Speed of the offboard auto-labeler: frames per second of `relabel_clip` on a clip,
beside the online Perceiver on the same frames.

    python bench/relabel_speed.py [--frames 60] [--repeats 3] [--seed 900001]
                                  [--condition night] [--no-lanes] [--bf16]

The clip is a highway episode driven by the sim's autopilot (night by default). The
labeler is the shipped `EnsembleTeacher` (its detector views, fusion, refiner, lanes)
and the offline tracking; it is built and warmed up once, then `relabel_clip` runs
`--repeats` times on the whole clip; the best and the median are printed, with the
share of the teacher (detectors, refiner, lanes) and of the tracking. The online
`Perceiver()` (detector, refiner, lanes; its default confidence) runs the same frames
one at a time, as the car does, and as one batch. Prints the CPU, the load average and
the date, and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from typing import Any

import numpy as np

from data_engine.autolabel import (
    EnsembleTeacher,
    LabelerSettings,
    hindsight_labels,
    relabel_clip,
)
from perception.perceiver import Perceiver
from sim.autopilot import Autopilot
from sim.config import family_config
from sim.env import DrivingEnv
from sim.outputs import json_text


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def collect(family: str, condition: str, seed: int, frames: int) -> list[np.ndarray]:
    """Camera frames of one autopilot episode (`condition`: day, night, fog or rain)."""
    tod, weather = {"day": ("day", "clear"), "night": ("night", "clear"),
                    "fog": ("day", "fog"), "rain": ("day", "rain")}[condition]
    env = DrivingEnv(obs_type="camera", action_type="continuous",
                     scenario=family_config(family, time_of_day={tod: 1.0},
                                            weather={weather: 1.0}))
    env.reset(seed=seed)
    pilot = Autopilot()
    images = []
    for _ in range(frames):
        obs, _, terminated, truncated, _ = env.step(pilot.act(env.world))
        images.append(np.array(obs))
        if terminated or truncated:
            break
    env.close()
    return images


def timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=900_001)
    ap.add_argument("--condition", default="night", choices=("day", "night", "fog", "rain"))
    ap.add_argument("--family", default="highway")
    ap.add_argument("--bf16", action="store_true",
                    help="the teacher's detectors on OpenVINO in bfloat16 (CPUs with bf16 units)")
    ap.add_argument("--no-lanes", action="store_true")
    args = ap.parse_args()
    lanes = not args.no_lanes
    frames = collect(args.family, args.condition, args.seed, args.frames)
    n = len(frames)
    teacher = EnsembleTeacher(lanes=lanes, bf16=args.bf16)
    relabel_clip(frames[:8], teacher, lanes=lanes)  # warm-up (first calls compile)
    clip = timed(lambda: relabel_clip(frames, teacher, lanes=lanes), args.repeats)
    dets: list[Any] = []
    teach = timed(lambda: dets.append(teacher.detect_lanes(frames)), args.repeats)
    s = LabelerSettings()
    h, w = frames[0].shape[:2]
    track = timed(lambda: hindsight_labels(dets[0][0], h, w, s, teacher.camera), args.repeats)
    perceiver = Perceiver(lanes=lanes)
    perceiver(frames[:8])
    one = timed(lambda: [perceiver([f]) for f in frames], args.repeats)
    batch = timed(lambda: perceiver(frames), args.repeats)
    fig = {
        "relabel_clip_fps_best": n / min(clip),
        "relabel_clip_fps_median": n / statistics.median(clip),
        "teacher_ms_per_frame": 1000 * min(teach) / n,
        "tracking_ms_per_frame": 1000 * min(track) / n,
        "online_fps_frame_by_frame": n / min(one),
        "online_fps_batch": n / min(batch),
    }
    load = os.getloadavg()
    print(f"labeler: {teacher.version}")
    print(f"clip: {args.family} {args.condition} seed {args.seed}, {n} frames "
          f"{w}x{h}, lanes {lanes}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"relabel_clip      {fig['relabel_clip_fps_best']:6.1f} frames/s best, "
          f"{fig['relabel_clip_fps_median']:6.1f} median of {args.repeats}")
    print(f"  teacher         {fig['teacher_ms_per_frame']:6.1f} ms a frame")
    print(f"  tracking        {fig['tracking_ms_per_frame']:6.1f} ms a frame")
    print(f"online Perceiver  {fig['online_fps_frame_by_frame']:6.1f} frames/s frame by frame, "
          f"{fig['online_fps_batch']:6.1f} as one batch")
    print(json_text({"labeler": teacher.version, "frames": n, "cpu": cpu_name(),
                     "cores": os.cpu_count(), "load_average": load, **fig}))


if __name__ == "__main__":
    main()
