"""The `drivestack` command line: wiring only (launch file -> job -> report).

Progress and tables go to stderr; the last line on stdout is the job's metrics as JSON,
so `drivestack run | tail -n 1` can be piped into other tools.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from launch.cli_common import (
    Force,
    TaskCpus,
    TaskGpus,
    cli_errors,
    echo_json,
    fail,
    fanout_of,
    ray_option,
)
from launch.config import (
    DEFAULT_DATASET_LAUNCH,
    DEFAULT_RUN_LAUNCH,
    DEFAULT_TRAIN_PERCEPTION_LAUNCH,
    DEFAULT_TRAIN_PLANNER_LAUNCH,
    DatasetConfig,
    RunConfig,
    TrainPerceptionConfig,
    TrainPlannerConfig,
    load_launch,
)
from sim.outputs import Job, OutputFolder, not_a_file

app = typer.Typer(
    name="drivestack",
    help="drivestack: a closed-loop driving stack in miniature. Every job reads a YAML "
         "launch file.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """drivestack: a closed-loop driving stack in miniature."""


@app.command()
@cli_errors
def run(
    launch_file: Annotated[Path, typer.Argument(
        help="Launch file (YAML); default: the packaged launch/run.yaml.",
        show_default=False)] = DEFAULT_RUN_LAUNCH,
    episodes: Annotated[int | None, typer.Option(
        "--episodes", "-n", min=1, help="Override `episodes`.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override `seed`.")] = None,
    out: Annotated[Path | None, typer.Option(help="Override `out` (output folder).")] = None,
    force: Force = False,
    rerun: Annotated[Path | None, typer.Option(
        "--rerun", help="Also write a Rerun recording (.rrd, a new file) of each episode: "
                        "this file for one episode, else <stem>_000.rrd, <stem>_001.rrd, "
                        "... beside it. Open with `rerun FILE`. Needs the viz extra.",
        show_default=False)] = None,
    rerun_spawn: Annotated[bool, typer.Option(
        "--rerun-spawn", help="Also start a Rerun viewer and stream the recordings to it "
                              "live (needs --rerun).")] = False,
) -> None:
    """Run simulation episodes with a driver; write metrics.csv/json and mp4s (and Rerun
    recordings with --rerun).

    `out` must be new, empty or an earlier `drivestack run` output (whose files it
    replaces). metrics.json says `"complete": false` until every episode is done.

    Exit codes: 0 every episode ran;
    1 an episode raised (recorded with end=error; the others still run);
    2 a bad launch file, option, output folder, weights or policy file.
    """
    console = Console(stderr=True)
    config = load_launch(launch_file, RunConfig,
                         overrides={"episodes": episodes, "seed": seed, "out": out})
    if rerun_spawn and rerun is None:
        raise ValueError("--rerun-spawn: give --rerun FILE.rrd too (the recording is "
                         "written to a file as well)")
    if rerun is not None:
        from launch.runner import rerun_files

        rerun_files(config, rerun)  # a bad path or a missing rerun-sdk fails before the run
    console.print(f"drivestack run: {config.episodes} x {config.env_id} "
                  f"(seed {config.seed}, driver {config.driver}) -> {config.out}",
                  markup=False, highlight=False, soft_wrap=True)
    document = _run_with_progress(config, launch_file, console, force, rerun, rerun_spawn)
    console.print(summary_table(document))
    failed = _report_files_and_errors(document, config.out, console)
    echo_json(document)
    if failed:
        raise typer.Exit(code=1)


@app.command()
@cli_errors
def dataset(
    launch_file: Annotated[Path | None, typer.Argument(
        help="Launch file (YAML); default: the packaged launch/dataset.yaml.",
        show_default=False)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Launch file (same as the argument).")] = None,
    out: Annotated[Path | None, typer.Option(help="Override `out` (dataset folder).")] = None,
    frames: Annotated[int | None, typer.Option(min=1, help="Override `frames`.")] = None,
    seed: Annotated[int | None, typer.Option(
        min=0, help="Override `seed` (offsets every episode seed).")] = None,
    workers: Annotated[int, typer.Option(
        min=1, help="Processes rendering episodes; the dataset is the same for any number "
                    "(with --ray: the local cluster's CPUs).")
    ] = 1,
    force: Force = False,
    ray: Annotated[str | None, ray_option("episodes")] = None,
    task_cpus: TaskCpus = 1.0,
    task_gpus: TaskGpus = 0.0,
) -> None:
    """Render a perception dataset: YOLO images/labels + data.yaml, COCO JSON, lane lines.

    `out` must be new, empty or an earlier drivestack dataset (which it replaces); the
    dataset appears there only when complete. Temporary folders of killed runs beside `out`
    are removed.

    Exit codes: 0 written; 2 a bad launch file, option or output folder.
    """
    from perception.datasets import DatasetPlan, generate

    console = Console(stderr=True)
    if launch_file is not None and config is not None:
        raise fail(console, ValueError("give the launch file once (argument or --config)"))
    path = launch_file or config or DEFAULT_DATASET_LAUNCH
    cfg = load_launch(path, DatasetConfig, overrides={"out": out, "frames": frames,
                                                      "seed": seed})
    plan = DatasetPlan(**cfg.model_dump(exclude={"out", "camera"}), camera=cfg.camera.spec())
    fanout = fanout_of(ray, workers, task_cpus, task_gpus)
    console.print(f"drivestack dataset: {cfg.frames} frames (seed {cfg.seed}) -> {cfg.out}"
                  + (f" in {fanout.describe()}" if ray else ""), markup=False, highlight=False)
    with Progress(TextColumn("frames"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("frames", total=cfg.frames)
        summary = generate(plan, cfg.out, on_frame=lambda n: progress.advance(task, n),
                           force=force, fanout=fanout)
    for leftover in summary["cleaned"]:
        console.print(f"removed {leftover}, left by a killed `drivestack dataset`",
                      markup=False, highlight=False, soft_wrap=True)
    echo_json({"out": str(cfg.out), **summary})


TRAIN_PERCEPTION = Job("train-perception", folders=("detector", "refiner", "lanes"),
                       trust_unconfirmed=True)
"""Each model of `drivestack train-perception` trains in out/MODEL (sim.outputs)."""


@app.command("train-perception")
@cli_errors
def train_perception(
    launch_file: Annotated[Path | None, typer.Argument(
        help="Launch file (YAML); default: the packaged launch/train_perception.yaml.",
        show_default=False)] = None,
    data: Annotated[Path | None, typer.Option(help="Override `data` (dataset folder).")] = None,
    out: Annotated[Path | None, typer.Option(help="Override `out` (runs folder).")] = None,
    model: Annotated[str | None, typer.Option(
        help="Train only this model: detector, refiner or lanes (default: the launch "
             "file's `models`).")] = None,
    epochs: Annotated[int | None, typer.Option(
        min=1, help="Override the epochs of every model trained.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Override `lanes.backbone`.")] = None,
    device: Annotated[str | None, typer.Option(help="Override `device`.")] = None,
    resume: Annotated[bool, typer.Option(
        help="Lanes: continue the run in out/lanes/BACKBONE from its last.pt.")] = False,
    force: Force = False,
) -> None:
    """Train the object detector, its box refiner and the lane model from scratch,
    offline, on a `drivestack dataset` folder. The last stdout line is a JSON summary.

    `out` must be new, empty or an earlier `drivestack train-perception` output; each model
    writes its own sub-folder (detector/, refiner/, lanes/), which a rerun writes over.

    Exit codes: 0 trained; 2 a bad launch file, option, output folder or missing dataset.
    """
    console = Console(stderr=True)
    cfg = load_launch(launch_file or DEFAULT_TRAIN_PERCEPTION_LAUNCH, TrainPerceptionConfig,
                      overrides={"data": data, "out": out, "detector.epochs": epochs,
                                 "refiner.epochs": epochs, "lanes.epochs": epochs,
                                 "lanes.backbone": backbone,
                                 "models": None if model is None else [model],
                                 "device": device})
    if not (cfg.data / "data.yaml").is_file():
        raise ValueError(f"data: {cfg.data / 'data.yaml'} not found; make a dataset with "
                         "`drivestack dataset`")
    if resume:
        last = cfg.out / "lanes" / cfg.lanes.backbone / "last.pt"
        if "lanes" not in cfg.models:
            raise ValueError("--resume continues a lane model run; add `lanes` to `models` "
                             "(or --model lanes)")
        if not last.is_file():
            raise ValueError(f"--resume: {last} {not_a_file(last)}; nothing to continue "
                             "(drop --resume to train from scratch)")
    folder = OutputFolder.claim(cfg.out, TRAIN_PERCEPTION, force=force,
                                entries=cfg.models)  # each model trains in out/MODEL
    summary: dict[str, Any] = {}
    if "detector" in cfg.models:
        folder.own("detector")
        summary["detector"] = _train_detector(cfg)
    if "refiner" in cfg.models:
        folder.own("refiner")
        trained = summary.get("detector", {}).get("weights")
        summary["refiner"] = _train_refiner(cfg, console, trained)
    if "lanes" in cfg.models:
        folder.own("lanes")
        summary["lanes"] = _train_lanes(cfg, console, resume)
    folder.finish(models=list(summary))
    echo_json(summary)


def _train_detector(cfg: TrainPerceptionConfig) -> dict[str, Any]:
    from perception.detector import (
        DetectorTraining,
        dataset_image_size,
        export_onnx,
        train_detector,
    )

    det = cfg.detector
    job = DetectorTraining(data=cfg.data / "data.yaml", out=cfg.out / "detector",
                           architecture=det.architecture, epochs=det.epochs, imgsz=det.imgsz,
                           batch=det.batch, seed=cfg.seed, device=cfg.device,
                           workers=det.workers, hours=det.hours, cache=det.cache,
                           init=det.init, lr0=det.lr0, fraction=det.fraction,
                           close_mosaic=det.close_mosaic, nbs=det.nbs, freeze=det.freeze)
    h, w = dataset_image_size(job.data)  # a damaged dataset fails now, not after training
    result = train_detector(job)
    result["onnx"] = str(export_onnx(Path(result["weights"]), h, w))
    return result


def _train_refiner(cfg: TrainPerceptionConfig, console: Console, trained: str | None
                   ) -> dict[str, Any]:
    from perception.refine_train import RefinerTraining, train_refiner

    ref = cfg.refiner
    job = RefinerTraining(data=cfg.data, out=cfg.out / "refiner",
                          detector=ref.detector or (Path(trained) if trained else None),
                          epochs=ref.epochs, batch=ref.batch, lr=ref.lr, width=ref.width,
                          iou_weight=ref.iou_weight, frames=ref.frames,
                          val_frames=ref.val_frames, min_conf=ref.min_conf,
                          jitter=ref.jitter, seed=cfg.seed, device=cfg.device)
    with Progress(TextColumn("refiner"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task("epochs", total=ref.epochs, info="")

        def on_epoch(row: dict[str, Any]) -> None:
            right = row.get("val_edge_accuracy")
            progress.update(task, completed=row["epoch"], info=f"loss {row['loss']:.3f}" + (
                "" if right is None else f" val edges right {right:.3f}"))

        result = train_refiner(job, on_epoch)
    result.pop("history")
    return result


def _train_lanes(cfg: TrainPerceptionConfig, console: Console, resume: bool
                 ) -> dict[str, Any]:
    from perception.detector import resolve_device, torch_device
    from perception.lane_train import LaneTraining, train_lanes

    lanes = cfg.lanes
    device = resolve_device(cfg.device)
    job = LaneTraining(data=cfg.data, out=cfg.out / "lanes" / lanes.backbone,
                       backbone=lanes.backbone, epochs=lanes.epochs, batch=lanes.batch,
                       lr=lanes.lr, seed=cfg.seed, resume=resume, init=lanes.init,
                       device=torch_device(device))
    with Progress(TextColumn(f"lanes ({lanes.backbone})"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task("epochs", total=lanes.epochs, info="")

        def on_epoch(row: dict[str, Any]) -> None:
            progress.update(task, completed=row["epoch"],
                            info=f"loss {row['loss']:.3f} val F1 {row['val_f1']:.3f}")

        result = train_lanes(job, on_epoch)
    result.pop("history")
    return result


@app.command("eval-perception")
@cli_errors
def eval_perception(
    data: Annotated[Path, typer.Option(help="Dataset folder (from `drivestack dataset`).")],
    weights: Annotated[Path | None, typer.Option(
        help="Detector weights; default: the shipped perception/weights/detector.pt."
    )] = None,
    lane_weights: Annotated[Path | None, typer.Option(
        help="Lane model weights; default: the shipped perception/weights/lanes.pt.")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate: train, val or test.")] = "test",
    device: Annotated[str, typer.Option(
        help="auto | cpu | cuda | cuda:N | N (a CUDA index) | mps")] = "auto",
    imgsz: Annotated[int | None, typer.Option(
        min=32, max=4096,
        help="Inference image size [px]; default: the weights' training size.")] = None,
    refine: Annotated[bool, typer.Option(
        help="Pass the boxes through the box refiner (perception/refine.py).")] = True,
    refiner: Annotated[Path | None, typer.Option(
        help="Refiner weights; default: the shipped perception/weights/refiner.pt.")] = None,
    plots: Annotated[Path | None, typer.Option(
        help="Folder for PNG plots of the metrics per condition and bucket.")] = None,
) -> None:
    """Held-out perception metrics: detection mAP50 / mAP50-95 overall, per class,
    condition, distance and visibility bucket; lanes: CULane F1, TuSimple accuracy/FP/FN
    and ego offset/heading errors, per condition. The last stdout line is the report as
    one JSON object.

    Exit codes: 0 evaluated; 2 a bad option, a missing dataset or weights file.
    """
    from perception.datasets import SPLITS
    from perception.detector import resolve_device, torch_device
    from perception.evaluate import evaluate_detections, predict_split
    from perception.lane_train import evaluate_lane_weights
    from perception.registry import current_detector

    console = Console(stderr=True)
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; allowed: {', '.join(SPLITS)}")
    if not (data / "annotations" / f"{split}.json").is_file():
        raise ValueError(f"data: {data} has no annotations/{split}.json; run `drivestack "
                         "dataset`")
    from perception.refine import load_refiner

    if refiner is not None and not refine:
        raise ValueError("--refiner: given with --no-refine; drop one")
    dev = resolve_device(device)
    figures = None if plots is None else OutputFolder.claim(
        plots, PLOTS_JOB, key="--plots", entries=PLOTS)
    try:
        box_refiner = load_refiner(refiner, torch_device(dev)) if refine else None
        preds = predict_split(weights or current_detector(), data, split, imgsz=imgsz, device=dev,
                              refiner=box_refiner)
        lanes = evaluate_lane_weights(lane_weights, data, split, torch_device(dev))
    except FileNotFoundError as exc:
        raise ValueError(f"weights: {exc}") from None
    report = evaluate_detections(preds, data, split)
    report["lanes"] = lanes
    report["summary"] = _perception_summary(report)
    console.print(_detection_table(report, f"detection on {data} ({split})"))
    console.print(_lane_table(lanes, f"lanes on {data} ({split})"))
    if figures is not None:
        from perception.plots import plot_perception_report

        figures.remove_stale()
        for name in PLOTS:
            figures.own(name)
        for path in plot_perception_report(report, figures.path):
            console.print(f"wrote {path}", highlight=False)
        figures.finish()
    echo_json(report)


PLOTS = ("detection.png", "lanes.png")
"""The files `eval-perception --plots` writes (perception/plots.py)."""
PLOTS_JOB = Job("eval-perception", files=tuple(map(re.escape, PLOTS)), force_option="")


def _perception_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: mAP50, mAP50-95 and lane F1, overall and per condition."""
    lanes = report["lanes"]
    out: dict[str, Any] = {"mAP50": report["all"].get("mAP50"),
                           "mAP50-95": report["all"].get("mAP50-95"),
                           "lane_f1": lanes["all"].get("f1"),
                           "nominal": {
                               "mAP50": report["nominal (day, clear)"].get("mAP50"),
                               "mAP50-95": report["nominal (day, clear)"].get("mAP50-95"),
                               "lane_f1": lanes["nominal (day, clear)"].get("f1")},
                           "offset_mae_m": lanes["all"].get("offset_mae_m")}
    for key, r in report.items():
        if key.startswith(("time_of_day=", "weather=")) and "mAP50" in r:
            out[key] = {"mAP50": r["mAP50"], "mAP50-95": r["mAP50-95"],
                        "lane_f1": lanes.get(key, {}).get("f1")}
    return out


