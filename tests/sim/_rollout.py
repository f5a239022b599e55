"""A deterministic rollout and its digest, shared by the determinism tests and run as a
script in fresh processes: `python -m tests.sim._rollout ENV_ID SEED STEPS`."""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import gymnasium as gym
import numpy as np

import sim  # noqa: F401  (registers the ids)
from sim.autopilot import Autopilot

CAMERA = {"width": 160, "height": 96}


def actions(seed: int, steps: int, action_type: str = "continuous") -> list[Any]:
    """A fixed action sequence: gentle random steering and throttle (or meta actions)."""
    rng = np.random.default_rng([seed, 99])
    if action_type == "meta":
        return [int(a) for a in rng.integers(0, 5, steps)]
    steer = rng.uniform(-0.04, 0.04, steps)
    accel = rng.uniform(-0.4, 0.5, steps)
    return [np.array([s, a], np.float32) for s, a in zip(steer, accel, strict=True)]


def _feed(h: Any, value: Any) -> None:
    """Hash the exact bits of `value` (never its printed form, which numpy print
    options, e.g. ones set by other libraries, would change)."""
    if isinstance(value, dict) or hasattr(value, "keys"):  # dicts and label records
        for k in sorted(value.keys()):
            h.update(str(k).encode())
            _feed(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"seq{len(value)}".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (float, np.floating)):
        h.update(float(value).hex().encode())
    elif isinstance(value, np.generic):
        h.update(value.tobytes())
    else:
        h.update(repr(value).encode())


def step_digest(env: gym.Env, obs: Any, reward: float, terminated: bool, truncated: bool,
                info: dict[str, Any]) -> str:
    """sha256 of everything one step produced: observation, image and id buffer,
    labels, reward, flags and events."""
    h = hashlib.sha256()
    frame = env.unwrapped.frame
    _feed(h, obs)
    if frame is not None:
        _feed(h, frame.image)
        _feed(h, frame.ids)
    _feed(h, info.get("ground_truth", {}))
    _feed(h, [reward, terminated, truncated, info["events"], info["rewards"]])
    return h.hexdigest()


def make(env_id: str, **kwargs: Any) -> gym.Env:
    kwargs.setdefault("camera", dict(CAMERA))
    return gym.make(env_id, **kwargs)


def rollout_digests(env_id: str, seed: int, steps: int, **kwargs: Any) -> list[str]:
    """Per-step digests of a continuous-action episode driven by the autopilot plus a
    seeded jitter (the same seed gives the same actions if the sim is deterministic)."""
    env = make(env_id, **kwargs)
    obs, info = env.reset(seed=seed)
    out = [step_digest(env, obs, 0.0, False, False, {**info, "rewards": {}})]
    ap = Autopilot()
    jitter = actions(seed, steps)
    for k in range(steps):
        # the autopilot keeps the car on the road; a seeded jitter varies the controls
        a = np.clip(ap.act(env.unwrapped.world) + 0.5 * jitter[k], -1.0, 1.0)
        obs, reward, terminated, truncated, info = env.step(a)
        out.append(step_digest(env, obs, reward, terminated, truncated, info))
        if terminated or truncated:
            break
    env.close()
    return out


def rollout_digest(env_id: str, seed: int, steps: int, **kwargs: Any) -> str:
    return hashlib.sha256("".join(rollout_digests(env_id, seed, steps, **kwargs)).encode()
                          ).hexdigest()


if __name__ == "__main__":
    env_id, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(rollout_digest(env_id, seed, steps))
