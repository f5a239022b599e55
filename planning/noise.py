r"""Perception noise: how the real perceiver errs, measured on a validation split, and a
scene source that corrupts the privileged scene the same way, so that RL training runs at
simulator speed and still sees what deployment will see. The shipped figures come from
the shipped perceiver on the validation split (never train):

    python -m planning.noise --data data/perception --split val \
        --out planning/weights/perception_noise.json

(`--lane-weights FILE`: a lane model other than the shipped one; `--limit N`: N images.)
`PerceptionNoise` holds the figures, `measure_noise` measures them, `corrupt` applies them
to one exact scene, and `EmulatedSource` is the `SceneSource` that does so every step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from perception.datasets import dataset_camera
from perception.evaluate import is_ignored
from perception.geometry import box_foot, to_ground
from perception.lanes import NOMINAL_LANE_WIDTH
from planning.scene import (
    MAX_RANGE,
    Scene,
    front_from_camera,
    lane_of,
    scene_from_world,
    with_controller,
    with_gap_rates,
)
from sim.env import DrivingEnv
from sim.types import ABSENT, CLASS_NAMES, CameraSpec

DEFAULT_NOISE = Path(__file__).parent / "weights" / "perception_noise.json"
"""The shipped noise figures (made by the command in this module's docstring)."""
MISS_BUCKETS: tuple[float, ...] = (0.0, 20.0, 40.0, MAX_RANGE)
"""Edges of the distance buckets of `PerceptionNoise.miss_rate` [m] (camera distance)."""
FALSE_ALARM_SPREAD = 1.5
"""False alarms appear uniformly within this many lane widths left and right of the ego
lane's centre."""
_INF = float("inf")
_BOUNDS: dict[str, tuple[int, float, float]] = {
    "miss_rate": (3, 0, 1), "distance_rel_bias": (1, -1, _INF), "distance_rel_std": (1, 0, _INF),
    "lateral_std": (1, 0, _INF), "false_alarm_rate": (1, 0, _INF),
    "false_alarm_range": (2, 0, _INF), "false_alarm_classes": (len(CLASS_NAMES), 0, _INF),
    "lane_miss_rate": (1, 0, 1), "offset_std": (1, 0, _INF), "heading_std": (1, 0, _INF),
    "side_lane_miss_rate": (1, 0, 1), "side_lane_false_rate": (1, 0, 1)}
"""Field -> (how many numbers, lowest, highest allowed value)."""


@dataclass(frozen=True)
class PerceptionNoise:
    """How perception errs, per object and per frame. The defaults are a perfect
    perceiver (no misses, no errors, no false alarms)."""

    miss_rate: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """Probability that a present object is not detected, for objects 0-20, 20-40 and
    40-80 m from the camera (`MISS_BUCKETS`)."""
    distance_rel_bias: float = 0.0
    """Mean relative distance error of detected objects (perceived / true - 1)."""
    distance_rel_std: float = 0.0
    """Standard deviation of the relative distance error of detected objects."""
    lateral_std: float = 0.0
    """Standard deviation of the lateral position error of detected objects [m]."""
    false_alarm_rate: float = 0.0
    """Detections of nothing per frame, within `MAX_RANGE` (mean of a Poisson count)."""
    false_alarm_range: tuple[float, float] = (5.0, MAX_RANGE)
    """Camera distances between which false alarms appear, uniformly [m]."""
    false_alarm_classes: tuple[float, ...] = (1.0,) + (0.0,) * (len(CLASS_NAMES) - 1)
    """Share of false alarms per class id (sim.types.CLASS_NAMES order)."""
    lane_miss_rate: float = 0.0
    """Probability that the ego lane is not found in a frame."""
    offset_std: float = 0.0
    """Standard deviation of the ego's lateral offset error when the lane is found [m]."""
    heading_std: float = 0.0
    """Standard deviation of the ego's heading error estimate when the lane is found
    [rad]."""
    side_lane_miss_rate: float = 0.0
    """Probability that an existing lane left or right of the ego lane is not seen."""
    side_lane_false_rate: float = 0.0
    """Probability that a lane is seen left or right where there is none."""
    measured_on: str = ""
    """Where the figures come from (dataset, split, counts, weights); free text."""

    def __post_init__(self) -> None:
        for name, (n, lo, hi) in _BOUNDS.items():
            v = getattr(self, name)
            vals = tuple(v) if isinstance(v, list | tuple) else (v,)
            if n > 1:
                object.__setattr__(self, name, vals)
            ok = len(vals) == n and all(isinstance(x, int | float) and not isinstance(x, bool)
                                        and math.isfinite(x) and lo <= x <= hi for x in vals)
            if not ok:
                what = "a number" if n == 1 else f"{n} numbers"
                raise ValueError(f"{name}: {what} in [{lo:g}, {hi:g}] expected, got {v!r}")
        if self.false_alarm_range[0] > self.false_alarm_range[1]:
            raise ValueError(f"false_alarm_range: (low, high) with low <= high expected, got "
                             f"{self.false_alarm_range!r}")
        if sum(self.false_alarm_classes) <= 0:
            raise ValueError(f"false_alarm_classes: shares of {', '.join(CLASS_NAMES)} with "
                             f"a positive sum expected, got {self.false_alarm_classes!r}")
        if not isinstance(self.measured_on, str):
            raise ValueError(f"measured_on: a string expected, got {self.measured_on!r}")

    def save(self, path: Path | str) -> None:
        """Write the figures as JSON, atomically (temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path | str) -> PerceptionNoise:
        """Read figures written by `save`; one error naming the file and the bad key."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"perception noise file {path} not found; make it with `python -m "
                "planning.noise --data DATASET --split val --out FILE`")
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"perception noise file {path} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError(f"perception noise file {path}: a JSON object expected, "
                             f"got {type(doc).__name__}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in doc and n != "measured_on"]
        unknown = sorted(set(doc) - set(names))
        if missing or unknown:
            what = f"missing key(s) {missing}" if missing else f"unknown key(s) {unknown}"
            raise ValueError(f"perception noise file {path}: {what}; keys: {names}")
        try:
            return cls(**doc)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"perception noise file {path}: {exc}") from None


