"""Shared fixtures: small, fast environments and worlds.

Envs are built at a small camera resolution (160x96) wherever resolution does not
matter; label tests use 320x192 on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import sim  # noqa: F401  (registers the drivestack/ ids)
from sim.config import family_config, sample_scenario
from sim.world.world import World

SMALL_CAMERA: dict[str, int] = {"width": 160, "height": 96}
"""Camera size for tests where resolution does not matter."""
LABEL_CAMERA: dict[str, int] = {"width": 320, "height": 192}
"""Camera size for pixel-exact label tests."""
FAMILY_IDS: dict[str, str] = {
    "highway": "drivestack/Highway-v0",
    "rural": "drivestack/Rural-v0",
    "urban": "drivestack/Urban-v0",
}


@pytest.fixture(autouse=True, scope="session")
def _own_model_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests see an empty model registry (the shipped detector current), never the
    user's promoted models; a test that needs its own sets DRIVESTACK_REGISTRY."""
    import os

    old = os.environ.get("DRIVESTACK_REGISTRY")
    os.environ["DRIVESTACK_REGISTRY"] = str(tmp_path_factory.mktemp("registry"))
    yield
    if old is None:
        os.environ.pop("DRIVESTACK_REGISTRY", None)
    else:
        os.environ["DRIVESTACK_REGISTRY"] = old


@pytest.fixture
def make_env() -> Iterator[Callable[..., gym.Env]]:
    """Factory: `make_env(env_id_or_family, **kwargs)`; small camera unless given;
    every env made is closed at teardown."""
    made: list[gym.Env] = []

    def _make(env_id: str = "drivestack/Highway-v0", **kwargs: Any) -> gym.Env:
        env_id = FAMILY_IDS.get(env_id, env_id)
        kwargs.setdefault("camera", dict(SMALL_CAMERA))
        env = gym.make(env_id, **kwargs)
        made.append(env)
        return env

    yield _make
    for env in made:
        env.close()


@pytest.fixture
def make_world() -> Callable[..., World]:
    """Factory: `make_world(family, seed, **config_overrides)` -> a fresh `World`."""

    def _make(family: str = "highway", seed: int = 0, **overrides: Any) -> World:
        return World(sample_scenario(family_config(family, **overrides), seed))

    return _make


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
