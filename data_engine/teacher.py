"""The auto-labeler's teacher: what finds boxes (and lanes) in a clip's frames for
`data_engine.autolabel.relabel_clip`, slowly if need be.

A teacher (`Teacher`, pluggable; default `EnsembleTeacher`) finds boxes in every frame at
a low confidence: the shipped detector on the frame and at 640 px instead of 480
(test-time augmentation; `View.flip` runs a view on the mirror image), in a committee
with the second shipped detector (`detector_fast.pt`), fused by weighted box fusion
(`fuse`): a box only some views saw keeps their share of the score. The box refiner then
puts small boxes' edges on the frame's pixels. With lanes, the first view runs inside a
`Perceiver` that reads the lanes too (`LaneTeacher`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from perception.metrics import box_iou
from perception.perceiver import LaneEstimate
from sim.types import CLASS_NAMES, CameraSpec, check_number


@runtime_checkable
class Teacher(Protocol):
    """Finds objects in frames; may be slow. A larger model (trained on a GPU) replaces
    the default by implementing this."""

    version: str
    """What labels: its weights (SHA-256 prefixes) and settings."""

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Per frame an (N, 6) float32 array: x0, y0, x1, y1 [px], score, class id
        (sim.types.CLASS_NAMES), at a low confidence: the tracker decides."""
        ...


@runtime_checkable
class LaneTeacher(Teacher, Protocol):
    """A teacher that also sees lanes (in the same pass over the frames)."""

    camera: CameraSpec

    def detect_lanes(self, frames: list[np.ndarray]
                     ) -> tuple[list[np.ndarray], list[LaneEstimate | None]]:
        """`detect(frames)` and the lanes of each frame."""
        ...


@dataclass(frozen=True)
class View:
    """One member of the teacher's committee: a detector at one input size, on the frame
    or on its mirror image."""

    weights: Path
    """Detector weights (.pt)."""
    imgsz: int | None = None
    """Long side of the network's input [px]; None: the size the weights were trained at."""
    flip: bool = False
    """Run on the frame mirrored left to right (boxes mirrored back)."""
    weight: float = 1.0
    """Weight of its boxes in the fusion (> 0)."""

    def __post_init__(self) -> None:
        from perception.raw_detector import check_imgsz

        if self.imgsz is not None:
            check_imgsz(self.imgsz)
        check_number("weight", self.weight, 0.0, 1e6, open_lo=True)
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip must be True or False, got {self.flip!r}")


def default_views() -> tuple[View, ...]:
    """The shipped detector on the frame and at 640 px instead of 480 (weight 2 each), and
    the second shipped detector (`detector_fast.pt`) on the frame (weight 1).

    Until 2026-12-06 (session 8) the views were both detectors on the frame and mirrored
    (weights 2, 2, 1, 1): the 640 view finds small and dark objects the 480 ones miss, for
    about the time the mirrored views took on the bench (13.4 against 13.3 frames/s; the
    loop's relabel stage: 71 against 52 ms a frame). Chosen with
    `LabelerSettings.conf` 0.06 on turn 6's 78 random clips (labels against ground truth,
    precision / recall / ignored: 0.939 / 0.688 / 8.8 % -> 0.954 / 0.710 / 7.4 %), checked
    once on its 99 mined clips (0.940 / 0.727 / 10.3 % -> 0.932 / 0.760 / 9.2 %; night
    recall 0.705 -> 0.765). The mirrored views beside the 640 one gave the mined clips
    0.940 / 0.759 / 8.9 % at 108 ms a frame: under the 10 frames/s the labeler must keep
    (docs/data_engine.md, "Teacher views, session 8")."""
    from perception.detector import DEFAULT_WEIGHTS, FAST_WEIGHTS

    return (View(DEFAULT_WEIGHTS, weight=2.0), View(FAST_WEIGHTS, weight=1.0),
            View(DEFAULT_WEIGHTS, imgsz=640, weight=2.0))


