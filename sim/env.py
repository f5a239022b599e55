"""DrivingEnv: gymnasium orchestration of world, actions, camera, labels and rewards.

The env only wires the pieces: physics lives in `sim.world`, drawing in `sim.render`,
rewards in `sim.rewards`. It knows nothing about models.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sim.actions import (
    MetaController,
    SpeedController,
    action_space,
    continuous_to_controls,
    meta_action,
    shown,
)
from sim.config import ScenarioConfig, family_config, sample_scenario
from sim.observation import STATE_DIM, STATE_LIMIT, state_vector
from sim.render.birdseye import birdseye
from sim.render.labels import ground_truth
from sim.render.raster import Renderer
from sim.rewards import RewardWeights, reward_terms, total_reward
from sim.types import CameraSpec, Frame, GroundTruth, check_number
from sim.world.world import MAX_DT, World, WorldState

OBS_TYPES = ("camera", "state", "dict")


def scenario_config(scenario: ScenarioConfig | dict[str, Any] | None, family: str
                    ) -> ScenarioConfig:
    """The scenario ranges an env samples from: given, validated from a dict, or the
    family's defaults."""
    if scenario is None:
        return family_config(family)
    if isinstance(scenario, dict):
        return ScenarioConfig.model_validate(scenario)
    if not isinstance(scenario, ScenarioConfig):
        raise TypeError(f"scenario must be a ScenarioConfig, a dict of its fields or None, "
                        f"got {type(scenario).__name__}")
    return scenario


def camera_spec(camera: CameraSpec | dict[str, Any] | None) -> CameraSpec:
    """The camera an env draws with: given, built from a dict of its fields, or the
    default `CameraSpec`."""
    if camera is None:
        return CameraSpec()
    if isinstance(camera, dict):
        unknown = sorted(map(str, set(camera) - set(CameraSpec.__dataclass_fields__)))
        if unknown:
            raise ValueError(f"camera: unknown key(s) {unknown}; allowed: "
                             f"{', '.join(CameraSpec.__dataclass_fields__)}")
        return CameraSpec(**camera)
    if not isinstance(camera, CameraSpec):
        raise TypeError(f"camera must be a CameraSpec, a dict of its fields or None, "
                        f"got {type(camera).__name__}")
    return camera


def env_settings(dt: Any, labels: Any) -> tuple[float, bool | None]:
    """Checked `dt` [s] and `labels` of an env (DrivingEnv, BatchDrivingEnv)."""
    check_number("dt", dt, 0.0, MAX_DT, unit="s", open_lo=True)
    if labels is not None and not isinstance(labels, bool | np.bool_):
        raise TypeError(f"labels must be True, False or None, got {shown(labels)}")
    return float(dt), None if labels is None else bool(labels)


def observation_space(spec: CameraSpec, obs_type: str) -> spaces.Space:
    """One env's observation space for `obs_type` (camera, state or dict)."""
    if obs_type not in OBS_TYPES:
        raise ValueError(f"obs_type={obs_type!r}; allowed: {', '.join(OBS_TYPES)}")
    cam = spaces.Box(0, 255, shape=(spec.height, spec.width, 3), dtype=np.uint8)
    state = spaces.Box(-STATE_LIMIT, STATE_LIMIT, shape=(STATE_DIM,), dtype=np.float32)
    return {"camera": cam, "state": state,
            "dict": spaces.Dict({"camera": cam, "state": state})}[obs_type]


