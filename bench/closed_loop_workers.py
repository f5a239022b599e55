"""The data engine's closed-loop suite in one process and in `--workers` processes, side
by side in one run: wall time of each, and whether the rows are the same.

    PYTHONPATH=. python bench/closed_loop_workers.py [--seeds 6] [--max-steps 450]
                                                     [--workers 2]

The cases are the loop's suite (`launch/loop.yaml`): urban at night in clear, fog and
rain, seeds 910000.. (`--seeds` of them), the rule planner on the current detector's
perception (`data_engine.evaluation.closed_loop_suite`), then the same with
rule-privileged (`privileged_suite`). Prints one line per run and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

from data_engine.evaluation import closed_loop_suite, privileged_suite
from planning.evaluate import Case
from sim.outputs import json_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--max-steps", type=int, default=450)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not 1 <= args.seeds <= 1000 or not 2 <= args.workers <= 64:
        ap.error("--seeds 1..1000, --workers 2..64")
    cases = [Case("hard", "urban", "night", w, 910_000 + s)
             for w in ("clear", "fog", "rain") for s in range(args.seeds)]
    out = {}
    for kind, run in (("perception", closed_loop_suite), ("privileged", privileged_suite)):
        rows = {}
        for workers in (1, args.workers):
            t0 = time.perf_counter()
            got = (run(None, cases, max_steps=args.max_steps, workers=workers)
                   if kind == "perception"
                   else run(cases, max_steps=args.max_steps, workers=workers))
            seconds = time.perf_counter() - t0
            rows[workers] = [r.as_dict() for r in got]
            failed = sum(r.failed for r in got)
            print(f"{kind:10s} workers {workers}: {len(cases)} episodes in {seconds:6.1f} s "
                  f"({seconds / len(cases):.2f} s an episode), {failed} failed", flush=True)
            out[f"{kind}_workers_{workers}_s"] = round(seconds, 2)
        same = rows[1] == rows[args.workers]
        print(f"{kind:10s} rows the same in both: {same}")
        out[f"{kind}_same_rows"] = same
    print(json_text({"episodes": len(cases), "max_steps": args.max_steps,
                     "workers": args.workers, "cpus": os.cpu_count(),
                     "processor": platform.processor() or "?", **out}))


if __name__ == "__main__":
    main()
