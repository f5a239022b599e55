"""Module-level env thunks for subprocess vector envs (spawned children unpickle them by
name). This module does not import `sim` at import time on purpose: `make_prefixed`
relies on gymnasium importing `sim` from the "sim:" prefix of the id."""

from __future__ import annotations

import gymnasium as gym

SMALL = {"width": 96, "height": 64}


def make_prefixed() -> gym.Env:
    """State obs; the child registers the ids through the module-prefixed id."""
    return gym.make("sim:drivestack/Highway-v0", obs_type="state")


def make_plain() -> gym.Env:
    """State obs; the ids are registered by importing `sim` here, then the plain id."""
    import sim  # noqa: F401

    return gym.make("drivestack/Highway-v0", obs_type="state")


def make_camera() -> gym.Env:
    """Camera obs at a small resolution."""
    import sim  # noqa: F401

    return gym.make("drivestack/Urban-v0", obs_type="camera", camera=dict(SMALL))


def make_plain_continuous_rural() -> gym.Env:
    import sim  # noqa: F401

    return gym.make("drivestack/Rural-v0", obs_type="state", action_type="continuous")
