"""`BatchDrivingEnv` (sim.vector) behind stable-baselines3's `VecEnv` interface.

SB3 steps its own vectorized envs (`DummyVecEnv`, `SubprocVecEnv`) and expects a
same-step autoreset: when env i ends, `step_wait` already returns the first observation
of its next episode and puts the last one in `infos[i]["terminal_observation"]`. This
adapter runs a `BatchDrivingEnv` in that mode, so an SB3 algorithm collects N envs per
step from one `BatchWorld` in one process:

    vec = BatchVecEnv(num_envs=16, family="highway", obs_type="state")
    PPO("MlpPolicy", vec).learn(100_000)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from planning.features import DEFAULT_FEATURE_SET
from sim.types import check_number
from sim.vector import BatchDrivingEnv


def _indices(indices: Any, n: int) -> Sequence[int]:
    """The env indices a `VecEnv` method names (None: all n)."""
    if indices is None:
        return range(n)
    return [indices] if isinstance(indices, int) else list(indices)


class BatchVecEnv(VecEnv):
    """N drivestack envs for SB3, simulated as one batch. Arguments: those of
    `BatchDrivingEnv` (its autoreset is same-step here)."""

    def __init__(self, num_envs: int = 8, **kwargs: Any) -> None:
        kwargs.pop("autoreset_mode", None)
        self.env = BatchDrivingEnv(num_envs, autoreset_mode="SameStep", **kwargs)
        self.render_mode = None
        super().__init__(num_envs, self.env.single_observation_space,
                         self.env.single_action_space)
        self._actions: Any = None

    def reset(self) -> Any:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        obs, infos = self.env.reset(seed=seeds)
        self.reset_infos = [self._env_info(infos, i) for i in range(self.num_envs)]
        self._reset_seeds()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        obs, rewards, terminated, truncated, infos = self.env.step(self._actions)
        dones = terminated | truncated
        out = []
        for i in range(self.num_envs):
            info = self._env_info(infos.get("final_info", infos) if dones[i] else infos, i)
            if dones[i]:
                info["terminal_observation"] = infos["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            out.append(info)
        return obs, rewards.astype(np.float32), dones, out

    @staticmethod
    def _env_info(infos: dict[str, Any], i: int) -> dict[str, Any]:
        """Env i's entries of a vector info (nested dicts of arrays), as a plain dict."""
        return {k: BatchVecEnv._env_info(v, i) if isinstance(v, dict) else v[i]
                for k, v in infos.items() if not k.startswith("_") and k not in (
                    "final_obs", "final_info")}

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self.env, attr_name)] * len(_indices(indices, self.num_envs))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise AttributeError(f"set_attr({attr_name!r}): the envs of a batch share one "
                             "BatchDrivingEnv; set it there (vec.env)")

    def env_method(self, method_name: str, *args: Any, indices: Any = None,
                   **kwargs: Any) -> list[Any]:
        raise AttributeError(f"env_method({method_name!r}): the envs of a batch share one "
                             "BatchDrivingEnv; call it there (vec.env)")

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(_indices(indices, self.num_envs))



class _OneBatch(VecEnv):
    """The `VecEnv` methods that reach into single envs, for vector envs whose envs are
    rows of a batch (no env objects to read, set or call)."""

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None] * self.num_envs
        raise AttributeError(f"get_attr({attr_name!r}): the envs are rows of a batch of "
                             "worlds, not objects")

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise AttributeError(f"set_attr({attr_name!r}): the envs are rows of a batch of "
                             "worlds, not objects")

    def env_method(self, method_name: str, *args: Any, indices: Any = None,
                   **kwargs: Any) -> list[Any]:
        raise AttributeError(f"env_method({method_name!r}): the envs are rows of a batch of "
                             "worlds, not objects")

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(_indices(indices, self.num_envs))


