#!/usr/bin/env python
"""drivestack vs highway-env speed, side by side in one run, pinned to one CPU core.

    python bench/sim_speed.py              # 10 s timed per figure, ~3 minutes in all
    python bench/sim_speed.py --quick      # smoke check, 1.5 s per figure
    python bench/sim_speed.py --profile    # cProfile of the drivestack 50-vehicle state env
                                           # and camera env (prints tables, no JSON)

Prints human-readable lines, then ONE JSON object with all figures as the last line.
Only step calls are timed; resets (after a crash, off-road or the end of the road) run
outside the timed section and are counted and timed apart. The figures compared with
each other are measured in interleaved rounds, so that load from other processes on the
machine falls on both simulators alike.
"""

from __future__ import annotations

import os
import sys

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
for _var in THREAD_VARS:  # before numpy is imported anywhere
    os.environ[_var] = "1"
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # highway-env draws with pygame
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import sim  # noqa: E402, F401  (registers drivestack/*)
from sim.actions import MAX_STEER, continuous_to_controls  # noqa: E402
from sim.autopilot import Autopilot  # noqa: E402
from sim.config import ScenarioConfig, family_config, sample_scenario  # noqa: E402
from sim.render.batch import BatchCamera  # noqa: E402
from sim.types import CameraSpec  # noqa: E402
from sim.vector import BatchDrivingEnv  # noqa: E402
from sim.world.batch import BatchWorld  # noqa: E402
from sim.world.world import World  # noqa: E402

cv2.setNumThreads(1)
warnings.filterwarnings("ignore")
DT = 1.0 / 15.0
DS_ACTION = np.array([0.0, 0.2], dtype=np.float32)
IDLE = 1  # highway-env DiscreteMetaAction
CAMERA_CFG = family_config("highway", vehicles=(20, 20))  # + 0-1 cone group, 0-1 stalled
TARGETS = {"ratio_physics_20": 50.0, "ratio_physics_50": 50.0, "ratio_camera": 30.0,
           "ratio_camera_batched": 30.0, "ratio_camera_vec": 30.0,
           "ratio_physics_20_batched": 50.0, "ratio_physics_50_batched": 50.0}


@dataclass
class Run:
    """Counters of one measurement, summed over its rounds."""

    steps: int = 0
    step_s: float = 0.0  # wall time inside the timed step calls
    aux_s: float = 0.0  # part of step_s a step function books apart (the autopilot)
    resets: int = 0
    reset_s: float = 0.0
    errors: int = 0  # steps/resets that raised: such a step is not counted, its time is
    actors: list[int] = field(default_factory=list)


@dataclass
class Case:
    """One thing to time: `step` returns True when the episode is over."""

    step: Callable[[Run], bool]
    reset: Callable[[], Any]
    actors: Callable[[], int]
    sim_s_per_step: float
    info: dict[str, Any] = field(default_factory=dict)
    tolerate: tuple[type[Exception], ...] = ()  # counted as errors, then a new episode
    run: Run = field(default_factory=Run)

    def loop(self, seconds: float, run: Run) -> None:
        start = run.step_s
        while run.step_s - start < seconds:
            t0 = time.perf_counter()
            try:
                done = self.step(run)
            except self.tolerate:
                done = None
            run.step_s += time.perf_counter() - t0
            if done is None:
                run.errors += 1
            else:
                run.steps += 1
                run.actors.append(self.actors())
            if done is not False:
                t0 = time.perf_counter()
                for _ in range(20):
                    try:
                        self.reset()
                        break
                    except self.tolerate:
                        run.errors += 1
                else:
                    raise RuntimeError("20 resets in a row failed")
                run.reset_s += time.perf_counter() - t0
                run.resets += 1

    def summary(self, exclude_aux: bool = False) -> dict[str, Any]:
        r = self.run
        wall = r.step_s - (r.aux_s if exclude_aux else 0.0)
        return {"steps": r.steps, "timed_s": round(wall, 3),
                "steps_per_s": round(r.steps / wall, 2),
                "sim_s_per_s": round(r.steps * self.sim_s_per_step / wall, 2),
                "sim_s_per_s_incl_resets": round(
                    r.steps * self.sim_s_per_step / (wall + r.reset_s), 2),
                "resets": r.resets, "reset_s": round(r.reset_s, 3), "errors": r.errors,
                "mean_actors": round(float(np.mean(r.actors)), 2) if r.actors else 0.0,
                **self.info}


