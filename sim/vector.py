"""BatchDrivingEnv: N driving envs in one process, stepped as one `BatchWorld` and drawn by
one `BatchCamera`: the scale-out path of `DrivingEnv` as a gymnasium `VectorEnv`.

    envs = gym.make_vec("drivestack/Highway-v0", num_envs=32,
                        vectorization_mode="vector_entry_point", obs_type="camera")

Env i behaves as a `DrivingEnv` reset with seed `seed + i` (or `seed[i]`) and given the
same actions: the same scenarios, frames, labels, rewards and ends, byte for byte
(tests/sim/test_vector.py), until it ends; then it restarts on the next scenario of its
own generator, as `DrivingEnv.reset()` without a seed would: on the next `step`
(gymnasium's next-step autoreset, the default) or at once, with the last observation in
`infos["final_obs"]` (`autoreset_mode="SameStep"`, what stable-baselines3 expects).
Physics costs one set of array operations for all envs instead of one per env, and the
frames come from the compiled renderer, so one core steps about 1,700 camera envs a
second (bench/README.md).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from sim.actions import (
    FASTER,
    IDLE,
    LANE_LEFT,
    LANE_RIGHT,
    MAX_ACCEL,
    MAX_BRAKE,
    MAX_STEER,
    META_ACTIONS,
    META_MIN_LOOKAHEAD,
    META_SPACE,
    SLOWER,
    SPEED_STEP,
    SpeedController,
    action_space,
    continuous_action,
    continuous_to_controls,
    shown,
)
from sim.config import ScenarioConfig, sample_scenario
from sim.env import camera_spec, env_settings, observation_space, scenario_config
from sim.observation import state_vector
from sim.render.batch import BatchCamera
from sim.rewards import RewardWeights, term_arrays, total_reward
from sim.types import CameraSpec
from sim.world.batch import BatchWorld, WorldView
from sim.world.world import World, min_headway, min_side_gap

if TYPE_CHECKING:
    from sim.render.device import DeviceCamera

_EVENT_KEYS = ("collision", "off_road", "min_ttc", "hard_brake", "npc_collisions")


class BatchDrivingEnv(VectorEnv):
    """`num_envs` driving envs of one scenario family (or `ScenarioConfig`) in one process.

    Arguments as `DrivingEnv`'s (no `render_mode`), and `scenarios`: one
    `ScenarioConfig` per env instead (a batch of mixed families). Observations, actions,
    rewards and
    infos are those of the N envs stacked: `infos["events"]` and `infos["rewards"]` map
    each name to an (N,) array, `infos["ground_truth"]` is an (N,) object array of
    `GroundTruth` (camera and dict observations)."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 8,
        scenario: ScenarioConfig | dict[str, Any] | None = None,
        family: str = "highway",
        obs_type: str = "camera",
        action_type: str = "continuous",
        camera: CameraSpec | dict[str, Any] | None = None,
        dt: float = 1.0 / 15.0,
        reward_weights: dict[str, float] | None = None,
        labels: bool | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        scenarios: list[ScenarioConfig] | None = None,
        device: str | None = None,
        render_threads: int = 1,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} must be an int >= 1")
        modes = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
        if AutoresetMode(autoreset_mode) not in modes:
            raise ValueError(f"autoreset_mode={autoreset_mode!r}; allowed: "
                             f"{', '.join(m.value for m in modes)}")
        self.metadata = {**self.metadata, "autoreset_mode": AutoresetMode(autoreset_mode)}
        dt, labels = env_settings(dt, labels)
        self.config: ScenarioConfig = scenario_config(scenario, family)
        if scenarios is not None and (len(scenarios) != num_envs or not all(
                isinstance(c, ScenarioConfig) for c in scenarios)):
            raise ValueError(f"scenarios: {num_envs} ScenarioConfig, one per env")
        self.configs: list[ScenarioConfig] = (list(scenarios) if scenarios is not None
                                              else [self.config] * num_envs)
        """The scenario ranges env i samples from (`scenarios`, or `scenario`/`family`
        for all): one batch may mix families."""
        self.num_envs = num_envs
        self.camera_spec = camera_spec(camera)
        self.single_observation_space = observation_space(self.camera_spec, obs_type)
        self.obs_type, self.action_type, self.dt = obs_type, action_type, float(dt)
        self.reward_weights = RewardWeights.from_dict(reward_weights)
        self.labels = obs_type != "state" if labels is None else bool(labels)
        self.single_action_space = action_space(action_type)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.device: Any = None
        """None: numpy in and out (the default). A torch device ("cuda", "cpu"): the
        frames are drawn on it (`sim.render.device.DeviceCamera`) and observations,
        rewards, terminated and truncated come back as torch tensors on it; actions may
        be tensors on any device. Physics stays on the host; infos stay numpy.
        `render_threads`: host threads recording the frames' polygons
        (`DeviceCamera(threads=...)`)."""
        self.camera: BatchCamera | DeviceCamera
        if device is None:
            self.camera = BatchCamera(self.camera_spec, num_envs)
        else:
            import torch

            from sim.render.device import DeviceCamera

            try:
                self.device = torch.device(device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"device={device!r}: not a torch device ({exc})") from None
            self.camera = DeviceCamera(self.camera_spec, num_envs, self.device,
                                       threads=render_threads)
        self.batch: BatchWorld | None = None
        self._rngs = [seeding.np_random(None)[0] for _ in range(num_envs)]
        # the meta-action controllers of all envs as arrays (`MetaController` per env,
        # value for value): target lane, target speed, speed PI integral, speed limit
        self._target_lane = np.zeros(num_envs, np.int64)
        self._target_speed = np.zeros(num_envs)
        self._integral = np.zeros(num_envs)
        self._limit = np.zeros(num_envs)
        self._autoreset = np.zeros(num_envs, bool)
        self._scenario_info = np.empty(num_envs, dtype=object)
        self.state_observations = True
        """With obs_type "state": compute the state vectors. A wrapper that builds its own
        observations from `self.batch` (planning.batch_vec) sets it False: `step` and
        `reset` then return zeros of the state shape and skip the per-env work."""
        self.npc_collisions = True
        """Count NPC-NPC collisions in `infos["events"]`; False (planning.batch_vec, which
        does not use them): zeros, and the pairwise test is skipped."""

    # -- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if options:
            raise ValueError(f"unknown reset option(s) {sorted(options)}; allowed: none")
        if seed is None or isinstance(seed, int | np.integer):
            seeds: list[int | None] = [None if seed is None else int(seed) + i
                                       for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        if seed is not None or self.batch is None:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        self.batch = BatchWorld([self._next_scenario(i) for i in range(self.num_envs)], self.dt)
        self.batch.count_npc_collisions = self.npc_collisions
        for i in range(self.num_envs):
            self._start(i)
        self._autoreset[:] = False
        obs, infos = self._observe(self.batch.events(), {})
        return self._to_device(obs), infos

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """gymnasium's vector step; with a `device`, tensors on it instead of arrays."""
        bw = self._require_batch()
        n = self.num_envs
        restart = self._autoreset.copy()
        if self.device is not None and hasattr(actions, "detach"):
            actions = actions.detach().cpu().numpy()
        actions = self._check_actions(actions)
        steer, accel = np.zeros(n), np.zeros(n)
        if self.action_type == "meta":
            steer, accel = self._meta_controls(actions, ~restart)
        else:
            for i in np.flatnonzero(~restart):
                steer[i], accel[i] = continuous_to_controls(actions[i])
        prev_accel = bw.ego.accel.copy()
        events = bw.step(steer, accel)
        for i in np.flatnonzero(restart):
            bw.replace(int(i), self._next_scenario(int(i)))
            self._start(int(i))
        if restart.any():
            events = bw.events()
        terms = self._terms(events, prev_accel)
        for t in terms.values():
            t[restart] = 0.0  # a restarted env reports as `DrivingEnv.reset` does
        rewards = np.where(restart, 0.0, total_reward(terms, self.reward_weights))
        terminated = ~restart & (events["collision"] | events["off_road"])
        seconds = np.array([w.scenario.episode_seconds for w in bw.worlds])
        routes = np.array([w.road.route_length for w in bw.worlds])
        truncated = ~restart & ((bw.world_steps * self.dt >= seconds - 1e-9)
                                | (bw.ego.s >= routes))
        obs, infos = self._observe(events, terms)
        done = terminated | truncated
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP and done.any():
            obs, infos = self._restart_now(done, obs, infos)
        else:
            self._autoreset = done
        if self.device is None:
            return obs, rewards, terminated, truncated, infos
        import torch

        dev = self.device
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                infos["final_obs"][i] = self._to_device(infos["final_obs"][i])
        return (self._to_device(obs), torch.as_tensor(rewards, dtype=torch.float32, device=dev),
                torch.as_tensor(terminated, device=dev), torch.as_tensor(truncated, device=dev),
                infos)

    def _to_device(self, obs: Any) -> Any:
        """Observations as tensors on `self.device` (the frames are there already)."""
        if self.device is None:
            return obs
        import torch

        def put(x: Any) -> Any:
            return x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device=self.device)

        return {k: put(v) for k, v in obs.items()} if isinstance(obs, dict) else put(obs)

    @property
    def target_speeds(self) -> np.ndarray:
        """(B,) each env's meta-action controller target speed [m/s] (a copy;
        `DrivingEnv.target_speed`)."""
        return np.asarray(self._target_speed, np.float64).copy()

    @property
    def target_lane_changes(self) -> np.ndarray:
        """(B,) int64: the lane each env's controller steers to, relative to the ego's lane
        (`DrivingEnv.target_lane_change`)."""
        bw = self._require_batch()
        lane = bw.roads.lane_of(bw.ego.d[:, None])[:, 0]
        return (np.asarray(self._target_lane, np.int64) - lane.astype(np.int64))

    def restart_ended(self) -> np.ndarray:
        """Next-step autoreset mode: start the envs whose episode ended in the last `step`
        now, as that step would have (their worlds can be read first, e.g. for a last
        observation). Returns their indices; the next `step` then steps them normally."""
        bw = self._require_batch()
        idx = np.flatnonzero(self._autoreset)
        for i in idx:
            bw.replace(int(i), self._next_scenario(int(i)))
            self._start(int(i))
        self._autoreset[idx] = False
        return idx

    # -- pieces --------------------------------------------------------------------------
    def _restart_now(self, done: np.ndarray, obs: Any, infos: dict[str, Any]
                     ) -> tuple[Any, dict[str, Any]]:
        """Same-step autoreset: the envs that ended start again at once; their last
        observation and info go to infos["final_obs"] and infos["final_info"]."""
        bw = self._require_batch()
        idx = np.flatnonzero(done)
        final_obs = np.empty(self.num_envs, dtype=object)
        for i in idx:  # one by one: a list of arrays would be read as one array
            final_obs[i] = ({k: _row_copy(v, int(i)) for k, v in obs.items()}
                            if self.obs_type == "dict" else _row_copy(obs, int(i)))
        final_info = _copy_info(infos)
        for i in idx:
            bw.replace(int(i), self._next_scenario(int(i)))
            self._start(int(i))
        events, poses = bw.events(), bw.actor_poses()
        images = obs["camera"] if self.obs_type == "dict" else obs
        drawn = None
        if self.device is not None and self.obs_type != "state":
            # the device camera draws the whole batch: the envs that carry on get the
            # frames they had (same state, same step), the restarted ones their first
            drawn = self._draw_on_device(bw, [bw.view(i, poses) for i in range(self.num_envs)],
                                         "ground_truth" in infos)
            images.copy_(drawn[0])
        for i in idx:  # only the restarted envs are observed again
            view = bw.view(int(i), poses)
            if drawn is not None:
                if drawn[1] is not None:
                    infos["ground_truth"][i] = drawn[1][i]
            elif "ground_truth" in infos:
                assert isinstance(self.camera, BatchCamera)
                frame = self.camera.render_one(int(i), view,
                                               images[i] if self.obs_type != "state" else None)
                infos["ground_truth"][i] = frame.ground_truth
            if self.obs_type != "camera":
                (obs["state"] if self.obs_type == "dict" else obs)[i] = state_vector(
                    cast(World, view))
            for k in _EVENT_KEYS:
                infos["events"][k][i] = events[k][i]
            for v in infos["rewards"].values():
                v[i] = 0.0
            infos["step"][i], infos["speed"][i] = bw.world_steps[i], bw.ego.speed[i]
            infos["route_completion"][i] = 0.0
            infos["scenario"][i] = self._scenario_info[i]
        infos.update({"final_obs": final_obs, "_final_obs": done.copy(),
                      "final_info": final_info, "_final_info": done.copy()})
        return obs, infos

    def _terms(self, events: dict[str, np.ndarray], prev_accel: np.ndarray
               ) -> dict[str, np.ndarray]:
        """`reward_terms` of every env at once, from the batch's arrays."""
        bw = self._require_batch()
        ego, roads = bw.ego, bw.roads
        heading = roads.to_world(ego.s[:, None], np.zeros((self.num_envs, 1)))[2][:, 0]
        lane_center = roads.lane_center(roads.lane_of(ego.d[:, None]))[:, 0]
        return term_arrays(
            speed=ego.speed, yaw=ego.yaw, heading=heading, d=ego.d, lane_center=lane_center,
            lane_width=roads.lane_width[:, 0], accel=ego.accel, prev_accel=prev_accel,
            dt=self.dt, limit=np.array([w.scenario.speed_limit for w in bw.worlds]),
            collision=events["collision"], off_road=events["off_road"],
            min_ttc=events["min_ttc"], min_headway=min_headway(bw.actors, bw.ego),
            min_side_gap=min_side_gap(bw.actors, bw.ego))

    def _require_batch(self) -> BatchWorld:
        if self.batch is None:
            raise RuntimeError("call reset() before step()")
        return self.batch

    def _next_scenario(self, i: int) -> Any:
        """Env i's next scenario, drawn as `DrivingEnv.reset` draws it."""
        return sample_scenario(self.configs[i], int(self._rngs[i].integers(0, 2**31 - 1)))

    def _start(self, i: int) -> None:
        """Fresh per-episode state of env i (its meta-action controller)."""
        bw = self._require_batch()
        ego, road = bw.ego.one(i), bw.worlds[i].road
        self._scenario_info[i] = asdict(bw.worlds[i].scenario)
        self._target_lane[i] = int(road.lane_of(ego.d))
        self._target_speed[i] = ego.speed
        self._integral[i] = 0.0
        self._limit[i] = bw.worlds[i].scenario.speed_limit

    def _check_actions(self, actions: Any) -> np.ndarray:
        """The step's actions as an array, or one clear error."""
        if self.action_type == "continuous":
            return continuous_action(actions, (self.num_envs, 2))
        try:
            a = np.asarray(actions)
        except (ValueError, TypeError):  # ragged nested lists
            a = np.asarray(None)
        f = a.astype(float) if a.dtype.kind in "iuf" else np.array([np.nan])
        if a.shape != (self.num_envs,) or not np.isfinite(f).all() or (
                f != f.round()).any() or (f < 0).any() or (f >= len(META_ACTIONS)).any():
            raise ValueError(f"meta actions must be {self.num_envs} integers in 0..4 "
                             f"(shape ({self.num_envs},)) of {META_SPACE}; got "
                             f"{shown(actions)}")
        return f.astype(np.int64)

    def _meta_controls(self, actions: np.ndarray, live: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """(steer, accel) of every env from its meta action, `MetaController.apply` then
        `.controls` for all envs at once (envs not `live` keep their controller state and
        get zeros)."""
        bw = self._require_batch()
        ego, roads = bw.ego, bw.roads
        a = np.where(live, actions, IDLE)
        n_lanes = roads.n_lanes[:, 0]
        lane = self._target_lane
        lane = np.where(a == LANE_LEFT, np.minimum(lane + 1, n_lanes - 1), lane)
        lane = np.where(a == LANE_RIGHT, np.maximum(lane - 1, 0), lane)
        speed = self._target_speed
        speed = np.where(a == FASTER, np.minimum(speed + SPEED_STEP, 1.2 * self._limit), speed)
        speed = np.where(a == SLOWER, np.maximum(speed - SPEED_STEP, 0.0), speed)
        self._target_lane, self._target_speed = lane, speed
        # pure pursuit toward the target lane's centre line, as `pure_pursuit`
        lookahead = np.maximum(META_MIN_LOOKAHEAD, 1.0 * ego.speed)
        target_d = roads.lane_center(lane[:, None])
        px, py, _ = roads.to_world((ego.s + lookahead)[:, None], target_d)
        dx, dy = px[:, 0] - ego.x, py[:, 0] - ego.y
        c, sn = np.cos(ego.yaw), np.sin(ego.yaw)
        lx, ly = c * dx + sn * dy, -sn * dx + c * dy
        dist2 = np.maximum(lx * lx + ly * ly, 1e-6)
        steer = np.arctan(2.0 * ego.wheelbase * ly / dist2)
        steer = np.minimum(np.maximum(steer, -MAX_STEER), MAX_STEER)
        # the speed PI controller, as `SpeedController`
        pid = SpeedController()
        err = speed - ego.speed
        integral = np.minimum(np.maximum(self._integral + err * self.dt, -5.0), 5.0)
        self._integral = np.where(live, integral, self._integral)
        accel = np.minimum(np.maximum(pid.kp * err + pid.ki * integral, -MAX_BRAKE), MAX_ACCEL)
        return np.where(live, steer, 0.0), np.where(live, accel, 0.0)

    def _observe(self, events: dict[str, np.ndarray], terms: dict[str, np.ndarray],
                 views: list[WorldView] | None = None) -> tuple[Any, dict[str, Any]]:
        bw = self._require_batch()
        n = self.num_envs
        render = self.obs_type != "state" or self.labels
        states = self.obs_type != "camera" and (self.state_observations
                                                or self.obs_type != "state")
        if views is None and (render or states):
            poses = bw.actor_poses()
            views = [bw.view(i, poses) for i in range(n)]
        frames: list[Any] | None = None
        images: Any = None
        if render and self.device is not None:
            assert views is not None
            images, frames = self._draw_on_device(bw, views, self.labels)
        elif render:
            assert views is not None
            assert isinstance(self.camera, BatchCamera)
            spec = self.camera_spec
            images = np.empty((n, spec.height, spec.width, 3), np.uint8)
            frames = [f.ground_truth for f in self.camera.render(bw, views, out=images)]
        if states:
            assert views is not None
            state = np.stack([state_vector(cast(World, v)) for v in views])
        elif self.obs_type == "state":
            state = np.zeros((n, *cast(tuple[int, ...], self.single_observation_space.shape)),
                             np.float32)
        infos: dict[str, Any] = {
            "events": {k: np.asarray(events[k]) for k in _EVENT_KEYS},
            "rewards": terms,
            "step": bw.world_steps.copy(),
            "speed": bw.ego.speed.copy(),
            "route_completion": np.clip(
                bw.ego.s / np.array([w.road.route_length for w in bw.worlds]), 0.0, 1.0),
            "scenario": self._scenario_info.copy(),
        }
        if frames is not None:
            gts = np.empty(n, dtype=object)
            gts[:] = frames
            infos["ground_truth"] = gts
        if self.obs_type == "camera":
            return images, infos
        if self.obs_type == "state":
            return state, infos
        return {"camera": images, "state": state}, infos


    def _draw_on_device(self, bw: BatchWorld, views: list[WorldView], labels: bool
                        ) -> tuple[Any, list[Any] | None]:
        """The frames on the device (a new tensor: the camera's buffer is drawn over at
        the next step) and, when `labels`, every env's labels (the id buffers copied to
        the host for them)."""
        from sim.render.device import DeviceCamera

        assert isinstance(self.camera, DeviceCamera)
        drawn = self.camera.render(bw, views)
        return drawn.images.clone(), (drawn.ground_truth() if labels else None)


def _row_copy(x: Any, i: int) -> Any:
    """A copy of row i of a numpy array or a torch tensor."""
    return x[i].clone() if hasattr(x, "clone") else x[i].copy()


def _copy_info(infos: dict[str, Any]) -> dict[str, Any]:
    """A copy of a vector info whose arrays (and nested dicts of arrays) are new."""
    return {k: _copy_info(v) if isinstance(v, dict) else np.array(v, copy=True)
            for k, v in infos.items()}