class BatchPlannerVecEnv(_OneBatch):
    """The planner's training env, batched: what `make_planner_env` gives per env
    (`DecisionEvery`, then the privileged or emulated-perception feature vector), for
    `num_envs` envs stepped as one batch of worlds (one `BatchDrivingEnv`, families
    mixed), with the scenes, the emulated perception noise, the gap-rate tracking and the
    features computed for the whole batch at once (`planning.batch_scene`). An SB3
    `VecEnv` with same-step autoreset:

        vec = VecMonitor(BatchPlannerVecEnv(32, source="emulated"))
        PPO("MlpPolicy", vec, n_steps=256).learn(1_000_000)

    Env i drives `families[i % len(families)]`; `seed(s)` then `reset()` starts env i on
    the scenario of seed s + i, as `DummyVecEnv` seeds its envs. One decision is
    `decision_every` simulator steps: the meta action on the first, IDLE on the others;
    rewards are summed. An episode that ends inside a decision ends the decision for that
    env (its last observation goes to `infos[i]["terminal_observation"]`); its next
    episode starts at once and takes the decision's remaining steps with IDLE, so a new
    episode's first observation may come up to `decision_every - 1` steps after its start
    (`DecisionEvery` starts it at step 0). The emulated noise is drawn from one generator
    for the batch, seeded by `noise_seed`: the same distributions as
    `EmulatedSource`, other draws.

    `source="perception"`: the features come from the stack's own perception: every
    env's frame is drawn on `device` (`sim.render.device.DeviceCamera`, `render_threads`
    host threads recording) and perceived there (`perceiver`, default the shipped
    `Perceiver` on `device`), scenes and gap rates as `PerceptionSource` makes them; on a
    GPU the frames do not leave it. No shield with this source.

    `shield=True`: each env's meta action passes through its own
    `planning.shield.SafetyShield` on the scene behind its latest observation, as
    `ShieldedActions` does per env (reset when its episode restarts); `infos[i]` then
    holds "executed_action" and "shield_vetoed", and `shield_penalty` is taken off the
    reward of every vetoed decision (so the policy learns to stay within the shield's
    limits by itself instead of leaning on it). `shield="advise"`: the policy's own action
    runs, and `shield_penalty` is taken off each decision the shield would have vetoed
    (`SafetyShield.advise`): the rule planner's safety checks as a shaping of the reward
    of a policy that drives bare (`infos[i]["shield_vetoed"]`: it would have)."""

    def __init__(self, num_envs: int = 32, families: Sequence[str] = ("highway", "rural",
                                                                       "urban"),
                 source: str = "emulated", decision_every: int | None = None,
                 noise: Any = None, noise_seed: int = 0,
                 scenario: dict[str, Any] | None = None,
                 reward_weights: dict[str, float] | None = None,
                 shield: bool | str = False, shield_penalty: float = 0.0,
                 perceiver: Any = None, device: str = "cpu", render_threads: int = 1,
                 feature_set: str = DEFAULT_FEATURE_SET) -> None:
        from gymnasium import spaces

        from planning.features import CLIP
        from planning.noise import PerceptionNoise
        from planning.rollout import DECISION_EVERY
        from planning.wrappers import feature_dim
        from sim.actions import IDLE, META_ACTIONS
        from sim.config import FAMILIES, family_config

        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} must be an int >= 1")
        families = tuple(families)
        bad = [f for f in families if f not in FAMILIES]
        if not families or bad:
            raise ValueError(f"families={list(families)!r}; allowed: {', '.join(FAMILIES)}")
        if source not in ("privileged", "emulated", "perception"):
            raise ValueError(f"source={source!r}; allowed: privileged, emulated, perception")
        if not isinstance(shield, bool) and shield != "advise":
            raise ValueError(f"shield={shield!r}; allowed: false, true, advise")
        if source == "perception" and shield:
            raise ValueError("shield: the batched env shields the privileged and emulated "
                             "sources; with perception use make_planner_env per env")
        k = DECISION_EVERY if decision_every is None else decision_every
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"decision_every={k!r} must be an int >= 1")
        if isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0:
            raise ValueError(f"noise_seed must be a non-negative int, got {noise_seed!r}")
        self.source, self.decision_every, self.families = source, k, families
        self.noise = (noise if isinstance(noise, PerceptionNoise) or noise is None
                      else PerceptionNoise.load(noise))
        if source == "emulated" and self.noise is None:
            from planning.noise import DEFAULT_NOISE

            self.noise = PerceptionNoise.load(DEFAULT_NOISE)
        self._idle = IDLE
        overrides = {k2: v for k2, v in (scenario or {}).items() if k2 != "family"}
        configs = {f: family_config(f, **overrides) for f in dict.fromkeys(families)}
        env = BatchDrivingEnv(num_envs, obs_type="state", action_type="meta",
                              reward_weights=reward_weights,
                              scenarios=[configs[families[i % len(families)]]
                                         for i in range(num_envs)])
        env.state_observations = False
        env.npc_collisions = False  # no planner reward or feature reads them
        self.env = env
        """The batch of worlds (`BatchDrivingEnv`, its own observations and NPC-NPC
        collision counts switched off)."""
        self.rng = np.random.default_rng([noise_seed, 0xBA7C])
        """The emulated perception noise of every env."""
        # gap-rate tracking: the previous noisy scenes, the world step they were seen at,
        # and which envs start afresh (no previous scene)
        self._prev: Any = None
        self._prev_steps = np.zeros(num_envs, np.int64)
        self._fresh = np.ones(num_envs, bool)
        from planning.memory import NeighbourMemory

        self.memory = NeighbourMemory(num_envs)
        """What each env's planner remembers of its neighbours (reset with its episode)."""
        self.render_mode = None
        self.dim = feature_dim(feature_set)
        """Features observed: the first `dim` (`planning.features.FEATURE_SETS`)."""
        super().__init__(num_envs, spaces.Box(-CLIP, CLIP, shape=(self.dim,),
                                              dtype=np.float32),
                         spaces.Discrete(len(META_ACTIONS)))
        self._actions: np.ndarray | None = None
        self.shields: list[Any] | None = None
        """One `SafetyShield` per env (None: no shield)."""
        check_number("shield_penalty", shield_penalty, 0.0, 1e6)
        if shield_penalty and not shield:
            raise ValueError("shield_penalty needs shield=True")
        self.shield_penalty = float(shield_penalty)
        self.advise = shield == "advise"
        """The shields judge and the policy's actions run (`shield="advise"`)."""
        if shield:
            from planning.shield import SafetyShield

            self.shields = [SafetyShield() for _ in range(num_envs)]
        self._scene: Any = None
        """The `BatchScene` behind the latest observations (what the shields see)."""
        self.camera: Any = None
        self.perceiver: Any = None
        if source == "perception":
            from perception.detector import resolve_device, torch_device
            from sim.render.device import DeviceCamera

            device = resolve_device(device)  # "auto", "cuda:1", "1" ... -> "cpu", "1"
            self.camera = DeviceCamera(env.camera_spec, num_envs, torch_device(device),
                                       threads=render_threads)
            if perceiver is None:
                from perception.perceiver import Perceiver

                perceiver = Perceiver(device=device, camera=env.camera_spec)
            self.perceiver = perceiver
            self._scenes: list[Any] = [None] * num_envs
            self._times = np.zeros(num_envs)

    # -- VecEnv --------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        seeds = list(self._seeds)
        self.env.reset(seed=None if all(s is None for s in seeds) else seeds)
        self._prev = None
        self._fresh[:] = True
        for sh in self.shields or ():
            sh.reset()
        obs = self._observe()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._actions is None:
            raise RuntimeError("step_async before step_wait")
        n, env = self.num_envs, self.env
        proposed = self._actions
        actions = proposed if self.shields is None else self._shielded(proposed)
        if self.advise:  # judged, not replaced
            vetoed, actions = actions != proposed, proposed
        else:
            vetoed = actions != proposed
        rewards = np.zeros(n, np.float64)
        infos: list[dict[str, Any]] = [{} for _ in range(n)]
        live = np.ones(n, bool)
        for j in range(self.decision_every):
            _, r, term, trunc, info = env.step(actions if j == 0
                                               else np.full(n, self._idle))
            rewards += np.where(live, r, 0.0)
            new = (term | trunc) & live
            if new.any():
                rows = np.flatnonzero(new)
                for i, o in zip(rows, self._observe(rows), strict=True):
                    infos[i] = {"terminal_observation": o,
                                "TimeLimit.truncated": bool(trunc[i] and not term[i]),
                                "route_completion": float(info["route_completion"][i]),
                                "collision": bool(info["events"]["collision"][i]),
                                "off_road": bool(info["events"]["off_road"][i])}
                live &= ~new
                self._fresh[env.restart_ended()] = True
        self._fresh[env.restart_ended()] = True  # ended twice within one decision: rare
        self._actions = None
        if self.shields is not None:
            rewards -= self.shield_penalty * vetoed
            for k in range(n):
                infos[k]["executed_action"] = int(actions[k])
                infos[k]["shield_vetoed"] = bool(vetoed[k])
                if not live[k]:
                    self.shields[k].reset()
        return self._observe(), rewards.astype(np.float32), ~live, infos

    def _shielded(self, proposed: np.ndarray) -> np.ndarray:
        """The actions the shields let through, each on its env's latest scene."""
        assert self.shields is not None and self._scene is not None
        return np.array([(sh.advise if self.advise else sh.filter)(self._scene.scene(i), int(a))
                         for i, (sh, a) in enumerate(zip(self.shields, proposed, strict=True))],
                        np.int64)

    def _observe(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Feature vectors of every env (or of `rows` only, for a last observation before
        a restart: the tracking state is then left as it is)."""
        from planning.batch_scene import (
            batch_corrupt,
            batch_features,
            batch_gap_rates,
            batch_scene_from_world,
        )

        env = self.env
        bw = env.batch
        assert bw is not None
        if rows is None:  # the envs that start an episode: nothing remembered
            self.memory.reset(np.flatnonzero(self._fresh))
        if self.source == "perception":
            return self._perceive(rows)
        scene = batch_scene_from_world(bw, env.camera_spec)
        scene.target_speed, scene.lane_change = env.target_speeds, env.target_lane_changes
        if rows is not None:
            scene = scene.take(rows)
        if self.source == "privileged":
            if rows is None:
                self._scene = scene
            memory = self._remember(scene, rows)
            if rows is None:
                self._fresh[:] = False
            return batch_features(scene, memory, self.dim)
        sel = slice(None) if rows is None else rows
        steps = bw.world_steps.copy()
        ego = bw.ego
        front = (ego.wheelbase / 2 + ego.length / 2 - env.camera_spec.mount_forward)[sel]
        assert self.noise is not None
        noisy = batch_corrupt(scene, self.noise, self.rng, front)
        dt = np.where(self._fresh[sel], 0.0, (steps[sel] - self._prev_steps[sel]) * env.dt)
        prev = None if self._prev is None else (
            self._prev if rows is None else self._prev.take(rows))
        tracked = batch_gap_rates(prev, noisy, dt)
        memory = self._remember(tracked, rows)
        if rows is None:
            self._prev, self._prev_steps, self._fresh[:] = tracked, steps, False
            self._scene = tracked
        return batch_features(tracked, memory, self.dim)

    def _remember(self, scene: Any, rows: np.ndarray | None) -> np.ndarray | None:
        """The memory's features for `scene` (a `BatchScene` of every env, or of `rows`),
        one decision after the last; None when the feature set leaves them out."""
        from planning.features import PATH_FEATURE_DIM

        if self.dim <= PATH_FEATURE_DIM:
            return None
        return self.memory.update(scene.objects, scene.valid, scene.speed, scene.lane_offset,
                                  scene.lane_width, scene.lane_seen,
                                  self.decision_every * self.env.dt, rows)

    def _perceive(self, rows: np.ndarray | None) -> np.ndarray:
        """Feature vectors from perception: every env's frame drawn on the device
        (`DeviceCamera`), perceived there (`Perceiver.perceive_tensor`), each env's scene
        and gap rates as `PerceptionSource` makes them (tracked across its decisions,
        afresh after a restart), the controller's state, `features`."""
        from dataclasses import replace

        import torch

        from planning.features import features
        from planning.scene import scene_from_perception, with_gap_rates

        env = self.env
        bw = env.batch
        assert bw is not None
        images = self.camera.render(bw).images
        sel = np.arange(self.num_envs) if rows is None else np.asarray(rows)
        if rows is not None:
            images = images[torch.as_tensor(sel, device=images.device)]
        percs = self.perceiver.perceive_tensor(images)
        speeds, targets = bw.ego.speed, env.target_speeds
        changes, now = env.target_lane_changes, bw.world_steps * env.dt
        dim = int(self.observation_space.shape[0])  # type: ignore[index]
        out = np.empty((len(sel), dim), np.float32)
        for k, i in enumerate(sel):
            scene = scene_from_perception(percs[k], float(speeds[i]), env.camera_spec,
                                          bw.worlds[i].scenario.speed_limit)
            prev = None if self._fresh[i] else self._scenes[i]
            scene = with_gap_rates(prev, scene, 0.0 if prev is None
                                   else float(now[i] - self._times[i]))
            if rows is None:
                self._scenes[i], self._times[i] = scene, now[i]
            memory = self.memory.update_scene(scene, self.decision_every * env.dt, row=int(i))
            out[k] = features(replace(scene, target_speed=float(targets[i]),
                                      lane_change=int(changes[i])), memory)[:dim]
        if rows is None:
            self._fresh[:] = False
        return out

    def close(self) -> None:
        self.env.close()
        if self.camera is not None:
            self.camera.close()


class ParallelBatchVecEnv(_OneBatch):
    """`BatchPlannerVecEnv` split over `workers` processes (start method "spawn"): worker w
    steps its share of the envs as one batch, all workers at once, so training uses every
    core while the policy waits. Env i is env i of `BatchPlannerVecEnv(num_envs, ...)`: the
    same family, seed, observations, rewards and ends (the emulated noise comes from one
    generator per worker: other draws). Workers exit when this process dies."""

    def __init__(self, num_envs: int = 64, workers: int = 2, **kwargs: Any) -> None:
        import multiprocessing as mp

        from gymnasium import spaces

        from planning.features import CLIP
        from planning.wrappers import feature_dim
        from sim.actions import META_ACTIONS

        dim = feature_dim(kwargs.get("feature_set", "control"))
        if isinstance(workers, bool) or not isinstance(workers, int) or not (
                1 <= workers <= num_envs):
            raise ValueError(f"workers={workers!r} must be an int in 1..num_envs")
        families = tuple(kwargs.pop("families", ("highway", "rural", "urban")))
        noise_seed = int(kwargs.pop("noise_seed", 0))
        bounds = np.linspace(0, num_envs, workers + 1).astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:],
                                                              strict=True)]
        ctx = mp.get_context("spawn")
        self.remotes, self.processes = [], []
        for w, sl in enumerate(self.slices):
            mine = tuple(families[i % len(families)] for i in range(sl.start, sl.stop))
            local, remote = ctx.Pipe()
            proc = ctx.Process(target=_batch_worker, args=(remote, local, {
                **kwargs, "num_envs": sl.stop - sl.start, "families": mine,
                "noise_seed": noise_seed * 1000 + w}), daemon=True)
            proc.start()
            remote.close()
            self.remotes.append(local)
            self.processes.append(proc)
        for r in self.remotes:  # each worker says it is ready (or why it is not)
            try:
                status = r.recv()
            except EOFError:
                status = "it exited before it was ready"
            if status != "ready":
                self.close()
                raise RuntimeError(f"a batch worker failed to start: {status}")
        self.render_mode = None
        self._closed = False
        super().__init__(num_envs, spaces.Box(-CLIP, CLIP, shape=(dim,), dtype=np.float32),
                         spaces.Discrete(len(META_ACTIONS)))

    def reset(self) -> np.ndarray:
        for r, sl in zip(self.remotes, self.slices, strict=True):
            r.send(("reset", self._seeds[sl]))
        obs = np.concatenate([r.recv() for r in self.remotes])
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        a = np.asarray(actions).reshape(self.num_envs)
        for r, sl in zip(self.remotes, self.slices, strict=True):
            r.send(("step", a[sl]))

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        parts = [r.recv() for r in self.remotes]
        infos: list[dict[str, Any]] = []
        for p in parts:
            infos += p[3]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]), infos)

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        for r in self.remotes:
            try:
                r.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for p in self.processes:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        self._closed = True



def _batch_worker(remote: Any, parent_end: Any, kwargs: dict[str, Any]) -> None:
    """A `ParallelBatchVecEnv` worker: one `BatchPlannerVecEnv`, commands over a pipe."""
    from sim.fanout import end_with_parent

    parent_end.close()
    end_with_parent()
    try:
        env = BatchPlannerVecEnv(**kwargs)
    except Exception as exc:  # noqa: BLE001  (said to the parent, which raises it)
        remote.send(f"{type(exc).__name__}: {exc}")
        return
    remote.send("ready")
    while True:
        try:
            cmd, data = remote.recv()
        except EOFError:
            return
        if cmd == "reset":
            env._seeds = list(data)
            remote.send(env.reset())
        elif cmd == "step":
            env.step_async(data)
            remote.send(env.step_wait())
        else:
            env.close()
            remote.close()
            return