def measure(cases: dict[str, Case], budget: float, warmup: float, rounds: int) -> None:
    """Warm each case up, then time them in `rounds` interleaved slices of the budget."""
    for case in cases.values():
        case.loop(warmup, Run())
    for _ in range(rounds):
        for case in cases.values():
            case.loop(budget / rounds, case.run)


# -- drivestack ------------------------------------------------------------------------
def ds_physics_config(n: int) -> ScenarioConfig:
    return family_config("highway", vehicles=(n, n), cyclists=(0, 0), pedestrians=(0, 0),
                         cone_groups=(0, 0), stalled=(0, 0), lanes=(4, 4), road_length=20000.0)


def ds_world(n: int) -> Case:
    """World.step driven by the Autopilot; the autopilot's time is booked in aux_s."""
    cfg, box = ds_physics_config(n), {"seed": 0}

    def reset() -> None:
        box["world"] = World(sample_scenario(cfg, box["seed"]), dt=DT)
        box["ap"] = Autopilot()
        box["seed"] += 1

    def step(run: Run) -> bool:
        world = box["world"]
        t0 = time.perf_counter()
        controls = continuous_to_controls(box["ap"].act(world))
        run.aux_s += time.perf_counter() - t0
        ev = world.step(*controls)
        end = world.state.ego.s > world.road.route_length - 500.0
        return bool(ev.collision or ev.off_road or end)

    reset()
    return Case(step, reset, lambda: int(box["world"].state.actors.active.sum()), DT)


BATCH = 32
"""Worlds stepped together by the batched figure."""
ROAD_END_M = 19000.0
"""A batch restarts when its median ego passes this arc length of the 20 km road [m]."""


def ds_batch(cfg: ScenarioConfig, camera: bool = False) -> Case:
    """BatchWorld: BATCH worlds of `cfg` stepped as one set of arrays; with `camera`,
    every world's frame and labels drawn by `BatchCamera` after each step. The egos keep
    their lane with a vectorized proportional steer, booked in aux_s like the autopilot;
    simulated time counts every world. A new batch starts when the median ego nears the
    end of its road (physics: ROAD_END_M of the 20 km road)."""
    box: dict[str, Any] = {"seed": 0}

    def reset() -> None:
        seeds = range(box["seed"], box["seed"] + BATCH)
        bw = box["bw"] = BatchWorld([sample_scenario(cfg, s) for s in seeds], dt=DT)
        box["cam"] = BatchCamera(CameraSpec(), BATCH) if camera else None
        box["end"] = (np.array([w.road.route_length for w in bw.worlds]) - 50.0 if camera
                      else np.full(BATCH, ROAD_END_M))
        box["seed"] += BATCH

    def step(run: Run) -> bool:
        bw = box["bw"]
        t0 = time.perf_counter()
        steer = lane_keep(bw)
        run.aux_s += time.perf_counter() - t0
        bw.step(steer, np.full(BATCH, 0.3 if camera else 0.0))
        if box["cam"] is not None:
            box["cam"].render(bw)
        return bool(np.median(bw.ego.s - box["end"]) > 0.0)

    reset()
    info = {"worlds": BATCH, **({"frame_px": "320x192"} if camera else {})}
    return Case(step, reset, lambda: int(box["bw"].actors.active.sum(axis=1).mean()),
                DT * BATCH, info=info)


def lane_keep(bw: BatchWorld) -> np.ndarray:
    """(B,) steering that keeps every ego in its lane (vectorized proportional control)."""
    ego, roads = bw.ego, bw.roads
    heading = roads.to_world(ego.s[:, None], np.zeros((len(bw), 1)))[2][:, 0]
    herr = np.angle(np.exp(1j * (ego.yaw - heading)))
    offset = ego.d - roads.lane_center(roads.lane_of(ego.d[:, None]))[:, 0]
    return np.clip(-0.8 * herr - 0.15 * offset, -0.5, 0.5)


