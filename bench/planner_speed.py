#!/usr/bin/env python
"""Planner speed: training env-steps/s with n vectorized envs, perception in the loop, and
the closed loop (sim + perception + planner) in frames/s, side by side in one run.

    python bench/planner_speed.py                   # 5 s timed per figure, n in 1 2 4
    python bench/planner_speed.py --quick           # smoke check: 1 s per figure, n in 1 2
    python bench/planner_speed.py --seconds 10 --envs 1 2 4 8 --sources privileged

1. Training: `planning.train.make_vec`, as training builds its envs (SubprocVecEnv with
   start method "spawn" for n > 1, DummyVecEnv for n = 1; env i drives family
   i % 3 of highway, rural, urban; Monitor), stepped with random meta actions through
   `vec_env.step`. Auto-resets inside `step` are timed, as in training. One agent
   decision is `decision_every` (3) simulator steps.
2. Perception in the loop: the same with source "perception" (camera env and the
   shipped Perceiver on the CPU), n = 1, DummyVecEnv.
3. Closed loop: a camera env, the shipped Perceiver on the CPU and the shipped RL policy
   (`planning.evaluate.build_planner("rl", perceiver=...)`), deciding every frame and
   every 3rd frame as `run_episode` does; resets are timed apart.

Nothing is pinned: the envs, the subprocesses and the detector use what the machine
has, as `drivestack train-planner` and `drivestack eval` do. Prints readable lines and,
last, one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np

from planning.evaluate import DEFAULT_POLICY, build_planner, make_env, make_perceiver
from planning.policy import load_policy
from planning.rollout import DECISION_EVERY
from planning.train import PlannerTraining, make_vec
from planning.wrappers import SOURCES
from sim.actions import IDLE, META_ACTIONS

warnings.filterwarnings("ignore")
TARGETS = {"privileged": 2000.0, "perception": 50.0, "closed_loop_hz": 30.0,
           "ppo_decisions": 5000.0}
"""Issue 4: training simulator steps/s and closed-loop frames/s on 2 CPU cores; issue 15:
PPO training decisions/s (updates included) on 2 CPU cores."""
PPO_LAUNCHES = (Path("launch/train_planner.yaml"), Path("launch/train_planner_batch.yaml"))
"""Today's recipe (SubprocVecEnv) and the batched one, side by side."""
CLOSED_LOOP_EVERY = (1, 3)
"""Frames per planner decision in the closed loop."""
MAX_EPISODE_FRAMES = 1350
"""The closed loop starts a new episode after this many frames (the sim's 90 s)."""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "NOT met"


# -- 1 and 2: env-steps/s through a VecEnv --------------------------------------------
def vec_speed(source: str, n: int, seconds: float, warmup: float, kind: str = "subprocess",
              workers: int = 1) -> dict[str, Any]:
    """Random meta actions through `vec_env.step` for `seconds` after `warmup` s."""
    cfg = PlannerTraining(out=Path("unused"), source=cast(Any, source), n_envs=n,
                          decision_every=DECISION_EVERY, batch_workers=workers,
                          vec_env=cast(Any, kind))
    t0 = time.perf_counter()
    vec = make_vec(cfg, seed=0, n=n, kind=kind)
    try:
        vec.reset()
        startup = time.perf_counter() - t0
        rng = np.random.default_rng(0)

        def run(budget: float) -> tuple[int, int, int, float]:
            steps = sim_steps = episodes = 0
            start = time.perf_counter()
            while time.perf_counter() - start < budget:
                _, _, dones, infos = vec.step(rng.integers(0, len(META_ACTIONS), size=n))
                steps += 1
                sim_steps += sum(int(i.get("decision_steps", DECISION_EVERY)) for i in infos)
                episodes += int(np.sum(dones))
            return steps, sim_steps, episodes, time.perf_counter() - start

        run(warmup)
        steps, sim_steps, episodes, wall = run(seconds)
    finally:
        vec.close()
    decisions = steps * n
    name = type(getattr(vec, "venv", vec)).__name__
    return {"source": source, "n_envs": n, "vec_env": name, "workers": workers,
            "decisions_per_s": round(decisions / wall, 1),
            "sim_steps_per_s": round(decisions * DECISION_EVERY / wall, 1),
            "sim_steps_per_s_actual": round(sim_steps / wall, 1),
            "decisions_per_s_per_env": round(steps / wall, 1),
            "decisions": decisions, "timed_s": round(wall, 2), "episodes_ended": episodes,
            "startup_s": round(startup, 2)}


