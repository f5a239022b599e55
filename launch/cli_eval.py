"""`drivestack eval`: the driving benchmark from the command line (registered in
launch/cli.py as `app.command("eval")(eval_command)`).

The table goes to stderr, the files (eval.json, episodes.csv, summary.csv, summary.md,
summary.png) into the output folder, and the last stdout line is one JSON object: the
headline aggregates on the nominal set for one planner, or per planner under "planners".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from launch.cli_common import (
    Force,
    TaskCpus,
    TaskGpus,
    cli_errors,
    echo_json,
    fanout_of,
    ray_option,
)
from launch.config import load_launch
from launch.eval_suite import DEFAULT_EVAL_LAUNCH, EvalConfig, SuiteConfig
from sim.outputs import OutputFolder


def load_eval_config(launch_file: Path, suite: Path | None, overrides: dict[str, Any]
                     ) -> EvalConfig:
    """The launch file with the command-line overrides, its suite replaced by the suite
    file when one is given. Raises LaunchConfigError."""
    cfg = load_launch(launch_file, EvalConfig, overrides=overrides)
    if suite is not None:
        cfg = cfg.model_copy(update={"suite": load_launch(suite, SuiteConfig)})
    return cfg


@cli_errors
def eval_command(
    launch_file: Annotated[Path, typer.Argument(
        help="Launch file (YAML); default: the packaged launch/eval.yaml.",
        show_default=False)] = DEFAULT_EVAL_LAUNCH,
    planner: Annotated[str | None, typer.Option(
        help="rl | rl-shield | rule | privileged | rule-privileged | all (default: the launch "
             "file's `planner`).")] = None,
    suite: Annotated[Path | None, typer.Option(
        help="Suite file (max_steps, nominal, adverse) replacing the launch file's "
             "`suite`.")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Offset added to every scenario seed (evaluate on unseen seeds).")] = None,
    episodes: Annotated[int | None, typer.Option(
        "--episodes", "-n", help="Run only the first N episodes of the suite.")] = None,
    out: Annotated[Path | None, typer.Option(help="Override `out` (output folder).")] = None,
    policy: Annotated[Path | None, typer.Option(
        help="Policy zip of the RL planner (of the privileged one with --planner "
             "privileged).")] = None,
    privileged_policy: Annotated[Path | None, typer.Option(
        help="Policy zip of the privileged RL planner (with any --planner).")] = None,
    force: Force = False,
    workers: Annotated[int, typer.Option(
        min=1, max=4096, help="Processes driving episodes (each builds its own planners); "
                              "with --ray: the local cluster's CPUs.")] = 1,
    ray: Annotated[str | None, ray_option("episodes")] = None,
    task_cpus: TaskCpus = 1.0,
    task_gpus: TaskGpus = 0.0,
) -> None:
    """Drive planners over a fixed scenario suite: success rate, route completion,
    collisions and off-road per 100 km, speed, jerk and a CARLA-style driving score,
    perception in the loop beside the privileged scene.

    `out` must be new, empty or an earlier `drivestack eval` output (whose files it
    replaces). Errors follow the CLI's contract (launch.cli.cli_errors).

    Exit codes: 0 evaluated; 1 an episode raised (recorded, the others still ran);
    2 a bad launch or suite file, option, output folder or policy file.
    """
    console = Console(stderr=True)
    overrides = {"planner": planner, "seed": seed, "episodes": episodes, "out": out}
    cfg = load_eval_config(launch_file, suite, overrides)
    given: list[tuple[str, str, Path]] = []  # (option, launch key, file)
    if policy is not None:  # the policy of the planner asked for
        alone = cfg.planner == "privileged" and privileged_policy is None
        given.append(("--policy", "privileged_policy" if alone else "policy", policy))
    if privileged_policy is not None:
        given.append(("--privileged-policy", "privileged_policy", privileged_policy))
    for option, key, file in given:  # validated as in a launch file
        try:
            cfg = EvalConfig.model_validate({**cfg.model_dump(), key: file})
        except ValidationError as exc:
            raise ValueError(f"{option}: "
                             f"{exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    from planning.eval_report import JOB, REPORT_FILES, write_report

    fanout = fanout_of(ray, workers, task_cpus, task_gpus)
    folder = OutputFolder.claim(cfg.out, JOB, force=force, entries=REPORT_FILES)
    try:
        planners, notes = _prepare(cfg)
    except FileNotFoundError as exc:  # perception weights
        raise ValueError(f"perception: {exc}") from None
    folder.remove_stale()  # the previous evaluation's files
    document = _run(cfg, planners, notes, console, fanout)
    from planning.evaluate import headline

    files = write_report(document, folder)
    console.print(results_table(document))
    for line in document["notes"]:
        console.print(f"note: {line}", markup=False, highlight=False, soft_wrap=True)
    console.print("wrote " + ", ".join(str(f) for f in files), markup=False,
                  highlight=False, soft_wrap=True)
    errors = [e for e in document["episodes"] if e["error"]]
    for e in errors:
        console.print(f"{e['planner']} {e['family']} seed {e['seed']} failed: {e['error']}",
                      style="bold red", markup=False, highlight=False, soft_wrap=True)
    echo_json(headline(document))
    if errors:
        raise typer.Exit(code=1)


def _prepare(cfg: EvalConfig) -> tuple[dict[str, Any], list[str]]:
    from planning.evaluate import prepare_planners

    return prepare_planners(cfg.kinds, policy=cfg.policy,
                            privileged_policy=cfg.privileged_policy, device=cfg.device,
                            camera=cfg.camera.spec())


def _run(cfg: EvalConfig, planners: dict[str, Any], notes: list[str], console: Console,
         fanout: Any = None) -> dict[str, Any]:
    """`evaluate` under a progress bar counting episodes over every planner; with a
    parallel `fanout`, `evaluate_fanout` (workers build the planners themselves)."""
    from planning.evaluate import PlannerSpec, evaluate, evaluate_fanout

    suite = cfg.suite.suite(cfg.decision_every)
    n = len(suite.cases(cfg.seed, cfg.episodes))
    console.print(f"drivestack eval: {', '.join(planners)} x {n} episodes "
                  f"(<= {suite.max_steps} steps, seeds +{cfg.seed}) -> {cfg.out}",
                  markup=False, highlight=False, soft_wrap=True)
    if fanout is not None and fanout.parallel:
        console.print(f"episodes run in {fanout.describe()}", markup=False, highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("episodes"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("eval", total=n * len(planners))

        def done(result: Any) -> None:
            progress.update(task, advance=1, description=f"{result.planner} {result.family}")

        if fanout is not None and fanout.parallel:
            spec = PlannerSpec(tuple(planners), cfg.policy, cfg.privileged_policy,
                               cfg.device, cfg.camera.spec())
            return evaluate_fanout(spec, suite, fanout, seed_offset=cfg.seed,
                                   limit=cfg.episodes, notes=notes, on_episode=done)
        return evaluate(planners, suite, camera=cfg.camera.spec(), seed_offset=cfg.seed,
                        limit=cfg.episodes, notes=notes, on_episode=done)


SHORT_TITLES = ("success", "route", "coll/100km", "off/100km", "v [m/s]", "jerk", "score")
"""Column titles of the terminal table (summary.md has the long ones)."""


def results_table(document: dict[str, Any]) -> Table:
    """One row per planner and set, the columns of summary.md."""
    from planning.eval_report import COLUMNS, fmt, summary_rows

    table = Table(title="drivestack eval", box=box.SIMPLE_HEAD, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
    for name in ("planner", "set", "eps", *SHORT_TITLES):
        table.add_column(escape(name), justify="left" if name in ("planner", "set")
                         else "right", no_wrap=True)
    for row in summary_rows(document):
        table.add_row(row["planner"], row["set"], str(row["episodes"]),
                      *(fmt(row[key], kind) for key, _, kind in COLUMNS))
    return table
