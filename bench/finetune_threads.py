"""The loop's detector fine-tune on the CPU three ways, side by side in one run: on the
threads ultralytics picks for CPU training (cores - 1: one of 2 cores), on every core (what
`perception.detector.train_detector` does since session 11), and two fine-tunes at once,
each on half the cores (what `drivestack loop` does with `workers: 2`).

    PYTHONPATH=. python bench/finetune_threads.py [--frames 320] [--out DIR]

The fine-tune is the loop's (`launch/loop.yaml`): the shipped detector at its training
size, one epoch, batch 16, SGD at lr0 0.0002, backbone frozen (`freeze: 10`), on the train
split of a `drivestack dataset` of `--frames` frames rendered here first (not timed). Each
run is a fresh interpreter with `$DRIVESTACK_CPU_THREADS` set. Prints one line per run,
the validation mAP50-95 of each (the same figure in all: the thread count changes the
time, not the result), and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relabel_speed import cpu_name  # bench/ is this script's folder

from perception.datasets import DatasetPlan, generate
from sim.fanout import CPU_THREADS_ENV, cores
from sim.outputs import json_text

_JOB = """
import json, sys
from pathlib import Path
from perception.detector import DetectorTraining, train_detector, trained_imgsz
from perception.registry import current_detector
init = current_detector()
r = train_detector(DetectorTraining(data=Path(sys.argv[1]), out=Path(sys.argv[2]), init=init,
    epochs=1, imgsz=trained_imgsz(init), batch=16, seed=0, device="cpu", workers=2,
    lr0=0.0002, close_mosaic=1, freeze=10))
print("RESULT " + json.dumps(r["metrics"].get("metrics/mAP50-95(B)")))
"""


def _start(data: Path, out: Path, threads: int) -> subprocess.Popen[str]:
    env = {**os.environ, CPU_THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", _JOB, str(data), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _result(proc: subprocess.Popen[str]) -> float:
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"a fine-tune failed (exit {proc.returncode})")
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    return float(json.loads(line.split(" ", 1)[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=320)
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp)")
    args = ap.parse_args()
    if not 40 <= args.frames <= 100_000:
        ap.error("--frames 40..100000")
    n = cores()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        data = root / "data"
        generate(DatasetPlan(frames=args.frames, seed=0), data, workers=min(2, n))
        out: dict[str, object] = {}
        for name, threads in (("ultralytics_threads", max(1, n - 1)), ("all_cores", n)):
            t0 = time.perf_counter()
            metric = _result(_start(data / "data.yaml", root / name, threads))
            seconds = time.perf_counter() - t0
            print(f"one fine-tune, {threads} thread(s) ({name}): {seconds:6.1f} s, "
                  f"val mAP50-95 {metric:.4f}", flush=True)
            out[f"{name}_s"], out[f"{name}_map"] = round(seconds, 1), round(metric, 4)
        half = max(1, n // 2)
        t0 = time.perf_counter()
        procs = [_start(data / "data.yaml", root / f"pair{k}", half) for k in range(2)]
        metrics = [_result(p) for p in procs]
        seconds = time.perf_counter() - t0
        print(f"two fine-tunes at once, {half} thread(s) each: {seconds:6.1f} s for both "
              f"({seconds / 2:.1f} s a fine-tune), val mAP50-95 "
              f"{', '.join(f'{m:.4f}' for m in metrics)}", flush=True)
        out["pair_s"], out["pair_maps"] = round(seconds, 1), [round(m, 4) for m in metrics]
    print(json_text({"frames": args.frames, "cores": n,
                     "cpu": cpu_name(), **out}))


if __name__ == "__main__":
    main()