def _detection_table(report: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    for col in ("subset", "images", "objects", "mAP50", "mAP50-95"):
        table.add_column(col, justify="left" if col == "subset" else "right", no_wrap=True)
    for key, r in report.items():
        if isinstance(r, dict) and "mAP50" in r and "images" in r:
            table.add_row(key, str(r["images"]), str(r["objects"]), _fmt(r["mAP50"], 3),
                          _fmt(r["mAP50-95"], 3))
    return table


def _lane_table(lanes: dict[str, Any], title: str) -> Table:
    cols = ("f1", "tusimple_accuracy", "tusimple_fp", "tusimple_fn", "offset_mae_m",
            "heading_mae_rad")
    table = Table(title=title)
    table.add_column("subset", no_wrap=True)
    table.add_column("images", justify="right")
    for col in cols:
        table.add_column(col.replace("tusimple_", "TS ").replace("_mae", " MAE"),
                         justify="right")
    for key, r in lanes.items():
        if r.get("images"):
            table.add_row(key, str(r["images"]), *(_fmt(r[c], 3) for c in cols))
    return table


def planner_job(cfg: TrainPlannerConfig) -> Any:
    """The `planning.train.PlannerTraining` a checked launch file describes."""
    from planning.train import PlannerTraining

    fields = cfg.model_dump(exclude={"scenario", "shield", "shield_penalty", "reward_weights",
                                     "perceiver_device", "render_threads"})
    seen = ({"perceiver_device": cfg.perceiver_device, "render_threads": cfg.render_threads}
            if cfg.source == "perception" else {})
    return PlannerTraining(**{**fields, "families": tuple(cfg.families),
                              "net_arch": tuple(cfg.net_arch)},
                           env_kwargs={**seen,
                                       **({"scenario": cfg.scenario} if cfg.scenario else {}),
                                       **({"shield": cfg.shield} if cfg.shield else {}),
                                       **({"shield_penalty": cfg.shield_penalty}
                                          if cfg.shield_penalty else {}),
                                       **({"reward_weights": cfg.reward_weights}
                                          if cfg.reward_weights else {})})


def train_job(launch_file: Path, out: Path, source: str | None = None) -> Any:
    """`planner_job` of a launch file, with `out` as its run folder and optionally another
    `source` (bench/planner_speed)."""
    overrides: dict[str, Any] = {"out": out, **({"source": source} if source else {})}
    return planner_job(load_launch(launch_file, TrainPlannerConfig, overrides=overrides))


@app.command("train-planner")
@cli_errors
def train_planner_cmd(
    launch_file: Annotated[Path | None, typer.Argument(
        help="Launch file (YAML); default: the packaged launch/train_planner_batch.yaml.",
        show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="Override `out` (run folder).")] = None,
    timesteps: Annotated[int | None, typer.Option(
        min=1, help="Override `total_timesteps`.")] = None,
    source: Annotated[str | None, typer.Option(
        help="Override `source`: emulated or privileged.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Override `seed`.")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue from this checkpoint zip up to `total_timesteps`.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    force: Force = False,
) -> None:
    """Train the RL planner with stable-baselines3 (PPO by default) on vectorized envs,
    with evaluation (best model kept), checkpoints and TensorBoard logs in `out`.
    The last stdout line is the run summary as JSON.

    Exit codes: 0 trained; 2 a bad launch file, option or checkpoint.
    """
    from planning.train import train_planner

    console = Console(stderr=True)
    cfg = load_launch(launch_file or DEFAULT_TRAIN_PLANNER_LAUNCH, TrainPlannerConfig,
                      overrides={"out": out, "total_timesteps": timesteps,
                                 "source": source, "seed": seed})
    job = planner_job(cfg)
    if resume is not None and not resume.is_file():
        raise ValueError(f"--resume: checkpoint {resume} {not_a_file(resume)}")
    from planning.train import JOB, RUN_ENTRIES, check_device

    check_device(cfg.device)  # before anything is written
    folder = OutputFolder.claim(cfg.out, JOB, force=force, entries=RUN_ENTRIES)
    for entry in RUN_ENTRIES:
        folder.own(entry)
    summary = train_planner(job, resume=resume, progress_bar=progress)
    folder.finish(timesteps=summary.get("timesteps"), completed=summary.get("completed"))
    best = summary["best_mean_reward"]
    console.print(f"trained {summary['trained_now']} steps in {summary['wall_s']} s "
                  f"({summary['agent_steps_per_s']} decisions/s); "
                  + (f"best eval reward {best:.2f}" if summary["evaluations"] else
                     "no evaluation ran (eval_every > the steps trained)")
                  + f"; model {summary['final']}"
                  + ("" if summary["completed"] else "; not completed"), highlight=False)
    echo_json(summary)


def _register_eval() -> None:
    from launch.cli_data import (
        fit_verifier_command,
        loop_command,
        mine_command,
        relabel_command,
        replay_command,
    )
    from launch.cli_eval import eval_command

    app.command("eval")(eval_command)
    app.command("mine")(mine_command)
    app.command("replay")(replay_command)
    app.command("relabel")(relabel_command)
    app.command("fit-verifier")(fit_verifier_command)
    app.command("loop")(loop_command)
    from launch.cli_models import models_app
    from launch.cli_snapshots import snapshots_app

    app.add_typer(snapshots_app, name="snapshots")
    app.add_typer(models_app, name="models")


_register_eval()


def _run_with_progress(config: RunConfig, launch_file: Path, console: Console,
                       force: bool = False, rerun: Path | None = None,
                       rerun_spawn: bool = False) -> dict[str, Any]:
    """`run_job` under a rich progress bar counting steps over all episodes."""
    from launch.runner import run_job  # imageio and the driver load only when a job runs

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("steps"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task("episode", total=None)
        done_steps = 0

        def start(i: int, cap: int) -> None:
            nonlocal done_steps
            done_steps = i * cap
            progress.update(task, description=f"episode {i + 1}/{config.episodes}",
                            total=config.episodes * cap, completed=done_steps)

        def step(n: int) -> None:
            progress.update(task, completed=done_steps + n)

        document = run_job(config, launch_file, force=force, on_episode_start=start,
                           on_step=step, rerun=rerun, rerun_spawn=rerun_spawn)
        progress.update(task, completed=progress.tasks[0].total)
    return document


def _report_files_and_errors(document: dict[str, Any], out: Path, console: Console) -> int:
    """Print where the videos are and which episodes failed; returns the failure count."""
    console.print(f"metrics: {out / 'metrics.csv'}, {out / 'metrics.json'}",
                  markup=False, highlight=False, soft_wrap=True)
    failed = 0
    for e in document["episodes"]:
        if e["video"]:
            console.print(f"episode {e['episode']} video: {out / e['video']}",
                          markup=False, highlight=False, soft_wrap=True)
        if e.get("rerun"):
            console.print(f"episode {e['episode']} Rerun recording: {e['rerun']} (open: "
                          f"rerun {e['rerun']})", markup=False, highlight=False,
                          soft_wrap=True)
        if e["error"]:
            failed += 1
            console.print(f"episode {e['episode']} (seed {e['seed']}) failed: {e['error']}",
                          style="bold red", markup=False, highlight=False, soft_wrap=True)
    return failed


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_table(document: dict[str, Any]) -> Table:
    """One row per episode and a row over all of them."""
    cfg = document["config"]
    table = Table(title=f"drivestack run: {cfg['family']}, seeds {cfg['seed']}.. -> {cfg['out']}",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for name in ("ep", "scenario", "steps", "route", "coll", "off", "v [m/s]", "TTC [s]",
                 "end"):
        left = name in ("scenario", "end")
        table.add_column(escape(name), justify="left" if left else "right", no_wrap=True)
    for e in document["episodes"]:
        scenario = f"{e['time_of_day']} {e['weather']} {e['n_lanes']}L"
        table.add_row(str(e["episode"]), scenario, str(e["steps"]),
                      f"{100 * e['route_completion']:.0f}%", _fmt(e["collision"]),
                      _fmt(e["off_road"]), _fmt(e["mean_speed"], 1), _fmt(e["min_ttc"], 1),
                      e["end"])
    s = document["summary"]
    table.add_section()
    table.add_row("all", f"{s['distance'] / 1000:.2f} km", str(s["steps"]),
                  f"{100 * s['route_completion']:.0f}%", f"{100 * s['collision_rate']:.0f}%",
                  f"{100 * s['off_road_rate']:.0f}%", _fmt(s["mean_speed"], 1),
                  _fmt(s["min_ttc"], 1), f"errors: {s['errors']}" if s["errors"] else "")
    return table
