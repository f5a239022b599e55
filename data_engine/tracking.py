"""Offline tracking of the auto-labeler: a clip's teacher boxes linked into tracks over
the whole clip, forward and backward in time (`data_engine.autolabel.hindsight_labels`
turns the tracks into labels and ignore regions).

Boxes are linked frame to frame in time order (`link`: Hungarian matching of padded IoU
against a constant-velocity prediction, confident boxes first, as ByteTrack), then the
tracklets are joined against time too (`stitch`: a track's motion run backward reaches a
tracklet before its gap), so a track found late (a far car seen once near) reaches back to
where the teacher saw it only faintly: those faint boxes become labels (the hindsight
advantage). A track is filled over its gaps (`fill`) and carried past its ends (`carry`);
its class is checked against its height on the ground (`vehicle_class`: a far truck in
fog is no car).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

from perception.metrics import box_iou
from sim.types import CameraSpec

if TYPE_CHECKING:
    from data_engine.autolabel import LabelerSettings


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


def vehicle_heights() -> tuple[float, float]:
    """The tallest car's and the lowest truck's height of the world's bodies [m]."""
    from sim.types import CAR, TRUCK
    from sim.world.actors import BODY_SHAPES, SHAPE_SIZE

    return (max(SHAPE_SIZE[name][2] for name in BODY_SHAPES[CAR]),
            min(SHAPE_SIZE[name][2] for name in BODY_SHAPES[TRUCK]))


def vehicle_boundary() -> float:
    """Height between the tallest car and the lowest truck of the world's bodies [m]."""
    car, truck = vehicle_heights()
    return (car + truck) / 2


def vehicle_class(track: Track, cls: int, camera: CameraSpec, min_px: float,
                  margin: float = 0.0) -> int:
    """A car or truck vote checked against the track's height [m] on the flat ground (box
    height x distance of its foot / focal length, the median over frames where boxes are
    at least `min_px` tall): a truck when it stands above the lowest truck less `margin`,
    a car when below the tallest car plus `margin`, else the vote (`margin` 0: the
    boundary between them decides every track; the teacher mistakes far trucks for cars
    in fog, and the estimate errs for vans, occluded feet and slopes). Other classes and
    unsure tracks keep `cls`."""
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
    car, truck = vehicle_heights()
    if margin == 0.0:
        return TRUCK if height > vehicle_boundary() else CAR
    if height > truck - margin:
        return TRUCK
    if height < car + margin:
        return CAR
    return cls