def ds_vec_camera() -> Case:
    """`BatchDrivingEnv` (the gymnasium VectorEnv of `gym.make_vec(...,
    vectorization_mode="vector_entry_point")`) with BATCH camera envs of the
    `drivestack_camera` scenario: steps include rewards, infos with labels, and the
    autoresets of envs that ended. The actions keep each ego in its lane (computed from
    the batch's state, booked in aux_s)."""
    env = BatchDrivingEnv(BATCH, scenario=CAMERA_CFG, obs_type="camera")
    env.reset(seed=0)
    actions = np.zeros((BATCH, 2), np.float32)

    def step(run: Run) -> bool:
        t0 = time.perf_counter()
        assert env.batch is not None
        actions[:, 0] = lane_keep(env.batch) / MAX_STEER
        actions[:, 1] = 0.2
        run.aux_s += time.perf_counter() - t0
        env.step(actions)
        return False

    return Case(step, lambda: None, lambda: int(env.batch.actors.active.sum(axis=1).mean())
                if env.batch is not None else 0, DT * BATCH,
                info={"worlds": BATCH, "frame_px": "320x192"})


def ds_env(obs_type: str, cfg: ScenarioConfig) -> Any:
    env = gym.make("drivestack/Highway-v0", obs_type=obs_type, scenario=cfg).unwrapped
    for seed in range(20):  # a label crash could hit reset too (bench/README.md)
        try:
            env.reset(seed=seed)
            return env
        except ValueError:
            pass
    raise RuntimeError("drivestack env reset failed for seeds 0..19")


def ds_env_case(obs_type: str, cfg: ScenarioConfig) -> Case:
    env = ds_env(obs_type, cfg)

    def step(run: Run) -> bool:
        _, _, term, trunc, _ = env.step(DS_ACTION)
        return bool(term or trunc)

    info = {"frame_px": f"{env.camera_spec.width}x{env.camera_spec.height}"}
    # ValueError: the label crash fixed in a323fdc; a regression is counted, not fatal
    return Case(step, env.reset, lambda: int(env.world.state.actors.active.sum()), DT,
                info if obs_type == "camera" else {}, tolerate=(ValueError,))


# -- highway-env -----------------------------------------------------------------------
def hw_physics_config(n: int) -> dict[str, Any]:
    return {"vehicles_count": n, "simulation_frequency": 15, "policy_frequency": 15,
            "lanes_count": 4, "duration": 10**6, "offscreen_rendering": True}


def hw_env(env_id: str, config: dict[str, Any] | None, render_mode: str | None = None) -> Any:
    import highway_env  # noqa: F401  (registers highway-v0, highway-fast-v0)

    env = gym.make(env_id, config=config or {}, render_mode=render_mode).unwrapped
    env.reset(seed=0)
    return env


