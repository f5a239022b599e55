"""`drivestack relabel`: auto-labels for the frames of snapshots, from the frames alone.

`snapshot_frames` reads a snapshot's frames (its PNGs, or re-rendered by replay when the
snapshot stores only their hashes, every frame checked against its stored SHA-256) and
nothing else; `relabel_snapshot` hands them to the offboard labeler
(`data_engine.autolabel.relabel_clip`). The ground truth (`truth.npz`) is opened only
afterwards, by `quality_against_truth`, for the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from data_engine.autolabel import ClipLabels, frame_tally, quality_of, relabel_clip
from data_engine.clip import (
    TRUTH,
    ClipFormatError,
    boxes_per_frame,
    frame_name,
    image_digest,
    npz_arrays,
    png_image,
    read_clip,
)
from sim.fanout import Fanout, ordered_map


@dataclass
class Relabeled:
    snapshot: str
    labels: ClipLabels
    condition: dict[str, str]
    seed: int | None


def snapshot_frames(snapshot: Any) -> list[np.ndarray]:
    """The clip's frames of a (verified) snapshot: its PNGs, or a replay's frames when it
    stores hashes; each must match its stored SHA-256 (ClipFormatError otherwise)."""
    clip = read_clip(snapshot.read, snapshot.id)
    digests = clip.image_digests
    if clip.doc.get("frames_stored"):
        frames = [png_image(snapshot.read(frame_name(k)), f"{snapshot.id}/{frame_name(k)}")
                  for k in range(clip.n_frames)]
    else:
        from data_engine.replay import replay_clip

        check, frames = replay_clip(snapshot, keep_frames=True)
        if check.error:
            raise ClipFormatError(f"{snapshot.id}: its replay failed ({check.error})")
    bad = [k for k, (f, d) in enumerate(zip(frames, digests, strict=False))
           if image_digest(f) != d]
    if bad or len(frames) != len(digests):
        raise ClipFormatError(f"{snapshot.id}: frame {bad[0] if bad else len(frames)} does "
                              "not match its stored SHA-256")
    return frames


def relabel_snapshot(snapshot: Any, teacher: Any = None, lanes: bool = False,
                     settings: Any = None) -> Relabeled:
    """Auto-labels of one snapshot's frames (never its ground truth)."""
    frames = snapshot_frames(snapshot)
    clip = read_clip(snapshot.read, snapshot.id)
    sc = clip.doc.get("scenario", {})
    labels = relabel_clip(frames, teacher, lanes=lanes, settings=settings)
    return Relabeled(snapshot.id, labels, {k: sc.get(k, "") for k in
                                           ("family", "time_of_day", "weather")},
                     clip.doc.get("scenario_seed"))


@dataclass(frozen=True)
class SnapshotBytes:
    """A verified snapshot's files in memory, to label it where its store is not (a
    Ray worker on another machine): `read` checks each file against the manifest's
    SHA-256 again before handing it out."""

    id: str
    manifest: dict[str, Any]
    files: dict[str, bytes]

    @classmethod
    def of(cls, snapshot: Any, leave_out: tuple[str, ...] = ()) -> SnapshotBytes:
        """Every file of `snapshot` but `leave_out` (the labeler's workers get no ground
        truth when the snapshot stores its frames)."""
        return cls(snapshot.id, snapshot.manifest,
                   {n: snapshot.read(n) for n in snapshot.names if n not in leave_out})

    def read(self, name: str) -> bytes:
        from data_engine.store_format import CorruptSnapshot, Problem

        if name not in self.files:
            raise CorruptSnapshot(self.id, [Problem(self.id, name, "not sent to this worker")])
        data = self.files[name]
        entry = self.manifest["files"].get(name, {})
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CorruptSnapshot(self.id, [Problem(self.id, name, "its SHA-256 does not "
                                                    "match the manifest")])
        return data


def relabel_fanout(snapshots: Iterable[Any], fanout: Fanout, *, lanes: bool = False
                   ) -> Iterator[Relabeled]:
    """`relabel_snapshot` of each snapshot, fanned out (`sim.fanout`: local processes or
    Ray tasks; each worker builds the default teacher once), in the snapshots' order.
    Snapshots that store their frames travel without their ground truth."""
    def sent(snap: Any) -> SnapshotBytes:
        stored = read_clip(snap.read, snap.id).doc.get("frames_stored")
        return SnapshotBytes.of(snap, leave_out=(TRUTH,) if stored else ())

    return ordered_map(_relabel_setup, lanes, _relabel_job, (sent(s) for s in snapshots),
                       fanout)


