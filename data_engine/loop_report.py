"""The loop's report: report.md with PNG plots, from the loop's state document.

Sections: failures by trigger and condition; the ground-truth-free triggers' recall and
precision; auto-label quality against the online perception; mAP before and after per
held-out set for the candidate and its three controls (random frames, ground-truth
labels, naive self-training); the paired bootstrap; the closed-loop per-seed table; the
replay pass rate; the promotion decision; stage times.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sim.outputs import OutputFolder, atomic_write_text
from sim.types import CLASS_NAMES

ARM_TITLES = {"mined_auto": "mined frames, auto labels (candidate)",
              "random_auto": "random frames, auto labels (control)",
              "mined_truth": "mined frames, ground-truth labels (ceiling)",
              "mined_online": "mined frames, online labels (naive self-training)"}
CONTROL_TITLES = {"current_calibrated": "current detector, score exponent recalibrated"}
"""Reports beside the arms that train nothing (data_engine.loop.CURRENT_CALIBRATED)."""


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return out + [""]


def _map_of(report: dict[str, Any], key: str) -> float | None:
    part = report.get("sets", report).get(key) or {}
    v = part.get("mAP50-95") if isinstance(part, dict) else None
    return float(v) if isinstance(v, int | float) else None


def write_report(doc: dict[str, Any], cfg: Any, folder: OutputFolder) -> list[str]:
    """Write report.md and its plots into the loop's folder; the file names."""
    st = doc["stages"]
    lines = ["# drivestack loop report", "",
             f"Launch: `{cfg.out}`, seed {cfg.seed}, device {cfg.device}. Stage times [s]: "
             + ", ".join(f"{k} {v}" for k, v in doc.get("times", {}).items()), ""]
    files = ["report.md"]
    lines += _mining(st.get("mine", {}))
    lines += _labels(st.get("relabel", {}))
    lines += _versions(st.get("versions", {}))
    ev = st.get("evaluate", {})
    if ev:
        lines += _maps(ev)
        lines += _calibration(st.get("calibrate", {}))
        plot = _plot_maps(ev, folder)
        if plot:
            files.append(plot)
            lines += [f"![mAP before and after]({plot})", ""]
        lines += _closed_loop(ev)
    if "promote" in st:
        p = st["promote"]
        lines += ["## Promotion", "",
                  f"Registered `{p.get('registered')}`; gate passed: "
                  f"**{p.get('gate_passed')}**; promoted: **{p.get('promoted')}**.", ""]
        lines += [f"- {r}" for r in p.get("reasons", [])] + [""]
    atomic_write_text(folder.own("report.md"), "\n".join(lines) + "\n")
    folder.wrote()
    return files


def _mining(m: dict[str, Any]) -> list[str]:
    if not m:
        return []
    lines = ["## Mining", "",
             f"{m.get('episodes')} episodes, {m.get('failures')} ended in a collision or "
             f"off-road; {len(m.get('mined_ids', []))} clips saved by the triggers, "
             f"{len(m.get('random_ids', []))} random clips (control).", ""]
    by = m.get("fired_by_trigger", {})
    lines += _table(["trigger", "firings"], [[k, v] for k, v in by.items()])
    cond: dict[str, int] = {}
    for e in m.get("per_episode", []):
        c = e["case"]
        key = f"{c['family']} {c['time_of_day']}/{c['weather']}"
        cond[key] = cond.get(key, 0) + len(e["fired"])
    lines += _table(["family, condition", "firings"], [[k, v] for k, v in cond.items()])
    v = m.get("variations", {})
    if v:
        lines += [f"Variations (traffic, speeds, condition re-simulated from a clip's start): "
                  f"{v.get('variations')} variations of {v.get('originals')} mined clips "
                  f"failed again {v.get('failed_again')} times and added "
                  f"{v.get('variation_clips')} clips ({fmt(v.get('added_fraction'), 2)} per "
                  "original clip); they join the mined frames.", ""]
    r = m.get("replay", {})
    if r:
        lines += [f"Replay: {r.get('byte_equal')} of {r.get('checked')} clips re-simulated "
                  "byte for byte (frames and labels, by SHA-256).", ""]
    q = m.get("truth_free_triggers", {})
    if q:
        lines += [f"Ground-truth-free triggers: caught {q.get('caught')} of "
                  f"{q.get('truth_events')} ground-truth firings within "
                  f"{q.get('tolerance_steps')} steps (recall {fmt(q.get('recall'))}); "
                  f"{q.get('confirmed')} of their {q.get('free_events')} firings were near a "
                  f"ground-truth one (precision {fmt(q.get('precision'))}).", ""]
    return lines


def _labels(r: dict[str, Any]) -> list[str]:
    if not r:
        return []
    rows = []
    for name in ("auto", "online"):
        for size in ("overall", "small", "large"):
            q = r[name][size]
            rows.append([name, size, q["precision"], q["recall"], q["mean_iou"], q["ignored"],
                         q["objects"]])
    lines = ["## Auto-label quality (mined clips; measured against ground truth for this "
             "report only)", ""]
    lines += _table(["labels", "objects", "precision", "recall", "mean IoU", "ignored",
                     "count"], rows)
    rows = [[c, v["auto"]["overall"]["precision"], v["auto"]["overall"]["recall"],
             v["online"]["overall"]["precision"], v["online"]["overall"]["recall"]]
            for c, v in r.get("by_condition", {}).items()]
    lines += _table(["condition", "auto P", "auto R", "online P", "online R"], rows)
    return lines


