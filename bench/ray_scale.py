"""Fan-out backends side by side in one run: this process, 2 local processes, and a Ray
cluster on this machine with 1 and with 2 CPUs, on four jobs: rendering a dataset
(`drivestack dataset`), evaluating a planner (`drivestack eval`), mining with
perception on every frame (`drivestack mine`) and auto-labeling the mined clips
(`drivestack relabel`). Each backend's output is compared with
the serial one (it must be the same).

    PYTHONPATH=. python bench/ray_scale.py [--frames 240] [--episodes 8] [--mine 4]

Prints one line per run and, last, one JSON object. Ray's start-up (a few seconds) is
timed apart from the jobs. Needs the `ray` extra.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from sim.fanout import Fanout
from sim.outputs import MARKER, json_text


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _dataset(fanout: Fanout, frames: int, out: Path) -> Any:
    from perception.datasets import DatasetPlan, generate

    generate(DatasetPlan(frames=frames, frames_per_episode=8, seed=0), out, fanout=fanout)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("data.yaml", MARKER)}


def _eval(fanout: Fanout, episodes: int) -> Any:
    from planning.evaluate import PlannerSpec, Suite, SuiteSet, evaluate_fanout

    suite = Suite((SuiteSet("nominal", ("highway", "urban"), (("day", "clear"),),
                            tuple(range(1000, 1000 + (episodes + 1) // 2))),), 300)
    doc = evaluate_fanout(PlannerSpec(("rule-privileged",)), suite, fanout, limit=episodes)
    for e in doc["episodes"]:
        e.pop("wall_time")
    return doc


def _mine(fanout: Fanout, episodes: int, out: Path) -> Any:
    from data_engine.mine import MineSpec, mine_fanout
    from data_engine.store import SnapshotStore
    from planning.evaluate import Case

    families = ("urban", "highway", "rural")
    cases = [Case("mine", families[k % 3], "night", "clear", 500_950 + k)
             for k in range(episodes)]
    store = SnapshotStore(out, create=True)
    summary = mine_fanout(store, cases, MineSpec(device="cpu", max_steps=150,
                                                 control_rate=0.02),
                          fanout, control_store=SnapshotStore(out / "random", create=True))
    rows = sorted(store.list(), key=lambda r: r["created"])
    return ([e.end for e in summary.episodes],
            [{n: e["sha256"] for n, e in store.get(r["id"]).manifest["files"].items()}
             for r in rows])


def _relabel(fanout: Fanout, store_path: Path) -> Any:
    from data_engine.relabel import relabel_fanout
    from data_engine.store import SnapshotStore

    store = SnapshotStore(store_path)
    snaps = [store.get(r["id"]) for r in sorted(store.list(), key=lambda r: r["created"])]
    return [[b.tobytes() for b in r.labels.boxes] for r in relabel_fanout(snaps, fanout)]


def _run(job: str, fanout: Fanout, args: argparse.Namespace, out: Path) -> Any:
    if job == "dataset":
        return _dataset(fanout, args.frames, out)
    if job == "eval":
        return _eval(fanout, args.episodes)
    if job == "relabel":  # the clips the serial run mined
        return _relabel(fanout, out.parent / "mine-1")
    return _mine(fanout, args.mine, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--mine", type=int, default=4)
    args = ap.parse_args()
    if not (8 <= args.frames <= 100_000 and 1 <= args.episodes <= 1000
            and 1 <= args.mine <= 1000):
        ap.error("--frames 8..100000, --episodes 1..1000, --mine 1..1000")
    import ray

    backends: list[tuple[str, Fanout, int | None]] = [
        ("serial", Fanout(), None), ("2 processes", Fanout(workers=2), None),
        ("ray, 1 CPU", Fanout(ray="local"), 1), ("ray, 2 CPUs", Fanout(ray="local"), 2)]
    times: dict[str, dict[str, float]] = {}
    same: dict[str, dict[str, bool]] = {}
    reference: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, fanout, cpus in backends:
            times[name], same[name] = {}, {}
            if cpus is not None:
                t0 = time.perf_counter()
                ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False)
                times[name]["ray_start"] = round(time.perf_counter() - t0, 2)
            for job in ("dataset", "eval", "mine", "relabel"):
                t0 = time.perf_counter()
                got = _run(job, fanout, args, Path(tmp) / f"{job}-{len(times)}")
                times[name][job] = round(time.perf_counter() - t0, 2)
                reference.setdefault(job, got)
                same[name][job] = got == reference[job]
                print(f"{name:12s} {job:8s} {times[name][job]:7.2f} s  same as serial: "
                      f"{same[name][job]}", flush=True)
            if cpus is not None:
                ray.shutdown()
    print(json_text({"cpu": _cpu(), "cores": len(os.sched_getaffinity(0)),
                     "frames": args.frames, "eval_episodes": args.episodes,
                     "mine_episodes": args.mine, "seconds": times, "same_as_serial": same}))


if __name__ == "__main__":
    main()
