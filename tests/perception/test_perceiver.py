"""Perceiver: shipped weights load with no arguments, typed output, clear input errors,
and ground-plane distances that agree with the simulator's ground truth."""

from __future__ import annotations

from pathlib import Path

import cv2
import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401
from perception.geometry import ground_distance
from perception.metrics import box_iou
from perception.perceiver import Detections, Perceiver
from sim.autopilot import Autopilot
from sim.types import CameraSpec

pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def perceiver(tmp_path_factory: pytest.TempPathFactory) -> Perceiver:
    import os

    os.environ.setdefault("DRIVESTACK_CACHE", str(tmp_path_factory.mktemp("cache")))
    return Perceiver(device="cpu")


def _frames(n: int) -> list[tuple[np.ndarray, object]]:
    env = gym.make("drivestack/Highway-v0", scenario=sim.family_config(
        "highway", time_of_day={"day": 1}, weather={"clear": 1})).unwrapped
    env.reset(seed=3)
    pilot, out = Autopilot(), []
    for step in range(1, 20 * n + 1):
        env.step(pilot.act(env.world))
        if step % 20 == 0:
            out.append((env.frame.image.copy(), env.frame.ground_truth))
    return out


def _found(reference: list, other: list) -> tuple[int, int]:
    """(boxes of `reference` that `other` finds at IoU >= 0.7, boxes of `reference`)."""
    found = total = 0
    for a, b in zip(reference, other, strict=True):
        total += len(a.detections.classes)
        if len(a.detections.classes) and len(b.detections.classes):
            iou = box_iou(a.detections.boxes_xyxy, b.detections.boxes_xyxy)
            found += int((iou.max(axis=1) >= 0.7).sum())
    return found, total


def test_shipped_weights_detect_cars_in_a_clear_day_frame(perceiver: Perceiver) -> None:
    frames = _frames(3)
    results = perceiver([f for f, _ in frames])
    assert len(results) == 3
    found = 0
    for p in results:
        d = p.detections
        assert isinstance(d, Detections) and d.boxes_xyxy.shape[1] == 4
        assert d.boxes_xyxy.dtype == np.float32 and d.classes.dtype == np.int64
        assert d.scores.shape == d.classes.shape == d.distance.shape
        assert p.latency_ms > 0
        found += len(d.classes)
    assert found > 0, "the baseline detector finds something on a clear highway"


def test_ground_distance_matches_ground_truth_for_clear_views() -> None:
    spec = CameraSpec()
    checked = 0
    for _, gt in _frames(4):
        ok = (gt.visible_fraction > 0.95) & (gt.truncation == 0) & (gt.distance < 50) & (
            gt.class_ids <= 1)  # cars and trucks stand on the road
        est = ground_distance(gt.boxes_xyxy[ok], spec)
        # the box bottom is the nearest visible ground contact: within 10 % + 0.5 m
        assert np.all(np.abs(est - gt.distance[ok]) < 0.10 * gt.distance[ok] + 0.5), (
            est, gt.distance[ok])
        checked += int(ok.sum())
    assert checked >= 3


def test_ground_distance_hand_case() -> None:
    spec = CameraSpec(width=320, height=192, fov_deg=90.0, pitch_deg=0.0, mount_height=1.5)
    # f = 160; lowest object row (y1 - 1: exclusive max corner) 16 px below the centre:
    # ray slope 0.1 -> ground at 15 m
    d = ground_distance(np.array([[150.0, 80.0, 171.0, 113.0]]), spec)
    assert d[0] == pytest.approx(15.0, rel=1e-6)
    above = ground_distance(np.array([[150.0, 10.0, 170.0, 90.0]]), spec)
    assert np.isinf(above[0])


@pytest.mark.parametrize("bad", [
    [np.zeros((96, 160, 3), np.uint8)], [np.zeros((192, 320, 3), np.float32)],
    [np.zeros((192, 320), np.uint8)],
])
def test_wrong_frames_are_one_clear_error(perceiver: Perceiver, bad: list) -> None:
    with pytest.raises(ValueError, match="expected uint8 RGB of shape"):
        perceiver(bad)


