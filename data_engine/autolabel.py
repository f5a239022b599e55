"""The offboard auto-labeler: camera frames of a clip in, labels out, with hindsight.

It never reads ground truth: `relabel_clip` takes the frames of one clip (uint8 RGB, in
time order) and nothing else, and may be slower than the online Perceiver. Its steps:

1. A teacher (`Teacher`, pluggable; default `EnsembleTeacher`) finds boxes in every
   frame at a low confidence: the shipped detector on the frame and on its mirror image
   (test-time augmentation), in a committee with the second shipped detector
   (`detector_fast.pt`, on the frame and mirrored), fused by weighted box fusion
   (`fuse`): a box only some views saw keeps their share of the score. The box refiner
   then puts small boxes' edges on the frame's pixels. (`View.imgsz` runs a view at
   another scale; the shipped detector at 640 px cost precision and gained nothing.)
2. Offline tracking over the whole clip: boxes are linked frame to frame in time order
   (`link`: Hungarian matching of padded IoU against a constant-velocity prediction,
   confident boxes first, as ByteTrack), then the tracklets are joined against time too
   (`stitch`: a track's motion run backward reaches a tracklet before its gap), so a
   track found late (a far car seen once near) reaches back to where the teacher saw it
   only faintly: those faint boxes become labels (the hindsight advantage). A track is
   labels when its best boxes are confident (`label_score`) for `min_track` frames, or
   when it is long (`long_track`); shorter, flickering ones are dropped. Its class is
   voted over the track and checked against its height on the ground (`vehicle_class`:
   a far truck in fog is no car).
3. What the labeler is unsure of becomes an ignore (don't-care) region, never a guessed
   label: the gaps of a track (interpolated along it), the faint boxes of a long weak
   track, the tracks with some evidence but not enough, and each track carried
   `extend` frames past its ends (backward in time to where it was too far or too dark
   to detect, forward to where it faded).
4. Lanes from the teacher's lane model, smoothed over time per slot and row
   (`smooth_lanes`).

    labels = relabel_clip(frames)                  # default EnsembleTeacher
    labels.boxes[t], labels.classes[t], labels.ignore[t], labels.lanes[t]
    labels.save(Path("out/clip_0007"))             # clip_0007.json + clip_0007.npz
    label_quality(labels, ground_truths)           # the report only: reads ground truth

The settings (`LabelerSettings`) were chosen on 36 clips of seeds held out from training
(900000-901023, day, night, fog, rain) and checked on 12 fresh ones (903000-903023):
bench/relabel_quality.py. Speed: bench/relabel_speed.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from scipy.optimize import linear_sum_assignment

from perception.metrics import box_iou
from perception.perceiver import LaneEstimate
from sim.outputs import atomic_write, atomic_write_text, json_text
from sim.types import ABSENT, CLASS_NAMES, CameraSpec, GroundTruth, check_number

ALGORITHM = "hindsight-1"
"""Version of the labeling algorithm (part of every `ClipLabels.labeler`)."""
SMALL_SIDE = 10.0
"""Size buckets of `label_quality`: a box's smaller side below this is small [px]."""
MATCH_IOU = 0.5
"""IoU at which a label matches a ground-truth object (`label_quality`)."""
COVER = 0.5
"""A box is inside the ignore regions when this share of its area is covered."""
_PER_FRAME = {"boxes": (np.float32, (4,)), "classes": (np.int64, ()),
              "scores": (np.float32, ()), "track_ids": (np.int64, ()),
              "ignore": (np.float32, (4,))}
"""Per-frame arrays of `ClipLabels`: dtype and shape of a row."""


