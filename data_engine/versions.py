"""Dataset versions: a training set as a manifest over existing frames, not a copy.

    version = build_version(out, base=Path("data/loop_base"), frames=mined, seed=0)

A version folder holds

    train.txt       absolute image paths: a seeded random sample of the base dataset's
                    ground-truth train frames (at least as many as the new frames: fine-
                    tuning on new frames alone forgets the rest, CALIBRATION.md) and the
                    new frames. Not ultralytics' `fraction`, which keeps the first N paths.
    data.yaml       for ultralytics: train.txt, and the base dataset's val split (ground
                    truth: auto labels go to train only)
    images/train/   the new frames (PNG), their ignore regions painted grey (114, the
                    letterbox grey): a region the labeler was unsure of teaches nothing
    labels/train/   their labels (YOLO txt)
    manifest.json   every frame: path, SHA-256 of image and label, the label's source
                    (ground_truth | auto | online) and labeler version, where it came from
                    (snapshot id and frame), the seeds it was rendered from

`verify_version` checks every hash; `assert_disjoint` checks that no frame's scenario seed
is a held-out seed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sim.outputs import Job, OutputFolder, atomic_write_bytes, atomic_write_text, json_text
from sim.types import CLASS_NAMES

FORMAT = 1
SOURCES = ("ground_truth", "auto", "online")
IGNORE_GREY = 114
JOB = Job("dataset-version", files=(r"train\.txt", r"data\.yaml", r"manifest\.json"),
          folders=(r"images", r"labels"))
VERSION_ENTRIES = ["train.txt", "data.yaml", "manifest.json", "images", "labels"]


@dataclass
class NewFrame:
    """A frame to add to a version, with its labels."""

    key: str
    """Where it came from, e.g. "<snapshot id>/000012" (unique in a version)."""
    image: np.ndarray
    """(H, W, 3) uint8 RGB."""
    boxes: np.ndarray
    """(N, 4) xyxy [px]."""
    classes: np.ndarray
    source: str
    """ground_truth | auto | online"""
    labeler: str = ""
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    """(M, 4) xyxy don't-care regions."""
    seed: int | None = None
    """The scenario seed it was rendered from."""
    condition: dict[str, str] = field(default_factory=dict)


def file_name(key: str) -> str:
    """A file stem for a frame key (snapshot id + frame; '/' becomes '_')."""
    stem = key.replace("/", "_")
    if not stem or any(c not in "0123456789abcdefghijklmnopqrstuvwxyzT_-" for c in stem):
        raise ValueError(f"frame key {key!r:.60}: letters, digits, '-', '_' and '/' only")
    return stem