def test_single_frame_must_come_as_a_batch(perceiver: Perceiver) -> None:
    with pytest.raises(ValueError, match="pass a batch"):
        perceiver(np.zeros((192, 320, 3), np.uint8))


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="drivestack train-perception"):
        Perceiver(weights=tmp_path / "none.pt")
    with pytest.raises(FileNotFoundError, match="refiner weights .*none.pt not found"):
        Perceiver(device="cpu", lanes=False, refiner_weights=tmp_path / "none.pt")


def test_refiner_puts_boxes_on_whole_pixels(perceiver: Perceiver) -> None:
    images = [f for f, _ in _frames(2)]
    refined = perceiver(images)
    plain = Perceiver(device="cpu", refine=False)(images)
    n = 0
    for r, p in zip(refined, plain, strict=True):
        b = r.detections.boxes_xyxy
        assert np.array_equal(b, np.round(b))  # refined or rounded: pixel boxes
        # it moves boxes (and merges twins of one object), it does not invent any
        assert 0 < len(b) <= len(p.detections.boxes_xyxy)
        assert (box_iou(b, p.detections.boxes_xyxy).max(1) >= 0.3).all()
        assert r.detections.scores.max() <= p.detections.scores.max() + 1e-6
        n += len(b)
    assert n > 0


def test_shipped_onnx_export_agrees_with_the_pytorch_weights() -> None:
    from perception.detector import DEFAULT_WEIGHTS, cached_onnx

    images = [f for f, _ in _frames(3)]
    onnx = Perceiver(weights=cached_onnx(DEFAULT_WEIGHTS, 192, 320), device="cpu")(images)
    torch_ = Perceiver(weights=DEFAULT_WEIGHTS, device="cpu")(images)
    for a, b in zip(onnx, torch_, strict=True):
        # same network at the same input size (ultralytics' predict; our raw ONNX path)
        assert abs(len(a.detections.classes) - len(b.detections.classes)) <= 1
        if len(a.detections.classes) and len(b.detections.classes):
            from perception.metrics import box_iou

            iou = box_iou(a.detections.boxes_xyxy, b.detections.boxes_xyxy)
            assert iou.max(axis=1).mean() > 0.8


def test_default_perceiver_on_cpu_uses_the_onnx_export() -> None:
    p = Perceiver(device="cpu")
    from perception.detector import DEFAULT_WEIGHTS, network_input, trained_imgsz

    assert p.weights.suffix == ".onnx"
    assert p.imgsz == network_input(192, 320, trained_imgsz(DEFAULT_WEIGHTS))
    big = Perceiver(device="cpu", camera=CameraSpec(width=640, height=384))
    assert big.weights.suffix == ".onnx" and big.imgsz == p.imgsz, "its own export"
    odd = Perceiver(device="cpu", camera=CameraSpec(width=336, height=200), lanes=False)
    assert odd.weights.suffix == ".pt", "a frame that scales to 320x190 needs a letterbox"
    # the lane model runs at its size and its rows / x scale back to the camera's
    frame = cv2.resize(_frames(1)[0][0], (640, 384), interpolation=cv2.INTER_LINEAR)
    lanes = big([frame])[0].lanes
    assert lanes is not None and lanes.rows.max() > 192 and lanes.xs.max() > 320
    with pytest.raises(ValueError, match="aspect ratio"):
        Perceiver(device="cpu", camera=CameraSpec(width=320, height=320))


def test_shipped_lane_model_finds_the_ego_lane(perceiver: Perceiver) -> None:
    """On clear-day highway frames the shipped lane model returns the ego lane's two
    boundaries near the labelled ones, and an ego offset / heading close to the sim's."""
    from perception.lanes import EGO_LEFT, EGO_RIGHT, slot_targets
    from perception.perceiver import LaneEstimate
    from sim.types import ABSENT

    frames = _frames(4)
    results = perceiver([f for f, _ in frames])
    for p, (_, gt) in zip(results, frames, strict=True):
        lanes = p.lanes
        assert isinstance(lanes, LaneEstimate) and lanes.xs.shape == (4, len(lanes.rows))
        truth = slot_targets({
            "h_samples": gt.lanes.rows.tolist(),
            "lanes": np.where(gt.lanes.visible, gt.lanes.xs, ABSENT).tolist(),
            "boundary_ids": gt.lanes.boundary_ids.tolist(),
            "ego_boundaries": list(gt.lanes.ego_boundaries)})
        for slot in (EGO_LEFT, EGO_RIGHT):
            both = (lanes.xs[slot] != ABSENT) & (truth[slot] != ABSENT)
            assert both.sum() >= 5
            assert np.median(np.abs(lanes.xs[slot][both] - truth[slot][both])) < 3.0
        assert lanes.ego_offset == pytest.approx(gt.ego_lane_offset, abs=0.3)
        assert lanes.heading_error == pytest.approx(gt.ego_heading_error, abs=0.05)


