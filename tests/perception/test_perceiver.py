"""Perceiver: shipped weights load with no arguments, typed output, clear input errors,
and ground-plane distances that agree with the simulator's ground truth."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401
from perception.perceiver import Detections, Perceiver, ground_distance
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
        # the box bottom is the nearest visible ground contact: within 15 % + 1 m
        assert np.all(np.abs(est - gt.distance[ok]) < 0.15 * gt.distance[ok] + 1.0), (
            est, gt.distance[ok])
        checked += int(ok.sum())
    assert checked >= 3


def test_ground_distance_hand_case() -> None:
    spec = CameraSpec(width=320, height=192, fov_deg=90.0, pitch_deg=0.0, mount_height=1.5)
    # f = 160; a box bottom 16 px below the centre: ray slope 0.1 -> ground at 15 m
    d = ground_distance(np.array([[150.0, 80.0, 170.0, 112.0]]), spec)
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


def test_shipped_onnx_export_agrees_with_the_pytorch_weights() -> None:
    from perception.detector import DEFAULT_ONNX, DEFAULT_WEIGHTS

    images = [f for f, _ in _frames(3)]
    onnx = Perceiver(weights=DEFAULT_ONNX, device="cpu")(images)
    torch_ = Perceiver(weights=DEFAULT_WEIGHTS, device="cpu", imgsz=320)(images)
    for a, b in zip(onnx, torch_, strict=True):
        # same network; only the letterboxing differs (192x320 vs 320x320 input)
        assert abs(len(a.detections.classes) - len(b.detections.classes)) <= 1
        if len(a.detections.classes) and len(b.detections.classes):
            from perception.metrics import box_iou

            iou = box_iou(a.detections.boxes_xyxy, b.detections.boxes_xyxy)
            assert iou.max(axis=1).mean() > 0.8


def test_default_perceiver_on_cpu_uses_the_onnx_export() -> None:
    p = Perceiver(device="cpu")
    assert p.weights.suffix == ".onnx" and p.imgsz == (192, 320)
    big = Perceiver(device="cpu", camera=CameraSpec(width=640, height=384))
    assert big.weights.suffix == ".pt", "an export of another size cannot serve this camera"
