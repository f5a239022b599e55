"""Gymnasium wrappers that turn a `DrivingEnv` into the planner's environment, each
overriding one thing:

- `DecisionEvery(env, k)`: one agent decision spans k simulator steps;
- `SceneObservation(env, source)`: the observation becomes the planner's feature vector
  (planning.features) of the scene a `SceneSource` gives; with the three sources:
  `PerceptionObservation(env, perceiver)` (camera -> perception, the deployed stack),
  `EmulatedPerceptionObservation(env, noise, seed)` (the world corrupted like the measured
  perceiver, fast) and `PrivilegedObservation(env)` (exact).

`make_planner_env(...)` builds the whole stack; `functools.partial(make_planner_env, ...)`
is a picklable thunk for SB3's `SubprocVecEnv` (start method "spawn" included).
"""

from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import sim  # noqa: F401  (registers the drivestack/ env ids)
from planning.features import CLIP, DEFAULT_FEATURE_SET, FEATURE_SETS, features
from planning.memory import NeighbourMemory
from planning.noise import EmulatedSource, PerceptionNoise
from planning.rollout import DECISION_EVERY
from planning.scene import Scene
from planning.shield import SafetyShield
from planning.sources import PerceptionSource, PrivilegedSource, SceneSource
from sim.actions import IDLE, META_ACTIONS
from sim.config import FAMILIES, family_config
from sim.env import DrivingEnv
from sim.types import check_number

SOURCES: tuple[str, ...] = ("privileged", "emulated", "perception")
"""Names of the scene sources `make_planner_env` accepts."""


