"""A loop turn's detectors, each with the shipped refiner refitted on its own boxes
(docs/data_engine.md, "Turn 5"): is the refiner why fine-tuned detectors lose night?

    DRIVESTACK_REGISTRY=runs/registry python bench/loop_refiner_refit.py runs/loop_t6 \\
        current mined_truth mined_auto

For each detector (`current`: the registry's, else an arm of the turn's `train/`): its boxes
(conf >= 0.01) on the turn's base ground-truth train frames, the shipped refiner trained
on them for `--epochs` (AdamW, `--lr`), then detector + refitted refiner on the turn's
held-out sets (`launch/loop.yaml`'s sizes and seed), with a paired bootstrap of each
against the first detector named. Prints one line per detector. Experiment, not a test.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("loop", type=Path, help="the turn's output folder")
    ap.add_argument("detectors", nargs="+", help="current, or arms of the turn")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--heldout-seed", type=int, default=950_000)
    args = ap.parse_args()

    import perception.refine as refine
    from data_engine.evaluation import compare_reports, detector_report, make_heldout_sets
    from perception.detector import cached_onnx
    from perception.perceiver import Perceiver
    from perception.refine_train import _detect, labelled_frames
    from perception.registry import current_detector

    sets = make_heldout_sets(args.loop / "heldout", nominal_frames=300, hard_frames=600,
                             seed=args.heldout_seed, workers=2)
    shipped = refine.load_refiner(backend="torch")
    reports = {}
    for name in args.detectors:
        t0 = time.perf_counter()
        w = current_detector() if name == "current" else (
            args.loop / "train" / name / "weights" / "best.pt")
        det = Perceiver(weights=cached_onnx(w, 192, 320), conf=0.01, lanes=False,
                        refine=False)
        parts = [refine.build_data(frames, _detect(det, frames), gts, seed=k, min_conf=0.01)
                 for k, (_, frames, gts) in enumerate(labelled_frames(args.loop / "base",
                                                                      "train"))]
        data = refine.RefinerData(np.concatenate([p.x for p in parts]),
                                  np.concatenate([p.y for p in parts]))
        start = copy.deepcopy(shipped.model).float()
        build = refine.build_refiner
        refine.build_refiner = lambda spec, m=start: m  # fit_refiner starts from it
        try:
            model = refine.fit_refiner(data, shipped.spec, epochs=args.epochs, lr=args.lr)
        finally:
            refine.build_refiner = build
        refitted = refine.Refiner(model, shipped.spec, "cpu")
        load = refine.load_refiner
        refine.load_refiner = lambda *a, r=refitted, **k: r  # detector_report's refiner
        try:
            rep = detector_report(w, sets)
        finally:
            refine.load_refiner = load
        row = {k: round(v["mAP50-95"], 4) for k, v in rep.as_dict()["sets"].items()}
        if reports:
            c = compare_reports(next(iter(reports.values())), rep, n=200, seed=0).as_dict()
            row["hard_change"] = [round(c[k], 4) for k in ("delta", "ci_low", "ci_high")]
        reports[name] = rep
        print(name, f"{len(data.y)} patches, {time.perf_counter() - t0:.0f} s",
              json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