def measure_noise(perceiver: Any, data: Path, split: str = "val", limit: int | None = None,
                  progress: bool = False) -> PerceptionNoise:
    """Measure how `perceiver` (a callable with the `Perceiver` interface: list of uint8 RGB
    frames -> list of `Perception`) errs on a `drivestack dataset` split: objects matched
    to the COCO ground truth (IoU >= 0.5, greedy by score, class-agnostic: a car seen as a
    truck is still seen) within MAX_RANGE, lanes against lanes/{split}.jsonl (a NaN offset
    is a lost ego lane; a side lane exists when the road has one). Use the val split: the
    perceiver was trained on train. `progress` shows a progress bar."""
    data = Path(data)
    records, anns = _load_split(data, split, limit)
    camera = dataset_camera(data)
    tally = _Tally()
    for start in tqdm(range(0, len(records), 16), desc=split, disable=not progress):
        batch = records[start: start + 16]
        rgb = []
        for r in batch:
            if (bgr := cv2.imread(str(data / r["image"]), cv2.IMREAD_COLOR)) is None:
                raise FileNotFoundError(f"image {data / r['image']} could not be read")
            rgb.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        for rec, p in zip(batch, perceiver(rgb), strict=True):
            tally.add_objects(p.detections, anns.get(rec["image"], []), camera)
            tally.add_lanes(p.lanes, rec)
    return tally.noise(f"{data} split {split}")


