"""The offboard auto-labeler: camera frames of a clip in, labels out, with hindsight.

It never reads ground truth: `relabel_clip` takes the frames of one clip (uint8 RGB, in
time order) and nothing else, and may be slower than the online Perceiver. Its steps:

1. A teacher (`data_engine.teacher`: `Teacher`, pluggable; default `EnsembleTeacher`, a
   committee of the shipped detectors on the frame and the main one at a larger scale,
   fused by weighted box fusion, then the box refiner) finds boxes in every frame at a
   low confidence.
2. Offline tracking over the whole clip (`data_engine.tracking`): boxes are linked frame
   to frame in time order (`link`), then the tracklets are joined against time too
   (`stitch`), so a track found late reaches back to where the teacher saw it only
   faintly: those faint boxes become labels (the hindsight advantage). A track is labels
   when its best boxes are confident (`label_score`) for `min_track` frames, or when it
   is long (`long_track`); shorter, flickering ones are dropped. Its class is voted over
   the track and checked against its height on the ground (`vehicle_class`: a far truck
   in fog is no car).
3. A learned track verifier (`data_engine.verifier`, fitted on clips of seeds of their
   own by `drivestack fit-verifier`) reads each such track's scores, length, size, place
   and brightness; a track it doubts (`verify`) becomes ignore regions, not labels: at
   night the detectors hold some hedges and building corners for vehicles over whole
   clips.
4. What the labeler is unsure of becomes an ignore (don't-care) region, never a guessed
   label: the gaps of a track (interpolated along it), the faint boxes of a long weak
   track, the tracks with some evidence but not enough, and each track carried
   `extend` frames past its ends (backward in time to where it was too far or too dark
   to detect, forward to where it faded).
5. Lanes from the teacher's lane model, smoothed over time per slot and row
   (`smooth_lanes`).

    labels = relabel_clip(frames)                  # default EnsembleTeacher
    labels.boxes[t], labels.classes[t], labels.ignore[t], labels.lanes[t]
    labels.save(Path("out/clip_0007"))             # clip_0007.json + clip_0007.npz
    label_quality(labels, ground_truths)           # the report only: reads ground truth
                                                   # (data_engine.label_quality)

The settings (`LabelerSettings`) were chosen on 36 clips of seeds held out from training
(900000-901023, day, night, fog, rain) and checked on 12 fresh ones (903000-903023):
bench/relabel_quality.py. Speed: bench/relabel_speed.py.

The teacher's, the tracker's and the quality report's public names are importable from
here as well.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_engine.label_quality import COVER as COVER
from data_engine.label_quality import MATCH_IOU as MATCH_IOU
from data_engine.label_quality import SMALL_SIDE as SMALL_SIDE
from data_engine.label_quality import frame_tally as frame_tally
from data_engine.label_quality import label_quality as label_quality
from data_engine.label_quality import quality_of as quality_of
from data_engine.teacher import EnsembleTeacher as EnsembleTeacher
from data_engine.teacher import LaneTeacher as LaneTeacher
from data_engine.teacher import Teacher as Teacher
from data_engine.teacher import View as View
from data_engine.teacher import default_views as default_views
from data_engine.teacher import fuse as fuse
from data_engine.teacher import mirror_rows as mirror_rows
from data_engine.teacher import onnx_at_size as onnx_at_size
from data_engine.teacher import sha_prefix as sha_prefix
from data_engine.tracking import Track as Track
from data_engine.tracking import carry as carry
from data_engine.tracking import fill as fill
from data_engine.tracking import link as link
from data_engine.tracking import stitch as stitch
from data_engine.tracking import vehicle_boundary as vehicle_boundary
from data_engine.tracking import vehicle_class as vehicle_class
from data_engine.tracking import vehicle_heights
from data_engine.verifier import TrackVerifier, default_verifier, track_features
from perception.metrics import box_iou
from perception.perceiver import LaneEstimate
from sim.outputs import atomic_write, atomic_write_text, json_text
from sim.types import ABSENT, CLASS_NAMES, CameraSpec, check_number

ALGORITHM = "hindsight-1"
"""Version of the labeling algorithm (part of every `ClipLabels.labeler`)."""
_PER_FRAME = {"boxes": (np.float32, (4,)), "classes": (np.int64, ()),
              "scores": (np.float32, ()), "track_ids": (np.int64, ()),
              "ignore": (np.float32, (4,))}
"""Per-frame arrays of `ClipLabels`: dtype and shape of a row."""


@dataclass(frozen=True)
class LabelerSettings:
    """How the labeler decides; part of the labeler's version string (`digest`)."""

    conf: float = 0.06
    """Lowest fused teacher score a box may have to take part in tracking (0.02 until
    2026-12-06: the boxes between linked ghosts into tracks; on turn 4's random clips
    0.05 took precision 0.924 -> 0.950 and the ignored share 10.5 % -> 7.4 %; checked on
    turn 4's mined clips: 0.911 -> 0.940, ignored 11.4 % -> 10.1 %. 0.06 since session 8,
    with the teacher's 640 px view: see `teacher.default_views`)."""
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
    height_margin: float = 0.3
    """The height check overrules the vote only beyond the tallest car + this or below
    the lowest truck - this [m] (0: the boundary between them decides; on turn 4's
    random clips 0.3 took precision 0.924 -> 0.933, no check 0.930; on its mined clips,
    with `conf` 0.05, 0.940 against 0.931 and 0.937)."""
    min_height_px: float = 8.0
    """Boxes at least this tall count in the height check (a pixel is then at most 12 %
    of the height); a track needs half its boxes (and 3) that tall [px]."""
    smooth: int = 1
    """Window of the smoothing over time of the boxes the teacher is not sure of (score
    below `high`) and the interpolated ones [frames] (Savitzky-Golay of order 2, so 3 or
    less: none). Off: the refiner puts boxes on whole pixels, and smoothing them over 5 or 7
    frames lowered the mean IoU by 0.003 (bench/relabel_quality.py)."""
    verify: float = 0.5
    """A track that would be labels becomes ignore regions when the track verifier
    (`data_engine.verifier`) gives it less than this probability of being a real object
    (0: no verifier). Chosen on turn 8's 78 random clips (0.6 and 0.7 put 9.6 and 9.9 %
    of the objects under ignore regions, near the 10 % bound), checked once on its 90
    mined clips: precision / recall / ignored 0.929 / 0.757 / 8.5 % -> 0.955 / 0.761 /
    9.6 % (docs/data_engine.md, "The track verifier")."""
    lane_window: int = 3
    """Window of the lanes' smoothing over time [frames] (1: none). On 8 clips TuSimple
    accuracy against the ground truth stayed within 0.001 for windows 1 to 5 (lanes
    barely jitter at 15 fps) and fell by 0.015 in rain at 9."""

    def __post_init__(self) -> None:
        for name in ("conf", "high", "link_iou", "label_score", "long_score", "box_score",
                     "ignore_score", "verify"):
            check_number(name, getattr(self, name), 0.0, 1.0)
        check_number("pad", self.pad, 0.0, 100.0, unit="px")
        for name, hi in (("max_gap", 1000), ("min_track", 1000), ("long_track", 100_000),
                         ("label_gap", 1000), ("min_ignore_track", 1000), ("top_k", 1000),
                         ("extend", 1000), ("smooth", 1001), ("lane_window", 1001)):
            check_number(name, getattr(self, name), 0 if name != "top_k" else 1, hi,
                         integer=True)
        check_number("min_height_px", self.min_height_px, 0.0, 10_000.0, unit="px")
        car, truck = vehicle_heights()
        check_number("height_margin", self.height_margin, 0.0, (truck - car) / 2, unit="m")
        for name in ("extend_labels", "height_check"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def digest(self) -> str:
        """First 8 hex digits of the SHA-256 of the settings as JSON."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()
                              ).hexdigest()[:8]


# ---------------------------------------------------------------- labels of the tracks


Label = tuple[np.ndarray, int, float, int]
"""One label while a clip is labelled: box, class, score, track id."""


def hindsight_labels(dets: Sequence[np.ndarray], height: int, width: int,
                     s: LabelerSettings, camera: CameraSpec | None = None,
                     frames: Sequence[np.ndarray] | None = None,
                     verifier: TrackVerifier | None = None) -> dict[str, list[np.ndarray]]:
    """Labels of a clip from its teacher boxes (per frame (N, 6)) alone: per frame
    "boxes", "classes", "scores", "track_ids" and "ignore" (see `ClipLabels`). `camera`:
    for the height check (`vehicle_class`); none without it. `verifier` (with the clip's
    `frames`): a track it doubts (below `s.verify`) becomes ignore regions."""
    n = len(dets)
    tracks, strong = label_tracks(dets, s)
    labels: list[list[Label]] = [[] for _ in range(n)]
    ignore: list[list[np.ndarray]] = [[] for _ in range(n)]
    real = np.ones(len(strong), bool)
    if verifier is not None and s.verify > 0 and strong:
        if frames is None or len(frames) != n:
            raise ValueError("the track verifier needs the clip's frames, one per "
                             "detection array")
        p = verifier(np.stack([track_features(tr, frames, s.top_k) for tr in strong]))
        real = p >= s.verify
    for tid, tr in enumerate(strong):
        score = tr.evidence(s.top_k)
        cls = int(np.bincount(tr.classes, tr.scores, minlength=len(CLASS_NAMES)).argmax())
        if s.height_check and camera is not None:
            cls = vehicle_class(tr, cls, camera, s.min_height_px, s.height_margin)
        sure = score >= s.label_score and len(tr.frames) >= s.min_track
        f = fill(tr, s.smooth, s.high)
        for t, b, seen, gap in zip(f["frames"], f["boxes"], f["score"], f["gap"],
                                   strict=True):
            if not real[tid]:
                ignore[t].append(b)
            elif (gap == 0 and (sure or seen >= s.box_score)) or (sure and 0 < gap <= s.label_gap):
                labels[t].append((b, cls, score, tid))
            else:
                ignore[t].append(b)
        for t, b in zip(*carry(tr, n, s.extend, height, width), strict=True):
            if s.extend_labels and real[tid]:
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


def label_tracks(dets: Sequence[np.ndarray], s: LabelerSettings
                 ) -> tuple[list[Track], list[Track]]:
    """A clip's tracks, and those that become labels (unless the verifier doubts them) in
    the order of their track ids (`hindsight_labels`)."""
    tracks = stitch(link(dets, s), s)
    strong = sorted((tr for tr in tracks if _strong(tr, s)),
                    key=lambda tr: (int(tr.frames[0]), -tr.evidence(s.top_k)))
    return tracks, strong


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


def default_teacher(lanes: bool) -> EnsembleTeacher:
    """The default teacher of this process, with or without lanes."""
    if lanes not in _DEFAULT_TEACHERS:
        _DEFAULT_TEACHERS[lanes] = EnsembleTeacher(lanes=lanes)
    return _DEFAULT_TEACHERS[lanes]


def labeler_name(teacher: Teacher, settings: LabelerSettings | None = None,
                 verifier: TrackVerifier | None = None) -> str:
    """What `relabel_clip` writes as `ClipLabels.labeler` for this teacher, settings and
    verifier (default: the shipped one, when `settings.verify` > 0): labels whose labeler
    differs were made by another teacher, algorithm, settings or verifier."""
    s = settings or LabelerSettings()
    name = f"{teacher.version};{ALGORITHM};settings:{s.digest()}"
    if s.verify > 0:
        name += f";verifier:{(verifier or default_verifier()).version}"
    return name


def relabel_clip(frames: Sequence[np.ndarray], teacher: Teacher | None = None,
                 lanes: bool = True, settings: LabelerSettings | None = None,
                 verifier: TrackVerifier | None = None) -> ClipLabels:
    """Auto-labels of a clip's frames (uint8 RGB (H, W, 3), in time order at the sim's
    rate) from the frames alone. `teacher`: default an `EnsembleTeacher` (built once per
    process); `lanes`: lane estimates too, when the teacher sees lanes (`LaneTeacher`).
    The height check of cars and trucks uses the teacher's `camera` when it has one.
    `verifier`: the track verifier (default the shipped one; `settings.verify` 0: none)."""
    batch = check_frames(frames)
    s = settings or LabelerSettings()
    if s.verify > 0 and verifier is None:
        verifier = default_verifier()
    if teacher is None:
        teacher = default_teacher(lanes)
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
    per = hindsight_labels(dets, h, w, s, camera if isinstance(camera, CameraSpec) else None,
                           batch, verifier if s.verify > 0 else None)
    return ClipLabels(**per, lanes=found, labeler=labeler_name(teacher, s, verifier))
