"""The device-resident vector env (issue 17): `gym.make_vec(..., device=...)` gives torch
tensors on the device, equal to the numpy vector env's arrays step for step, through
episode ends in both autoreset modes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import sim  # noqa: F401  (registers drivestack/*)


def _pair(obs_type: str, mode: str) -> tuple[gym.vector.VectorEnv, gym.vector.VectorEnv]:
    kw = dict(vectorization_mode="vector_entry_point", obs_type=obs_type,
              action_type="continuous", autoreset_mode=mode)
    return (gym.make_vec("drivestack/Urban-v0", 3, **kw),
            gym.make_vec("drivestack/Urban-v0", 3, device="cpu", **kw))


def _same(a: object, b: object) -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
        return
    assert isinstance(b, torch.Tensor) and b.device.type == "cpu"
    np.testing.assert_array_equal(b.numpy(), a)


@pytest.mark.parametrize(("obs_type", "mode"), [("camera", "NextStep"), ("dict", "SameStep"),
                                                ("state", "SameStep")])
def test_device_vector_env_steps_as_the_numpy_one(obs_type: str, mode: str) -> None:
    host, device = _pair(obs_type, mode)
    oh, _ = host.reset(seed=5)
    od, _ = device.reset(seed=5)
    _same(oh, od)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(120):
        act = rng.uniform(-1.0, 1.0, (3, 2)).astype(np.float32)  # swerves off the road
        rh = host.step(act)
        rd = device.step(torch.as_tensor(act))
        _same(rh[0], rd[0])
        for k in (1, 2, 3):
            _same(rh[k].astype(np.float32) if k == 1 else rh[k], rd[k])
        if "ground_truth" in rh[4]:
            for g, h in zip(rh[4]["ground_truth"], rd[4]["ground_truth"], strict=True):
                np.testing.assert_array_equal(g.boxes_xyxy, h.boxes_xyxy)
        if "final_obs" in rh[4]:
            np.testing.assert_array_equal(rh[4]["_final_obs"], rd[4]["_final_obs"])
            for i in np.flatnonzero(rh[4]["_final_obs"]):
                _same(rh[4]["final_obs"][i], rd[4]["final_obs"][i])
        ends += int((rh[2] | rh[3]).sum())
    assert ends >= 2, "the comparison must cover episode ends and restarts"


def test_device_vector_env_refuses_a_bad_device() -> None:
    with pytest.raises(ValueError, match="not a torch device"):
        gym.make_vec("drivestack/Highway-v0", 2, vectorization_mode="vector_entry_point",
                     device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            gym.make_vec("drivestack/Highway-v0", 2, vectorization_mode="vector_entry_point",
                         device="cuda")
