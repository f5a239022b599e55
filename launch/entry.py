"""The `drivestack` console script: `launch.cli.app` with a bare `--ray` read as `--ray
local` (click options cannot take an optional value)."""

from __future__ import annotations

import sys

from sim.fanout import LOCAL


def normalize(argv: list[str]) -> list[str]:
    """`--ray` followed by nothing or by another option becomes `--ray local` (after `--`
    nothing is touched)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        out.append(arg)
        if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(LOCAL)
    return out


def main() -> None:
    from launch.cli import app

    app(args=normalize(sys.argv[1:]), prog_name="drivestack")