def feature_dim(feature_set: str) -> int:
    """Features a planner env observes with `feature_set`; ValueError naming the allowed
    sets otherwise."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"feature_set={feature_set!r}; allowed: {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


class DecisionEvery(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """One agent step = `k` env steps. A meta action (Discrete(5)) is sent on the first of
    them and IDLE on the others, so a lane change or speed step happens once; any other
    action is held for all k. Rewards are summed; the info is the last step's, with
    `info["decision_steps"]` (the steps taken: fewer than k when the episode ended)."""

    def __init__(self, env: gym.Env, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k (env steps per decision) must be an int >= 1, got {k!r}")
        gym.utils.RecordConstructorArgs.__init__(self, k=k)
        super().__init__(env)
        self.k = int(k)
        space = env.action_space
        self.meta = isinstance(space, spaces.Discrete) and int(space.n) == len(META_ACTIONS)
        """The action is a meta action: IDLE fills the steps after the first."""

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        total = 0.0
        for i in range(self.k):
            sent = IDLE if self.meta and i > 0 else action
            obs, reward, terminated, truncated, info = self.env.step(sent)
            total += float(reward)
            if terminated or truncated:
                break
        info = {**info, "decision_steps": i + 1}
        return obs, total, terminated, truncated, info


class SceneObservation(gym.ObservationWrapper):
    """Observations are `features(source(env), memory)`: the planner's (FEATURE_DIM,)
    float32 vector of the scene `source` reads from the unwrapped `DrivingEnv` after each
    step, with the `NeighbourMemory` of the scenes before it (one update per step of this
    wrapper: wrap a `DecisionEvery` env, so one per decision). The latest scene is kept in
    `self.scene`; the source and the memory are reset with the env.

    The three wrappers below record their arguments, so `env.spec.make()` rebuilds them
    with fresh sources; this one does not (a source tracks one env and is not shared)."""

    def __init__(self, env: gym.Env, source: SceneSource,
                 feature_set: str = DEFAULT_FEATURE_SET) -> None:
        super().__init__(env)
        base = env.unwrapped
        if not isinstance(base, DrivingEnv):
            raise TypeError(f"SceneObservation wraps a drivestack DrivingEnv, got "
                            f"{type(base).__name__}")
        if source.needs_camera and base.obs_type == "state" and not base.labels:
            raise ValueError(f"{type(source).__name__} reads camera frames, but the env does "
                             "not render them (obs_type='state', labels=False): make it "
                             "with obs_type='camera' (or labels=True)")
        self.source = source
        self.scene: Scene | None = None
        """The scene behind the latest observation."""
        self.memory = NeighbourMemory(1)
        k, inner = 1, env
        while isinstance(inner, gym.Wrapper):
            k = inner.k if isinstance(inner, DecisionEvery) else k
            inner = inner.env
        self.decision_dt = k * base.dt
        """Time between two observations [s] (the memory's step)."""
        self.dim = feature_dim(feature_set)
        """Features observed: the first `dim` (`planning.features.FEATURE_SETS`)."""
        self.observation_space = spaces.Box(-CLIP, CLIP, shape=(self.dim,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        self.source.reset()
        self.memory.reset()
        self.scene = None
        return super().reset(seed=seed, options=options)

    def observation(self, observation: Any) -> np.ndarray:
        self.scene = self.source(cast(DrivingEnv, self.env.unwrapped))
        memory = self.memory.update_scene(self.scene, self.decision_dt)
        return features(self.scene, memory)[:self.dim]


class PerceptionObservation(SceneObservation, gym.utils.RecordConstructorArgs):
    """Planner vectors from perception on the camera frame (`PerceptionSource`):
    `perceiver` is a `Perceiver` or any callable with its interface."""

    def __init__(self, env: gym.Env, perceiver: Any,
                 feature_set: str = DEFAULT_FEATURE_SET) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, perceiver=perceiver,
                                                 feature_set=feature_set,
                                                 _disable_deepcopy=True)  # one model, shared
        super().__init__(env, PerceptionSource(perceiver), feature_set)


class EmulatedPerceptionObservation(SceneObservation, gym.utils.RecordConstructorArgs):
    """Planner vectors from the world corrupted like the measured perceiver
    (`EmulatedSource`; `noise` None loads the shipped figures)."""

    def __init__(self, env: gym.Env, noise: PerceptionNoise | None = None, seed: int = 0,
                 feature_set: str = DEFAULT_FEATURE_SET) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, noise=noise, seed=seed,
                                                 feature_set=feature_set)
        super().__init__(env, EmulatedSource(noise, seed), feature_set)


class PrivilegedObservation(SceneObservation, gym.utils.RecordConstructorArgs):
    """Planner vectors from the exact world state (`PrivilegedSource`)."""

    def __init__(self, env: gym.Env, feature_set: str = DEFAULT_FEATURE_SET) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, feature_set=feature_set)
        super().__init__(env, PrivilegedSource(), feature_set)