def yolo_text(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    """YOLO label lines (class cx cy w h, normalised) of xyxy boxes clipped to the image;
    boxes with no area left are dropped."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    if not np.isfinite(b).all():
        raise ValueError("labels hold NaN or infinite boxes")
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, width)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, height)
    lines = []
    for (x0, y0, x1, y1), c in zip(b, np.asarray(classes).reshape(-1), strict=True):
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        if not 0 <= int(c) < len(CLASS_NAMES):
            raise ValueError(f"class id {c} outside 0..{len(CLASS_NAMES) - 1}")
        lines.append(f"{int(c)} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def painted(image: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """`image` with its ignore regions filled with the letterbox grey."""
    out = np.array(image, np.uint8, copy=True)
    h, w = out.shape[:2]
    for x0, y0, x1, y1 in np.asarray(ignore, np.float64).reshape(-1, 4):
        xa, ya = int(max(np.floor(x0), 0)), int(max(np.floor(y0), 0))
        xb, yb = int(min(np.ceil(x1), w)), int(min(np.ceil(y1), h))
        if xb > xa and yb > ya:
            out[ya:yb, xa:xb] = IGNORE_GREY
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def base_train_images(base: Path) -> list[Path]:
    """The ground-truth train frames of a `drivestack dataset` folder, sorted."""
    folder = base / "images" / "train"
    if not folder.is_dir():
        raise FileNotFoundError(f"base dataset {base} has no images/train; run "
                                "`drivestack dataset`")
    return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png") and p.is_file())


def build_version(out: Path, base: Path, frames: Sequence[NewFrame], *, seed: int = 0,
                  old_frames: int | None = None, name: str = "", force: bool = False
                  ) -> dict[str, Any]:
    """Write a version into `out` (new, or an earlier version drivestack wrote); returns
    its manifest. `old_frames` base frames are mixed in (default: as many as the new
    frames; never fewer)."""
    base = Path(base).resolve()
    old = base_train_images(base)
    want = len(frames) if old_frames is None else max(old_frames, len(frames))
    if want > len(old):
        raise ValueError(f"the base dataset {base} has {len(old)} train frames; the version "
                         f"needs {want} (at least as many as its {len(frames)} new frames)")
    for f in frames:
        if f.source not in SOURCES:
            raise ValueError(f"frame {f.key}: source {f.source!r}; allowed: {SOURCES}")
    keys = [f.key for f in frames]
    if len(set(keys)) != len(keys):
        raise ValueError("frame keys repeat in a version")
    folder = OutputFolder.claim(out, JOB, force=force, entries=VERSION_ENTRIES)
    folder.remove_stale()
    out = Path(out).resolve()
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(old), size=want, replace=False).tolist()) if want else []
    entries: list[dict[str, Any]] = []
    for i in picked:
        image = old[i]
        label = base / "labels" / "train" / (image.stem + ".txt")
        entries.append({"image": str(image), "image_sha256": sha256_path(image),
                        "label": str(label),
                        "label_sha256": sha256_path(label) if label.is_file() else None,
                        "source": "ground_truth", "labeler": "", "origin": "base"})
    (folder.own("images") / "train").mkdir(parents=True, exist_ok=True)
    (folder.own("labels") / "train").mkdir(parents=True, exist_ok=True)
    for f in frames:
        stem = file_name(f.key)
        h, w = f.image.shape[:2]
        ok, png = cv2.imencode(".png", painted(f.image, f.ignore)[..., ::-1])
        if not ok:
            raise ValueError(f"frame {f.key}: could not encode")
        image, label = out / "images" / "train" / f"{stem}.png", out / "labels" / "train" / \
            f"{stem}.txt"
        atomic_write_bytes(image, bytes(png))
        atomic_write_text(label, yolo_text(f.boxes, f.classes, w, h))
        entries.append({"image": str(image), "image_sha256": sha256_path(image),
                        "label": str(label), "label_sha256": sha256_path(label),
                        "source": f.source, "labeler": f.labeler, "origin": f.key,
                        "seed": f.seed, "condition": f.condition,
                        "ignore_regions": int(len(f.ignore))})
    atomic_write_text(folder.own("train.txt"), "".join(e["image"] + "\n" for e in entries))
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    atomic_write_text(folder.own("data.yaml"), f"# dataset version {name or out.name}, "
                      f"written by drivestack\npath: {base}\ntrain: {out / 'train.txt'}\n"
                      f"val: images/val\ntest: images/test\nnames:\n{names}\n")
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["source"]] = counts.get(e["source"], 0) + 1
    manifest = {"format": FORMAT, "name": name or out.name, "created": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "base": str(base), "seed": seed,
        "counts": counts, "new_frames": len(frames), "old_frames": want,
        "seeds": sorted({f.seed for f in frames if f.seed is not None}),
        "frames": entries}
    atomic_write_text(folder.own("manifest.json"), json_text(manifest, indent=1) + "\n")
    folder.wrote()
    folder.finish(frames=len(entries))
    return manifest


def read_manifest(version: Path) -> dict[str, Any]:
    path = Path(version) / "manifest.json"
    if not path.is_file() or path.stat().st_size > 256 * 1024 * 1024:
        raise ValueError(f"{path}: not a dataset version manifest")
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(
            doc.get("frames"), list):
        raise ValueError(f"{path}: not a dataset version manifest of format {FORMAT}")
    return doc


def verify_version(version: Path) -> list[str]:
    """Problems of a version: a frame or label file missing or changed since the manifest
    was written, or train.txt listing other files."""
    doc = read_manifest(version)
    problems = []
    for e in doc["frames"]:
        for key in ("image", "label"):
            p, digest = Path(e[key]), e.get(f"{key}_sha256")
            if digest is None:
                continue
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif sha256_path(p) != digest:
                problems.append(f"{p}: changed since the version was made (SHA-256)")
    listed = (Path(version) / "train.txt").read_text().split()
    if listed != [e["image"] for e in doc["frames"]]:
        problems.append("train.txt: does not list the manifest's frames")
    return problems


def assert_disjoint(mining_seeds: Iterable[int], heldout_seeds: Iterable[int]) -> None:
    """Raise ValueError naming the seeds that are both mined and held out."""
    both = sorted(set(mining_seeds) & set(heldout_seeds))
    if both:
        raise ValueError(f"mining seeds overlap held-out seeds: {both[:10]}"
                         f"{' ...' if len(both) > 10 else ''}; a held-out number would be "
                         "measured on training data")