def show_vec(r: dict[str, Any]) -> None:
    target = TARGETS.get(r["source"])
    note = (f"target >= {target:g} sim steps/s: {verdict(r['sim_steps_per_s'], target)}"
            if target else "no target in the issue")
    print(f"[{r['source']}] n={r['n_envs']} {r['vec_env']} (workers {r['workers']}): "
          f"{r['decisions_per_s']} decisions/s"
          f", {r['sim_steps_per_s']} sim steps/s (x{DECISION_EVERY}; "
          f"{r['sim_steps_per_s_actual']} counting short last decisions), "
          f"{r['decisions_per_s_per_env']} decisions/s per env, {r['episodes_ended']} "
          f"episodes ended, startup {r['startup_s']} s | {note}")


def ppo_speed(launch: Path, decisions: int, seconds: float = 0.0,
              source: str | None = None) -> dict[str, Any]:
    """Decisions/s of PPO training (rollouts and updates, no evaluation or checkpoints)
    with the envs and hyperparameters of a `train-planner` launch file: whole rollouts,
    each with its update, after one warm-up rollout, until at least `decisions` decisions
    and `seconds` seconds are timed; `source` overrides the launch file's. The policy
    starts untrained (no warm start): it crashes more often than a trained one, and
    every crash restarts a world, so this is the slow end of a training run."""
    import tempfile

    from launch.cli import train_job
    from planning.train import _model, configure_threads

    with tempfile.TemporaryDirectory() as tmp:
        cfg = train_job(launch, Path(tmp) / "run", source)
        import torch

        before_threads = torch.get_num_threads()
        threads = configure_threads(cfg)
        t0 = time.perf_counter()
        vec = make_vec(cfg, cfg.seed, cfg.n_envs)
        try:
            model = _model(cfg, vec, None)
            startup = time.perf_counter() - t0
            rollout = cfg.n_envs * cfg.n_steps
            model.learn(total_timesteps=rollout)  # warm-up
            start = time.perf_counter()
            before = model.num_timesteps
            while True:  # one rollout and its update per call
                model.learn(total_timesteps=rollout, reset_num_timesteps=False)
                wall = time.perf_counter() - start
                done = model.num_timesteps - before
                if done >= decisions and wall >= seconds:
                    break
        finally:
            vec.close()
            torch.set_num_threads(before_threads)
    return {"launch": str(launch), "vec_env": cfg.vec_env, "n_envs": cfg.n_envs,
            "batch_workers": cfg.batch_workers, "torch_threads": threads,
            "source": cfg.source, "n_steps": cfg.n_steps,
            "batch_size": cfg.batch_size, "decisions": int(done), "timed_s": round(wall, 2),
            "decisions_per_s": round(done / wall, 1), "startup_s": round(startup, 2)}


def show_ppo(r: dict[str, Any]) -> None:
    print(f"[PPO {r['source']}] {r['launch']}: {r['vec_env']} n={r['n_envs']} workers="
          f"{r['batch_workers']}, n_steps {r['n_steps']}, batch {r['batch_size']}: "
          f"{r['decisions_per_s']} decisions/s with updates ({r['decisions']} in "
          f"{r['timed_s']} s) | target >= {TARGETS['ppo_decisions']:g}: "
          f"{verdict(r['decisions_per_s'], TARGETS['ppo_decisions'])}")


# -- 3: the closed loop ---------------------------------------------------------------
class TimedPerceiver:
    """A Perceiver that adds the wall time of its calls to `seconds`."""

    def __init__(self, perceiver: Any) -> None:
        self.perceiver = perceiver
        self.seconds = 0.0

    def __call__(self, frames: Any) -> Any:
        t0 = time.perf_counter()
        out = self.perceiver(frames)
        self.seconds += time.perf_counter() - t0
        return out