def _relabel_setup(lanes: bool) -> bool:
    from data_engine.autolabel import default_teacher

    default_teacher(lanes)  # built once per worker (relabel_clip reuses it)
    return lanes


def _relabel_job(lanes: bool, snapshot: SnapshotBytes) -> Relabeled:
    return relabel_snapshot(snapshot, lanes=lanes)


def truth_of(snapshot: Any) -> list[Any]:
    """The snapshot's ground truth per frame, as objects `autolabel.frame_tally` reads
    (boxes_xyxy, class_ids, visible_fraction). For reports only."""
    clip = read_clip(snapshot.read, snapshot.id)
    per = boxes_per_frame(npz_arrays(snapshot.read(TRUTH), TRUTH), "", clip.n_frames,
                          f"{snapshot.id}/{TRUTH}")
    out = []
    for b in per:
        if b is None or b.visible is None:
            raise ClipFormatError(f"{snapshot.id}/{TRUTH}: a frame without ground truth")
        out.append(SimpleNamespace(boxes_xyxy=b.xyxy.astype(np.float32), class_ids=b.classes,
                                   visible_fraction=b.visible))
    return out


def quality_against_truth(snapshot: Any, labels: ClipLabels) -> list[dict[str, Any]]:
    """Frame tallies of `labels` against the snapshot's ground truth (see
    `autolabel.frame_tally`; aggregate with `autolabel.quality_of`)."""
    truth = truth_of(snapshot)
    if len(truth) != len(labels):
        raise ValueError(f"{snapshot.id}: {len(labels)} labelled frames, {len(truth)} truths")
    return [frame_tally(labels.boxes[t], labels.classes[t], labels.scores[t],
                        labels.ignore[t], truth[t]) for t in range(len(labels))]


def online_tallies(snapshot: Any, conf: float = 0.0) -> list[dict[str, Any]]:
    """The same tallies for the online perception stored in the snapshot (what the car
    saw: every box the Perceiver returned; `conf` drops those scored lower): the baseline
    the labeler must beat."""
    from data_engine.clip import PERCEPTION

    clip = read_clip(snapshot.read, snapshot.id)
    seen = boxes_per_frame(npz_arrays(snapshot.read(PERCEPTION), PERCEPTION), "",
                           clip.n_frames, f"{snapshot.id}/{PERCEPTION}")
    truth = truth_of(snapshot)
    out = []
    for s, g in zip(seen, truth, strict=True):
        if s is None:
            continue
        scores = s.scores if s.scores is not None else np.ones(len(s), np.float32)
        k = scores >= conf
        out.append(frame_tally(s.xyxy[k], s.classes[k], scores[k], np.zeros((0, 4)), g))
    return out


def track_examples(snapshot: Any, teacher: Any = None, settings: Any = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `drivestack fit-verifier` learns from (reads the ground truth): the features
    of every track of the snapshot's clip that would become labels without the verifier
    (`verifier.track_features`), and for each the number of its labels that match an
    object (real) and that match none (false), as `label_quality` counts them."""
    from dataclasses import replace

    from data_engine.autolabel import (
        LabelerSettings,
        default_teacher,
        hindsight_labels,
        label_tracks,
    )
    from data_engine.label_quality import label_outcomes
    from data_engine.verifier import FEATURES, track_features

    s = replace(settings or LabelerSettings(), verify=0.0)
    frames = snapshot_frames(snapshot)
    teacher = teacher or default_teacher(lanes=False)
    dets = teacher.detect(frames)
    _, strong = label_tracks(dets, s)
    if not strong:
        return np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0)
    h, w = frames[0].shape[:2]
    camera = getattr(teacher, "camera", None)
    per = hindsight_labels(dets, h, w, s, camera)
    real, false = np.zeros(len(strong)), np.zeros(len(strong))
    for t, truth in enumerate(truth_of(snapshot)):
        outcome, _, _ = label_outcomes(per["boxes"][t], per["classes"][t], per["scores"][t],
                                       per["ignore"][t], truth)
        for tid, o in zip(per["track_ids"][t], outcome, strict=True):
            if o == 1:
                real[tid] += 1
            elif o == 0:
                false[tid] += 1
    feats = np.stack([track_features(tr, frames, s.top_k) for tr in strong])
    return feats, real, false


__all__ = ["Relabeled", "online_tallies", "quality_against_truth", "quality_of",
           "relabel_snapshot", "snapshot_frames", "track_examples", "truth_of"]
