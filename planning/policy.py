"""A trained SB3 policy as a planner: its observation is `features(scene)`, its action a
meta action (sim.actions); and `load_policy`, which reads a policy zip with one clear
error for a missing, corrupted or mismatched file."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from planning.features import FEATURE_DIM, features
from planning.scene import Scene
from sim.actions import META_ACTIONS


class PolicyPlanner:
    """A trained SB3 policy whose observation is `features(scene)` and whose action is a
    meta action, optionally filtered by a `planning.shield.SafetyShield`."""

    def __init__(self, model: Any, shield: Any = None) -> None:
        self.model = model
        self.shield = shield

    def reset(self) -> None:
        if self.shield is not None:
            self.shield.reset()

    def act(self, scene: Scene) -> int:
        action, _ = self.model.predict(features(scene), deterministic=True)
        proposed = int(np.asarray(action).item())
        return proposed if self.shield is None else self.shield.filter(scene, proposed)


class PolicyLoadError(ValueError):
    """A policy file that cannot be used; `str(err)` names the file and the problem."""


def load_policy(path: str | Path, device: str = "cpu") -> Any:
    """The SB3 PPO model saved at `path`, checked to take `features` vectors and give meta
    actions. Raises `PolicyLoadError` for a missing, corrupted or mismatched file."""
    p = Path(path)
    if not p.is_file():
        raise PolicyLoadError(f"policy file {p} not found; train one with `drivestack "
                              "train-planner`, or give another (--policy, or `policy` / "
                              "`privileged_policy` in the eval launch file)")
    from stable_baselines3 import PPO  # torch loads only when a policy is asked for

    try:
        model = PPO.load(p, device=device)
    except (zipfile.BadZipFile, pickle.UnpicklingError, AssertionError, ValueError, KeyError,
            TypeError, AttributeError, EOFError, RuntimeError, OSError) as exc:
        raise PolicyLoadError(f"policy file {p} is not a readable SB3 PPO zip: "
                              f"{type(exc).__name__}: {exc}") from None
    shape = getattr(model.observation_space, "shape", None)
    n = getattr(model.action_space, "n", None)
    if shape != (FEATURE_DIM,) or n != len(META_ACTIONS):
        raise PolicyLoadError(
            f"policy file {p} takes observations of shape {shape} and {n} actions; the "
            f"planner gives ({FEATURE_DIM},) feature vectors and {len(META_ACTIONS)} meta "
            "actions")
    return model
