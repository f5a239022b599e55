"""The lane model on ONNX Runtime: same lanes as PyTorch, a local export made once and
made again when the cached file is broken."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401
from perception.lane_onnx import OnnxLanes, cached_export
from perception.lanes import DEFAULT_LANE_WEIGHTS
from perception.perceiver import Perceiver


@pytest.fixture()
def frames() -> list[np.ndarray]:
    env = gym.make("drivestack/Urban-v0")
    env.reset(seed=2)
    out = []
    for _ in range(6):
        obs, *_ = env.step(np.array([0.0, 0.2], np.float32))
        out.append(obs)
    return out


def test_onnx_lanes_equal_torch_lanes(frames: list[np.ndarray], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path))
    fast, ref = Perceiver(device="cpu"), Perceiver(device="cpu", lane_backend="torch")
    assert fast.lane_onnx is not None and ref.lane_onnx is None
    assert fast.lane_onnx.path.parent == tmp_path / "lanes_onnx"
    seen = 0
    for a, b in zip(fast(frames), ref(frames), strict=True):
        assert a.lanes is not None and b.lanes is not None
        np.testing.assert_array_equal(a.lanes.xs == -2, b.lanes.xs == -2)
        np.testing.assert_allclose(a.lanes.xs, b.lanes.xs, atol=1e-2)
        seen += int((a.lanes.xs != -2).sum())
    assert seen > 20, "the frames must show lanes"


def test_export_is_cached_and_a_broken_file_is_made_again(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("DRIVESTACK_CACHE", str(tmp_path))
    path = cached_export(DEFAULT_LANE_WEIGHTS)
    stamp = path.stat().st_mtime_ns
    assert cached_export(DEFAULT_LANE_WEIGHTS) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(b"not an onnx file")
    lanes = OnnxLanes(DEFAULT_LANE_WEIGHTS)
    out = lanes(np.zeros((2, 192, 320, 3), np.uint8))
    assert out.shape[0] == 2 and path.stat().st_size > 1_000_000


def test_bad_lane_backend_gives_one_clear_error() -> None:
    with pytest.raises(ValueError, match="lane_backend"):
        Perceiver(device="cpu", lane_backend="tensorrt")