def test_missing_lane_weights_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="lane weights .* not found"):
        Perceiver(lane_weights=tmp_path / "none.pt", device="cpu")
    assert Perceiver(device="cpu", lanes=False)([_frames(1)[0][0]])[0].lanes is None


@pytest.mark.parametrize(("suffix", "scale"), [(".onnx", 1), (".pt", 1), (".onnx", 2),
                                               (".pt", 2)])
def test_raw_detector_matches_ultralytics_predict(suffix: str, scale: int) -> None:
    """Our batched path (no letterbox, one batched NMS) gives ultralytics' boxes on the
    same weights at the size they were trained at; frames of another size (scale 2: a
    640x384 camera) are resized to it, as ultralytics' letterbox does, and the boxes
    scaled back."""
    from ultralytics import YOLO

    from perception.detector import DEFAULT_WEIGHTS, cached_onnx, network_input, trained_imgsz
    from perception.metrics import box_iou
    from perception.raw_detector import RawDetector

    weights = cached_onnx(DEFAULT_WEIGHTS, 192 * scale, 320 * scale) if suffix == ".onnx" \
        else DEFAULT_WEIGHTS
    images = [cv2.resize(f, (320 * scale, 192 * scale), interpolation=cv2.INTER_LINEAR)
              for f, _ in _frames(4)]
    raw = RawDetector(weights, "cpu", 192 * scale, 320 * scale, conf=0.25)
    imgsz = trained_imgsz(DEFAULT_WEIGHTS)
    assert raw.input_hw == network_input(192, 320, imgsz)
    assert raw.scale == pytest.approx(imgsz / (320 * scale))
    ours = raw(images)
    theirs = YOLO(str(weights), task="detect").predict([f[..., ::-1] for f in images],
                                                       imgsz=raw.input_hw, conf=0.25,
                                                       device="cpu", verbose=False)
    total = 0
    for d, r in zip(ours, theirs, strict=True):
        ref = np.asarray(r.boxes.xyxy.cpu(), np.float32).reshape(-1, 4)
        assert len(d) == len(ref)
        total += len(d)
        if len(d):
            assert d[:, [0, 2]].max() <= 320 * scale and d[:, [1, 3]].max() <= 192 * scale
            iou = box_iou(d[:, :4], ref)
            assert iou.max(axis=1).min() > 0.99
            assert set(d[:, 5].astype(int)) == set(np.asarray(r.boxes.cls.cpu()).astype(int))
            assert (np.diff(d[:, 4]) <= 0).all(), "by falling score"
    assert total >= 4, "the frames hold objects"


def test_raw_detector_refuses_what_it_cannot_run() -> None:
    from perception.detector import DEFAULT_WEIGHTS, cached_onnx
    from perception.raw_detector import RawDetector

    onnx = cached_onnx(DEFAULT_WEIGHTS, 192, 320)
    with pytest.raises(ValueError, match="by one factor"):
        RawDetector(onnx, "cpu", 200, 320)
    with pytest.raises(ValueError, match="by one factor"):
        RawDetector(onnx, "cpu", 256, 320)
    with pytest.raises(ValueError, match="CPU"):
        RawDetector(onnx, "0", 192, 320)
    with pytest.raises(ValueError, match="PyTorch path"):
        RawDetector(onnx, "cpu", 192, 320).upload([np.zeros((192, 320, 3), np.uint8)])


def test_fast_detector_runs_at_its_own_size() -> None:
    from perception.detector import FAST_WEIGHTS, cached_onnx, trained_imgsz

    assert trained_imgsz(FAST_WEIGHTS) == 320
    fast = Perceiver(weights=cached_onnx(FAST_WEIGHTS, 192, 320), device="cpu", lanes=False)
    assert fast.imgsz == (192, 320)
    frame = _frames(1)[0][0]
    assert len(fast([frame])[0].detections.classes) > 0