def _load_split(data: Path, split: str, limit: int | None
                ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Lane records (in file order, the first `limit`) and COCO annotations by image."""
    lanes, coco = data / "lanes" / f"{split}.jsonl", data / "annotations" / f"{split}.json"
    for path in (lanes, coco):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; make the dataset with "
                                    "`drivestack dataset`")
    records = [json.loads(x) for x in lanes.read_text().splitlines() if x.strip()]
    records = records[:limit] if limit is not None else records
    if not records:
        raise ValueError(f"{lanes} lists no images")
    doc = json.loads(coco.read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    anns: dict[str, list[dict[str, Any]]] = {n: [] for n in names.values()}
    for a in doc["annotations"]:
        anns[names[a["image_id"]]].append(a)
    absent = [r["image"] for r in records if r["image"] not in anns]
    if absent:
        raise ValueError(f"{coco} has no entry for {len(absent)} image(s) of {lanes}, "
                         f"e.g. {absent[0]}")
    return records, anns


def _bucket(distance: np.ndarray) -> np.ndarray:
    """Index of each distance's MISS_BUCKETS bucket (beyond the last: the last)."""
    idx = np.searchsorted(MISS_BUCKETS, np.asarray(distance, np.float64), side="right") - 1
    return np.clip(idx, 0, len(MISS_BUCKETS) - 2)


def match_boxes(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray,
                iou_threshold: float = 0.5) -> np.ndarray:
    """Index of the ground-truth box each detection matches (-1: none), greedily by
    score: each detection takes the free ground-truth box it overlaps most."""
    from perception.metrics import box_iou  # scipy: kept out of the env processes' imports

    iou = box_iou(boxes, gt)
    owner = np.full(len(iou), -1, np.int64)
    free = np.ones(iou.shape[1], bool)
    for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
        cand = np.where(free & (iou[i] >= iou_threshold), iou[i], -1.0)
        if cand.size and cand.max() >= 0:
            owner[i] = int(np.argmax(cand))
            free[owner[i]] = False
    return owner


def _foot_left(boxes: np.ndarray, camera: CameraSpec) -> np.ndarray:
    """Left position [m] of each box's bottom centre on the ground (NaN above the horizon)."""
    return to_ground(*box_foot(boxes), camera)[:, 1]


@dataclass
class _Tally:
    """What `measure_noise` counts, frame by frame."""

    objects: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    missed: np.ndarray = field(default_factory=lambda: np.zeros(3, np.int64))
    rel_err: list[float] = field(default_factory=list)
    lat_err: list[float] = field(default_factory=list)
    alarms: list[tuple[float, int]] = field(default_factory=list)
    frames: int = 0
    lanes: list[tuple[float, float]] = field(default_factory=list)
    """(offset error [m], heading error [rad]) per lane frame; NaN: ego lane lost."""
    sides: list[tuple[bool, bool]] = field(default_factory=list)
    """(exists, seen) per side lane slot and lane frame."""

    def add_objects(self, det: Any, anns: list[dict[str, Any]], camera: CameraSpec) -> None:
        gt = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                        a["bbox"][1] + a["bbox"][3]] for a in anns], np.float64).reshape(-1, 4)
        gt_dist = np.array([a["distance"] for a in anns], np.float64)
        boxes = np.asarray(det.boxes_xyxy, np.float64).reshape(-1, 4)
        dist = np.asarray(det.distance, np.float64)
        owner = match_boxes(boxes, det.scores, gt)
        # objects under the dataset's ignore rule (tiny or mostly hidden) are not counted
        # as missed; a detection of one is no false alarm either
        ignored = np.array([is_ignored(a) for a in anns], bool)
        near = (gt_dist <= MAX_RANGE) & ~ignored.reshape(-1)
        seen = np.zeros(len(gt), bool)
        seen[owner[owner >= 0]] = True
        np.add.at(self.objects, _bucket(gt_dist[near]), 1)
        np.add.at(self.missed, _bucket(gt_dist[near & ~seen]), 1)
        pairs = [(i, j) for i, j in enumerate(owner) if j >= 0 and near[j]
                 and np.isfinite(dist[i])]
        if pairs:
            i, j = (np.array(x) for x in zip(*pairs, strict=True))
            self.rel_err += (dist[i] / gt_dist[j] - 1.0).tolist()
            lat = _foot_left(boxes[i], camera) - _foot_left(gt[j], camera)
            self.lat_err += lat[np.isfinite(lat)].tolist()
        alarm = (owner < 0) & np.isfinite(dist) & (dist <= MAX_RANGE)
        self.alarms += [(float(d), int(c)) for d, c in
                        zip(dist[alarm], np.asarray(det.classes)[alarm], strict=True)]
        self.frames += 1

    def add_lanes(self, lanes: Any, record: dict[str, Any]) -> None:
        if lanes is None:
            return
        lost = not np.isfinite(lanes.ego_offset)
        self.lanes.append((float("nan"), float("nan")) if lost else (
            float(lanes.ego_offset - record["ego_lane_offset"]),
            float(lanes.heading_error - record["ego_heading_error"])))
        ids = [int(i) for i in record["boundary_ids"]]
        right, left = (ids[i] for i in record["ego_boundaries"])
        xs = np.asarray(lanes.xs)
        for slot, exists in ((0, left + 1 in ids), (len(xs) - 1, right - 1 in ids)):
            self.sides.append((exists, bool((xs[slot] != ABSENT).any())))

    def noise(self, where: str) -> PerceptionNoise:
        if not self.lanes:
            raise ValueError("the perceiver gave no lane estimates: measure it with a lane "
                             "model (Perceiver(lanes=True))")
        lane = np.array(self.lanes)
        found = lane[np.isfinite(lane[:, 0])]
        side = np.array(self.sides, bool).reshape(-1, 2)
        dist = np.array([d for d, _ in self.alarms])
        classes = np.bincount([c for _, c in self.alarms], minlength=len(CLASS_NAMES))
        rel = np.array(self.rel_err)

        def ratio(num: Any, den: Any) -> float:
            return float(num / den) if den else 0.0

        return PerceptionNoise(
            miss_rate=tuple(ratio(m, n) for m, n in zip(self.missed, self.objects,
                                                       strict=True)),  # type: ignore[arg-type]
            distance_rel_bias=float(rel.mean()) if rel.size else 0.0,
            distance_rel_std=float(rel.std()) if rel.size else 0.0,
            lateral_std=float(np.std(self.lat_err)) if self.lat_err else 0.0,
            false_alarm_rate=ratio(len(self.alarms), self.frames),
            false_alarm_range=((float(np.percentile(dist, 5)), float(np.percentile(dist, 95)))
                               if dist.size else (5.0, MAX_RANGE)),
            false_alarm_classes=(tuple(float(c) for c in classes / classes.sum())
                                 if classes.sum() else PerceptionNoise().false_alarm_classes),
            lane_miss_rate=ratio(len(lane) - len(found), len(lane)),
            offset_std=float(found[:, 0].std()) if len(found) else 0.0,
            heading_std=float(found[:, 1].std()) if len(found) else 0.0,
            side_lane_miss_rate=ratio((side[:, 0] & ~side[:, 1]).sum(), side[:, 0].sum()),
            side_lane_false_rate=ratio((~side[:, 0] & side[:, 1]).sum(), (~side[:, 0]).sum()),
            measured_on=(f"{where}: {self.frames} images, {self.objects.sum()} objects within "
                         f"{MAX_RANGE:g} m ({'/'.join(map(str, self.objects))} by distance "
                         f"bucket), {len(rel)} matched, {len(self.alarms)} false alarms, "
                         f"{len(lane)} lane frames"))


