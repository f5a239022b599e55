"""The offboard auto-labeler: tracking with hindsight on a fake teacher's boxes, the
no-ground-truth guarantee on real sim frames, the labels' files, and the quality report."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest

from data_engine.autolabel import (
    ClipLabels,
    LabelerSettings,
    fuse,
    label_quality,
    relabel_clip,
    smooth_lanes,
)
from perception.metrics import box_iou
from perception.perceiver import LaneEstimate
from sim.types import ABSENT, CameraSpec, GroundTruth, LaneLabels

H, W = 192, 320
N = 30


class FakeTeacher:
    """Boxes planted per frame; it never looks at the frames."""

    version = "fake-1"

    def __init__(self, rows: list[np.ndarray]) -> None:
        self.rows = rows

    def detect(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        return [self.rows[t] for t in range(len(frames))]


def _frames(n: int = N) -> list[np.ndarray]:
    return [np.zeros((H, W, 3), np.uint8) for _ in range(n)]


def _car(t: int, score: float = 0.9) -> np.ndarray:
    """A car driving right at 2 px a frame, growing 0.4 px a frame: (1, 6) row."""
    return np.array([[40 + 2 * t, 80, 60 + 2.4 * t, 95 + 0.4 * t, score, 0]], np.float32)


def _rows(per: dict[int, list[np.ndarray]], n: int = N) -> list[np.ndarray]:
    return [np.concatenate(per.get(t, []) or [np.zeros((0, 6), np.float32)]) for t in range(n)]


def _labels(rows: list[np.ndarray], **settings: object) -> ClipLabels:
    return relabel_clip(_frames(len(rows)), FakeTeacher(rows), lanes=False,
                        settings=LabelerSettings(**settings))  # type: ignore[arg-type]


def _best_iou(box: np.ndarray, boxes: np.ndarray) -> float:
    return float(box_iou(box[None], boxes).max()) if len(boxes) else 0.0


def test_gaps_are_interpolated() -> None:
    """A car the teacher misses in frames 10-12 keeps one track; the gap is filled
    along its motion: as ignore regions by default (interpolated boxes were right only
    about half the time), as labels when `label_gap` allows it."""
    missing = {10, 11, 12}
    rows = _rows({t: [_car(t)] for t in range(N) if t not in missing})
    default = _labels(rows)
    for t in missing:
        assert len(default.boxes[t]) == 0
        assert _best_iou(_car(t)[0, :4], default.ignore[t]) > 0.95
    as_labels = _labels(rows, label_gap=3)
    assert {int(i) for t in range(N) for i in as_labels.track_ids[t]} == {0}
    for t in missing:
        assert _best_iou(_car(t)[0, :4], as_labels.boxes[t]) > 0.95
    short = _labels(rows, label_gap=2)  # a gap longer than label_gap stays don't-care
    assert all(len(short.boxes[t]) == 0 for t in missing)


def test_backward_pass_joins_what_forward_cannot() -> None:
    """A fast car seen in frame 0, missed in 1-3, seen from 4 on: in time order its
    first box has no velocity and cannot reach frame 4; the later track run backward
    reaches it, so frame 0 is a label of the same track (the gap: ignore regions)."""
    def fast(t: int) -> np.ndarray:
        return np.array([[40 + 6 * t, 80, 50 + 6 * t, 88, 0.9, 0]], np.float32)

    labels = _labels(_rows({t: [fast(t)] for t in range(N) if t not in (1, 2, 3)}))
    assert labels.track_ids[0].tolist() == labels.track_ids[10].tolist() == [0]
    assert _best_iou(fast(0)[0, :4], labels.boxes[0]) > 0.99
    assert all(_best_iou(fast(t)[0, :4], labels.ignore[t]) > 0.9 for t in (1, 2, 3))


def test_flicker_is_dropped() -> None:
    """A ghost box for 1-2 frames (even at a high score) is neither a label nor an
    ignore region; the real car keeps its labels."""
    ghost = np.array([[200, 40, 230, 60, 0.95, 1]], np.float32)
    rows = _rows({t: [_car(t)] + ([ghost] if t in (20, 21) else []) for t in range(N)})
    labels = _labels(rows)
    for t in (20, 21):
        assert _best_iou(ghost[0, :4], labels.boxes[t]) == 0.0
        assert _best_iou(ghost[0, :4], labels.ignore[t]) == 0.0
    assert all(len(labels.boxes[t]) == 1 for t in range(N))
    kept = _labels(rows, min_track=2, min_ignore_track=1)  # the rule is what drops it
    assert _best_iou(ghost[0, :4], kept.boxes[20]) > 0.99


def _approaching(t: int) -> np.ndarray:
    """A car approaching: 4x3 px at frame 0, growing 1.2x4% a frame, drifting left."""
    k = 1.04 ** t
    cx, cy = 170 - 1.5 * t, 80 + 0.8 * t
    return np.array([cx - 2 * k, cy - 1.5 * k, cx + 2 * k, cy + 1.5 * k])


def test_backward_carry() -> None:
    """An object the teacher sees only from frame 10 on is carried back in time along
    its motion (shrinking) as ignore regions; the frames the teacher saw faintly are
    labels once the confident track reaches back to them (hindsight)."""
    seen = {t: [np.r_[_approaching(t), 0.9, 0][None].astype(np.float32)] for t in range(10, N)}
    labels = _labels(_rows(seen))
    assert all(len(labels.boxes[t]) == 0 for t in range(10))
    carried = [t for t in range(10) if _best_iou(_approaching(t), labels.ignore[t]) > 0.5]
    assert carried == list(range(10 - LabelerSettings().extend, 10))
    as_labels = _labels(_rows(seen), extend_labels=True)
    assert _best_iou(_approaching(5), as_labels.boxes[5]) > 0.5
    faint_score = LabelerSettings().conf + 0.01  # tracked, far below a sure score
    faint = dict(seen) | {t: [np.r_[_approaching(t), faint_score, 0][None].astype(np.float32)]
                          for t in range(10)}
    hindsight = _labels(_rows(faint))
    for t in range(10):
        assert _best_iou(_approaching(t), hindsight.boxes[t]) > 0.99
    alone = _labels(_rows({t: faint[t] for t in range(10)}))  # faint boxes alone: nothing
    assert not any(len(b) for b in alone.boxes)


def test_fuse_is_a_committee() -> None:
    """Views that agree fuse into one box of their weighted mean; a box one view of two
    saw keeps half its score; the class is the one with the most score."""
    a = np.array([[10, 10, 30, 30, 0.8, 0], [100, 10, 120, 30, 0.6, 2]], np.float32)
    b = np.array([[12, 10, 32, 30, 0.4, 1]], np.float32)
    out = fuse([a, b], [1.0, 1.0])
    assert len(out) == 2
    assert out[0, :4] == pytest.approx([10 + 2 / 3, 10, 30 + 2 / 3, 30], abs=1e-4)
    assert out[0, 4] == pytest.approx(0.6) and out[0, 5] == 0
    assert out[1, 4] == pytest.approx(0.3) and out[1, 5] == 2
    assert fuse([a, b], [3.0, 1.0])[0, 4] == pytest.approx(0.7)
    assert fuse([a, b], [1.0, 1.0], agree=0.0)[1, 4] == pytest.approx(0.6)  # no discount


class CameraTeacher(FakeTeacher):
    """A fake teacher that names its camera (for the height check)."""

    camera = CameraSpec()


@pytest.mark.parametrize(("height_m", "margin", "expected"), [
    (3.8, 0.3, 1), (1.6, 0.3, 0), (3.0, 0.3, 0), (3.0, 0.0, 1), (2.6, 0.0, 0)])
def test_height_decides_car_or_truck(height_m: float, margin: float, expected: int) -> None:
    """A track the teacher calls a car but that stands 3.8 m tall on the ground is a
    truck (the teacher's mistake on far trucks in fog); one 1.6 m tall stays a car; one
    3.0 m tall (between the tallest car, 2.2 m, and the lowest truck, 3.4 m) keeps the
    teacher's vote beyond the margin, and with no margin the boundary (2.8 m) decides;
    without a camera nothing is checked."""
    from data_engine.autolabel import LabelerSettings
    from perception.geometry import ground_distance

    foot = np.array([[150.0, 60.0, 170.0, 110.0]])
    h_px = height_m * CameraSpec().focal_px / float(ground_distance(foot, CameraSpec())[0])
    row = np.array([[150, 110 - h_px, 170, 110, 0.9, 0]], np.float32)
    rows = _rows({t: [row] for t in range(N)})
    labels = relabel_clip(_frames(), CameraTeacher(rows), lanes=False,
                          settings=LabelerSettings(height_margin=margin))
    assert {int(c) for c in np.concatenate(labels.classes)} == {expected}
    assert {int(c) for c in np.concatenate(_labels(rows).classes)} == {0}


def test_height_margin_is_checked() -> None:
    from data_engine.autolabel import LabelerSettings

    with pytest.raises(ValueError, match="height_margin"):
        LabelerSettings(height_margin=0.7)


def _gt(boxes: list[list[float]], classes: list[int] | None = None,
        vis: list[float] | None = None) -> GroundTruth:
    n = len(boxes)
    lanes = LaneLabels(rows=np.arange(2), xs=np.zeros((2, 2), np.float32),
                       visible=np.zeros((2, 2), bool), boundary_ids=np.arange(2),
                       marking=np.zeros(2, np.int64), ego_boundaries=(0, 1),
                       painted=np.zeros((2, 2), bool))
    return GroundTruth(boxes_xyxy=np.array(boxes, np.float32).reshape(-1, 4),
                       class_ids=np.array(classes or [0] * n, np.int64), track_ids=np.arange(n),
                       distance=np.ones(n, np.float32),
                       visible_fraction=np.array(vis or [1.0] * n, np.float32),
                       truncation=np.zeros(n, np.float32), occluded=np.zeros(n, bool),
                       lanes=lanes, ego_lane_offset=0.0, ego_heading_error=0.0, ego_lane=0)


def _clip(boxes: list[np.ndarray], classes: list[np.ndarray],
          ignore: list[np.ndarray] | None = None) -> ClipLabels:
    n = len(boxes)
    return ClipLabels(boxes=[np.asarray(b, np.float32).reshape(-1, 4) for b in boxes],
                      classes=[np.asarray(c, np.int64) for c in classes],
                      scores=[np.ones(len(c), np.float32) for c in classes],
                      track_ids=[np.arange(len(c)) for c in classes],
                      ignore=ignore or [np.zeros((0, 4), np.float32)] * n,
                      lanes=[None] * n, labeler="hand")


def test_label_quality_on_crafted_cases() -> None:
    truth = [_gt([[10, 10, 30, 30], [100, 50, 106, 56]]), _gt([[200, 20, 260, 60]])]
    perfect = _clip([t.boxes_xyxy for t in truth], [t.class_ids for t in truth])
    q = label_quality(perfect, truth)
    assert q["overall"]["precision"] == q["overall"]["recall"] == 1.0
    assert q["overall"]["mean_iou"] == pytest.approx(1.0)
    assert q["small"]["objects"] == 1 and q["large"]["objects"] == 2 and q["ignored"] == 0.0
    shifted = _clip([t.boxes_xyxy + [4, 0, 4, 0] for t in truth], [t.class_ids for t in truth])
    qs = label_quality(shifted, truth)["overall"]
    assert qs["recall"] < 1.0 and qs["precision"] < 1.0 and qs["mean_iou"] < 1.0
    wrong_class = _clip([t.boxes_xyxy for t in truth], [t.class_ids + 1 for t in truth])
    assert label_quality(wrong_class, truth)["overall"]["precision"] == 0.0
    # the small object in an ignore region: no miss, but counted as ignored; a label
    # inside a region is no false positive; a label of a too-small object neither
    region = [np.array([[98, 48, 110, 60]], np.float32), np.zeros((0, 4), np.float32)]
    extra = [np.array([[10, 10, 30, 30], [99, 49, 104, 54]]), truth[1].boxes_xyxy]
    qi = label_quality(_clip(extra, [[0, 0], [0]], region), truth)
    assert qi["overall"]["recall"] == 1.0 and qi["overall"]["precision"] == 1.0
    assert qi["ignored"] == pytest.approx(1 / 3)
    tiny = [_gt([[10, 10, 30, 30], [50, 50, 53, 53]])]
    qt = label_quality(_clip([tiny[0].boxes_xyxy], [[0, 0]]), tiny)["overall"]
    assert qt["precision"] == 1.0 and qt["objects"] == 1


def _lane(xs: np.ndarray) -> LaneEstimate:
    return LaneEstimate(rows=np.array([120, 150, 180]), xs=xs.astype(np.float32),
                        scores=np.full(4, 0.9, np.float32), ego_offset=0.0, heading_error=0.0)


def test_labels_round_trip(tmp_path: Path) -> None:
    """JSON + npz (no pickle) give back the same labels, lanes (and frames without) too."""
    rows = _rows({t: [_car(t)] for t in range(N) if t not in (10, 11)})
    labels = _labels(rows)
    xs = np.full((4, 3), ABSENT)
    xs[1], xs[2] = [140, 120, 100], [180, 200, 220]
    labels.lanes[3] = _lane(xs)
    doc, npz = labels.save(tmp_path / "clip")
    assert doc.name == "clip.json" and npz.name == "clip.npz"
    back = ClipLabels.load(tmp_path / "clip")
    assert back.labeler == labels.labeler and len(back) == N
    for name in ("boxes", "classes", "scores", "track_ids", "ignore"):
        for a, b in zip(getattr(labels, name), getattr(back, name), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    assert back.lanes[0] is None and back.lanes[3] is not None
    assert np.array_equal(back.lanes[3].xs, labels.lanes[3].xs)
    with np.load(npz, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
        arrays = {k: z[k] for k in z.files}
    arrays["boxes_count"] = arrays["boxes_count"][:-1]  # one frame short
    np.savez(npz, **arrays)
    with pytest.raises(ValueError, match="clip.json"):
        ClipLabels.load(tmp_path / "clip")


def test_lanes_smoothed_over_time() -> None:
    """A boundary that jitters by +-3 px from frame to frame comes out steadier; where a
    frame sees nothing it stays absent."""
    seq: list[LaneEstimate | None] = []
    for t in range(20):
        xs = np.full((4, 3), ABSENT)
        xs[1] = np.array([140, 120, 100]) + (3 if t % 2 else -3)
        seq.append(_lane(xs))
    seq[7] = None
    out = smooth_lanes(seq, CameraSpec(), 5)
    error = [abs(lane.xs[1, 0] - 140) for lane in out[2:-2] if lane is not None]
    assert out[7] is None and max(error) <= 1.0  # 3 px in every frame before
    assert all((lane.xs[0] == ABSENT).all() for lane in out if lane is not None)


def test_relabel_reads_frames_only() -> None:
    """The labeler's inputs hold no ground truth: its signature takes frames, a teacher,
    settings and a track verifier, and anything but a plain uint8 image is refused."""
    params = set(inspect.signature(relabel_clip).parameters)
    assert params == {"frames", "teacher", "lanes", "settings", "verifier"}
    from sim.types import Frame

    frame = Frame(image=_frames(1)[0], ground_truth=_gt([[1, 1, 9, 9]]), step=0)
    teacher = FakeTeacher(_rows({}))
    with pytest.raises(TypeError, match="frame 0"):
        relabel_clip([frame], teacher)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="frame 0"):
        relabel_clip([_frames(1)[0].astype(np.float32)], teacher)
    with pytest.raises(ValueError, match="label_score"):
        LabelerSettings(label_score=1.5)


def _sim_clip(zero_truth: bool, n: int = 6) -> list[np.ndarray]:
    """Frames of a night highway episode (held-out seed); with `zero_truth` each frame's
    ground truth is wiped in the env before the image is taken."""
    from sim.autopilot import Autopilot
    from sim.config import family_config
    from sim.env import DrivingEnv

    env = DrivingEnv(obs_type="camera", action_type="continuous",
                     scenario=family_config("highway", time_of_day={"night": 1.0}))
    env.reset(seed=900_001)
    pilot = Autopilot()
    frames = []
    for _ in range(n):
        obs, *_ = env.step(pilot.act(env.world))
        assert env.frame is not None
        gt = env.frame.ground_truth
        if zero_truth:
            for name in ("boxes_xyxy", "class_ids", "track_ids", "visible_fraction"):
                getattr(gt, name)[...] = 0
        frames.append(np.array(obs))
    env.close()
    return frames


def test_same_labels_without_ground_truth() -> None:
    """A real sim clip relabelled by the shipped teacher gives the same labels whether
    the ground truth was computed or wiped: the labels come from the pixels."""
    with_truth, wiped = _sim_clip(False), _sim_clip(True)
    a, b = relabel_clip(with_truth, lanes=False), relabel_clip(wiped, lanes=False)
    assert a.labeler == b.labeler and "hindsight" in a.labeler
    assert sum(len(x) for x in a.boxes) > 0
    for name in ("boxes", "classes", "scores", "track_ids", "ignore"):
        for x, y in zip(getattr(a, name), getattr(b, name), strict=True):
            assert np.array_equal(x, y)