def test_cached_detector_export_is_made_once_and_again_when_broken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path))
    first = Perceiver(device="cpu", lanes=False)
    [made] = (tmp_path / "detector_onnx").glob("*.onnx")
    assert first.weights == made and made.stat().st_size > 1_000_000
    stamp = made.stat().st_mtime_ns
    assert Perceiver(device="cpu", lanes=False).weights == made
    assert made.stat().st_mtime_ns == stamp, "the second Perceiver reuses the export"
    made.write_bytes(b"cut short")
    again = Perceiver(device="cpu", lanes=False)
    assert again.weights == made and made.stat().st_size > 1_000_000
    frame = _frames(1)[0][0]
    assert len(again([frame])[0].detections.classes) == len(first([frame])[0].detections.classes)
    assert list((tmp_path / "detector_onnx").iterdir()) == [made], "no temporary files left"


def test_int8_detector_finds_what_the_float_one_finds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perception.detector import DEFAULT_WEIGHTS

    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path))
    images = [f for f, _ in _frames(4)]
    full = Perceiver(device="cpu", lanes=False)(images)
    q = Perceiver(device="cpu", lanes=False, int8=True)
    assert q.weights.name.endswith("-int8.onnx") and q.weights.stat().st_size < 5_000_000
    found, total = _found(full, q(images))
    assert total >= 4 and found >= 0.8 * total
    with pytest.raises(ValueError, match="int8"):
        Perceiver(weights=DEFAULT_WEIGHTS, device="cpu", int8=True)


def test_default_perceiver_on_cpu_runs_the_raw_onnx_path() -> None:
    p = Perceiver(device="cpu")
    assert p.raw is not None and p.raw.session is not None and p.model is None
    out = p([f for f, _ in _frames(2)])
    assert all(o.detections.boxes_xyxy.dtype == np.float32 for o in out)


def test_openvino_and_onnxruntime_perceivers_agree() -> None:
    pytest.importorskip("openvino")
    images = [f for f, _ in _frames(3)]
    ov = Perceiver(device="cpu", cpu_runtime="openvino")
    ort = Perceiver(device="cpu", cpu_runtime="onnxruntime")
    auto = Perceiver(device="cpu")
    assert ov.runtimes == {"detector": "openvino", "refiner": "openvino", "lanes": "openvino"}
    assert set(ort.runtimes.values()) == {"onnxruntime"}
    # auto: OpenVINO for the detector and lanes, ONNX Runtime for the refiner's few patches
    assert auto.runtimes == {"detector": "openvino", "refiner": "onnxruntime",
                             "lanes": "openvino"}
    boxes = 0
    for a, b in zip(ov(images), ort(images), strict=True):
        assert np.array_equal(a.detections.classes, b.detections.classes)
        assert np.allclose(a.detections.boxes_xyxy, b.detections.boxes_xyxy, atol=1e-3)
        assert np.allclose(a.detections.scores, b.detections.scores, atol=1e-4)
        assert np.allclose(a.lanes.xs, b.lanes.xs, atol=1e-2)
        boxes += len(a.detections.classes)
    assert boxes > 0
    with pytest.raises(ValueError, match="cpu_runtime='gpu'; allowed"):
        Perceiver(device="cpu", cpu_runtime="gpu")


def test_bf16_perceiver_finds_what_the_float_one_finds() -> None:
    pytest.importorskip("openvino")
    from perception.detector import DEFAULT_WEIGHTS

    images = [f for f, _ in _frames(4)]
    f32 = Perceiver(device="cpu", lanes=False)(images)
    fast = Perceiver(device="cpu", lanes=False, bf16=True)
    assert fast.raw.session.precision in ("bf16", "f32")
    found, total = _found(f32, fast(images))
    assert total >= 4 and found >= 0.8 * total
    with pytest.raises(ValueError, match="not with int8"):
        Perceiver(device="cpu", bf16=True, int8=True)
    with pytest.raises(ValueError, match="bf16 needs the detector as an ONNX export"):
        Perceiver(weights=DEFAULT_WEIGHTS, device="cpu", lanes=False, bf16=True)
