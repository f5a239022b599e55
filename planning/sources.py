"""Scene sources: where a planner's `Scene` comes from at each decision.

A source is called with the (unwrapped) `DrivingEnv` after a step and returns the scene
of that moment; `reset()` forgets what it tracked. Three sources:

- `PrivilegedSource`: exact, from the world state (no rendering needed);
- `PerceptionSource`: the camera frame through a `Perceiver` (the deployed stack);
- `EmulatedSource` (planning.noise): the privileged scene corrupted like the measured
  perceiver (misses, false alarms, position noise), fast enough for RL training.
"""

from __future__ import annotations

from typing import Any, Protocol

from planning.scene import (
    Scene,
    scene_from_perception,
    scene_from_world,
    with_controller,
    with_gap_rates,
)
from sim.env import DrivingEnv


class SceneSource(Protocol):
    """Turns the env's current state into a Scene."""

    needs_camera: bool
    """The source reads `env.frame` (the env must render camera frames)."""

    def reset(self) -> None: ...

    def __call__(self, env: DrivingEnv) -> Scene: ...


class PrivilegedSource:
    """The exact scene, within the camera's field of view."""

    needs_camera = False

    def reset(self) -> None:
        pass

    def __call__(self, env: DrivingEnv) -> Scene:
        if env.world is None:
            raise RuntimeError("call env.reset() before reading a scene")
        return with_controller(scene_from_world(env.world, env.camera_spec), env)


class PerceptionSource:
    """The scene perception sees in the current camera frame; gap rates come from
    tracking objects across consecutive calls."""

    needs_camera = True

    def __init__(self, perceiver: Any) -> None:
        self.perceiver = perceiver
        self._prev: Scene | None = None
        self._prev_time: float | None = None
        self.last_perception: Any = None
        """The latest `Perception` (for overlays and the data engine)."""

    def reset(self) -> None:
        self._prev = self._prev_time = self.last_perception = None

    def __call__(self, env: DrivingEnv) -> Scene:
        if env.world is None or env.frame is None:
            raise RuntimeError("PerceptionSource needs an env with camera frames "
                               "(obs_type 'camera' or 'dict', or labels=True), after reset()")
        [p] = self.perceiver([env.frame.image])
        self.last_perception = p
        now = env.world.state.step * env.dt
        scene = scene_from_perception(p, env.world.state.ego.speed, env.camera_spec,
                                      env.world.scenario.speed_limit)
        dt = 0.0 if self._prev_time is None else now - self._prev_time
        scene = with_gap_rates(self._prev, scene, dt)
        self._prev, self._prev_time = scene, now
        return with_controller(scene, env)