def sha_prefix(path: Path, n: int = 8) -> str:
    """First `n` hex digits of a file's SHA-256."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:n]


class EnsembleTeacher:
    """The default teacher: the committee of `views` at confidence `conf`, fused per frame
    by weighted box fusion at `fuse_iou` (`fuse`), then the box refiner (`refine`). With
    `lanes`, the first view (which must be unflipped at its trained size) runs inside a
    `Perceiver` that also reads the lanes (`detect_lanes`). `device`: "auto", "cpu",
    a CUDA index; on the CPU each detector runs as a local ONNX export (made once)."""

    def __init__(self, views: Sequence[View] | None = None, conf: float = 0.01,
                 fuse_iou: float = 0.55, agree: float = 1.0, refine: bool = True,
                 refiner_weights: Path | str | None = None, lanes: bool = True,
                 device: str = "auto", camera: CameraSpec | None = None,
                 bf16: bool = False) -> None:
        from perception.detector import resolve_device, torch_device
        from perception.refine import DEFAULT_REFINER_WEIGHTS, load_refiner

        check_number("conf", conf, 0.0, 1.0)
        check_number("fuse_iou", fuse_iou, 0.0, 1.0)
        check_number("agree", agree, 0.0, 4.0)
        self.views = tuple(views) if views is not None else default_views()
        if not self.views:
            raise ValueError("views: the committee needs at least one view")
        self.conf, self.fuse_iou, self.agree = conf, fuse_iou, agree
        self.camera = camera or CameraSpec()
        self.device = resolve_device(device)
        if not isinstance(bf16, bool) or (bf16 and self.device != "cpu"):
            raise ValueError("bf16 (True or False) runs the detectors on OpenVINO in bfloat16 "
                             "on the CPU")
        self.bf16 = bf16
        self.perceiver: Any = None
        self.runners: dict[tuple[Path, int | None], Any] = {}
        for i, v in enumerate(self.views):
            key = (Path(v.weights), v.imgsz)
            if key in self.runners:
                continue
            if i == 0 and lanes:
                if v.flip or v.imgsz is not None:
                    raise ValueError("with lanes, the first view must be unflipped at its "
                                     "trained size (it runs inside a Perceiver)")
                self.perceiver = self._perceiver(v.weights)
                self.runners[key] = self.perceiver
            else:
                self.runners[key] = self._detector(Path(v.weights), v.imgsz)
        path = Path(refiner_weights or DEFAULT_REFINER_WEIGHTS)
        self.refiner = load_refiner(path, torch_device(self.device)) if refine else None
        members = "+".join(f"{Path(v.weights).stem}:{sha_prefix(v.weights)}@"
                           f"{v.imgsz or 'trained'}{'-flip' if v.flip else ''}x{v.weight:g}"
                           for v in self.views)
        refiner = f",refiner:{sha_prefix(path)}" if refine else ""
        self.version = (f"ensemble[{members}{refiner},conf={conf:g},fuse={fuse_iou:g},"
                        f"agree={agree:g}{',bf16' if bf16 else ''}]")

    def _perceiver(self, weights: Path) -> Any:
        """A Perceiver of exactly these weights (never the registry's current detector,
        which the labeler's version would not name), without the refiner: it runs on
        the fused boxes."""
        from perception.detector import cached_onnx
        from perception.perceiver import Perceiver

        w = (cached_onnx(weights, self.camera.height, self.camera.width)
             if self.device == "cpu" else Path(weights))
        return Perceiver(weights=w, device=self.device, camera=self.camera, conf=self.conf,
                         refine=False, lanes=True, bf16=self.bf16)

    def _detector(self, weights: Path, imgsz: int | None) -> Any:
        from perception.detector import cached_onnx, network_input
        from perception.raw_detector import RawDetector

        h, w = self.camera.height, self.camera.width
        if self.device == "cpu":
            onnx = (cached_onnx(weights, h, w) if imgsz is None
                    else onnx_at_size(weights, h, w, *network_input(h, w, imgsz)))
            return RawDetector(onnx, "cpu", h, w, self.conf, bf16=self.bf16)
        return RawDetector(weights, self.device, h, w, self.conf, imgsz=imgsz)

    def _run(self, frames: list[np.ndarray], lanes: bool
             ) -> tuple[list[np.ndarray], list[LaneEstimate | None]]:
        if not frames:
            return [], []
        mirrored: list[np.ndarray] | None = None
        per_view: list[list[np.ndarray]] = []
        found_lanes: list[LaneEstimate | None] = [None] * len(frames)
        width = frames[0].shape[1]
        for v in self.views:
            runner = self.runners[(Path(v.weights), v.imgsz)]
            if v.flip and mirrored is None:
                mirrored = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
            batch = mirrored if v.flip else frames
            if runner is self.perceiver:
                seen = self.perceiver(batch)
                rows = [p.detections.rows() for p in seen]
                if lanes and not v.flip:
                    found_lanes = [p.lanes for p in seen]
            else:
                rows = runner(batch)
            if v.flip:
                rows = [mirror_rows(r, width) for r in rows]
            per_view.append(rows)
        weights = [v.weight for v in self.views]
        fused = [fuse([pv[t] for pv in per_view], weights, self.fuse_iou, self.agree)
                 for t in range(len(frames))]
        if self.refiner is not None:
            fused = self.refiner(frames, fused)
        return fused, found_lanes

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Fused, refined boxes of each frame (see `Teacher.detect`)."""
        return self._run(frames, lanes=False)[0]

    def detect_lanes(self, frames: list[np.ndarray]
                     ) -> tuple[list[np.ndarray], list[LaneEstimate | None]]:
        """Boxes and lanes (None without a lane model) of each frame."""
        return self._run(frames, lanes=self.perceiver is not None)


def onnx_at_size(weights: Path, height: int, width: int, in_h: int, in_w: int) -> Path:
    """The ONNX export of detector `weights` with a fixed in_h x in_w input (for height x
    width frames), made once in the drivestack cache under the weights' SHA-256 (as
    `perception.detector.cached_onnx`, which exports at the trained size only)."""
    from perception.detector import load_detector
    from perception.offline import cache_dir

    if in_h % 32 or in_w % 32 or in_h * width != in_w * height:
        raise ValueError(f"input {in_w}x{in_h}: both sides multiples of 32, the frame's "
                         f"{width}x{height} scaled by one factor")
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:16]
    path = cache_dir() / "detector_onnx" / f"detector-{digest}-{width}x{height}-in{in_w}.onnx"
    if path.is_file():
        return path
    load_detector(weights)  # refused or damaged: one error that names this file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent))
    try:
        shutil.copyfile(weights, tmp / "detector.pt")
        out = load_detector(tmp / "detector.pt").export(
            format="onnx", imgsz=(in_h, in_w), simplify=True, dynamic=False, half=False,
            device="cpu")
        os.replace(out, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # made by mkdtemp above: only ours
    return path


def mirror_rows(rows: np.ndarray, width: int) -> np.ndarray:
    """Boxes (N, 6) found on a frame mirrored left to right, in the frame's own pixels."""
    out = np.array(rows, np.float32).reshape(-1, 6)
    out[:, [0, 2]] = width - out[:, [2, 0]]
    return out


def fuse(view_rows: Sequence[np.ndarray], weights: Sequence[float], iou: float = 0.55,
         agree: float = 1.0) -> np.ndarray:
    """Weighted box fusion (Solovyev et al. 2021) of one frame's boxes from several views
    (each (N, 6): xyxy, score, class), across classes: boxes are taken by falling score
    and join the cluster whose fused box overlaps them by `iou` or more, else start one.
    A cluster's box is the score-weighted mean of its boxes; its class the one with the
    most score; its score the weighted mean of each view's best score in it over the
    views that saw it, times (their share of the views' weight) ** `agree`: with 1 (WBF's
    own rule) a view that missed it adds 0, so a box one view of four saw keeps a quarter
    of its score; with 0 the committee does not discount. Returns (K, 6) float32 by
    falling score."""
    if len(view_rows) != len(weights):
        raise ValueError(f"{len(view_rows)} views but {len(weights)} weights")
    parts = [np.asarray(r, np.float32).reshape(-1, 6) for r in view_rows]
    rows = np.concatenate(parts) if parts else np.zeros((0, 6), np.float32)
    view = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    if not len(rows):
        return np.zeros((0, 6), np.float32)
    w = np.asarray(weights, np.float64)
    if not (w > 0).all():
        raise ValueError(f"weights must be positive, got {list(weights)}")
    order = np.argsort(-rows[:, 4], kind="stable")
    fused = np.zeros((len(rows), 4))
    mass = np.zeros(len(rows))
    best = np.zeros((len(rows), len(parts)))
    votes = np.zeros((len(rows), len(CLASS_NAMES)))
    n = 0
    for i in order:
        b, s, c, v = rows[i, :4], float(rows[i, 4]), int(rows[i, 5]), view[i]
        k = -1
        if n:
            overlap = box_iou(b[None], fused[:n])[0]
            if overlap.max() >= iou:
                k = int(overlap.argmax())
        if k < 0:
            k, n = n, n + 1
        fused[k] = (fused[k] * mass[k] + b * s * w[v]) / max(mass[k] + s * w[v], 1e-12)
        mass[k] += s * w[v]
        best[k, v] = max(best[k, v], s)
        if 0 <= c < votes.shape[1]:
            votes[k, c] += s * w[v]
    seen = (best[:n] > 0) @ w
    score = (best[:n] @ w / np.maximum(seen, 1e-12)) * (seen / w.sum()) ** agree
    out = np.concatenate([fused[:n], score[:, None], votes[:n].argmax(1)[:, None]], 1)
    return out[np.argsort(-score, kind="stable")].astype(np.float32)