# -- emulation ------------------------------------------------------------------------------
def corrupt(scene: Scene, noise: PerceptionNoise, rng: np.random.Generator,
            front: float) -> Scene:
    """`scene` as a perceiver with `noise` would see it: lane flags flipped, offset and
    heading noise or the ego lane lost, objects dropped by their distance bucket's miss
    rate, their camera distance scaled by 1 + N(bias, rel_std), lateral noise, false
    alarms added, relative lanes recomputed. Gap rates are zeroed (perception tracks them:
    `with_gap_rates`). `front` is the camera-to-front-bumper distance [m]
    (`front_from_camera`). The draws do not depend on the values of `noise`, so one seed
    gives comparable scenes under different noise."""
    u_lane, u_left, u_right = rng.random(3)
    off_err, head_err = rng.normal(0.0, 1.0, 2)
    seen = scene.lane_seen and u_lane >= noise.lane_miss_rate
    left_lane = _flip(scene.left_lane, u_left, noise)
    right_lane = _flip(scene.right_lane, u_right, noise)
    if seen:
        offset = scene.lane_offset + off_err * noise.offset_std
        heading = scene.heading_error + head_err * noise.heading_std
        width = scene.lane_width
    else:  # no lane: positions are measured from the camera's axis, as perception does
        offset = heading = 0.0
        width = NOMINAL_LANE_WIDTH
    rows = _corrupt_objects(scene, noise, rng, front, seen, offset - scene.lane_offset)
    rows = np.concatenate([rows, _false_alarms(noise, rng, front, width)])
    rows = rows[rows[:, 0] + front <= MAX_RANGE]
    rows[:, 2] = lane_of(rows[:, 1], width)
    return replace(scene, lane_offset=float(offset), heading_error=float(heading),
                   lane_seen=bool(seen), left_lane=left_lane, right_lane=right_lane,
                   lane_width=float(width),
                   objects=rows[np.argsort(rows[:, 0], kind="stable")].astype(np.float32))


def _flip(exists: bool, u: float, noise: PerceptionNoise) -> bool:
    """A side lane's existence as perceived (missed, or seen where there is none)."""
    if exists:
        return bool(u >= noise.side_lane_miss_rate)
    return bool(u < noise.side_lane_false_rate)


