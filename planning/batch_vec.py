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

from sim.vector import BatchDrivingEnv


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
        return [getattr(self.env, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        raise AttributeError(f"set_attr({attr_name!r}): the envs of a batch share one "
                             "BatchDrivingEnv; set it there (vec.env)")

    def env_method(self, method_name: str, *args: Any, indices: Any = None,
                   **kwargs: Any) -> list[Any]:
        raise AttributeError(f"env_method({method_name!r}): the envs of a batch share one "
                             "BatchDrivingEnv; call it there (vec.env)")

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices: Any) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)
