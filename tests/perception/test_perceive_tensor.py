"""`Perceiver.perceive_tensor` (issue 17): a batch of frames as a torch tensor (the device
camera's output) is perceived as the same frames passed as arrays, on the path that keeps
them on the device and on the fallback through the host."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.detector import DEFAULT_WEIGHTS
from perception.perceiver import Perceiver
from perception.raw_detector import RawDetector
from sim.config import family_config, sample_scenario
from sim.render.device import DeviceCamera
from sim.types import CameraSpec
from sim.world.batch import BatchWorld


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    scenarios = [sample_scenario(family_config(f), s) for f, s in
                 (("highway", 1), ("urban", 2), ("rural", 4), ("urban", 12))]
    batch = BatchWorld(scenarios)
    for _ in range(20):
        batch.step(np.zeros(len(scenarios)), np.full(len(scenarios), 0.5))
    return DeviceCamera(CameraSpec(), len(scenarios), "cpu").render(batch).images.clone()


def _same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.detections.boxes_xyxy, q.detections.boxes_xyxy)
        np.testing.assert_array_equal(p.detections.classes, q.detections.classes)
        np.testing.assert_allclose(p.detections.scores, q.detections.scores, rtol=0, atol=0)
        np.testing.assert_array_equal(p.lanes.xs, q.lanes.xs)
        assert p.lanes.ego_offset == q.lanes.ego_offset


def test_the_tensor_path_perceives_as_the_array_path(frames: torch.Tensor) -> None:
    p = Perceiver(device="cpu", refine=False, lane_backend="torch")
    # the PyTorch detector on the CPU: the path a GPU takes, here on host tensors
    p.raw = RawDetector(DEFAULT_WEIGHTS, "cpu", 192, 320, conf=p.conf)
    assert p.tensor_path(frames)
    got = p.perceive_tensor(frames)
    _same(got, p(list(frames.numpy())))
    assert sum(len(x.detections.boxes_xyxy) for x in got) > 5, "frames with objects"


def test_other_perceivers_read_the_tensor_through_the_host(frames: torch.Tensor) -> None:
    p = Perceiver(device="cpu")  # ONNX detector, refiner, ONNX lanes
    assert not p.tensor_path(frames)
    _same(p.perceive_tensor(frames), p(list(frames.numpy())))


def test_perceive_tensor_refuses_other_shapes_and_types(frames: torch.Tensor) -> None:
    p = Perceiver(device="cpu", refine=False)
    with pytest.raises(ValueError, match=r"uint8 torch tensor of shape \(B, 192, 320, 3\)"):
        p.perceive_tensor(frames.float())
    with pytest.raises(ValueError, match=r"got torch.uint8 tensor of shape \(4, 96, 320, 3\)"):
        p.perceive_tensor(frames[:, :96])
    with pytest.raises(ValueError, match="got"):
        p.perceive_tensor(frames.numpy())