class ShieldedActions(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Meta actions pass through a `planning.shield.SafetyShield`, on the scene of the
    latest observation, before they reach the env (shielded RL: the policy learns within
    what the shield allows). `info["executed_action"]` is the action the env got,
    `info["shield_vetoed"]` whether it differs from the policy's; `penalty` is taken off
    the reward of a vetoed decision. `advise=True`: the policy's action runs and the
    shield only judges it (`SafetyShield.advise`; `shield_vetoed`: it would have vetoed)."""

    def __init__(self, env: gym.Env, penalty: float = 0.0, advise: bool = False) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, penalty=penalty, advise=advise)
        if not isinstance(env, SceneObservation):
            raise TypeError(f"ShieldedActions wraps a SceneObservation, got {type(env).__name__}")
        if not isinstance(env.action_space, spaces.Discrete):
            raise ValueError("the safety shield filters meta actions (action_type='meta')")
        check_number("shield_penalty", penalty, 0.0, 1e6)
        super().__init__(env)
        self.shield = SafetyShield()
        self.penalty = float(penalty)
        self.advise = bool(advise)

    @property
    def scene(self) -> Scene | None:
        """The scene behind the latest observation."""
        return cast(SceneObservation, self.env).scene

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        self.shield.reset()
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        scene = self.scene
        if scene is None:
            raise RuntimeError("step before reset")
        proposed = int(np.asarray(action).item())
        if self.advise:
            vetoed = self.shield.advise(scene, proposed) != proposed
            executed = proposed
        else:
            executed = self.shield.filter(scene, proposed)
            vetoed = executed != proposed
        obs, reward, terminated, truncated, info = self.env.step(executed)
        reward = float(reward) - self.penalty * vetoed
        return obs, reward, terminated, truncated, {
            **info, "executed_action": executed, "shield_vetoed": vetoed}


def make_planner_env(source: str = "emulated", family: str = "highway",
                     decision_every: int = DECISION_EVERY, seed: int | None = None,
                     noise_path: str | None = None, perceiver_device: str = "cpu",
                     scenario: dict[str, Any] | None = None,
                     action_type: str = "meta", shield: bool | str = False,
                     reward_weights: dict[str, float] | None = None,
                     shield_penalty: float = 0.0,
                     feature_set: str = DEFAULT_FEATURE_SET) -> gym.Env:
    """The planner's env: `drivestack/{Family}-v0` with meta (or continuous) actions,
    `DecisionEvery`, then the observation wrapper of `source`.

    Args:
        source: "privileged" or "emulated" (state env, no rendering: fast) or
            "perception" (camera env and the shipped `Perceiver`).
        family: scenario family (highway, rural, urban).
        decision_every: env steps per agent decision.
        seed: seeds the emulated noise and the action space (episodes are seeded by
            `reset(seed=...)`, as SB3's `VecEnv.seed` does); None: noise seed 0.
        noise_path: noise figures of the emulated source (default: the shipped ones).
        perceiver_device: device of the Perceiver ("cpu", "auto", "0", ...).
        scenario: overrides of the family's `ScenarioConfig` fields.
        action_type: "meta" (Discrete(5), PPO) or "continuous" (steer, accel; SAC).
        shield: filter the meta actions through the `SafetyShield` (`ShieldedActions`);
            "advise": the shield only judges them (the policy drives bare).
        shield_penalty: taken off the reward of each decision the shield vetoes (or, with
            "advise", would veto).
        reward_weights: weights of the reward terms (`sim.rewards.RewardWeights`; None:
            the defaults).
        feature_set: the observation, a key of `planning.features.FEATURE_SETS`.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}; allowed: {', '.join(SOURCES)}")
    feature_dim(feature_set)
    if not isinstance(shield, bool) and shield != "advise":
        raise ValueError(f"shield={shield!r}; allowed: false, true, advise")
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; allowed: {', '.join(FAMILIES)}")
    if action_type not in ("meta", "continuous"):
        raise ValueError(f"action_type={action_type!r}; allowed: meta, continuous")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or a non-negative int, got {seed!r}")
    overrides = dict(scenario or {})
    if overrides.get("family", family) != family:
        raise ValueError(f"scenario family {overrides['family']!r} differs from "
                         f"family={family!r}")
    config = family_config(family, **{k: v for k, v in overrides.items() if k != "family"})
    obs_type = "camera" if source == "perception" else "state"
    env = gym.make(f"drivestack/{family.capitalize()}-v0", scenario=config,
                   obs_type=obs_type, action_type=action_type, reward_weights=reward_weights)
    env = DecisionEvery(env, decision_every)
    wrapped: SceneObservation
    if source == "privileged":
        wrapped = PrivilegedObservation(env, feature_set)
    elif source == "emulated":
        noise = PerceptionNoise.load(noise_path) if noise_path is not None else None
        wrapped = EmulatedPerceptionObservation(env, noise, seed=seed or 0,
                                                feature_set=feature_set)
    else:
        from perception.perceiver import Perceiver

        camera = cast(DrivingEnv, env.unwrapped).camera_spec
        wrapped = PerceptionObservation(env, Perceiver(device=perceiver_device, camera=camera),
                                        feature_set)
    if seed is not None:
        wrapped.action_space.seed(seed)
    if shield:
        if action_type != "meta":
            raise ValueError("shield: the safety shield filters meta actions "
                             "(action_type='meta')")
        return ShieldedActions(wrapped, shield_penalty, advise=shield == "advise")
    if shield_penalty:
        raise ValueError("shield_penalty needs shield=True")
    return wrapped
