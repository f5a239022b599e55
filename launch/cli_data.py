"""The data engine's commands: `drivestack mine` (drive a suite, save clips of failures
into the snapshot store) and `drivestack replay ID` (re-simulate a snapshot byte for byte,
then drive it again with other stacks). Registered in launch/cli.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import typer
from pydantic import Field, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from data_engine.recorder import RecorderConfig
from launch.cli_common import (
    Force,
    TaskCpus,
    TaskGpus,
    cli_errors,
    echo_json,
    fanout_of,
    ray_option,
)
from launch.config import PERCEPTION_DEVICES, CameraConfig, PerceptionDevice, _Strict, load_launch
from launch.eval_suite import SetConfig
from sim.outputs import Job, OutputFolder, atomic_write_text, json_text

DEFAULT_MINE_LAUNCH = Path(__file__).with_name("mine.yaml")
from data_engine.loop import MINE_SEEDS, STAGES  # noqa: E402 - one definition of each

MinerDriver = Literal["rule", "rl", "rl-shield", "privileged", "rule-privileged"]
Stack = Literal["rule", "rl", "rl-shield", "privileged", "rule-privileged"]


class MineConfig(_Strict):
    """Launch file of `drivestack mine`."""

    store: Path = Field(default=Path("out/snapshots"), description="snapshot store folder")
    driver: MinerDriver = Field(default="rule", description="planner kind that drives")
    policy: Path | None = Field(default=None, description="policy zip of an RL driver")
    device: PerceptionDevice = Field(default="auto",
                                     description=f"perception device: {PERCEPTION_DEVICES}")
    max_steps: int = Field(default=450, ge=1, le=100_000, description="steps per episode")
    second_detector: bool = Field(default=True, description="run detector_fast beside the "
                                                            "online detector (disagreement)")
    camera: CameraConfig = CameraConfig()
    scenarios: SetConfig = Field(default_factory=lambda: SetConfig(seeds=[500_000]))
    recorder: RecorderConfig = Field(default_factory=RecorderConfig)

    @model_validator(mode="after")
    def _mining_seeds(self) -> MineConfig:
        lo, hi = MINE_SEEDS
        bad = [s for s in self.scenarios.seeds if not lo <= s < hi]
        if bad:
            raise ValueError(f"scenarios.seeds: mining seeds must lie in {lo}..{hi - 1}, "
                             f"disjoint from the held-out evaluation seeds; got {bad[:5]}")
        return self


@cli_errors
def mine_command(
    launch_file: Annotated[Path, typer.Argument(
        help="Launch file (YAML); default: the packaged launch/mine.yaml.",
        show_default=False)] = DEFAULT_MINE_LAUNCH,
    store: Annotated[Path | None, typer.Option(help="Override `store`.")] = None,
    episodes: Annotated[int | None, typer.Option(
        "--episodes", "-n", min=1, help="Mine only the first N episodes.")] = None,
    workers: Annotated[int, typer.Option(
        min=1, max=4096, help="Processes driving episodes (each builds its own stack; "
                              "this process writes the snapshots); with --ray: the local "
                              "cluster's CPUs.")] = 1,
    ray: Annotated[str | None, ray_option("episodes")] = None,
    task_cpus: TaskCpus = 1.0,
    task_gpus: TaskGpus = 0.0,
) -> None:
    """Drive a scenario suite with perception on every frame; save a clip around every
    trigger firing into the snapshot store (SQLite index + one folder per snapshot).
    With --workers or --ray the store gets the same snapshots (in episode order).

    Exit codes: 0 mined; 1 an episode raised (recorded; the others still ran); 2 a bad
    launch file, option or store.
    """
    console = Console(stderr=True)
    cfg = load_launch(launch_file, MineConfig, overrides={"store": store})
    from data_engine.mine import MineSpec, mine, mine_fanout, model_hashes
    from data_engine.store import SnapshotStore
    from perception.detector import FAST_WEIGHTS
    from perception.lanes import DEFAULT_LANE_WEIGHTS
    from perception.registry import current_detector
    from planning.evaluate import Case, make_perceiver

    cases = [Case("mine", fam, c.time_of_day, c.weather, seed)
             for fam in cfg.scenarios.families for c in cfg.scenarios.conditions
             for seed in cfg.scenarios.seeds][:episodes]
    fanout = fanout_of(ray, workers, task_cpus, task_gpus)
    snapshots = SnapshotStore(cfg.store, create=True)
    perceiver, note = make_perceiver(cfg.device, cfg.camera.spec())  # bad weights: here
    second = None
    if cfg.second_detector:
        from perception.perceiver import Perceiver

        second = Perceiver(weights=FAST_WEIGHTS, device=cfg.device, camera=cfg.camera.spec(),
                           lanes=False)
    models = model_hashes({"detector": current_detector(), "lanes": DEFAULT_LANE_WEIGHTS,
                           "second_detector": FAST_WEIGHTS if second else None})
    if note:
        console.print(f"note: {note}", markup=False)
    console.print(f"drivestack mine: {len(cases)} episodes with {cfg.driver} -> {cfg.store}"
                  + (f" in {fanout.describe()}" if fanout.parallel else ""),
                  markup=False, highlight=False, soft_wrap=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("mine", total=len(cases))

        def done(ep: Any) -> None:
            progress.update(task, advance=1, description=f"{ep.case['family']} "
                            f"{ep.case['time_of_day']}/{ep.case['weather']} "
                            f"{len(ep.snapshots)} clip(s)")

        if fanout.parallel:
            spec = MineSpec(cfg.driver, cfg.device, cfg.camera.spec(), cfg.second_detector,
                            cfg.policy, cfg.recorder, cfg.max_steps, models)
            summary = mine_fanout(snapshots, cases, spec, fanout, on_episode=done)
        else:
            summary = mine(snapshots, cases, driver=cfg.driver, perceiver=perceiver,
                           second=second, policy=cfg.policy, recorder=cfg.recorder,
                           max_steps=cfg.max_steps, camera=cfg.camera.spec(),
                           models=models, on_episode=done)
    doc = summary.as_dict()
    errors = [e for e in summary.episodes if e.error]
    for e in errors:
        console.print(f"{e.case['family']} seed {e.case['seed']} failed: {e.error}",
                      style="bold red", markup=False, soft_wrap=True)
    echo_json({k: v for k, v in doc.items() if k != "per_episode"} | {"store": str(cfg.store),
                                                                       "ids": summary.snapshots})
    if errors:
        raise typer.Exit(code=1)


@cli_errors
def replay_command(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="Snapshot id.")],
    store: Annotated[Path, typer.Option(help="Snapshot store folder.")] = Path("out/snapshots"),
    stack: Annotated[list[str] | None, typer.Option(
        help="Also drive from the clip's start with this stack (repeatable): rule | rl | "
             "rl-shield | privileged | rule-privileged.")] = None,
    device: Annotated[str, typer.Option(help="Perception device.")] = "auto",
    video: Annotated[Path | None, typer.Option(
        help="Write an mp4: the stored (old) predictions and --weights' (new) side by "
             "side over the ground truth (green).")] = None,
    weights: Annotated[Path | None, typer.Option(
        help="Detector for the new predictions in --video (default: the current "
             "one).")] = None,
    rerun: Annotated[Path | None, typer.Option(
        "--rerun", help="Write a Rerun recording (.rrd, a new file) of the clip: stored "
                        "frames, ground truth and predictions, the triggers as markers. "
                        "Open with `rerun FILE`. Needs the viz extra.",
        show_default=False)] = None,
    rerun_spawn: Annotated[bool, typer.Option(
        "--rerun-spawn", help="Also start a Rerun viewer and stream the recording to it "
                              "(needs --rerun).")] = False,
) -> None:
    """Restore a snapshot's world and re-simulate its clip: every frame and its labels
    must match the stored ones byte for byte (checked by SHA-256). With --stack, drive
    from the clip's start with other stacks and say whether the failure happens again.
    With --video, compare old and new predictions on the clip. With --rerun, record the
    clip for the Rerun viewer (docs/rerun.md).

    Exit codes: 0 the replay matched; 1 it did not; 2 a bad id, store or snapshot.
    """
    from data_engine.replay import closed_loop, replay_clip
    from data_engine.store import SnapshotStore

    console = Console(stderr=True)
    allowed = ("rule", "rl", "rl-shield", "privileged", "rule-privileged")
    stacks = list(dict.fromkeys(stack or []))
    if bad := [s for s in stacks if s not in allowed]:
        raise ValueError(f"--stack: {bad[0]!r} is not a stack; allowed: {', '.join(allowed)}")
    snapshots = SnapshotStore(store)
    snap = snapshots.get(snapshot_id)
    if video is not None and video.suffix != ".mp4":
        raise ValueError(f"--video: {video} must end in .mp4")
    if video is not None and video.exists():
        raise ValueError(f"--video: {video} exists; drivestack does not overwrite it")
    recording = _snapshot_recording(snap, rerun, rerun_spawn)
    try:
        check, frames = replay_clip(snap, keep_frames=video is not None,
                                    listeners=[recording] if recording else [])
    finally:
        if recording is not None:
            recording.abort()  # an interrupted replay leaves no temporary file
    console.print(f"replay {snap.id}: {check.frames_equal}/{check.frames} frames and "
                  f"{check.truth_equal}/{check.truth_checked} labels byte-equal"
                  + ("" if check.stored_png_equal is None else
                     f", {check.stored_png_equal}/{check.frames} stored PNGs equal"),
                  markup=False, highlight=False)
    doc: dict[str, Any] = {"id": snap.id, "ok": check.ok, "frames": check.frames,
                           "frames_equal": check.frames_equal,
                           "truth_equal": check.truth_equal,
                           "stored_png_equal": check.stored_png_equal,
                           "first_mismatch": check.first_mismatch, "error": check.error}
    if stacks:
        from planning.evaluate import prepare_planners

        planners, _ = prepare_planners(stacks, device=device)
        results = closed_loop(snap, planners)
        doc["closed_loop"] = [{"stack": r.stack, "failed": r.failed, "end": r.end,
                               "collision": r.collision, "off_road": r.off_road,
                               "min_ttc": r.min_ttc, "error": r.error} for r in results]
        for r in results:
            console.print(f"  {r.stack}: {'FAILS' if r.failed else 'ok'} ({r.end}, "
                          f"{r.steps} steps)", markup=False)
    if video is not None:
        write_comparison(snap, frames, video, weights, device)
        doc["video"] = str(video)
    if recording is not None and recording.written is not None:
        doc["rerun"] = str(recording.written)
        console.print(f"Rerun recording: {recording.written} (open: rerun "
                      f"{recording.written})", markup=False, highlight=False, soft_wrap=True)
    echo_json(doc)
    if not check.ok:
        raise typer.Exit(code=1)


def _snapshot_recording(snap: Any, rerun: Path | None, spawn: bool) -> Any:
    """The Rerun recorder of `replay --rerun` (data_engine.rerun_replay), or None."""
    if rerun is None:
        if spawn:
            raise ValueError("--rerun-spawn: give --rerun FILE.rrd too (the recording is "
                             "written to a file as well)")
        return None
    from data_engine.rerun_replay import SnapshotRecording

    return SnapshotRecording(snap, rerun, spawn=spawn, what="--rerun")


def write_comparison(snap: Any, frames: list[Any], path: Path, weights: Path | None,
                     device: str) -> None:
    """An mp4 of a clip: old (stored) predictions left, new ones right, both over the
    ground truth (green, thin)."""
    import cv2
    import numpy as np

    from data_engine.clip import PERCEPTION, TRUTH, boxes_per_frame, npz_arrays, read_clip
    from launch.overlays import draw_boxes, side_by_side
    from launch.runner import mp4_writer
    from perception.perceiver import Perceiver

    clip = read_clip(snap.read, snap.id)
    n = clip.n_frames
    old = boxes_per_frame(npz_arrays(snap.read(PERCEPTION), PERCEPTION), "", n, PERCEPTION)
    truth = boxes_per_frame(npz_arrays(snap.read(TRUTH), TRUTH), "", n, TRUTH)
    perceiver = Perceiver(weights=weights, device=device, lanes=False)
    new = perceiver(frames)
    scale = 2

    def panel(image: Any, gt: Any, boxes: Any, classes: Any, title: str) -> Any:
        h, w = image.shape[:2]
        big = cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR)
        if gt is not None:
            for x0, y0, x1, y1 in (gt.xyxy * scale).astype(int):
                cv2.rectangle(big, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), 1)
        big = draw_boxes(big, boxes, classes, scale=scale, thickness=2)
        cv2.putText(big, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        return big

    with mp4_writer(path, 15) as add:
        for k, image in enumerate(frames):
            o = old[k]
            left = panel(image, truth[k], o.xyxy if o is not None else np.zeros((0, 4)),
                         o.classes if o is not None else np.zeros(0, int), "old (stored)")
            d = new[k].detections
            right = panel(image, truth[k], d.boxes_xyxy, d.classes, "new")
            add(side_by_side(left, right))


RELABEL_JOB = Job("relabel", files=(r"\d{8}T\d{6}-[0-9a-f]{8}\.(json|npz)", r"quality\.json"))
"""What `drivestack relabel` writes into its folder (sim.outputs)."""


@cli_errors
def relabel_command(
    snapshot_ids: Annotated[list[str] | None, typer.Argument(
        metavar="[ID]...", help="Snapshot ids (default: every verified one).")] = None,
    store: Annotated[Path, typer.Option(help="Snapshot store folder.")] = Path("out/snapshots"),
    out: Annotated[Path, typer.Option(help="Output folder for the labels.")] = Path(
        "out/relabel"),
    quality: Annotated[bool, typer.Option(
        help="After labeling, score the labels against the snapshots' ground truth "
             "(report only) beside the online perception.")] = True,
    force: Force = False,
    workers: Annotated[int, typer.Option(
        min=1, max=4096, help="Processes labeling clips (each builds its own teacher); "
                              "with --ray: the local cluster's CPUs.")] = 1,
    ray: Annotated[str | None, ray_option("clips")] = None,
    task_cpus: TaskCpus = 1.0,
    task_gpus: TaskGpus = 0.0,
) -> None:
    """Auto-label the frames of snapshots without reading their ground truth: an offboard
    teacher (TTA, a second detector, the box refiner), hindsight tracking over the
    whole clip, forward and backward, and a learned check of each track (the track
    verifier, `fit-verifier`); unsure objects become ignore regions. Writes
    <out>/<ID>.json + .npz per snapshot and quality.json.

    Exit codes: 0 labelled; 2 a bad id, store, snapshot or output folder.
    """
    from data_engine.relabel import (
        online_tallies,
        quality_against_truth,
        quality_of,
        relabel_fanout,
        relabel_snapshot,
    )
    from data_engine.store import SnapshotStore

    console = Console(stderr=True)
    fanout = fanout_of(ray, workers, task_cpus, task_gpus)
    snapshots = SnapshotStore(store)
    ids = list(dict.fromkeys(snapshot_ids or snapshots.good_ids()))
    picked = [snapshots.get(i) for i in ids]  # a bad id or a corrupt snapshot: one error
    names = [f"{i}.{ext}" for i in ids for ext in ("json", "npz")] + ["quality.json"]
    folder = OutputFolder.claim(out, RELABEL_JOB, force=force, entries=names)
    folder.remove_stale()
    ours, online = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("relabel", total=len(picked))
        labeled = (relabel_fanout(picked, fanout) if fanout.parallel
                   else (relabel_snapshot(snap) for snap in picked))
        for snap, r in zip(picked, labeled, strict=True):
            folder.own(f"{snap.id}.json"), folder.own(f"{snap.id}.npz")
            r.labels.save(folder.path / snap.id)
            folder.wrote()
            if quality:
                ours += quality_against_truth(snap, r.labels)
                online += online_tallies(snap)
            progress.update(task, advance=1, description=snap.id)
    doc: dict[str, Any] = {"snapshots": len(picked), "out": str(out)}
    if quality and picked:
        doc["auto"] = quality_of(ours)
        doc["online"] = quality_of(online)
        atomic_write_text(folder.own("quality.json"), json_text(doc, indent=1) + "\n")
        a, o = doc["auto"]["overall"], doc["online"]["overall"]
        console.print(f"auto labels: precision {a['precision']:.3f} recall {a['recall']:.3f} "
                      f"ignored {a['ignored']:.3f}; online perception: precision "
                      f"{o['precision']:.3f} recall {o['recall']:.3f}", markup=False)
    folder.finish(snapshots=len(picked))
    echo_json(doc)


FIT_VERIFIER_JOB = Job("fit-verifier", files=(r"track_verifier\.json",))
"""What `drivestack fit-verifier` writes into its folder (sim.outputs)."""


@cli_errors
def fit_verifier_command(
    store: Annotated[list[Path], typer.Option(
        help="Snapshot store(s) whose clips (with ground truth) it learns from; give "
             "--store more than once for several.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("out/verifier"),
    l2: Annotated[float, typer.Option(min=0.0, max=1e6, help="L2 penalty on the "
                                      "standardized weights.")] = 1.0,
    force: Force = False,
) -> None:
    """Fit the labeler's track verifier (data_engine/verifier.py): the default teacher
    labels every clip of the stores, each track's labels are matched against the clip's
    ground truth, and a logistic regression learns from the tracks' features which are
    real. Writes <out>/track_verifier.json; the labeler never reads ground truth, this
    command does. The stores' seeds must not be the seeds the labels are judged on.

    Exit codes: 0 fitted; 2 a bad store, snapshot or output folder.
    """
    import sys
    from dataclasses import replace
    from datetime import UTC, datetime

    from data_engine.autolabel import LabelerSettings, default_teacher
    from data_engine.relabel import track_examples
    from data_engine.store import SnapshotStore
    from data_engine.verifier import FEATURES, fit_verifier

    console = Console(stderr=True)
    snaps = []
    for path in store:
        st = SnapshotStore(path)
        snaps += [st.get(i) for i in st.good_ids()]
    if not snaps:
        raise ValueError(f"store: no verified snapshot in {', '.join(map(str, store))}")
    folder = OutputFolder.claim(out, FIT_VERIFIER_JOB, force=force,
                                entries=["track_verifier.json"])
    teacher = default_teacher(lanes=False)
    feats, real, false, seeds = [], [], [], set()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("fit-verifier", total=len(snaps))
        for snap in snaps:
            f, r, w = track_examples(snap, teacher)
            feats.append(f)
            real.append(r)
            false.append(w)
            seeds.add(snap.meta.get("scenario_seed"))
            progress.update(task, advance=1, description=snap.id)
    x, pos, neg = np.concatenate(feats), np.concatenate(real), np.concatenate(false)
    settings = LabelerSettings()
    meta = {"command": " ".join(["drivestack", "fit-verifier", *sys.argv[2:]]),
            "made": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "snapshots": len(snaps), "tracks": len(x), "true_labels": int(pos.sum()),
            "false_labels": int(neg.sum()), "scenario_seeds": sorted(
                int(v) for v in seeds if isinstance(v, int)),
            "teacher": teacher.version, "l2": l2,
            # the settings it labelled with (the verifier itself off)
            "settings": replace(settings, verify=0.0).digest()}
    verifier = fit_verifier(x, pos, neg, l2=l2, meta=meta)
    kept = verifier(x) >= settings.verify
    verifier.meta["on_its_own_clips"] = {  # the training clips: not a held-out figure
        "precision_before": float(pos.sum() / max(pos.sum() + neg.sum(), 1)),
        "precision_after": float(pos[kept].sum() / max(pos[kept].sum() + neg[kept].sum(), 1)),
        "true_labels_kept": float(pos[kept].sum() / max(pos.sum(), 1))}
    verifier.save(folder.own("track_verifier.json"))
    folder.finish(tracks=len(x))
    console.print(f"{len(snaps)} clips, {len(x)} tracks ({int(pos.sum())} true and "
                  f"{int(neg.sum())} false labels); weights over {', '.join(FEATURES)}: "
                  + " ".join(f"{v:+.2f}" for v in verifier.weights), markup=False)
    echo_json({"out": str(out), "version": verifier.version, **verifier.meta})


DEFAULT_LOOP_LAUNCH = Path(__file__).with_name("loop.yaml")
QUICK_LOOP_LAUNCH = Path(__file__).with_name("loop_quick.yaml")


@cli_errors
def loop_command(
    launch_file: Annotated[Path | None, typer.Argument(
        help="Launch file (YAML); default: the packaged launch/loop.yaml.",
        show_default=False)] = None,
    quick: Annotated[bool, typer.Option(
        help="The packaged launch/loop_quick.yaml: a minute-long smoke run of every "
             "stage.")] = False,
    out: Annotated[Path | None, typer.Option(help="Override `out`.")] = None,
    redo_from: Annotated[str | None, typer.Option(
        help=f"Run this stage and every later one again ({', '.join(STAGES)}).")] = None,
    force: Force = False,
) -> None:
    """One turn of the data engine: mine -> relabel -> version -> retrain -> evaluate ->
    promote, with report.md. Resumable: a rerun on the same `out` starts at the first
    unfinished stage.

    Exit codes: 0 done (promoted or not: see the report); 2 a bad launch file, option or
    output folder.
    """
    from data_engine.loop import STAGES, LoopConfig, run_loop

    if quick and launch_file is not None:
        raise ValueError("--quick is a launch file of its own; give one or the other")
    path = QUICK_LOOP_LAUNCH if quick else launch_file or DEFAULT_LOOP_LAUNCH
    cfg = load_launch(path, LoopConfig, overrides={"out": out})
    console = Console(stderr=True)
    console.print(f"drivestack loop: {path} -> {cfg.out}", markup=False, highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        stages = progress.add_task("stages", total=len(STAGES))
        work = progress.add_task("", total=None)

        def on_stage(stage: str, what: str) -> None:
            if what != "start":
                progress.update(stages, advance=1)
            progress.update(stages, description=f"{stage}: {what}")
            progress.update(work, completed=0, total=None, description=stage)

        def on_work(stage: str, done: int, total: int) -> None:
            progress.update(work, completed=done, total=total, description=stage)

        doc = run_loop(cfg, force=force, redo_from=redo_from, on_stage=on_stage,
                       progress=on_work)
    st = doc["stages"]
    promote = st.get("promote", {})
    console.print(f"report: {cfg.out / 'report.md'}; promoted: {promote.get('promoted')}",
                  markup=False, highlight=False)
    echo_json({"out": str(cfg.out), "times": doc["times"],
               "registered": promote.get("registered"), "promoted": promote.get("promoted"),
               "reasons": promote.get("reasons")})