class DrivingEnv(gym.Env):
    """A driving episode on a procedurally generated road, seen by a forward camera.

    Args:
        scenario: a `ScenarioConfig` (or a dict of its fields); defaults to `family`'s.
        family: scenario family used when `scenario` is None: highway, rural or urban.
        obs_type: "camera" (uint8 HxWx3), "state" (float32 vector) or "dict" of both.
        action_type: "continuous" (steer, accel in [-1, 1]) or "meta" (Discrete(5)).
        render_mode: None or "rgb_array" (bird's-eye view with the camera inset).
        camera: a `CameraSpec` (or dict of its fields).
        dt: simulation step [s].
        reward_weights: weights of the named reward terms (see `RewardWeights`).
        labels: compute `info["ground_truth"]` every step; None means "when the camera
            is rendered anyway" (camera and dict observations).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        scenario: ScenarioConfig | dict[str, Any] | None = None,
        family: str = "highway",
        obs_type: str = "camera",
        action_type: str = "continuous",
        render_mode: str | None = None,
        camera: CameraSpec | dict[str, Any] | None = None,
        dt: float = 1.0 / 15.0,
        reward_weights: dict[str, float] | None = None,
        labels: bool | None = None,
    ) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode={render_mode!r}; allowed: None, 'rgb_array'")
        dt, labels = env_settings(dt, labels)
        self.config: ScenarioConfig = scenario_config(scenario, family)
        """Scenario ranges of the next `reset` (may be replaced between episodes)."""
        self.camera_spec = camera_spec(camera)
        self.observation_space = observation_space(self.camera_spec, obs_type)
        self.obs_type = obs_type
        self.action_type = action_type
        self.render_mode = render_mode
        self.dt = float(dt)
        self.reward_weights = RewardWeights.from_dict(reward_weights)
        self.labels = obs_type != "state" if labels is None else bool(labels)
        self.action_space = action_space(action_type)
        self.renderer = Renderer(self.camera_spec)
        self.world: World | None = None
        self.frame: Frame | None = None
        self._controller: MetaController | None = None
        self._prev_accel = 0.0
        self._scenario_info: dict[str, Any] = {}

    # -- gymnasium API -----------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(map(str, set(options) - {"scenario_seed", "state"}))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; allowed: "
                             "['scenario_seed', 'state']")
        if options.get("state") is not None:
            if options.get("scenario_seed") is not None:
                raise ValueError("reset options 'state' and 'scenario_seed' exclude each other")
            self.set_state(options["state"])
            return self.observe()
        sc_seed = options.get("scenario_seed")
        if sc_seed is None:
            sc_seed = int(self.np_random.integers(0, 2**31 - 1))
        elif isinstance(sc_seed, bool) or not isinstance(sc_seed, int | np.integer) or sc_seed < 0:
            raise ValueError(f"scenario_seed must be a non-negative int, got {sc_seed!r}")
        scenario = sample_scenario(self.config, int(sc_seed))
        self.world = World(scenario, self.dt)
        self._scenario_info = asdict(scenario)
        ego = self.world.state.ego
        self._controller = MetaController(
            target_lane=int(self.world.road.lane_of(ego.d)), target_speed=ego.speed,
            speed_pid=SpeedController())
        self._prev_accel = 0.0
        events = self.world.events()
        obs = self._observe()
        info = self._info(events, {})
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        world = self._require_world()
        steer, accel = self._controls(action)
        self._prev_accel = world.state.ego.accel
        events = world.step(steer, accel)
        terms = reward_terms(world, events, self._prev_accel)
        reward = total_reward(terms, self.reward_weights)
        terminated = bool(events.collision or events.off_road)
        st = world.state
        truncated = bool(st.time >= world.scenario.episode_seconds - 1e-9
                         or st.ego.s >= world.road.route_length)
        obs = self._observe()
        return obs, reward, terminated, truncated, self._info(events, terms)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        world = self._require_world()
        if self.frame is None or self.frame.step != world.state.step:
            self._render_frame()
        assert self.frame is not None
        return birdseye(world, self.frame.image)

    # -- the meta controller ---------------------------------------------------------------
    @property
    def target_speed(self) -> float | None:
        """The meta-action controller's target speed [m/s] (the set point FASTER and SLOWER
        move; the car's own state, as a cruise control's set speed); None before reset or
        with continuous actions."""
        c = self._controller
        return None if c is None or self.action_type != "meta" else float(c.target_speed)

    @property
    def target_lane_change(self) -> int:
        """The lane the meta-action controller steers to, relative to the lane the ego is
        in (+1 left, -1 right, 0 none: no lane change under way); 0 before reset or with
        continuous actions."""
        c, w = self._controller, self.world
        if c is None or w is None or self.action_type != "meta":
            return 0
        return int(c.target_lane) - int(w.road.lane_of(w.state.ego.d))

    # -- state -------------------------------------------------------------------------
    def get_state(self) -> WorldState:
        """A picklable snapshot of the episode (world + controller memory)."""
        world = self._require_world()
        state = world.get_state()
        state.extra = {"controller": copy.deepcopy(self._controller),
                       "prev_accel": self._prev_accel, "dt": self.dt}
        return state

    def set_state(self, state: WorldState) -> None:
        """Restore a snapshot from `get_state()`; the same actions then give the same
        frames, labels and rewards. A fresh env needs no `reset()` first.

        Through `gym.make`'s wrappers (whose order check wants a reset before a step),
        restore with `env.reset(options={"state": state})`, which calls this.
        Raises TypeError or ValueError naming what the state holds wrong (see
        `WorldState.check` and `WorldState.check_on`); the env is left as it was."""
        if not isinstance(state, WorldState):
            raise TypeError(f"set_state expects a WorldState, got {type(state).__name__}")
        state.check()
        extra = check_extra(state)
        dt = extra.get("dt", self.dt)
        if abs(dt - self.dt) > 1e-12:
            raise ValueError(f"state was recorded with dt={dt}, this env steps dt={self.dt}: "
                             "replay would diverge; make the env with the same dt")
        world = self.world if self.world is not None else World(state.scenario, self.dt)
        world.set_state(state)  # checks the state on its road; refuses without a change
        self.world = world
        self._scenario_info = asdict(state.scenario)
        self._controller = copy.deepcopy(extra.get("controller"))
        if self._controller is None:  # a bare World state: start tracking the current lane
            ego = self.world.state.ego
            self._controller = MetaController(
                target_lane=int(self.world.road.lane_of(ego.d)), target_speed=ego.speed,
                speed_pid=SpeedController())
        self._prev_accel = float(extra.get("prev_accel", 0.0))
        self.frame = None

    def observe(self) -> tuple[Any, dict[str, Any]]:
        """The observation and info of the current moment, as `reset` and `step` return
        them (the frame rendered anew, ground truth included when the env computes it):
        what a restored state (`set_state`) looks like without stepping. The events are
        those of the current world; the reward terms are empty."""
        world = self._require_world()
        return self._observe(), self._info(world.events(), {})

    # -- internals ---------------------------------------------------------------------
    def _require_world(self) -> World:
        if self.world is None:
            raise RuntimeError("call reset() before step(), render() or get_state()")
        return self.world

    def _controls(self, action: Any) -> tuple[float, float]:
        if self.action_type == "continuous":
            return continuous_to_controls(action)
        world = self._require_world()
        a = meta_action(action)
        assert self._controller is not None
        self._controller.apply(a, world.road, world.scenario.speed_limit)
        return self._controller.controls(world.state.ego, world.road, self.dt)

    def _render_frame(self) -> Frame:
        world = self._require_world()
        out = self.renderer.render(world)
        gt = ground_truth(world, out, self.renderer.camera)
        self.frame = Frame(image=out.image, ground_truth=gt, step=world.state.step, ids=out.ids)
        return self.frame

    def _observe(self) -> Any:
        world = self._require_world()
        self.frame = None
        if self.obs_type != "state" or self.labels:
            self._render_frame()
        if self.obs_type == "state":
            return state_vector(world)
        assert self.frame is not None
        if self.obs_type == "camera":
            return self.frame.image
        return {"camera": self.frame.image, "state": state_vector(world)}

    def _info(self, events: Any, terms: dict[str, float]) -> dict[str, Any]:
        world = self._require_world()
        ego = world.state.ego
        info: dict[str, Any] = {
            "events": events.as_dict(),
            "rewards": terms,
            "step": world.state.step,
            "speed": ego.speed,
            "route_completion": min(max(ego.s / world.road.route_length, 0.0), 1.0),
            "scenario": dict(self._scenario_info),
        }
        if self.frame is not None:
            # one object (not a dict of arrays): its arrays change size from frame to
            # frame, which vector envs cannot stack; it reads like a dict all the same
            gt: GroundTruth = self.frame.ground_truth
            info["ground_truth"] = gt
        return info


def check_extra(state: WorldState) -> dict[str, Any]:
    """The env's part of a state (`state.extra`), checked: a MetaController (or None)
    aiming at a lane of the scenario's road, finite prev_accel and dt."""
    extra = state.extra
    unknown = sorted(map(str, set(extra) - {"controller", "prev_accel", "dt"}))
    if unknown:
        raise ValueError(f"state.extra: unknown key(s) {unknown}; allowed: controller, "
                         "prev_accel, dt")
    if "dt" in extra:
        check_number("state.extra['dt']", extra["dt"], 0.0, MAX_DT, unit="s", open_lo=True)
    if "prev_accel" in extra:
        check_number("state.extra['prev_accel']", extra["prev_accel"], -100.0, 100.0,
                     unit="m/s^2")
    ctl = extra.get("controller")
    if ctl is not None:
        if not isinstance(ctl, MetaController) or not isinstance(ctl.speed_pid,
                                                                 SpeedController):
            raise TypeError(f"state.extra['controller'] must be a MetaController, "
                            f"got {type(ctl).__name__}")
        check_number("controller.target_lane", ctl.target_lane, 0,
                     state.scenario.n_lanes - 1, integer=True)
        check_number("controller.target_speed", ctl.target_speed, 0.0, 100.0, unit="m/s")
        for name in ("kp", "ki", "integral"):
            check_number(f"controller.speed_pid.{name}", getattr(ctl.speed_pid, name),
                         -100.0, 100.0)
    return extra