@dataclass(frozen=True)
class LabelerSettings:
    """How the labeler decides; part of the labeler's version string (`digest`)."""

    conf: float = 0.02
    """Lowest fused teacher score a box may have to take part in tracking."""
    high: float = 0.3
    """Boxes from this fused score are matched to tracks first (ByteTrack's two stages)."""
    link_iou: float = 0.3
    """Least IoU between a track's predicted box and a box to link them (both padded by
    `pad` px, so that boxes of a few pixels can link)."""
    pad: float = 2.0
    """Padding of boxes when linking [px]."""
    max_gap: int = 5
    """Frames a track may go unseen and be linked again (its gaps are interpolated)."""
    min_track: int = 4
    """Frames with a box a track needs to become labels (shorter ones: flicker)."""
    label_score: float = 0.5
    """A track becomes labels when the mean of its `top_k` best scores reaches this."""
    long_track: int = 20
    """Frames with a box that make a track long: it becomes labels from `long_score`."""
    long_score: float = 0.05
    """Evidence a long track needs to become labels."""
    box_score: float = 0.1
    """In a long track that is not sure (below `label_score`), a box the teacher saw with
    less than this becomes an ignore region."""
    label_gap: int = 0
    """Gaps of up to this many frames in a sure track are interpolated as labels; longer
    ones, and every gap of a long track, as ignore regions (interpolated boxes matched an
    object only about half the time, even across one frame: most gaps are occlusions)."""
    ignore_score: float = 0.25
    """A track below `label_score` but with this much evidence becomes ignore regions."""
    min_ignore_track: int = 3
    """Frames with a box a track below `label_score` needs to become ignore regions."""
    top_k: int = 3
    """Boxes whose scores make a track's evidence."""
    extend: int = 8
    """Frames a label track is carried past each of its ends as ignore regions."""
    extend_labels: bool = False
    """Carried boxes become labels instead of ignore regions."""
    height_check: bool = True
    """Car or truck decided by the track's height on the ground plane when the teacher's
    vote disagrees with it (`vehicle_class`; needs the camera)."""
    min_height_px: float = 8.0
    """Boxes at least this tall count in the height check (a pixel is then at most 12 %
    of the height); a track needs half its boxes (and 3) that tall [px]."""
    smooth: int = 1
    """Window of the smoothing over time of the boxes the teacher is not sure of (score
    below `high`) and the interpolated ones [frames] (Savitzky-Golay of order 2, so 3 or
    less: none). Off: the refiner puts boxes on whole pixels, and smoothing them over 5 or 7
    frames lowered the mean IoU by 0.003 (bench/relabel_quality.py)."""
    lane_window: int = 3
    """Window of the lanes' smoothing over time [frames] (1: none). On 8 clips TuSimple
    accuracy against the ground truth stayed within 0.001 for windows 1 to 5 (lanes
    barely jitter at 15 fps) and fell by 0.015 in rain at 9."""

    def __post_init__(self) -> None:
        for name in ("conf", "high", "link_iou", "label_score", "long_score", "box_score",
                     "ignore_score"):
            check_number(name, getattr(self, name), 0.0, 1.0)
        check_number("pad", self.pad, 0.0, 100.0, unit="px")
        for name, hi in (("max_gap", 1000), ("min_track", 1000), ("long_track", 100_000),
                         ("label_gap", 1000), ("min_ignore_track", 1000), ("top_k", 1000),
                         ("extend", 1000), ("smooth", 1001), ("lane_window", 1001)):
            check_number(name, getattr(self, name), 0 if name != "top_k" else 1, hi,
                         integer=True)
        check_number("min_height_px", self.min_height_px, 0.0, 10_000.0, unit="px")
        for name in ("extend_labels", "height_check"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def digest(self) -> str:
        """First 8 hex digits of the SHA-256 of the settings as JSON."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()
                              ).hexdigest()[:8]


# ---------------------------------------------------------------- the teacher


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
    """The shipped detector on the frame and mirrored (weight 2 each), and the second
    shipped detector (`detector_fast.pt`, weight 1) the same way."""
    from perception.detector import DEFAULT_WEIGHTS, FAST_WEIGHTS

    return (View(DEFAULT_WEIGHTS, weight=2.0), View(DEFAULT_WEIGHTS, flip=True, weight=2.0),
            View(FAST_WEIGHTS), View(FAST_WEIGHTS, flip=True))


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


# ---------------------------------------------------------------- offline tracking


@dataclass(eq=False)
class Track:
    """Boxes of one object over a clip (frames in increasing order)."""

    frames: np.ndarray
    """(n,) int frame indices."""
    boxes: np.ndarray
    """(n, 4) float64 xyxy [px]."""
    scores: np.ndarray
    """(n,) teacher scores."""
    classes: np.ndarray
    """(n,) int class ids."""

    def evidence(self, k: int) -> float:
        """Mean of the `k` best scores (missing ones count 0)."""
        top = np.sort(self.scores)[::-1][:k]
        return float(top.sum() / k)

    def at(self, t: int, frames: int = 4) -> np.ndarray:
        """The box predicted at frame `t` at constant velocity from the `frames` boxes of
        the end nearest to `t` (its centre moves linearly, its size geometrically)."""
        if len(self.frames) == 1:
            return self.boxes[0].copy()
        end = self.boxes[-frames:] if t >= self.frames[-1] else self.boxes[:frames]
        ts = self.frames[-frames:] if t >= self.frames[-1] else self.frames[:frames]
        c = (end[:, :2] + end[:, 2:]) / 2
        size = np.log(np.maximum(end[:, 2:] - end[:, :2], 0.5))
        span = float(ts[-1] - ts[0])
        ref = -1 if t >= self.frames[-1] else 0
        dt = t - ts[ref]
        vc = (c[-1] - c[0]) / span
        vs = (size[-1] - size[0]) / span
        cc, half = c[ref] + vc * dt, np.exp(size[ref] + vs * dt) / 2
        return np.concatenate([cc - half, cc + half])


def _padded_iou(a: np.ndarray, b: np.ndarray, pad: float) -> np.ndarray:
    """IoU of boxes (N, 4) and (M, 4), each grown by `pad` px on every side."""
    grow = np.array([-pad, -pad, pad, pad])
    return box_iou(a.reshape(-1, 4) + grow, b.reshape(-1, 4) + grow)


def _match(cost_iou: np.ndarray, least: float) -> list[tuple[int, int]]:
    """Hungarian matching maximizing IoU; pairs at `least` or more."""
    if not cost_iou.size:
        return []
    r, c = linear_sum_assignment(-cost_iou)
    return [(int(i), int(j)) for i, j in zip(r, c, strict=True) if cost_iou[i, j] >= least]


def link(dets: Sequence[np.ndarray], s: LabelerSettings) -> list[Track]:
    """Tracklets of a clip's boxes in time order: each frame's boxes matched to the live
    tracks' predicted boxes, those from score `s.high` first and then the rest (ByteTrack);
    a box left over starts a track, a track unseen for more than `s.max_gap` frames ends."""
    live: list[dict[str, list]] = []
    done: list[dict[str, list]] = []
    for t, rows in enumerate(dets):
        rows = np.asarray(rows, np.float64).reshape(-1, 6)
        rows = rows[rows[:, 4] >= s.conf]
        done += [tr for tr in live if t - tr["t"][-1] > s.max_gap + 1]
        live = [tr for tr in live if t - tr["t"][-1] <= s.max_gap + 1]
        free = list(range(len(live)))
        left = np.ones(len(rows), bool)
        for stage in (rows[:, 4] >= s.high, rows[:, 4] < s.high):
            idx = np.nonzero(stage & left)[0]
            if not len(idx) or not free:
                continue
            pred = np.array([_as_track(live[k], tail=4).at(t) for k in free])
            pairs = _match(_padded_iou(pred, rows[idx, :4], s.pad), s.link_iou)
            used = set()
            for i, j in pairs:
                tr = live[free[i]]
                for key, val in zip(("t", "b", "s", "c"), (t, rows[idx[j], :4],
                                    rows[idx[j], 4], rows[idx[j], 5]), strict=True):
                    tr[key].append(val)
                left[idx[j]] = False
                used.add(i)
            free = [k for i, k in enumerate(free) if i not in used]
        live += [{"t": [t], "b": [r[:4]], "s": [r[4]], "c": [r[5]]} for r in rows[left]]
    return [_as_track(tr) for tr in done + live]


def _as_track(tr: dict[str, list], tail: int = 0) -> Track:
    """A track being linked (lists) as a `Track`, of its last `tail` boxes (0: all)."""
    return Track(np.asarray(tr["t"][-tail:], np.int64),
                 np.asarray(tr["b"][-tail:], np.float64).reshape(-1, 4),
                 np.asarray(tr["s"][-tail:], np.float64), np.asarray(tr["c"][-tail:], np.int64))


def stitch(tracks: list[Track], s: LabelerSettings) -> list[Track]:
    """Join tracklets against time as well (the backward pass): tracklet A ending before
    B starts (within `s.max_gap` frames) joins B when B carried back to A's end overlaps
    A's last box by `s.link_iou` (padded), or A carried forward overlaps B's first box;
    Hungarian over all such pairs, repeated until nothing joins. Linking in time order
    cannot join a young tracklet (no velocity yet) to a fast object seen again after a
    gap; the established track's motion, run backward, can."""
    tracks = sorted(tracks, key=lambda tr: int(tr.frames[0]))
    while True:
        starts = np.array([int(tr.frames[0]) for tr in tracks])
        ends = np.array([int(tr.frames[-1]) for tr in tracks])
        gap = starts[None, :] - ends[:, None]
        cand_a, cand_b = np.nonzero((gap > 0) & (gap <= s.max_gap + 1))
        rows, cols = np.unique(cand_a), np.unique(cand_b)  # only tracks with a candidate
        score = np.zeros((len(rows), len(cols)))
        for a, b in zip(cand_a.tolist(), cand_b.tolist(), strict=True):
            ta, tb = tracks[a], tracks[b]
            fwd = _padded_iou(ta.at(int(starts[b])), tb.boxes[0], s.pad)[0, 0]
            back = _padded_iou(tb.at(int(ends[a])), ta.boxes[-1], s.pad)[0, 0]
            score[np.searchsorted(rows, a), np.searchsorted(cols, b)] = max(fwd, back)
        pairs = [(int(rows[i]), int(cols[j])) for i, j in _match(score, s.link_iou)]
        if not pairs:
            return tracks
        into = dict(pairs)
        joined, gone = [], {b for _, b in pairs}
        for a, tr in enumerate(tracks):
            if a in gone:
                continue
            while a in into:  # a chain A -> B -> C joins at once
                a = into[a]
                nxt = tracks[a]
                tr = Track(*(np.concatenate([getattr(tr, f.name), getattr(nxt, f.name)])
                             for f in fields(Track)))
            joined.append(tr)
        tracks = sorted(joined, key=lambda tr: int(tr.frames[0]))


def _smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Savitzky-Golay smoothing (order 2) of (n, k) along n, the window cut to fit."""
    w = min(window, len(x) if len(x) % 2 else len(x) - 1)
    if w < 3:
        return x
    from scipy.signal import savgol_filter

    return np.asarray(savgol_filter(x, w, min(2, w - 1), axis=0, mode="interp"))


def fill(track: Track, window: int, keep: float) -> dict[str, np.ndarray]:
    """A track in every frame from its first to its last: "frames" (n,), "boxes" (n, 4)
    (gaps interpolated linearly; boxes from a score below `keep` and interpolated ones
    smoothed over `window` frames, the others as the teacher drew them), "score" (n,)
    (the teacher's; 0 in a gap) and "gap" (n,) (the length of the gap a frame is in; 0
    where the teacher saw it)."""
    t0 = int(track.frames[0])
    ts = np.arange(t0, int(track.frames[-1]) + 1)
    boxes = np.stack([np.interp(ts, track.frames, track.boxes[:, k]) for k in range(4)], 1)
    score = np.zeros(len(ts))
    score[track.frames - t0] = track.scores
    gap = np.zeros(len(ts), np.int64)
    for a, b in zip(track.frames[:-1] - t0, track.frames[1:] - t0, strict=True):
        gap[a + 1: b] = b - a - 1
    sure = (gap == 0) & (score >= keep)
    boxes = np.where(sure[:, None], boxes, _smooth(boxes, window))
    return {"frames": ts, "boxes": boxes, "score": score, "gap": gap}


def carry(track: Track, n_frames: int, extend: int, height: int, width: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """The hindsight boxes of a track: carried `extend` frames past each end along its
    motion, while still at least a pixel in size and inside the frame: frames, boxes."""
    ts, out = [], []
    for direction, end in ((-1, int(track.frames[0])), (1, int(track.frames[-1]))):
        for k in range(1, extend + 1):
            t = end + direction * k
            if not 0 <= t < n_frames:
                break
            b = track.at(t)
            if ((b[2:] - b[:2]) < 1).any() or b[2] <= 0 or b[3] <= 0 or b[0] >= width \
                    or b[1] >= height:
                break
            ts.append(t)
            out.append(np.clip(b, 0, [width, height, width, height]))
    return np.asarray(ts, np.int64), np.asarray(out, np.float64).reshape(-1, 4)


def vehicle_boundary() -> float:
    """Height between the tallest car and the lowest truck of the world's bodies [m]."""
    from sim.types import CAR, TRUCK
    from sim.world.actors import BODY_SHAPES, SHAPE_SIZE

    car = max(SHAPE_SIZE[name][2] for name in BODY_SHAPES[CAR])
    truck = min(SHAPE_SIZE[name][2] for name in BODY_SHAPES[TRUCK])
    return (car + truck) / 2


def vehicle_class(track: Track, cls: int, camera: CameraSpec, min_px: float) -> int:
    """A car or truck vote checked against the track's height [m] on the flat ground (box
    height x distance of its foot / focal length, the median over frames where boxes are
    at least `min_px` tall): above `vehicle_boundary` a truck, below it a car (the
    teacher mistakes far trucks for cars in fog). Other classes and unsure tracks keep
    `cls`."""
    from perception.geometry import ground_distance
    from sim.types import CAR, TRUCK

    if cls not in (CAR, TRUCK):
        return cls
    h_px = track.boxes[:, 3] - track.boxes[:, 1]
    dist = ground_distance(track.boxes, camera).astype(np.float64)
    ok = (h_px >= min_px) & np.isfinite(dist)
    if ok.sum() < max(3, len(h_px) // 2):
        return cls
    height = float(np.median(h_px[ok] * dist[ok] / camera.focal_px))
    return TRUCK if height > vehicle_boundary() else CAR


Label = tuple[np.ndarray, int, float, int]
"""One label while a clip is labelled: box, class, score, track id."""


def hindsight_labels(dets: Sequence[np.ndarray], height: int, width: int,
                     s: LabelerSettings, camera: CameraSpec | None = None
                     ) -> dict[str, list[np.ndarray]]:
    """Labels of a clip from its teacher boxes (per frame (N, 6)) alone: per frame
    "boxes", "classes", "scores", "track_ids" and "ignore" (see `ClipLabels`). `camera`:
    for the height check (`vehicle_class`); none without it."""
    n = len(dets)
    tracks = stitch(link(dets, s), s)
    labels: list[list[Label]] = [[] for _ in range(n)]
    ignore: list[list[np.ndarray]] = [[] for _ in range(n)]
    strong = sorted((tr for tr in tracks if _strong(tr, s)),
                    key=lambda tr: (int(tr.frames[0]), -tr.evidence(s.top_k)))
    for tid, tr in enumerate(strong):
        score = tr.evidence(s.top_k)
        cls = int(np.bincount(tr.classes, tr.scores, minlength=len(CLASS_NAMES)).argmax())
        if s.height_check and camera is not None:
            cls = vehicle_class(tr, cls, camera, s.min_height_px)
        sure = score >= s.label_score and len(tr.frames) >= s.min_track
        f = fill(tr, s.smooth, s.high)
        for t, b, seen, gap in zip(f["frames"], f["boxes"], f["score"], f["gap"],
                                   strict=True):
            if (gap == 0 and (sure or seen >= s.box_score)) or (sure and 0 < gap <= s.label_gap):
                labels[t].append((b, cls, score, tid))
            else:
                ignore[t].append(b)
        for t, b in zip(*carry(tr, n, s.extend, height, width), strict=True):
            if s.extend_labels:
                labels[t].append((b, cls, score, tid))
            else:
                ignore[t].append(b)
    chosen = {id(tr) for tr in strong}
    for tr in tracks:  # some evidence, not enough: don't-care
        if id(tr) not in chosen and tr.evidence(s.top_k) >= s.ignore_score \
                and len(tr.frames) >= s.min_ignore_track:
            f = fill(tr, 1, 0.0)
            for t, b in zip(f["frames"], f["boxes"], strict=True):
                ignore[t].append(b)
    return per_frame(labels, ignore)


def per_frame(labels: list[list[Label]], ignore: list[list[np.ndarray]]
              ) -> dict[str, list[np.ndarray]]:
    """Each frame's labels as arrays (the weaker of two labels of one object dropped:
    `_suppress`) and its ignore regions (those on a label dropped)."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in _PER_FRAME}
    for rows_t, ignore_t in zip(labels, ignore, strict=True):
        rows = [rows_t[i] for i in _suppress(rows_t)]
        boxes = np.array([r[0] for r in rows], np.float32).reshape(-1, 4)
        out["boxes"].append(boxes)
        out["classes"].append(np.array([r[1] for r in rows], np.int64))
        out["scores"].append(np.array([r[2] for r in rows], np.float32))
        out["track_ids"].append(np.array([r[3] for r in rows], np.int64))
        ign = np.array(ignore_t, np.float32).reshape(-1, 4)
        if len(ign) and len(boxes):  # a region on a label is no region
            ign = ign[box_iou(ign, boxes).max(1) < 0.3]
        out["ignore"].append(ign)
    return out


def _strong(tr: Track, s: LabelerSettings) -> bool:
    """A track that becomes labels: `s.min_track` frames and `s.label_score` evidence,
    or `s.long_track` frames and `s.long_score`."""
    n, ev = len(tr.frames), tr.evidence(s.top_k)
    return (n >= s.min_track and ev >= s.label_score) or (n >= s.long_track
                                                          and ev >= s.long_score)


def _suppress(rows: list[tuple[np.ndarray, int, float, int]], iou: float = 0.6) -> list[int]:
    """Indices of a frame's label boxes left when the weaker of two boxes of one object
    (two tracks of it) goes."""
    order = sorted(range(len(rows)), key=lambda i: -rows[i][2])
    keep: list[int] = []
    for i in order:
        if all(box_iou(rows[i][0][None], rows[k][0][None])[0, 0] < iou for k in keep):
            keep.append(i)
    return sorted(keep)


# ---------------------------------------------------------------- labels of a clip

@dataclass(eq=False)
class ClipLabels:
    """Auto-labels of one clip, per frame (lists as long as the clip)."""

    boxes: list[np.ndarray]
    """(N, 4) float32 xyxy [px]."""
    classes: list[np.ndarray]
    """(N,) int64 class ids (sim.types.CLASS_NAMES)."""
    scores: list[np.ndarray]
    """(N,) float32 teacher confidence in the object (its track's evidence)."""
    track_ids: list[np.ndarray]
    """(N,) int64 track ids, stable over the clip."""
    ignore: list[np.ndarray]
    """(M, 4) float32 xyxy don't-care regions [px]: neither a label nor background."""
    lanes: list[LaneEstimate | None]
    """Lane estimate of each frame, smoothed over time (None: no lanes)."""
    labeler: str
    """What made them: teacher (weights' SHA-256 prefixes), algorithm, settings hash."""

    def __len__(self) -> int:
        return len(self.boxes)

    def save(self, path: Path | str) -> tuple[Path, Path]:
        """Write `path`.json (labeler, frame count, lane scalars) and `path`.npz (arrays;
        no pickled objects), each atomically. Returns both paths."""
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        for name in _PER_FRAME:
            per = getattr(self, name)
            arrays[name] = np.concatenate(per) if per else np.zeros(0)
            arrays[name + "_count"] = np.array([len(a) for a in per], np.int64)
        have = [lane is not None for lane in self.lanes]
        first = next((lane for lane in self.lanes if lane is not None), None)
        meta: dict[str, Any] = {"format": 1, "frames": len(self), "labeler": self.labeler,
                                "lanes": have}
        if first is not None:
            lanes = [lane for lane in self.lanes if lane is not None]
            arrays["lane_rows"] = np.asarray(first.rows)
            arrays["lane_xs"] = np.stack([lane.xs for lane in lanes])
            arrays["lane_scores"] = np.stack([lane.scores for lane in lanes])
            meta["lane_slots"] = list(first.slots)
            meta["ego_offset"] = [lane.ego_offset for lane in lanes]
            meta["heading_error"] = [lane.heading_error for lane in lanes]
        npz, doc = path.with_name(path.name + ".npz"), path.with_name(path.name + ".json")
        atomic_write(npz, lambda tmp: _savez(tmp, arrays))
        atomic_write_text(doc, json_text(meta, indent=1))
        return doc, npz

    @classmethod
    def load(cls, path: Path | str) -> ClipLabels:
        """Read what `save` wrote (never unpickles); FileNotFoundError for a missing file,
        ValueError naming the file for one that is not a clip's labels."""
        path = Path(path)
        doc, npz = path.with_name(path.name + ".json"), path.with_name(path.name + ".npz")
        for f in (doc, npz):
            if not f.is_file():
                raise FileNotFoundError(f"labels {f} not found")
        try:
            meta = json.loads(doc.read_text(encoding="utf-8"))
            with np.load(npz, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            return cls._from(meta, data)
        except (KeyError, IndexError, TypeError, ValueError, OSError) as exc:
            raise ValueError(f"labels {doc} + {npz.name} are not a clip's labels: "
                             f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def _from(cls, meta: dict[str, Any], data: dict[str, np.ndarray]) -> ClipLabels:
        n = int(meta["frames"])
        per: dict[str, list[np.ndarray]] = {}
        for name, (dtype, row) in _PER_FRAME.items():
            counts, flat = data[name + "_count"], data[name]
            if (counts.ndim != 1 or len(counts) != n or (counts < 0).any()
                    or int(counts.sum()) != len(flat) or flat.dtype.kind not in "iuf"):
                raise ValueError(f"{name} does not fit {n} frames")
            flat = flat.astype(dtype).reshape(-1, *row)
            per[name] = list(np.split(flat, np.cumsum(counts)[:-1])) if n else []
        if len(meta["lanes"]) != n:
            raise ValueError(f"lanes: {len(meta['lanes'])} entries for {n} frames")
        lanes: list[LaneEstimate | None] = [None] * n
        k = 0
        for t, has in enumerate(meta["lanes"]):
            if has:
                lanes[t] = LaneEstimate(
                    rows=data["lane_rows"], xs=data["lane_xs"][k], scores=data["lane_scores"][k],
                    ego_offset=_number(meta["ego_offset"][k]),
                    heading_error=_number(meta["heading_error"][k]),
                    slots=tuple(meta["lane_slots"]))
                k += 1
        return cls(**per, lanes=lanes, labeler=str(meta["labeler"]))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, allow_pickle=False, **arrays)


def _number(v: Any) -> float:
    return float("nan") if v is None else float(v)


def smooth_lanes(lanes: Sequence[LaneEstimate | None], camera: CameraSpec, window: int
                 ) -> list[LaneEstimate | None]:
    """Lane estimates smoothed over time: each slot's x at each row becomes the mean of
    the frames within `window` that see it there (a point no frame nearby sees stays
    ABSENT, one the frame itself misses too); scores the same; ego offset and heading
    recomputed from the smoothed polylines."""
    from perception.lanes import lane_geometry

    have = [k for k, lane in enumerate(lanes) if lane is not None]
    if window <= 1 or not have:
        return list(lanes)
    xs = np.stack([lanes[k].xs for k in have]).astype(np.float64)  # type: ignore[union-attr]
    sc = np.stack([lanes[k].scores for k in have]).astype(np.float64)  # type: ignore[union-attr]
    seen = xs != ABSENT
    half = window // 2
    out = list(lanes)
    for i, k in enumerate(have):
        lo, hi = max(0, i - half), min(len(have), i + half + 1)
        m = seen[lo:hi]
        total = np.where(m, xs[lo:hi], 0).sum(0)
        count = m.sum(0)
        x = np.where(seen[i] & (count > 0), total / np.maximum(count, 1), ABSENT)
        lane = lanes[k]
        assert lane is not None
        offset, heading = lane_geometry(x.astype(np.float32), lane.rows, camera)
        out[k] = LaneEstimate(rows=lane.rows, xs=x.astype(np.float32),
                              scores=sc[lo:hi].mean(0).astype(np.float32),
                              ego_offset=offset, heading_error=heading, slots=lane.slots)
    return out


def check_frames(frames: Any) -> list[np.ndarray]:
    """The frames of a clip: a sequence of uint8 RGB (H, W, 3) arrays of one shape. Only
    arrays: nothing that carries ground truth gets in."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames: expected (T, H, W, 3) uint8, got shape {frames.shape}")
        frames = list(frames)
    if not isinstance(frames, Sequence) or isinstance(frames, str | bytes):
        raise TypeError(f"frames: expected a list of uint8 RGB arrays, got "
                        f"{type(frames).__name__}")
    out = []
    for i, f in enumerate(frames):
        if type(f) is not np.ndarray or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            what = (f"{f.dtype} array of shape {f.shape}" if isinstance(f, np.ndarray)
                    else type(f).__name__)
            raise TypeError(f"frame {i}: expected a uint8 RGB (H, W, 3) numpy array (the "
                            f"image alone), got {what}")
        if f.shape != frames[0].shape:
            raise ValueError(f"frame {i}: shape {f.shape}, frame 0: {frames[0].shape}")
        out.append(f)
    return out


_DEFAULT_TEACHERS: dict[bool, EnsembleTeacher] = {}
"""The default teacher of this process, with and without lanes (built on first use)."""


def relabel_clip(frames: Sequence[np.ndarray], teacher: Teacher | None = None,
                 lanes: bool = True, settings: LabelerSettings | None = None) -> ClipLabels:
    """Auto-labels of a clip's frames (uint8 RGB (H, W, 3), in time order at the sim's
    rate) from the frames alone. `teacher`: default an `EnsembleTeacher` (built once per
    process); `lanes`: lane estimates too, when the teacher sees lanes (`LaneTeacher`).
    The height check of cars and trucks uses the teacher's `camera` when it has one."""
    batch = check_frames(frames)
    s = settings or LabelerSettings()
    if teacher is None:
        if lanes not in _DEFAULT_TEACHERS:
            _DEFAULT_TEACHERS[lanes] = EnsembleTeacher(lanes=lanes)
        teacher = _DEFAULT_TEACHERS[lanes]
    found: list[LaneEstimate | None] = [None] * len(batch)
    if lanes and isinstance(teacher, LaneTeacher):
        dets, found = teacher.detect_lanes(batch)
        found = smooth_lanes(found, teacher.camera, s.lane_window)
    else:
        dets = teacher.detect(batch)
    if len(dets) != len(batch):
        raise ValueError(f"teacher gave {len(dets)} detection arrays for {len(batch)} frames")
    h, w = batch[0].shape[:2] if batch else (0, 0)
    camera = getattr(teacher, "camera", None)
    per = hindsight_labels(dets, h, w, s, camera if isinstance(camera, CameraSpec) else None)
    return ClipLabels(**per, lanes=found,
                      labeler=f"{teacher.version};{ALGORITHM};settings:{s.digest()}")


# ---------------------------------------------------------------- quality (report only)


def _covered(boxes: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(N,) bool: boxes with at least COVER of their area inside one of the regions."""
    if not len(boxes) or not len(regions):
        return np.zeros(len(boxes), bool)
    lt = np.maximum(boxes[:, None, :2], regions[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), 2)
    area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-9), 1)
    return (inter / area[:, None] >= COVER).any(1)


def _small(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) < SMALL_SIDE


def frame_tally(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                ignore: np.ndarray, truth: GroundTruth) -> dict[str, np.ndarray]:
    """One frame's matches, by size bucket (0: small, 1: large): "tp", "fp", "fn",
    "objects", "in_ignore" (counts of 2), and the IoUs of the matches ("iou", "iou_small").

    Objects that count follow the datasets' ignore rule (`perception.datasets.keep_mask`:
    both sides >= 4 px, visible fraction >= 0.25); a label of an object under that rule
    (IoU >= 0.5, same class) is no false positive, as in perception/evaluate.py. Labels
    match objects of their class greedily by score at IoU >= `MATCH_IOU`. A label inside
    the ignore regions that matches nothing is not counted; an object inside them that
    no label matches is no miss, but every counted object inside them is "in_ignore"."""
    from perception.datasets import keep_mask

    gb = np.asarray(truth.boxes_xyxy, np.float64).reshape(-1, 4)
    gc = np.asarray(truth.class_ids, np.int64)
    keep = keep_mask(truth)
    g_small = _small(gb)
    covered = _covered(gb, np.asarray(ignore, np.float64).reshape(-1, 4))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    iou = box_iou(boxes, gb)
    same = np.asarray(classes)[:, None] == gc[None, :]
    free, matched = keep.copy(), np.zeros(len(gb), bool)
    p_in = _covered(boxes, np.asarray(ignore, np.float64).reshape(-1, 4))
    p_small = _small(boxes)
    tally = {k: np.zeros(2, np.int64) for k in ("tp", "fp", "fn", "objects", "in_ignore")}
    ious: list[tuple[float, bool]] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        cand = np.where(free & same[i] & (iou[i] >= MATCH_IOU), iou[i], -1.0)
        if cand.size and cand.max() >= 0:
            j = int(cand.argmax())
            free[j], matched[j] = False, True
            tally["tp"][int(not g_small[j])] += 1
            ious.append((float(iou[i, j]), bool(g_small[j])))
        elif not (p_in[i] or ((~keep) & same[i] & (iou[i] >= MATCH_IOU)).any()):
            tally["fp"][int(not p_small[i])] += 1
    for j in np.nonzero(keep)[0].tolist():
        size = int(not g_small[j])
        tally["objects"][size] += 1
        tally["in_ignore"][size] += int(covered[j])
        tally["fn"][size] += int(not matched[j] and not covered[j])
    return {**tally, "iou": np.array([v for v, _ in ious]),
            "iou_small": np.array([sm for _, sm in ious], bool)}


def label_quality(pred: ClipLabels, truth: Sequence[GroundTruth]) -> dict[str, Any]:
    """Precision, recall and mean IoU of matches at IoU 0.5 of a clip's labels against its
    ground truth, overall and by the objects' smaller side ("small" < 10 px, "large"),
    with the counts, and "ignored": the share of counted objects inside ignore regions
    (see `frame_tally`). For the report only: the labeler itself never reads this."""
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} labelled frames but {len(truth)} ground truths")
    return quality_of([frame_tally(pred.boxes[t], pred.classes[t], pred.scores[t],
                                   pred.ignore[t], truth[t]) for t in range(len(pred))])


def quality_of(tallies: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """`label_quality`'s figures from frame tallies (of one clip or many)."""
    keys = ("tp", "fp", "fn", "objects", "in_ignore")
    total = {k: sum((t[k] for t in tallies), np.zeros(2, np.int64)) for k in keys}
    iou = np.concatenate([t["iou"] for t in tallies]) if tallies else np.zeros(0)
    small = (np.concatenate([t["iou_small"] for t in tallies]) if tallies
             else np.zeros(0, bool))
    out: dict[str, Any] = {}
    for name, sel, m in (("overall", slice(None), np.ones(len(iou), bool)),
                         ("small", slice(0, 1), small), ("large", slice(1, 2), ~small)):
        c = {k: int(total[k][sel].sum()) for k in keys}
        out[name] = {
            "precision": c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else float("nan"),
            "recall": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan"),
            "mean_iou": float(iou[m].mean()) if m.any() else float("nan"),
            "ignored": c["in_ignore"] / c["objects"] if c["objects"] else float("nan"), **c}
    out["ignored"] = out["overall"]["ignored"]
    return out
