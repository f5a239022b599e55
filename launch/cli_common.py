"""What every `drivestack` command shares: the error contract, the JSON last line and
the `--force` option of commands that write a folder."""

from __future__ import annotations

import functools
import linecache
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from sim.outputs import json_text

MAX_MESSAGE = 4000
"""Longest error message printed [characters]; longer ones are cut with a note."""

PACKAGES = tuple(Path(__file__).resolve().parents[1] / name for name in (
    "sim", "perception", "planning", "data_engine", "launch"))
"""drivestack's own code: where a deliberate `raise` of a bad-input error stands."""


def expected(exc: BaseException) -> bool:
    """Whether `exc` is an expected failure, reported as `error: ...` with exit code 2:

    - an `OSError` (a missing file, no space left, no permission);
    - a `ValueError` or `TypeError` that drivestack raised on purpose: the innermost frame
      of its traceback is a `raise` statement in drivestack's own code. Bad input raises
      one there, with a message naming what is wrong (launch files, options, output
      folders, model and policy files, devices: `LaunchConfigError`, `OutputFolderError`,
      `UnreadableModel`, `PolicyLoadError` and the checks of every constructor).

    The same exception types raised inside a library or by a built-in call (numpy's shape
    errors, `int("abc")`) are bugs in drivestack and keep their traceback.
    """
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, (ValueError, TypeError)) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = Path(tb.tb_frame.f_code.co_filename).resolve()
    ours = any(path.is_relative_to(p) for p in PACKAGES)
    line = linecache.getline(str(path), tb.tb_lineno).lstrip()
    return ours and line.startswith("raise")


def fail(console: Console, exc: Exception | str) -> typer.Exit:
    text = str(exc)
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]} ... ({len(text) - MAX_MESSAGE} more characters)"
    console.print(f"error: {text}", style="bold red", markup=False, highlight=False,
                  soft_wrap=True)
    return typer.Exit(code=2)


def cli_errors(command: Callable[..., None]) -> Callable[..., None]:
    """The error contract of every command: an expected failure (`expected`) is one
    `error: ...` line on stderr and exit code 2; Ctrl-C is exit code 130; a bug keeps its
    traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (ValueError, TypeError, OSError) as exc:
            if not expected(exc):
                raise
            raise fail(Console(stderr=True), exc) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted: an output folder written so far says "
                                       "complete: false in its .drivestack.json",
                                       markup=False, highlight=False)
            raise typer.Exit(code=130) from None

    return wrapper


def echo_json(document: Any) -> None:
    """The last stdout line: `document` as one line of strict JSON (NaN and infinities
    as null)."""
    typer.echo(json_text(document))


Force = Annotated[bool, typer.Option(
    "--force", help="Write into a non-empty folder drivestack did not write, beside its "
                    "files (none of them is removed or overwritten).")]


RAY_HELP = ("Run the {what} as Ray tasks: `--ray` alone starts a Ray cluster on this "
            "machine, `--ray auto` joins the cluster this machine belongs to (`ray "
            "start`), `--ray HOST:PORT` or `ray://HOST:PORT` another one. The output is "
            "the same as without it. Needs `pip install -e \".[ray]\"` (docs/scale.md).")


def ray_option(what: str) -> Any:
    """The `--ray [ADDRESS]` option (`launch.entry` turns a bare `--ray` into `--ray
    local`)."""
    return typer.Option("--ray", metavar="[ADDRESS]", show_default=False,
                        help=RAY_HELP.format(what=what))


TaskCpus = Annotated[float, typer.Option(
    "--task-cpus", min=0.0, max=1024.0,
    help="CPUs each Ray task asks for (with --ray).")]
TaskGpus = Annotated[float, typer.Option(
    "--task-gpus", min=0.0, max=1024.0,
    help="GPUs each Ray task asks for (with --ray; fractions share a GPU).")]


def fanout_of(ray: str | None, workers: int = 1, task_cpus: float = 1.0,
              task_gpus: float = 0.0) -> Any:
    """The `sim.fanout.Fanout` of a command's options: Ray when `--ray` is given (a local
    cluster gets `workers` CPUs, 0 or 1: all of them), else `workers` local processes."""
    from sim.fanout import Fanout

    if ray is None:
        if task_cpus != 1.0 or task_gpus != 0.0:
            raise ValueError("--task-cpus and --task-gpus need --ray")
        return Fanout(workers=workers)
    return Fanout(workers=0 if workers <= 1 else workers, ray=ray, num_cpus=task_cpus,
                  num_gpus=task_gpus)