def _versions(v: dict[str, Any]) -> list[str]:
    """How each run's new frames were chosen, and how many errors of the online detector
    (against the ground truth, for this report only) a chosen frame holds."""
    runs = {k: r for k, r in v.items() if isinstance(r, dict) and "selection" in r}
    if not runs:
        return []
    lines = ["## Dataset versions", "",
             "New frames of each run, how they were chosen (`disagreement`: the frames where "
             "the auto-labels and the online detector disagree most, no ground truth read; "
             "`sample`: a seeded sample), and the online detector's misses + ghosts a frame "
             "against the ground truth (this report only), in the chosen frames and in the "
             "pool they were chosen from.", ""]
    rows = [[_title(k), r["selection"], r.get("frames"), r.get("available"),
             r.get("disagreeing", "-"), r.get("online_errors"), r.get("pool_online_errors")]
            for k, r in runs.items()]
    lines += _table(["run", "selection", "new frames", "pool", "pool frames that disagree",
                     "online errors a frame", "in the pool"], rows)
    return lines


SETS = ("nominal", "hard_night", "hard_fog", "hard_rain", "hard", "night_fog")


def _title(run: str) -> str:
    """A run's title: its arm's, with the seed of a spread repeat (`<arm>_s<seed>`)."""
    arm, _, seed = run.rpartition("_s")
    if arm in ARM_TITLES and seed.isdigit():
        return f"{ARM_TITLES[arm]}, seed {seed}"
    return ARM_TITLES.get(run, CONTROL_TITLES.get(run, run))


def _maps(ev: dict[str, Any]) -> list[str]:
    reports = ev["reports"]
    before = reports["before"]
    weights = ev.get("score_weights", {})
    rows = [["current detector"] + [_map_of(before, s) for s in SETS]
            + [weights.get("before")]]
    rows += [[_title(run)] + [_map_of(r, s) for s in SETS] + [weights.get(run)]
             for run, r in reports.items() if run != "before"]
    lines = ["## Detector mAP50-95 on held-out sets (before / after one turn)", "",
             "`hard`: night, fog and rain pooled; `night_fog`: night and fog pooled (the "
             "known weak spots). Every detector goes through the shipped box refiner; "
             "`score exp.` is the exponent of the refiner's edge confidence in the score: "
             "the current detector's as deployed, each new one's calibrated on frames of "
             "seeds of their own (`calibrate` stage).", ""]
    lines += _table(["model", *SETS, "score exp."], rows)
    boot, boot_nf = ev.get("bootstrap", {}), ev.get("bootstrap_night_fog", {})
    rows = [[_title(a), b.get("delta"), b.get("ci_low"), b.get("ci_high"),
             boot_nf.get(a, {}).get("delta"), boot_nf.get(a, {}).get("ci_low"),
             boot_nf.get(a, {}).get("ci_high")] for a, b in boot.items()]
    lines += ["mAP50-95 change against the current detector; paired bootstrap over "
              "held-out episodes (95 % interval):", ""]
    lines += _table(["model", "hard delta", "ci low", "ci high", "night+fog delta",
                     "ci low", "ci high"], rows)
    lines += _versus(ev)
    return lines


def _calibration(cal: dict[str, Any]) -> list[str]:
    """Each detector's calibration: mAP50-95 on the calibration sets per score exponent
    (the ranking's pool, then the hard sets alone where the ranking pooled more)."""
    from data_engine.evaluation import HARD

    scores = cal.get("scores") or {}
    if not scores:
        return []
    grid = sorted({float(w) for r in scores.values() for w in r.get("scores", {})})
    pooled = ("night, fog and rain pooled" if cal.get("on") == "hard"
              else "all conditions pooled")
    lines = [f"### Refiner score exponent, calibrated ({cal.get('frames')} ground-truth "
             f"frames from seeds {cal.get('seed')}.., {pooled})", "",
             f"Deployed with the current detector: {fmt(cal.get('deployed'))}. mAP50-95 on "
             "the calibration frames at each exponent; the best is taken.", ""]
    rows: list[list[Any]] = []
    for n, r in scores.items():
        title = _title(n) if n != "current" else "current detector"
        rows.append([title] + [r.get("scores", {}).get(str(w)) for w in grid]
                    + [r.get("best")])
        per = r.get("per_set") or {}
        if cal.get("on") != "hard" and per:
            hard = [per.get(str(w), {}).get(HARD) for w in grid]
            if all(h is not None for h in hard):
                top = max(zip(hard, grid, strict=True), key=lambda p: (p[0], -p[1]))[1]
                rows.append([f"{title}: hard sets only"] + hard + [f"({fmt(top)})"])
    return lines + _table(["model", *(fmt(w) for w in grid), "taken"], rows)