def closed_loop(perceiver: Any, model: Any, every: int, seconds: float, warmup: float
                ) -> dict[str, Any]:
    """Frames/s of sim step (with render) + perception + planner, deciding every
    `every` frames; resets are timed apart."""
    timed = TimedPerceiver(perceiver)
    planner, source = build_planner("rl", perceiver=timed, model=model)
    env = make_env(camera_frames=True, camera=perceiver.camera)
    box = {"seed": 0, "frame": 0}

    def reset() -> None:
        planner.reset()
        source.reset()
        env.reset(seed=box["seed"], options={"scenario_seed": box["seed"]})
        box["seed"] += 1
        box["frame"] = 0

    def run(budget: float) -> dict[str, float]:
        t = {"sim": 0.0, "perception": 0.0, "planner": 0.0, "frames": 0, "decisions": 0,
             "resets": 0, "reset_s": 0.0, "wall": 0.0}
        timed.seconds = 0.0
        while t["wall"] < budget:
            t0 = time.perf_counter()
            action = IDLE
            if box["frame"] % every == 0:
                scene = source(env)
                t1 = time.perf_counter()
                action = planner.act(scene)
                t2 = time.perf_counter()
                t["perception"] += t1 - t0
                t["planner"] += t2 - t1
                t["decisions"] += 1
            else:
                t2 = t0
            _, _, terminated, truncated, _ = env.step(action)
            t3 = time.perf_counter()
            t["sim"] += t3 - t2
            t["wall"] += t3 - t0
            t["frames"] += 1
            box["frame"] += 1
            if terminated or truncated or box["frame"] >= MAX_EPISODE_FRAMES:
                reset()
                t["resets"] += 1
                t["reset_s"] += time.perf_counter() - t3
        t["perceiver"] = timed.seconds
        return t

    try:
        reset()
        run(warmup)
        t = run(seconds)
    finally:
        env.close()
    frames, decisions = t["frames"], max(t["decisions"], 1)

    def ms(key: str, per: float) -> float:
        return round(1000 * t[key] / per, 2)

    return {"decide_every": every, "frames_per_s": round(frames / t["wall"], 1),
            "frames": frames, "decisions": t["decisions"], "timed_s": round(t["wall"], 2),
            "ms_per_frame": {"total": ms("wall", frames), "sim_step_with_render": ms("sim", frames),
                             "perception": ms("perception", frames),
                             "perceiver_only": ms("perceiver", frames),
                             "planner": ms("planner", frames)},
            "ms_per_decision": {"perception": ms("perception", decisions),
                                "perceiver_only": ms("perceiver", decisions),
                                "planner": ms("planner", decisions)},
            "resets": t["resets"], "reset_s": round(t["reset_s"], 3)}


def show_closed(r: dict[str, Any]) -> None:
    m, d = r["ms_per_frame"], r["ms_per_decision"]
    print(f"[closed loop] decide every {r['decide_every']} frame(s): {r['frames_per_s']} "
          f"frames/s | per frame: {m['total']} ms = sim step with render "
          f"{m['sim_step_with_render']} + perception {m['perception']} (Perceiver "
          f"{m['perceiver_only']}) + planner {m['planner']} | per decision: perception "
          f"{d['perception']} ms, planner {d['planner']} ms | {r['resets']} resets "
          f"({r['reset_s']} s, untimed) | target >= {TARGETS['closed_loop_hz']:g} Hz: "
          f"{verdict(r['frames_per_s'], TARGETS['closed_loop_hz'])}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="timed wall budget per figure")
    p.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4],
                   help="vectorized env counts of the training figures")
    p.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES),
                   help="scene sources (perception runs with n=1 only)")
    p.add_argument("--batch-envs", type=int, nargs="+", default=None,
                   help="env counts of the batched training figures (default 64 128; "
                        "--quick: 16)")
    p.add_argument("--batch-workers", type=int, nargs="+", default=[1, 2],
                   help="processes the batch is split over")
    p.add_argument("--ppo-decisions", type=int, default=16384,
                   help="least timed PPO decisions per launch file (0: skip; PPO trains "
                        "whole rollouts of n_envs x n_steps)")
    p.add_argument("--ppo-seconds", type=float, default=30.0,
                   help="least timed seconds of PPO per launch file")
    p.add_argument("--ppo-sources", nargs="+", choices=("privileged", "emulated"),
                   default=None, help="scene sources of the PPO figures (default: each "
                                      "launch file's)")
    p.add_argument("--ppo-launch", type=Path, nargs="+", default=list(PPO_LAUNCHES),
                   help="train-planner launch files whose PPO is timed")
    p.add_argument("--no-closed-loop", action="store_true",
                   help="skip the closed-loop figures (perception on the CPU)")
    p.add_argument("--quick", action="store_true", help="smoke check: 1 s per figure, n in 1 2")
    return p.parse_args()


