"""Files of the driving benchmark, written atomically (temp file, then rename) into one
folder: eval.json (everything), episodes.csv (one row per episode), summary.csv and
summary.md (one row per planner and set) and summary.png (bars per planner)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from planning.evaluate import PLANNERS, EpisodeResult
from sim.outputs import Job, OutputFolder, atomic_write, atomic_write_text, json_text

REPORT_FILES = ("eval.json", "episodes.csv", "summary.csv", "summary.md", "summary.png")
"""What `write_report` writes."""
JOB = Job("eval", files=tuple(map(re.escape, REPORT_FILES)))
"""What `drivestack eval` writes into its folder (sim.outputs)."""

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("success_rate", "success", "pct"),
    ("route_completion", "route", "pct"),
    ("collisions_per_100km", "coll/100km", "f1"),
    ("offroad_per_100km", "off-road/100km", "f1"),
    ("mean_speed", "v [m/s]", "f1"),
    ("speed_ratio", "v / limit", "f2"),
    ("jerk", "jerk [m/s^3]", "f2"),
    ("min_ttc", "min TTC [s]", "f2"),
    ("shield_interventions_per_km", "shield/km", "f2"),
    ("driving_score", "driving score", "f3"),
)
"""(aggregate key, column title, format) of the summary tables."""
SOURCE_OF = {"rl": "perception", "rl-shield": "perception", "rule": "perception",
             "privileged": "exact scene",
             "rule-privileged": "exact scene"}


def fmt(value: Any, kind: str) -> str:
    """One table cell: "pct" as a percentage, "fN" with N decimals, None as "-"."""
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.0f}%"
    return f"{value:.{int(kind[1:])}f}"


def summary_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per planner and set ("all" last): planner, set, episodes, the COLUMNS
    aggregates and collisions by type."""
    rows = []
    for planner, sets in document["planners"].items():
        for name, agg in sets.items():
            if name == "all" and len(sets) == 2:
                continue  # one set: its row already is the total
            row = {"planner": planner, "source": SOURCE_OF.get(planner, ""), "set": name,
                   "episodes": agg["episodes"]}
            row.update({key: agg.get(key) for key, _, _ in COLUMNS})
            if planner != "rl-shield":  # only a shielded planner has interventions
                row["shield_interventions_per_km"] = None
            row.update({f"collisions_{k}": v for k, v in agg["collisions"].items()})
            row["off_road"], row["errors"] = agg["off_road"], agg["errors"]
            rows.append(row)
    return rows


def gaps(document: dict[str, Any], set_name: str = "nominal") -> list[str]:
    """Lines comparing each perception planner with its privileged counterpart."""
    planners, out = document["planners"], []
    for mine, ref in (("rl", "privileged"), ("rl-shield", "privileged"),
                      ("rule", "rule-privileged")):
        if mine in planners and ref in planners:
            a = planners[mine].get(set_name, planners[mine]["all"])
            b = planners[ref].get(set_name, planners[ref]["all"])
            out.append(f"{mine} vs {ref} ({set_name}): success "
                       f"{100 * (a['success_rate'] - b['success_rate']):+.0f} points, "
                       f"driving score {a['driving_score'] - b['driving_score']:+.3f}")
    return out


def markdown(document: dict[str, Any]) -> str:
    """summary.md: the table, the perception-vs-privileged gaps and the notes."""
    head = ["planner", "scene", "set", "episodes", *(title for _, title, _ in COLUMNS)]
    lines = ["# drivestack eval", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in summary_rows(document):
        cells = [row["planner"], row["source"], row["set"], str(row["episodes"]),
                 *(fmt(row[key], kind) for key, _, kind in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    suite = document["suite"]
    n = sum(len(s["families"]) * len(s["conditions"]) * len(s["seeds"]) for s in suite["sets"])
    routes = [s["name"] for s in suite["sets"] if s.get("route")]
    lines += ["", f"Suite: {n} scenarios, at most {suite['max_steps']} steps each"
              + (f" (route sets {', '.join(routes)}: each episode a route, its time budget "
                 "2 x the time at the speed limit + 10 s; success = route completed without "
                 "a collision or leaving the road)" if routes else "")
              + f", seeds offset by {document['seed_offset']}. Driving score = route "
              "completion x infraction penalty (pedestrian/cyclist 0.50, vehicle 0.60, "
              "static 0.65, off-road 0.70)."]
    lines += [f"- {g}" for g in gaps(document)] + [f"- note: {n}" for n in document["notes"]]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]], names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in names})
    return buf.getvalue()


def plot(document: dict[str, Any], path: Path, set_name: str = "nominal") -> None:
    """summary.png: success rate, route completion and driving score per planner on
    `set_name` (all sets when absent), and collisions + off-road per 100 km."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    planners = document["planners"]
    names = [p for p in PLANNERS if p in planners] + [p for p in planners if p not in PLANNERS]
    aggs = [planners[p].get(set_name, planners[p]["all"]) for p in names]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), width_ratios=(3, 2))
    x = np.arange(len(names))
    for k, key in enumerate(("success_rate", "route_completion", "driving_score")):
        ax.bar(x + (k - 1) * 0.27, [a[key] for a in aggs], 0.27, label=key.replace("_", " "))
    ax.set(xticks=x, xticklabels=names, ylim=(0, 1.3), title=f"{set_name} (higher is better)")
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    top = 1.0
    for k, key in enumerate(("collisions_per_100km", "offroad_per_100km")):
        values = [a[key] or 0.0 for a in aggs]
        top = max(top, 1.3 * max(values))
        bx.bar(x + (k - 0.5) * 0.4, values, 0.4, label=key.replace("_per_100km", " / 100 km"))
    bx.set(xticks=x, xticklabels=names, ylim=(0, top), title="infractions (lower is better)")
    bx.legend(fontsize=8, ncol=2, loc="upper center")
    for axis in (ax, bx):
        axis.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def write_report(document: dict[str, Any], out: Path | OutputFolder) -> list[Path]:
    """Write every file of the benchmark into `out` (a folder already claimed for
    `drivestack eval`, or a path that is claimed here: sim.outputs); returns their paths.
    eval.json is strict JSON (NaN and infinities as null)."""
    folder = out if isinstance(out, OutputFolder) else OutputFolder.claim(out, JOB)
    names = [f.name for f in fields(EpisodeResult)]
    summary_names = ["planner", "source", "set", "episodes", *(k for k, _, _ in COLUMNS),
                     "collisions_vehicle", "collisions_pedestrian", "collisions_static",
                     "off_road", "errors"]
    files = {"eval.json": json_text(document, indent=2) + "\n",
             "episodes.csv": _csv(document["episodes"], names),
             "summary.csv": _csv(summary_rows(document), summary_names),
             "summary.md": markdown(document)}
    paths = []
    for name, text in files.items():
        paths.append(folder.own(name))
        atomic_write_text(paths[-1], text)
    paths.append(folder.own("summary.png"))
    plot(document, paths[-1])
    folder.finish()
    return paths
