"""Quality of the offboard auto-labeler (data_engine/autolabel.py) against ground truth,
beside the online Perceiver on the same frames.

    python bench/relabel_quality.py [--clips 3] [--frames 60] [--seed 900000]
                                    [--conditions day,night,fog,rain] [--family highway]
                                    [--bf16] [--verify 0]

For each condition, `--clips` highway episodes (seeds `--seed` + 10 k + the condition's
index: held out from training at 900000 and up) are driven by the sim's autopilot for
`--frames` steps; their camera frames go to `relabel_clip` (the shipped EnsembleTeacher,
no lanes) and, frame by frame, to `Perceiver()` at its default confidence (what the car
sees online). Both are scored by `autolabel.label_quality`'s rules: precision, recall and
mean IoU at IoU 0.5, overall and by the objects' smaller side (< 10 px "small"), and the
share of counted objects inside the labeler's ignore regions. The ground truth is read
only here, after labeling. `--verify V[,V...]`: the same clips labelled again with the
track verifier's threshold at each V (0: no verifier) from the same teacher boxes, side by
side with the default labeler. Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import numpy as np

from data_engine.autolabel import (
    EnsembleTeacher,
    LabelerSettings,
    frame_tally,
    quality_of,
    relabel_clip,
)
from perception.perceiver import Perceiver
from sim.autopilot import Autopilot
from sim.config import family_config
from sim.env import DrivingEnv
from sim.outputs import json_text
from sim.types import GroundTruth

CONDITIONS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "day": ({"day": 1.0}, {"clear": 1.0}),
    "night": ({"night": 1.0}, {"clear": 1.0}),
    "fog": ({"day": 1.0}, {"fog": 1.0}),
    "rain": ({"day": 1.0}, {"rain": 1.0}),
    "dusk": ({"dusk": 1.0}, {"clear": 1.0}),
}


def collect(family: str, condition: str, seed: int, frames: int
            ) -> tuple[list[np.ndarray], list[GroundTruth]]:
    """Camera frames and their ground truth of one autopilot episode."""
    tod, weather = CONDITIONS[condition]
    env = DrivingEnv(obs_type="camera", action_type="continuous",
                     scenario=family_config(family, time_of_day=tod, weather=weather))
    env.reset(seed=seed)
    pilot = Autopilot()
    images, truth = [], []
    for _ in range(frames):
        obs, _, terminated, truncated, info = env.step(pilot.act(env.world))
        images.append(np.array(obs))
        truth.append(info["ground_truth"])
        if terminated or truncated:
            break
    env.close()
    return images, truth


def online_tallies(perceiver: Perceiver, frames: list[np.ndarray], truth: list[GroundTruth]
                   ) -> list[dict[str, np.ndarray]]:
    out = []
    for image, gt in zip(frames, truth, strict=True):
        d = perceiver([image])[0].detections
        out.append(frame_tally(d.boxes_xyxy, d.classes, d.scores, np.zeros((0, 4)), gt))
    return out


class Remembered:
    """A teacher that remembers its boxes of the last clip (the other labelers of the
    same clip reuse them)."""

    def __init__(self, teacher: EnsembleTeacher) -> None:
        self.teacher, self.version, self.camera = teacher, teacher.version, teacher.camera
        self.last: tuple[list[np.ndarray], list[np.ndarray]] | None = None

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if self.last is None or self.last[0] is not frames:
            self.last = (frames, self.teacher.detect(frames))
        return self.last[1]


def row(name: str, q: dict[str, Any]) -> str:
    def f(v: float) -> str:
        return "  -  " if v != v else f"{v:.3f}"

    cells = []
    for size in ("overall", "small", "large"):
        s = q[size]
        cells.append(f"{f(s['precision'])} {f(s['recall'])} {f(s['mean_iou'])} "
                     f"{f(s['ignored'])} {s['objects']:5d}")
    return f"{name:18s} | " + " | ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--seed", type=int, default=900_000)
    ap.add_argument("--conditions", default="day,night,fog,rain")
    ap.add_argument("--family", default="highway")
    ap.add_argument("--bf16", action="store_true",
                    help="the teacher's detectors on OpenVINO in bfloat16 (CPUs with bf16 units)")
    ap.add_argument("--verify", default="",
                    help="also label with the track verifier at these thresholds (0: none)")
    args = ap.parse_args()
    try:
        extra = [float(v) for v in args.verify.split(",") if v]
        others = {f"verify {v:g}": LabelerSettings(verify=v) for v in extra}
    except ValueError as e:
        ap.error(f"--verify: {e}")
    conditions = args.conditions.split(",")
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        ap.error(f"--conditions: unknown {unknown}; allowed: {', '.join(CONDITIONS)}")
    teacher = Remembered(EnsembleTeacher(lanes=False, bf16=args.bf16))
    perceiver = Perceiver(lanes=False)
    print(f"labeler: {teacher.version}")
    auto: dict[str, list[dict[str, np.ndarray]]] = {}
    other: dict[str, dict[str, list[dict[str, np.ndarray]]]] = {k: {} for k in others}
    online: dict[str, list[dict[str, np.ndarray]]] = {}
    seconds = 0.0
    n_frames = 0
    for c in conditions:
        for k in range(args.clips):
            seed = args.seed + 10 * k + list(CONDITIONS).index(c)
            frames, truth = collect(args.family, c, seed, args.frames)
            t0 = time.perf_counter()
            labels = relabel_clip(frames, teacher, lanes=False)
            seconds += time.perf_counter() - t0
            n_frames += len(frames)
            auto.setdefault(c, []).extend(
                frame_tally(labels.boxes[t], labels.classes[t], labels.scores[t],
                            labels.ignore[t], truth[t]) for t in range(len(frames)))
            for name, settings in others.items():
                lab = relabel_clip(frames, teacher, lanes=False, settings=settings)
                other[name].setdefault(c, []).extend(
                    frame_tally(lab.boxes[t], lab.classes[t], lab.scores[t], lab.ignore[t],
                                truth[t]) for t in range(len(frames)))
            online.setdefault(c, []).extend(online_tallies(perceiver, frames, truth))
            print(f"  {c} seed {seed}: {len(frames)} frames", flush=True)
    header = " | ".join(f"{s:^29s}" for s in ("overall", "small (< 10 px)", "large (>= 10 px)"))
    sub = " | ".join(["prec  rec   IoU   ignor  objs"] * 3)
    print(f"\n{'':18s} | {header}\n{'':18s} | {sub}")
    result: dict[str, Any] = {}
    for c in [*conditions, "all"]:
        a = quality_of(sum(auto.values(), []) if c == "all" else auto[c])
        o = quality_of(sum(online.values(), []) if c == "all" else online[c])
        print(row(f"{c} auto", a))
        result[c] = {"auto": a, "online": o}
        for name, per in other.items():
            q = quality_of(sum(per.values(), []) if c == "all" else per[c])
            print(row(f"{c} {name}", q))
            result[c][name] = q
        print(row(f"{c} online", o))
    print(f"\nrelabel_clip: {n_frames / seconds:.1f} frames/s over {n_frames} frames "
          f"(teacher and tracking; {os.cpu_count()} CPUs, {platform.processor() or '?'})")
    print(json_text({"labeler": teacher.version, "verify": LabelerSettings().verify,
                     "seed": args.seed, "clips": args.clips, "frames": args.frames,
                     "family": args.family, "quality": result,
                     "frames_per_s": n_frames / seconds}))


if __name__ == "__main__":
    main()