def _corrupt_objects(scene: Scene, noise: PerceptionNoise, rng: np.random.Generator,
                     front: float, seen: bool, offset_err: float) -> np.ndarray:
    """(K, 5) float64 rows of the detected objects (gap rate 0, lane not yet set)."""
    o = np.asarray(scene.objects, np.float64).reshape(-1, 5)
    n = len(o)
    u, eps, lat = rng.random(n), rng.normal(0.0, 1.0, n), rng.normal(0.0, 1.0, n)
    fwd = o[:, 0] + front
    dist = np.hypot(fwd, o[:, 1] - scene.lane_offset)
    keep = u >= np.asarray(noise.miss_rate)[_bucket(dist)]
    out = o.copy()
    out[:, 0] = fwd * (1.0 + noise.distance_rel_bias + eps * noise.distance_rel_std) - front
    if seen:  # from the perceived lane centre: the offset error shifts it the other way
        out[:, 1] = o[:, 1] + offset_err
    else:  # relative to the camera: the ego's offset and heading are not removed
        out[:, 1] = o[:, 1] - scene.lane_offset - np.tan(scene.heading_error) * fwd
    out[:, 1] += lat * noise.lateral_std
    out[:, 4] = 0.0
    return out[keep]


def _false_alarms(noise: PerceptionNoise, rng: np.random.Generator, front: float,
                  width: float) -> np.ndarray:
    """(K, 5) rows of detections of nothing (Poisson count, uniform in range and width)."""
    k = int(rng.poisson(noise.false_alarm_rate))
    lo, hi = noise.false_alarm_range
    dist = rng.uniform(lo, hi, k)
    left = rng.uniform(-FALSE_ALARM_SPREAD * width, FALSE_ALARM_SPREAD * width, k)
    shares = np.asarray(noise.false_alarm_classes, np.float64)
    cls = rng.choice(len(shares), size=k, p=shares / shares.sum())
    return np.stack([dist - front, left, np.zeros(k), cls, np.zeros(k)], axis=1)


class EmulatedSource:
    """The privileged scene corrupted like the measured perceiver (`corrupt`); gap rates
    come from tracking the noisy scenes (`with_gap_rates`), as with real perception.

    `noise` None loads DEFAULT_NOISE. Deterministic: an episode's noise comes from a
    generator seeded with `seed` (>= 0) and the episode's scenario seed, so replaying a
    scenario replays its noise and `env.reset(seed=...)` twice gives the same observations.
    """

    needs_camera = False

    def __init__(self, noise: PerceptionNoise | None = None, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.noise = noise if noise is not None else PerceptionNoise.load(DEFAULT_NOISE)
        self.seed = int(seed)
        self._rng: np.random.Generator | None = None
        self._prev: Scene | None = None
        self._prev_time: float | None = None

    def reset(self) -> None:
        """Forget the tracked objects; the next call starts a new episode's noise."""
        self._rng = self._prev = self._prev_time = None

    def __call__(self, env: DrivingEnv) -> Scene:
        world = env.world
        if world is None:
            raise RuntimeError("call env.reset() before reading a scene")
        if self._rng is None:
            self._rng = np.random.default_rng([self.seed, int(world.scenario.seed), 0x5E75])
        front = front_from_camera(env.camera_spec, world.state.ego)
        scene = corrupt(scene_from_world(world, env.camera_spec), self.noise, self._rng, front)
        now = world.state.step * env.dt
        dt = 0.0 if self._prev_time is None else now - self._prev_time
        scene = with_gap_rates(self._prev, scene, dt)
        self._prev, self._prev_time = scene, now
        return with_controller(scene, env)


def main(argv: list[str] | None = None) -> None:
    """Measure the shipped perceiver (CPU) on a dataset split and write the JSON."""
    ap = argparse.ArgumentParser(prog="python -m planning.noise", description=main.__doc__)
    ap.add_argument("--data", type=Path, required=True, help="a `drivestack dataset` folder")
    ap.add_argument("--split", default="val", help="split to measure on (default: val)")
    ap.add_argument("--out", type=Path, default=DEFAULT_NOISE, help="JSON file to write")
    ap.add_argument("--lane-weights", type=Path, default=None,
                    help="lane model (default: the shipped perception/weights/lanes.pt)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images")
    args = ap.parse_args(argv)
    from perception.perceiver import Perceiver

    perceiver = Perceiver(device="cpu", lane_weights=args.lane_weights,
                          camera=dataset_camera(Path(args.data)))
    noise = measure_noise(perceiver, args.data, args.split, args.limit, progress=True)
    noise = replace(noise, measured_on=f"{noise.measured_on}; detector {perceiver.weights.name}"
                    f" + box refiner, lanes {args.lane_weights or 'perception/weights/lanes.pt'}")
    noise.save(args.out)
    print(json.dumps(asdict(noise), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
