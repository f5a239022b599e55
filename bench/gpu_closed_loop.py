#!/usr/bin/env python
"""The closed loop with perception in it, a batch of worlds at a time, on a device
(issue 17): render -> detect + lanes -> features -> policy -> physics.

    python bench/gpu_closed_loop.py --device cuda --envs 256 1024 4096   # on a GPU machine
    python bench/gpu_closed_loop.py --quick                              # CPU smoke check

B envs of the three families (`gym.make_vec(..., device=...)`: the frames are drawn on
the device by `DeviceCamera` and stay there) step together. Each step: the envs' frames
go through `Perceiver.perceive_tensor` (on CUDA, the detector and the lane model read the
device tensor; no box refiner: it crops on the host), each env's scene is made from its
perception (`scene_from_perception`, gap rates tracked across its decisions, the meta
controller's state), the shipped policy (`planning/weights/planner.zip`, on the device)
picks every env's meta action, and the physics steps. `--decide-every 3` perceives and
decides on every 3rd simulator step, as `drivestack run` does; 1 (the default) does all
of it on every step. Stage times (synchronised) are printed; steps/s counts simulator
steps of all envs.

Prints human-readable lines, then ONE JSON object with all figures as the last line.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from perception.perceiver import Perceiver  # noqa: E402
from planning.features import features  # noqa: E402
from planning.memory import NeighbourMemory  # noqa: E402
from planning.policy import load_policy  # noqa: E402
from planning.scene import Scene, scene_from_perception, with_gap_rates  # noqa: E402
from sim.config import family_config  # noqa: E402
from sim.vector import BatchDrivingEnv  # noqa: E402

POLICY = os.path.join(ROOT, "planning", "weights", "planner.zip")
STAGES = ("physics_and_render", "perception", "scenes_and_features", "policy")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Loop:
    """B envs with perception and the policy in the loop."""

    def __init__(self, n: int, device: str, decide_every: int, threads: int = 1,
                 seed: int = 0) -> None:
        self.device, self.decide_every = device, decide_every
        cfgs = [family_config(("highway", "rural", "urban")[i % 3]) for i in range(n)]
        self.env = BatchDrivingEnv(n, scenarios=cfgs, obs_type="camera", action_type="meta",
                                   labels=False, device=device, render_threads=threads)
        self.perceiver = Perceiver(device=device, refine=False, lane_backend="torch"
                                   if device.startswith("cuda") else "auto")
        self.model = load_policy(POLICY, device)
        self.obs, _ = self.env.reset(seed=seed)
        self.prev: list[Scene | None] = [None] * n
        self.memory = NeighbourMemory(n)
        self.actions = np.full(n, 1, np.int64)  # IDLE until the first decision
        self.t = 0
        self.times = dict.fromkeys(STAGES, 0.0)
        self.decisions = 0

    def step(self) -> None:
        env, n = self.env, self.env.num_envs
        clock = time.perf_counter
        if self.t % self.decide_every == 0:
            t0 = clock()
            percs = self.perceiver.perceive_tensor(self.obs)
            sync(self.device)
            t1 = clock()
            bw = env.batch
            assert bw is not None
            speeds, limits = bw.ego.speed, [w.scenario.speed_limit for w in bw.worlds]
            targets, changes = env.target_speeds, env.target_lane_changes
            dt = env.dt * self.decide_every
            dim = int(self.model.observation_space.shape[0])  # a legacy policy: a prefix
            x = np.empty((n, dim), np.float32)
            for i, p in enumerate(percs):
                s = scene_from_perception(p, float(speeds[i]), env.camera_spec, limits[i])
                s = with_gap_rates(self.prev[i], s, dt)
                self.prev[i] = s
                memory = self.memory.update_scene(s, dt, row=i)
                x[i] = features(dataclasses.replace(s, target_speed=float(targets[i]),
                                                    lane_change=int(changes[i])), memory)[:dim]
            t2 = clock()
            with torch.inference_mode():
                act, _ = self.model.policy.predict(x, deterministic=True)
            self.actions = np.asarray(act, np.int64)
            sync(self.device)
            t3 = clock()
            self.times["perception"] += t1 - t0
            self.times["scenes_and_features"] += t2 - t1
            self.times["policy"] += t3 - t2
            self.decisions += n
        t4 = clock()
        self.obs, _, terminated, truncated, _ = env.step(self.actions)
        sync(self.device)
        self.times["physics_and_render"] += clock() - t4
        done = (terminated | truncated).cpu().numpy()
        for i in np.flatnonzero(done):
            self.prev[i] = None  # a new episode next step
            self.memory.reset([i])
        self.t += 1


def run(n: int, device: str, decide_every: int, seconds: float, threads: int
        ) -> dict[str, Any]:
    loop = Loop(n, device, decide_every, threads)
    for _ in range(2 * decide_every):  # warm-up (compiles, cudnn autotune)
        loop.step()
    loop.times = dict.fromkeys(STAGES, 0.0)
    loop.decisions, steps = 0, 0
    t0 = time.perf_counter()
    while steps < 3 * decide_every or time.perf_counter() - t0 < seconds:
        loop.step()
        steps += 1
    wall = time.perf_counter() - t0
    out = {"envs": n, "device": device, "decide_every": decide_every, "threads": threads,
           "steps_per_s": n * steps / wall, "decisions_per_s": loop.decisions / wall,
           "wall_s": wall, "steps": steps,
           "stage_ms_per_step": {k: 1e3 * v / steps for k, v in loop.times.items()},
           "tensor_path": loop.perceiver.tensor_path(loop.obs)}
    if device.startswith("cuda"):
        out["gpu_mem_mb_per_1000_envs"] = torch.cuda.max_memory_allocated() / 2**20 * 1000 / n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--envs", type=int, nargs="+", default=[8, 32])
    p.add_argument("--decide-every", type=int, nargs="+", default=[1, 3])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1,
                   help="host threads recording the frames' polygons")
    p.add_argument("--quick", action="store_true", help="smoke check: 4 envs, 0.5 s")
    args = p.parse_args()
    if args.quick:
        args.envs, args.seconds, args.decide_every = [4], 0.5, [1]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out: dict[str, Any] = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                           "gpu": gpu, "threads": torch.get_num_threads(), "runs": []}
    for k in args.decide_every:
        for n in args.envs:
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            r = run(n, args.device, k, args.seconds, args.threads)
            out["runs"].append(r)
            stages = ", ".join(f"{s} {v:.1f}" for s, v in r["stage_ms_per_step"].items())
            mem = (f", {r['gpu_mem_mb_per_1000_envs']:,.0f} MB GPU per 1,000 envs"
                   if "gpu_mem_mb_per_1000_envs" in r else "")
            print(f"{args.device} B={n} decide every {k}: {r['steps_per_s']:,.0f} steps/s, "
                  f"{r['decisions_per_s']:,.0f} decisions/s (ms a step: {stages}; frames "
                  f"stay on the device: {r['tensor_path']}){mem}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
