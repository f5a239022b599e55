"""drivestack simulator: a gymnasium driving world with exact ground truth.

Importing `sim` registers the environment ids under the `drivestack/` namespace:

    import gymnasium as gym, sim
    env = gym.make("drivestack/Highway-v0", obs_type="camera", action_type="continuous")
"""

from __future__ import annotations

import gymnasium as gym

from sim.config import ScenarioConfig, family_config
from sim.types import CLASS_NAMES, CameraSpec, Events, Frame, GroundTruth, LaneLabels

ENV_IDS: dict[str, str] = {
    "drivestack/Highway-v0": "highway",
    "drivestack/Rural-v0": "rural",
    "drivestack/Urban-v0": "urban",
}


def _register() -> None:
    for env_id, family in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="sim.env:DrivingEnv",
                         vector_entry_point="sim.vector:BatchDrivingEnv",
                         kwargs={"family": family})


_register()

__all__ = [
    "CLASS_NAMES", "ENV_IDS", "CameraSpec", "Events", "Frame", "GroundTruth", "LaneLabels",
    "ScenarioConfig", "family_config",
]
