"""Perception datasets rendered by the simulator: YOLO, COCO and TuSimple-style lanes.

`generate(plan, out)` drives episodes with the sim's autopilot under randomized
conditions and writes, split by episode seed (no episode in two splits):

    out/data.yaml                      ultralytics dataset file (class names, splits)
    out/images/{split}/{name}.jpg      camera frames
    out/labels/{split}/{name}.txt      YOLO boxes: class cx cy w h, normalized
    out/annotations/{split}.json       the same boxes as COCO detection JSON
    out/lanes/{split}.jsonl            one line per image: x at fixed rows per boundary
    out/meta.jsonl                     one line per image: split, family, conditions, seeds

The whole folder is written under a temporary name beside `out` and moved into place at
the end, so a crash leaves no half dataset behind (the next run removes the temporary
folder); a folder drivestack did not write is never emptied (sim/outputs.py).

Objects follow one ignore rule (`keep_mask`), shared with evaluation: too small or mostly
hidden objects are not labelled as objects. The YOLO files leave them out (ultralytics has
no "ignore" label); the COCO files keep them as `"iscrowd": 1, "ignore": 1` regions, so
that evaluation (ours and pycocotools) neither counts them as missed nor a detection of
them as a false positive (KITTI's DontCare).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import itertools
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import gymnasium as gym
import numpy as np

import sim
from sim.autopilot import Autopilot
from sim.config import pick_weighted
from sim.env import DrivingEnv
from sim.fanout import Fanout, cores, ordered_map
from sim.outputs import (
    MARKER,
    Job,
    OutputFolder,
    check_folder,
    pid_alive,
    read_marker,
    restamp,
)
from sim.types import ABSENT, CLASS_NAMES, CameraSpec, GroundTruth

MIN_BOX_PX = 4.0
"""Boxes narrower or shorter than this are ignored [px]."""
MIN_VISIBLE = 0.25
"""Objects with a smaller visible fraction are ignored."""
SPLITS: tuple[str, ...] = ("train", "val", "test")
JOB = Job("dataset", files=(r"meta\.jsonl", r"data\.yaml", r"summary\.json"),
          folders=("images", "labels", "annotations", "lanes"), partial_in_place=False)
"""What `drivestack dataset` writes into its folder (sim.outputs)."""
SIM_HZ = 15
"""Steps a simulated second (the envs' default dt of 1/15 s, which datasets use)."""
MAX_EMPTY_EPISODES = 50
"""Episodes in a row without a recorded frame after which `generate` gives up (a warm-up
longer than the episodes would otherwise render forever)."""
GENERATED = (r"labels/(train|val|test)\.cache",)
"""Files a dataset's users write into it with drivestack: ultralytics' label caches,
made when a detector trains on it (`drivestack train-perception`)."""


def keep_mask(gt: GroundTruth) -> np.ndarray:
    """(N,) bool: the labelled objects that count (the ignore rule of datasets and eval)."""
    wh = gt.boxes_xyxy[:, 2:] - gt.boxes_xyxy[:, :2]
    return (wh >= MIN_BOX_PX).all(axis=1) & (gt.visible_fraction >= MIN_VISIBLE)


def split_of(episode_seed: int) -> str:
    """Split of an episode, from its seed alone: 1 in 10 val, 1 in 10 test."""
    r = episode_seed % 10
    return "val" if r == 0 else "test" if r == 1 else "train"


@dataclass(frozen=True)
class DatasetPlan:
    """What to render. Weights need not sum to one."""

    frames: int = 2000
    frames_per_episode: int = 40
    stride: int = 5
    """Steps between two recorded frames (decorrelates neighbours)."""
    warmup: int = 15
    """Steps driven before the first recorded frame."""
    seed: int = 0
    """Episode k uses seed + k: a caller can keep test seeds apart from training ones."""
    families: dict[str, float] = field(default_factory=lambda: {
        "highway": 0.4, "rural": 0.3, "urban": 0.3})
    time_of_day: dict[str, float] = field(default_factory=lambda: {
        "day": 0.8, "dusk": 0.12, "night": 0.08})
    weather: dict[str, float] = field(default_factory=lambda: {
        "clear": 0.85, "fog": 0.08, "rain": 0.07})
    camera: CameraSpec = field(default_factory=CameraSpec)
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        if self.frames < 1 or self.frames_per_episode < 1 or self.stride < 1:
            raise ValueError("frames, frames_per_episode and stride must be >= 1")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format={self.image_format!r}; allowed: 'jpg', 'png'")
        unknown = sorted(set(self.families) - set(sim.config.FAMILIES))
        if unknown:
            raise ValueError(f"families {unknown}; allowed: {list(sim.config.FAMILIES)}")
        longest = max((sim.family_config(f).episode_seconds * SIM_HZ
                       for f, w in self.families.items() if w > 0), default=math.inf)
        if self.warmup >= longest:
            raise ValueError(f"warmup: {self.warmup} steps; an episode of these families "
                             f"lasts at most {int(longest)} steps ({SIM_HZ} Hz), so no frame "
                             "would ever be recorded")


def dataset_camera(data: Path) -> CameraSpec:
    """The camera a dataset's frames were rendered with (its summary.json; the default
    camera without one). A ValueError naming the file when it is damaged."""
    summary = Path(data) / "summary.json"
    if not summary.is_file():
        return CameraSpec()
    try:
        doc = json.loads(summary.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{summary}: not JSON ({exc})") from None
    cam = doc.get("camera") if isinstance(doc, dict) else None
    if not cam:
        return CameraSpec()
    if not isinstance(cam, dict) or set(cam) - set(CameraSpec.__dataclass_fields__):
        raise ValueError(f"{summary}: camera must be an object of CameraSpec's fields "
                         f"({', '.join(CameraSpec.__dataclass_fields__)}), got {cam!r}"[:400])
    try:
        return CameraSpec(**cam)
    except ValueError as exc:
        raise ValueError(f"{summary}: camera: {exc}") from None


def read_coco(path: Path) -> dict[str, Any]:
    """A split's COCO file (`annotations/{split}.json`), checked record by record: a
    ValueError naming the file and the first bad record (or FileNotFoundError)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a COCO JSON file ({str(exc)[:120]}); make the "
                         "dataset again with `drivestack dataset`") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not \
            isinstance(doc.get("annotations"), list):
        raise ValueError(f"{path}: a COCO file holds an object with `images` and "
                         "`annotations` lists")
    for i, img in enumerate(doc["images"]):
        if not (isinstance(img, dict) and isinstance(img.get("file_name"), str)
                and all(_count(img.get(k)) for k in ("id", "width", "height"))):
            raise ValueError(f"{path}: images[{i}] needs file_name, and id, width and height "
                             f"as positive integers; got {str(img)[:120]}")
    for i, ann in enumerate(doc["annotations"]):
        box = ann.get("bbox") if isinstance(ann, dict) else None
        if not (isinstance(ann, dict) and _count(ann.get("image_id"))
                and isinstance(ann.get("category_id"), int)
                and 1 <= ann["category_id"] <= len(CLASS_NAMES)
                and isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                        and math.isfinite(v) for v in box) and min(box[2:]) >= 0):
            raise ValueError(f"{path}: annotations[{i}] needs image_id, a category_id in "
                             f"1..{len(CLASS_NAMES)} and a bbox of 4 finite numbers (x, y, "
                             f"w >= 0, h >= 0); got {str(ann)[:120]}")
    return doc


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def yolo_lines(gt: GroundTruth, keep: np.ndarray, width: int, height: int) -> list[str]:
    """`class cx cy w h` lines, normalized to the image size."""
    b = gt.boxes_xyxy[keep].astype(np.float64)
    cx, cy = (b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height
    w, h = (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height
    return [f"{c} {x:.6f} {y:.6f} {ww:.6f} {hh:.6f}"
            for c, x, y, ww, hh in zip(gt.class_ids[keep], cx, cy, w, h, strict=True)]


def lane_record(gt: GroundTruth, image: str) -> dict[str, Any]:
    """One JSON line: x per fixed row for each boundary (-2 where absent or hidden)."""
    lanes = gt.lanes
    xs = np.where(lanes.visible, np.round(lanes.xs.astype(np.float64), 2), ABSENT)
    return {
        "image": image,
        "h_samples": lanes.rows.tolist(),
        "lanes": xs.tolist(),
        "boundary_ids": lanes.boundary_ids.tolist(),
        "marking": [sim.types.MARKING_NAMES[m] for m in lanes.marking],
        "ego_boundaries": list(lanes.ego_boundaries),
        "ego_lane_offset": round(gt.ego_lane_offset, 4),
        "ego_heading_error": round(gt.ego_heading_error, 5),
    }


@dataclass(frozen=True)
class FrameRecord:
    """One recorded frame, encoded and labelled, ready to write (picklable, so worker
    processes can render and the parent alone writes, in episode order)."""

    image: str
    """Path relative to the dataset folder (images/{split}/{name}.{ext})."""
    encoded: bytes
    yolo: list[str]
    coco_image: dict[str, Any]
    """COCO image entry without its id (the writer numbers images per split)."""
    coco_annotations: list[dict[str, Any]]
    """COCO annotations without id and image_id."""
    lanes: dict[str, Any]
    meta: dict[str, Any]


def frame_record(image: np.ndarray, gt: GroundTruth, meta: dict[str, Any],
                 image_format: str = "jpg") -> FrameRecord:
    """Encode one frame and its labels (the ignore rule applied)."""
    split = meta["split"]
    name = f"e{meta['episode_seed']:07d}_s{meta['step']:04d}"
    rel = f"images/{split}/{name}.{image_format}"
    h, w = image.shape[:2]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    ok, buf = cv2.imencode(f".{image_format}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise OSError(f"could not encode {rel}")
    keep = keep_mask(gt)
    wh = gt.boxes_xyxy[:, 2:] - gt.boxes_xyxy[:, :2]
    seen = (wh > 0).all(axis=1) & (gt.visible_fraction > 0)
    anns = []
    for i in np.flatnonzero(keep | seen):
        x0, y0, x1, y1 = (float(v) for v in gt.boxes_xyxy[i])
        ignored = int(not keep[i])  # under the ignore rule: a don't-care region
        anns.append({"category_id": int(gt.class_ids[i]) + 1,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                     "iscrowd": ignored, "ignore": ignored, "track_id": int(gt.track_ids[i]),
                     "distance": round(float(gt.distance[i]), 3),
                     "visible_fraction": round(float(gt.visible_fraction[i]), 4)})
    return FrameRecord(
        image=rel, encoded=buf.tobytes(), yolo=yolo_lines(gt, keep, w, h),
        coco_image={"file_name": rel, "width": w, "height": h,
                    **{k: meta[k] for k in ("family", "time_of_day", "weather")}},
        coco_annotations=anns, lanes=lane_record(gt, rel), meta=meta)


class _Writer:
    """Collects frames into a temporary folder beside `out` (marked as a partial drivestack
    dataset); `finish` writes the index files and moves the dataset into place."""

    ENTRIES = ("images", "labels", "annotations", "lanes", "meta.jsonl", "data.yaml",
               "summary.json")
    """What a dataset folder holds (beside the marker)."""

    def __init__(self, out: Path, plan: DatasetPlan, force: bool = False) -> None:
        self.plan, self.force = plan, force
        # refused before rendering, not after (and checked again when moving into place)
        self.out = check_folder(out, JOB, force=force, entries=self.ENTRIES,
                                generated=GENERATED).folder
        self.tmp = self.out.with_name(f".{self.out.name}.partial-{os.getpid()}-"
                                      f"{secrets.token_hex(4)}")
        self.folder = OutputFolder.claim(self.tmp, JOB)
        for name in self.ENTRIES:
            self.folder.own(name)
        for split in SPLITS:
            (self.tmp / "images" / split).mkdir(parents=True)
            (self.tmp / "labels" / split).mkdir(parents=True)
        self.coco: dict[str, dict[str, list[dict[str, Any]]]] = {
            s: {"images": [], "annotations": []} for s in SPLITS}
        self.lanes: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.meta: list[str] = []
        self.counts = {s: 0 for s in SPLITS}
        self.boxes = {s: 0 for s in SPLITS}
        self.ignored = {s: 0 for s in SPLITS}

    def add(self, rec: FrameRecord) -> None:
        split = rec.meta["split"]
        (self.tmp / rec.image).write_bytes(rec.encoded)
        (self.tmp / f"labels/{split}/{Path(rec.image).stem}.txt").write_text(
            "".join(x + "\n" for x in rec.yolo))
        coco = self.coco[split]
        image_id = len(coco["images"]) + 1
        coco["images"].append({"id": image_id, **rec.coco_image})
        for ann in rec.coco_annotations:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1,
                                        "image_id": image_id, **ann})
        self.lanes[split].append(json.dumps(rec.lanes))
        self.meta.append(json.dumps({"image": rec.image, **rec.meta,
                                     "objects": len(rec.yolo)}))
        self.counts[split] += 1
        self.boxes[split] += len(rec.yolo)
        self.ignored[split] += sum(a["ignore"] for a in rec.coco_annotations)

    def finish(self) -> dict[str, Any]:
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
        (self.tmp / "annotations").mkdir()
        (self.tmp / "lanes").mkdir()
        for split in SPLITS:
            doc = {**self.coco[split], "categories": categories}
            (self.tmp / f"annotations/{split}.json").write_text(json.dumps(doc))
            lines = self.lanes[split]
            (self.tmp / f"lanes/{split}.jsonl").write_text("".join(x + "\n" for x in lines))
        (self.tmp / "meta.jsonl").write_text("".join(x + "\n" for x in self.meta))
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
        (self.tmp / "data.yaml").write_text(
            "# drivestack perception dataset (YOLO format); the paths are relative to this\n"
            "# file's folder, so the dataset can be moved or copied\n"
            "train: images/train\nval: images/val\n"
            f"test: images/test\nnames:\n{names}\n")
        summary = {"frames": self.counts, "boxes": self.boxes, "ignored": self.ignored,
                   "camera": dataclasses.asdict(self.plan.camera),
                   "ignore_rule": {"min_box_px": MIN_BOX_PX, "min_visible": MIN_VISIBLE}}
        (self.tmp / "summary.json").write_text(json.dumps(summary, indent=1))
        self.folder.finish(frames=sum(self.counts.values()))
        _install(self.tmp, self.out, self.force)
        return summary

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished dataset `tmp` into `out`, replacing the previous drivestack
    dataset there. Checked first, then moved entry by entry (so `out` may be a symbolic
    link, a mount point or the current folder): the previous dataset's entries go to a
    hidden folder inside `out`, the new ones come in, and the hidden folder is removed."""
    existing = check_folder(out, JOB, force=force, entries=_Writer.ENTRIES,
                            generated=GENERATED)
    out = existing.folder
    if not out.exists():
        os.replace(tmp, out)
        restamp(out)
        return
    aside = out / f".replaced-{os.getpid()}-{secrets.token_hex(4)}"
    aside.mkdir()
    moved: list[str] = []
    try:
        for entry in sorted(existing.previous):
            os.replace(out / entry, aside / entry)
            moved.append(entry)
        for name in (*_Writer.ENTRIES, MARKER):
            shutil.move(tmp / name, out / name)  # a copy where out is on another device
    except BaseException:  # put the previous dataset back where the new one did not land
        for entry in moved:
            if not (out / entry).exists():
                os.replace(aside / entry, out / entry)
        raise
    tmp.rmdir()
    restamp(out)
    shutil.rmtree(aside)  # only the previous dataset's own entries


def clean_partials(out: Path | str) -> list[Path]:
    """Remove the temporary folders that killed `generate` runs left beside `out` (only
    those marked as partial drivestack datasets whose process is gone) and inside it (the
    previous dataset set aside while the new one moved in); returns them."""
    out = Path(os.path.abspath(Path(out).expanduser()))
    if out.is_symlink() and out.is_dir():
        out = out.resolve()
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for tmp in sorted(out.parent.glob(f".{glob.escape(out.name)}.partial-*")):
        marker = read_marker(tmp)
        if (marker is None or marker["kind"] != JOB.kind or marker.get("complete")
                or pid_alive(marker["pid"]) or tmp.is_symlink()
                or tmp.name != f".{out.name}.partial-{marker['pid']}-{tmp.name[-8:]}"
                or not re.fullmatch(r"[0-9a-f]{8}", tmp.name[-8:])
                or not all(p.name in (*_Writer.ENTRIES, MARKER) for p in tmp.iterdir())):
            continue  # only what a `generate` of a dead process left: its name and entries
        shutil.rmtree(tmp)
        removed.append(tmp)
    marker = read_marker(out) if out.is_dir() else None
    if marker is not None and marker["kind"] == JOB.kind:  # a killed move into place
        for aside in sorted(out.glob(".replaced-*")):
            found = re.fullmatch(r"\.replaced-(\d+)-[0-9a-f]{8}", aside.name)
            if found and aside.is_dir() and not aside.is_symlink() and not pid_alive(
                    int(found.group(1))) and all(
                    p.name in _Writer.ENTRIES for p in aside.iterdir()):
                shutil.rmtree(aside)  # the previous dataset's own entries, set aside
                removed.append(aside)
    return removed


def generate(plan: DatasetPlan, out: Path | str,
             on_frame: Callable[[int], None] | None = None, workers: int = 1,
             force: bool = False, fanout: Fanout | None = None) -> dict[str, Any]:
    """Render `plan.frames` frames into `out`; returns the summary.

    `out` must be missing, empty or a drivestack dataset (which is replaced); any other
    folder raises `OutputFolderError` before anything renders, unless `force`, which writes
    the dataset beside its files without removing or overwriting any of them. The summary's
    `cleaned` lists the partial folders of killed runs removed beside `out`.

    With `workers` > 1, episodes render in that many processes (at most the machine's
    cores) and are written in episode order, so the dataset is byte-identical to a
    one-process run of the same plan. Workers end with their parent, even a killed one.
    `fanout` (instead of `workers`): where episodes render, e.g. as Ray tasks
    (`sim.fanout`); the dataset is the same byte for byte.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}; must be >= 1")
    if fanout is None:
        fanout = Fanout(workers=workers)
    if fanout.ray is None and fanout.workers > cores():  # more only start interpreters
        fanout = dataclasses.replace(fanout, workers=cores())
    out = Path(os.path.abspath(Path(out).expanduser()))
    writer = _Writer(out, plan, force)  # checks `out` first
    try:
        cleaned = clean_partials(out)
        done = empty = 0
        with contextlib.closing(_episodes(plan, fanout)) as episodes:  # stops the workers
            for records in episodes:
                empty = 0 if records else empty + 1
                if empty >= MAX_EMPTY_EPISODES:
                    raise ValueError(
                        f"warmup: {MAX_EMPTY_EPISODES} episodes in a row ended before their "
                        f"first recorded frame (warmup {plan.warmup} steps, stride "
                        f"{plan.stride}); lower warmup or stride")
                for rec in records[:plan.frames - done]:
                    writer.add(rec)
                    done += 1
                    if on_frame is not None:
                        on_frame(1)
                if done >= plan.frames:
                    break
        summary = writer.finish()
    except BaseException:
        writer.abort()
        raise
    return {**summary, "cleaned": [str(p) for p in cleaned]}


def _episodes(plan: DatasetPlan, fanout: Fanout) -> Generator[list[FrameRecord], None, None]:
    """The records of episodes k = 0, 1, 2, ... in order (endless; the caller stops)."""
    return ordered_map(_EpisodeRenderer, plan, _render, itertools.count(), fanout,
                       close=_EpisodeRenderer.close)


def _render(renderer: _EpisodeRenderer, k: int) -> list[FrameRecord]:
    return renderer(k)


class _EpisodeRenderer:
    """Drives episodes with the autopilot; keeps one env per family."""

    def __init__(self, plan: DatasetPlan) -> None:
        self.plan = plan
        self.envs: dict[str, gym.Env] = {}

    def __call__(self, k: int) -> list[FrameRecord]:
        plan = self.plan
        seed = plan.seed + k
        rng = np.random.default_rng([seed, 0xDA7A])
        family = pick_weighted(rng, plan.families)
        if family not in self.envs:
            self.envs[family] = gym.make(f"drivestack/{family.capitalize()}-v0",
                                         camera=plan.camera, obs_type="camera")
        env = cast(DrivingEnv, self.envs[family].unwrapped)
        tod, weather = pick_weighted(rng, plan.time_of_day), pick_weighted(rng, plan.weather)
        env.config = sim.family_config(family, time_of_day={tod: 1}, weather={weather: 1})
        return _episode(env, plan, seed, family)

    def close(self) -> None:
        for made in self.envs.values():
            made.close()


def _episode(env: DrivingEnv, plan: DatasetPlan, seed: int, family: str) -> list[FrameRecord]:
    """Drive one episode with the autopilot, recording every `stride`-th frame."""
    env.reset(seed=seed)
    pilot = Autopilot()
    records: list[FrameRecord] = []
    for step in range(1, 100_000):
        assert env.world is not None
        _, _, terminated, truncated, _ = env.step(pilot.act(env.world))
        if step >= plan.warmup and (step - plan.warmup) % plan.stride == 0:
            frame, world = env.frame, env.world
            assert frame is not None and world is not None  # camera obs renders every step
            sc = world.scenario
            records.append(frame_record(frame.image, frame.ground_truth, {
                "split": split_of(seed), "episode_seed": seed, "step": step,
                "family": family, "time_of_day": sc.time_of_day, "weather": sc.weather,
                "scenario_seed": sc.seed}, plan.image_format))
        if terminated or truncated or len(records) >= plan.frames_per_episode:
            break
    return records