def summarize(fig: dict[str, Any], sources: list[str], loops: tuple[int, ...]
              ) -> dict[str, Any]:
    """The best figure of each source, the closed loop and the PPO figures against their
    targets (printed as it goes)."""
    summary: dict[str, Any] = {}
    for source in sources:
        runs = [v for k, v in fig.items() if k.startswith(f"train_{source}_")]
        best = max(runs, key=lambda r: r["sim_steps_per_s"])
        summary[f"{source}_best_sim_steps_per_s"] = best["sim_steps_per_s"]
        summary[f"{source}_best_n_envs"] = best["n_envs"]
        summary[f"{source}_best_vec_env"] = best["vec_env"]
        target = TARGETS.get(source)
        line = f"{source}: best {best['sim_steps_per_s']} sim steps/s at n={best['n_envs']}"
        if target:
            summary[f"{source}_target_met"] = best["sim_steps_per_s"] >= target
            line += f" (target >= {target:g}: {verdict(best['sim_steps_per_s'], target)})"
        print(line)
    for every in loops:
        hz = fig[f"closed_loop_every_{every}"]["frames_per_s"]
        summary[f"closed_loop_every_{every}_hz"] = hz
        summary[f"closed_loop_every_{every}_target_met"] = hz >= TARGETS["closed_loop_hz"]
        print(f"closed loop, decide every {every}: {hz} frames/s (target >= "
              f"{TARGETS['closed_loop_hz']:g} Hz: {verdict(hz, TARGETS['closed_loop_hz'])})")
    for k, r in fig.items():
        if k.startswith("ppo_"):
            summary[f"{k}_decisions_per_s"] = r["decisions_per_s"]
            summary[f"{k}_target_met"] = r["decisions_per_s"] >= TARGETS["ppo_decisions"]
    return summary


def main() -> None:
    args = parse_args()
    seconds, envs, warmup = args.seconds, args.envs, 1.0
    batch_envs, ppo_decisions = args.batch_envs or [64, 128], args.ppo_decisions
    ppo_seconds = args.ppo_seconds
    if args.quick:
        seconds, envs, warmup = 1.0, [n for n in args.envs if n <= 2] or [1], 0.5
        batch_envs, ppo_decisions = args.batch_envs or [16], min(ppo_decisions, 2048)
        ppo_seconds = 0.0
    fig: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "machine": platform.machine(),
        "python": platform.python_version(), "cpu_threads": os.cpu_count(),
        "cores_usable": cores(), "load_avg_start": load(), "seconds": seconds,
        "warmup_s": warmup, "timed_ppo_at_least_s": ppo_seconds, "decision_every": DECISION_EVERY,
        "families": list(PlannerTraining.families), "targets": TARGETS}
    print(f"{cores()} usable CPU cores, load average {load()} at start; {seconds:g} s timed "
          f"per figure after {warmup:g} s warm-up; 1 decision = {DECISION_EVERY} sim steps; "
          "targets compare simulator steps/s (decisions x 3) on 2 CPU cores")
    start = time.perf_counter()
    for source in args.sources:
        for n in envs if source != "perception" else [1]:
            r = vec_speed(source, n, seconds, warmup)
            fig[f"train_{source}_n{n}"] = r
            show_vec(r)
        if source == "perception":
            continue
        for n in batch_envs:
            for w in args.batch_workers:
                r = vec_speed(source, n, seconds, warmup, kind="batch", workers=w)
                fig[f"train_{source}_batch_n{n}_w{w}"] = r
                show_vec(r)
    if ppo_decisions:
        for launch in args.ppo_launch:
            for source in args.ppo_sources or [None]:
                r = ppo_speed(launch, ppo_decisions, ppo_seconds, source)
                fig[f"ppo_{r['vec_env']}_{r['source']}"] = r
                show_ppo(r)
    loops = () if args.no_closed_loop else CLOSED_LOOP_EVERY
    if loops:
        perceiver, note = make_perceiver("cpu")
        if note:
            print(f"note: {note}")
        model = load_policy(DEFAULT_POLICY)
    for every in loops:
        r = closed_loop(perceiver, model, every, seconds, warmup)
        fig[f"closed_loop_every_{every}"] = r
        show_closed(r)
    summary = summarize(fig, args.sources, loops)
    fig["summary"] = summary
    fig["load_avg_end"] = load()
    fig["total_s"] = round(time.perf_counter() - start, 1)
    print(f"load average {load()} at the end; {fig['total_s']} s in all")
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
