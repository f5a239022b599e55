"""PNG plots of an `eval-perception` report: detection mAP and lane F1 per condition and
bucket, so the gap between nominal and rare conditions is visible at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.outputs import atomic_write


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]], title: str) -> None:
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        vals = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path


def plot_perception_report(report: dict[str, Any], out: Path | str) -> list[Path]:
    """Write detection.png and lanes.png into `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    subsets = [k for k, v in report.items()
               if isinstance(v, dict) and v.get("images") and "mAP50" in v]
    if subsets:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
        _bars(axes[0], subsets, {m: [report[s][m] for s in subsets]
                                 for m in ("mAP50", "mAP50-95")}, "detection by subset")
        classes = report.get("per_class_mAP50-95", {})
        names = [c for c, v in classes.items() if v is not None]
        _bars(axes[1], names, {"mAP50-95": [classes[c] for c in names]},
              "detection mAP50-95 by class")
        fig.tight_layout()
        written.append(_save(fig, out / "detection.png"))
        plt.close(fig)
    lanes = report.get("lanes")
    if isinstance(lanes, dict):
        keys = [k for k, v in lanes.items() if isinstance(v, dict) and v.get("images")]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        _bars(axes[0], keys, {m: [lanes[k][m] for k in keys]
                              for m in ("f1", "tusimple_accuracy")}, "lanes by subset")
        errs = [float("nan") if lanes[k]["offset_mae_m"] is None else lanes[k]["offset_mae_m"]
                for k in keys]
        axes[1].bar(keys, errs, color="tab:red")
        axes[1].set_title("ego offset error [m] (mean absolute)", fontsize=10)
        axes[1].tick_params(axis="x", rotation=30, labelsize=8)
        axes[1].grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out / "lanes.png"))
        plt.close(fig)
    return written