def hw_case(env_id: str, config: dict[str, Any] | None, render: bool = False) -> Case:
    env = hw_env(env_id, config, "rgb_array" if render else None)

    def step(run: Run) -> bool:
        _, _, term, trunc, _ = env.step(IDLE)
        if render:
            env.render()
        return bool(term or trunc)

    cfg = env.config
    info = {"sim_hz": cfg["simulation_frequency"], "policy_hz": cfg["policy_frequency"],
            "vehicles_count": cfg["vehicles_count"]}
    if render:  # once render() ran, highway-env also draws every intermediate sim frame
        info.update(frame_px=f"{cfg['screen_width']}x{cfg['screen_height']}",
                    frames_drawn_per_step=cfg["simulation_frequency"] // cfg["policy_frequency"])
    return Case(step, env.reset, lambda: len(env.road.vehicles) - 1,
                1.0 / cfg["policy_frequency"], info)


# -- memory (each case in a fresh subprocess) --------------------------------------------
MEM_CASES: dict[str, Callable[[], Any]] = {
    "drivestack_camera": lambda: ds_env("camera", CAMERA_CFG),
    "drivestack_state": lambda: ds_env("state", CAMERA_CFG),
    "highway_v0": lambda: hw_env("highway-v0", None),
    "highway_fast_v0": lambda: hw_env("highway-fast-v0", None),
}


def rss_mb() -> float:
    """Resident set size now (what psutil's rss reports, without needing psutil)."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def mem_child(case: str, extra: int) -> None:
    """In a fresh process: RSS after imports, after one env (made + reset), per extra env."""
    if case.startswith("highway"):
        import highway_env  # noqa: F401
    base = rss_mb()
    envs = [MEM_CASES[case]()]
    one = rss_mb()
    envs += [MEM_CASES[case]() for _ in range(extra)]
    print(json.dumps({"after_imports_mb": round(base, 1), "first_env_mb": round(one - base, 2),
                      "per_extra_env_mb": round((rss_mb() - one) / max(extra, 1), 2)}))


def memory(extra: int) -> dict[str, Any]:
    out = {}
    for case in MEM_CASES:
        cmd = [sys.executable, os.path.abspath(__file__), "--mem-child", case, "--mem-extra",
               str(extra)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[case] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# -- profile -----------------------------------------------------------------------------
def profile(seconds: float) -> None:
    cases = {"drivestack state env, 50 vehicles": ("state", ds_physics_config(50)),
             "drivestack camera env, 320x192, ~20 actors": ("camera", CAMERA_CFG)}
    for title, (obs_type, cfg) in cases.items():
        case, prof = ds_env_case(obs_type, cfg), cProfile.Profile()
        prof.enable()
        case.loop(seconds, case.run)
        prof.disable()
        print(f"\n=== {title}: {case.run.steps} steps under cProfile ===")
        for key in ("cumulative", "tottime"):
            print(f"--- top 15 by {key} ---")
            pstats.Stats(prof, stream=sys.stdout).sort_stats(key).print_stats(15)


# -- main --------------------------------------------------------------------------------
def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b > 0 else float("nan")


def show(tag: str, name: str, s: dict[str, Any]) -> None:
    extra = "".join(f", {k} {s[k]}" for k in ("errors", "frame_px", "frames_drawn_per_step",
                                              "worlds", "frames_per_s")
                    if s.get(k))
    print(f"[{tag}] {name}: {s['sim_s_per_s']} sim-s/s, {s['steps_per_s']} steps/s (actors "
          f"{s['mean_actors']}, resets {s['resets']}{extra})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0, help="timed wall budget per figure")
    p.add_argument("--rounds", type=int, default=5, help="interleaved slices of the budget")
    p.add_argument("--quick", action="store_true", help="smoke check: 1.5 s per figure")
    p.add_argument("--profile", action="store_true", help="cProfile the drivestack side")
    p.add_argument("--mem-child", help=argparse.SUPPRESS)
    p.add_argument("--mem-extra", type=int, default=4, help="extra envs for the per-env delta")
    args = p.parse_args()
    if args.mem_child:
        return mem_child(args.mem_child, args.mem_extra)
    budget, rounds = (1.5, 1) if args.quick else (args.seconds, args.rounds)
    warm = min(1.0, budget / 4)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"pinned to CPU cores {cores} (os.sched_setaffinity); {', '.join(THREAD_VARS)}=1 "
          "set before importing numpy; cv2.setNumThreads(1)")
    print(f"{budget:g} s timed per figure in {rounds} interleaved round(s), {warm:g} s warmup; "
          f"resets excluded from timing; load average {os.getloadavg()[0]:.2f}")
    if args.profile:
        return profile(budget)

    fig: dict[str, Any] = {"date": datetime.date.today().isoformat(), "commit": subprocess.run(
        ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
        text=True).stdout.strip(),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 used",
                           "budget_s": budget, "rounds": rounds}
    for n in (20, 50):
        cases = {f"drivestack_world_{n}": ds_world(n),
                 f"drivestack_batch_{n}": ds_batch(ds_physics_config(n)),
                 f"drivestack_env_state_{n}": ds_env_case("state", ds_physics_config(n)),
                 f"highway_v0_{n}_15hz": hw_case("highway-v0", hw_physics_config(n))}
        if n == 20:
            cases["highway_fast_v0"] = hw_case("highway-fast-v0", None)
        measure(cases, budget, warm, rounds)
        w = cases.pop(f"drivestack_world_{n}")
        fig[f"drivestack_world_{n}_step_only"] = w.summary(exclude_aux=True)
        fig[f"drivestack_world_{n}_autopilot"] = w.summary()
        fig[f"autopilot_{n}_us_per_step"] = round(1e6 * w.run.aux_s / max(w.run.steps, 1), 1)
        fig[f"drivestack_batch_{n}"] = cases.pop(f"drivestack_batch_{n}").summary(exclude_aux=True)
        fig.update({k: c.summary() for k, c in cases.items()})
        for k in (f"drivestack_world_{n}_step_only", f"drivestack_world_{n}_autopilot",
                  f"drivestack_batch_{n}", *cases):
            show("physics", k, fig[k])
    cases = {"drivestack_camera": ds_env_case("camera", CAMERA_CFG),
             "drivestack_camera_batched": ds_batch(CAMERA_CFG, camera=True),
             "drivestack_camera_vec": ds_vec_camera(),
             "highway_fast_v0_rendered": hw_case("highway-fast-v0", None, render=True),
             "highway_v0_rendered_20_15hz": hw_case("highway-v0", hw_physics_config(20), True)}
    measure(cases, budget, warm, rounds)
    for key in ("drivestack_camera_batched", "drivestack_camera_vec"):
        fig[key] = cases.pop(key).summary(exclude_aux=True)
        fig[key]["frames_per_s"] = round(fig[key]["steps_per_s"] * BATCH, 1)
        show("camera", key, fig[key])
    batched = fig["drivestack_camera_batched"]
    for k, c in cases.items():
        show("camera", k, fig.setdefault(k, c.summary()))

    fig["memory_mb"] = memory(1 if args.quick else 4)
    for case, m in fig["memory_mb"].items():
        print(f"[memory] {case}: first env {m['first_env_mb']} MB, per extra env "
              f"{m['per_extra_env_mb']} MB (process after imports {m['after_imports_mb']} MB)")

    for n in (20, 50):
        hw = fig[f"highway_v0_{n}_15hz"]["sim_s_per_s"]
        fig[f"ratio_physics_{n}"] = ratio(fig[f"drivestack_env_state_{n}"]["sim_s_per_s"], hw)
        fig[f"ratio_physics_{n}_world_step_only"] = ratio(
            fig[f"drivestack_world_{n}_step_only"]["sim_s_per_s"], hw)
        fig[f"ratio_physics_{n}_batched"] = ratio(fig[f"drivestack_batch_{n}"]["sim_s_per_s"], hw)
    cam = fig["drivestack_camera"]["steps_per_s"]
    fig["ratio_camera"] = ratio(cam, fig["highway_fast_v0_rendered"]["steps_per_s"])
    fig["ratio_camera_batched"] = ratio(batched["frames_per_s"],
                                        fig["highway_fast_v0_rendered"]["steps_per_s"])
    fig["ratio_camera_vec"] = ratio(fig["drivestack_camera_vec"]["frames_per_s"],
                                    fig["highway_fast_v0_rendered"]["steps_per_s"])
    fig["ratio_camera_vs_highway_v0_rendered_15hz"] = ratio(
        cam, fig["highway_v0_rendered_20_15hz"]["steps_per_s"])
    fig["targets"] = TARGETS
    fig["targets_met"] = {k: bool(fig[k] >= t) for k, t in TARGETS.items()}
    for k, met in fig["targets_met"].items():
        print(f"{k} = {fig[k]} (target >= {TARGETS[k]:g}): {'met' if met else 'NOT met'}")
    print(f"World.step only: ratio_physics_20 = {fig['ratio_physics_20_world_step_only']}, "
          f"ratio_physics_50 = {fig['ratio_physics_50_world_step_only']}; camera vs "
          f"highway-v0 rendered at 15 Hz: {fig['ratio_camera_vs_highway_v0_rendered_15hz']}")
    fig["load_average_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