def _versus(ev: dict[str, Any]) -> list[str]:
    """Mined against random frames, against the run-to-run spread."""
    v = ev.get("versus", {})
    if not v:
        return []
    lines = ["### Mining against random frames", ""]
    for key, title in (("mined_vs_random", "hard"), ("mined_vs_random_night_fog",
                                                    "night+fog")):
        b = v.get(key)
        if b:
            lines.append(f"- {title}: mined minus random {fmt(b.get('delta'))} "
                         f"[{fmt(b.get('ci_low'))}, {fmt(b.get('ci_high'))}] (paired "
                         "bootstrap over held-out episodes)")
    sp = ev.get("spread", {})
    if sp.get("spread") is not None:
        ranges = ", ".join(f"{_title(a)} {fmt(r)}" for a, r in sp["range_by_arm"].items())
        lines.append(f"- run-to-run spread of the hard-set mAP50-95 (the same arm trained "
                     f"with other seeds: another frame sample, another training seed): "
                     f"{fmt(sp['spread'])} ({ranges})")
        b = v.get("mined_vs_random", {})
        d = b.get("delta")
        if isinstance(d, int | float):
            verdict = "beats" if d > sp["spread"] else "does not beat"
            lines.append(f"- mining **{verdict}** random by more than the spread "
                         f"({fmt(d)} against {fmt(sp['spread'])})")
    else:
        lines.append("- run-to-run spread: not measured (set `train.spread_seeds`)")
    return lines + [""]


def _flips(p: dict[str, Any]) -> str:
    if "p_value" not in p:  # a report of a turn before session 11
        return ""
    return (f" (exact McNemar test of the flips: p = {p['p_value']:.2f}; under 0.05 the "
            "change is more than chance flips)")


def _closed_loop(ev: dict[str, Any]) -> list[str]:
    cl = ev.get("closed_loop", {})
    if not cl:
        return []
    p = cl.get("paired", {})
    lines = ["## Closed-loop hard suite (rule planner on perception, paired by seed)", "",
             f"Failures (collision or off-road): {p.get('before')} with the current detector, "
             f"{p.get('after')} with the candidate; fixed {p.get('n_fixed')}, broken "
             f"{p.get('n_broken')}{_flips(p)}; rule-privileged (exact scene) also fails "
             f"on {len(p.get('not_fixable', []))} of them (not perception's to fix).", ""]
    lines += _causes(p)
    rows = []
    with_cause = any(r.get("cause_before") for r in cl.get("rows", []))
    for r in cl.get("rows", []):
        c = r["case"]
        row = [f"{c['family']} {c['time_of_day']}/{c['weather']} {c['seed']}",
               r["failed_before"], r["failed_after"], r["privileged_failed"]]
        if with_cause:
            row += [_cause(r.get("cause_before")), _cause(r.get("cause_after"))]
        rows.append(row)
    head = ["episode", "failed before", "failed after", "rule-privileged failed"]
    lines += _table(head + (["why before", "why after"] if with_cause else []), rows)
    return lines


_WHY = {
    "out_of_view": "out of view: the actor hit was never in the frame from 4 s to 0.5 s "
                   "before (a car beside or behind the ego in a lane change); no detector "
                   "sees it",
    "missed": "missed: in view, and the detector found it in under half of the frames of "
              "its last second in view (the detector's to fix)",
    "seen": "seen: in view and detected (the planner's to fix)",
    "in_view": "in view, no perception frames to judge",
    "off_road": "off road",
    "unknown": "no ground truth to tell",
}


def _causes(p: dict[str, Any]) -> list[str]:
    """The failures by cause (data_engine.failure_cause; ground truth, for the report)."""
    before, after = p.get("causes_before") or {}, p.get("causes_after") or {}
    if not before and not after:
        return []
    out = ["Why they failed (from the ground truth, data_engine/failure_cause.py; current "
           "detector / candidate):", ""]
    for k, text in _WHY.items():
        if before.get(k) or after.get(k):
            out.append(f"- {before.get(k, 0)} / {after.get(k, 0)} {text}")
    return out + [""]


def _cause(c: dict[str, Any] | None) -> str:
    if not c or c.get("cause") in (None, "none"):
        return ""
    k = c.get("actor_class")
    what = CLASS_NAMES[k] if isinstance(k, int) and 0 <= k < len(CLASS_NAMES) else ""
    found = f" ({c['found']}/{c['judged']})" if c.get("judged") else ""
    return f"{c['cause']} {what}{found}".strip()


def _plot_maps(ev: dict[str, Any], folder: OutputFolder) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = ev["reports"]
    models = ["before"] + [a for a in ARM_TITLES if a in reports]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        vals = [_map_of(reports[m], s) or 0.0 for s in SETS]
        ax.bar([i + k * width for i in range(len(SETS))], vals, width,
               label="current" if m == "before" else m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(SETS))], SETS)
    ax.set_ylabel("mAP50-95")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = "map_before_after.png"
    path = folder.own(name)
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return name
