"""What every `drivestack` command shares: the error contract, the JSON last line and
the `--force` option of commands that write a folder."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from sim.outputs import json_text

MAX_MESSAGE = 4000
"""Longest error message printed [characters]; longer ones are cut with a note."""

EXPECTED_ERRORS = (ValueError, OSError)
"""What a command reports as `error: ...` with exit code 2: bad input (launch files,
options, model and policy files, output folders: each raises a ValueError subclass) and
the file system (a missing file, no space left, no permission). Anything else is a bug in
drivestack and keeps its traceback."""


def fail(console: Console, exc: Exception | str) -> typer.Exit:
    text = str(exc)
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]} ... ({len(text) - MAX_MESSAGE} more characters)"
    console.print(f"error: {text}", style="bold red", markup=False, highlight=False,
                  soft_wrap=True)
    return typer.Exit(code=2)


def cli_errors(command: Callable[..., None]) -> Callable[..., None]:
    """The error contract of every command: an expected failure (`EXPECTED_ERRORS`) is one
    `error: ...` line on stderr and exit code 2; Ctrl-C is exit code 130; a bug keeps its
    traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except EXPECTED_ERRORS as exc:
            raise fail(Console(stderr=True), exc) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted: outputs written so far are marked "
                                       "incomplete", markup=False, highlight=False)
            raise typer.Exit(code=130) from None

    return wrapper


def echo_json(document: Any) -> None:
    """The last stdout line: `document` as one line of strict JSON (NaN and infinities
    as null)."""
    typer.echo(json_text(document))


Force = Annotated[bool, typer.Option(
    "--force", help="Write into a non-empty folder drivestack did not write, beside its "
                    "files (none of them is removed or overwritten).")]
