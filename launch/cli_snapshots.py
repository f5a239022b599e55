"""`drivestack snapshots`: list, show, verify, export and remove the snapshots of a store
(registered in launch/cli.py as `app.add_typer(snapshots_app, name="snapshots")`).

Tables go to stderr; the last stdout line is one JSON object. Snapshot ids are checked
before anything is read (`data_engine.store.check_id`); no command creates a store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from data_engine.store import Problem, SnapshotStore, UnknownSnapshot, check_id
from launch.cli_common import cli_errors, echo_json
from sim.outputs import json_text

DEFAULT_STORE = Path("out/snapshots")
"""Where `drivestack run` records snapshots unless its launch file says otherwise."""

snapshots_app = typer.Typer(
    name="snapshots",
    help="List, check, export and remove the failure snapshots of a store.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Store = Annotated[Path, typer.Option(
    "--store", help="The snapshot store (a folder holding index.sqlite).")]
Id = Annotated[str, typer.Argument(metavar="ID", help="A snapshot id, e.g. "
                                   "20261206T061500-3f9a2b1c.", show_default=False)]


@snapshots_app.command("list")
@cli_errors
def list_command(
    store: Store = DEFAULT_STORE,
    trigger: Annotated[str | None, typer.Option(help="Only snapshots with this trigger.")
                       ] = None,
    time_of_day: Annotated[str | None, typer.Option(help="day | dusk | night ...")] = None,
    weather: Annotated[str | None, typer.Option(help="clear | fog | rain ...")] = None,
    family: Annotated[str | None, typer.Option(help="Scenario family.")] = None,
    model: Annotated[str | None, typer.Option(help="Perception model version.")] = None,
    since: Annotated[str | None, typer.Option(
        help="Created at or after this UTC time (2026-12-06 or 2026-12-06T06:15:00Z).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Created before this UTC time.")] = None,
) -> None:
    """List the indexed snapshots, oldest first (not verified: see `verify`).

    Exit codes: 0 listed; 2 a bad store or option.
    """
    with SnapshotStore(store) as snapshots:
        rows = snapshots.list(trigger=trigger, time_of_day=time_of_day, weather=weather,
                              family=family, model_version=model, since=since, until=until)
        root = snapshots.root
    Console(stderr=True).print(_rows_table(rows, f"snapshots in {root}"))
    echo_json({"store": str(root), "count": len(rows), "snapshots": rows})


@snapshots_app.command("show")
@cli_errors
def show_command(snapshot_id: Id, store: Store = DEFAULT_STORE) -> None:
    """Verify one snapshot and print its meta and files.

    Exit codes: 0 shown; 2 a bad store or id, or a corrupt snapshot (the error names the
    file).
    """
    check_id(snapshot_id)
    with SnapshotStore(store) as snapshots:
        snap = snapshots.get(snapshot_id)
    console = Console(stderr=True)
    console.print(f"snapshot {snap.id}, created {snap.created}: {snap.path}", markup=False,
                  highlight=False, soft_wrap=True)
    console.print_json(json_text(snap.meta))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for name, entry in snap.manifest["files"].items():
        table.add_row(escape(name), str(entry["size"]))
    console.print(table)
    echo_json({"id": snap.id, "path": str(snap.path), "created": snap.created,
               "meta": snap.meta, "files": snap.manifest["files"]})


@snapshots_app.command("verify")
@cli_errors
def verify_command(
    ids: Annotated[list[str] | None, typer.Argument(
        metavar="ID", help="Snapshots to check (default: the whole store).",
        show_default=False)] = None,
    store: Store = DEFAULT_STORE,
    repair: Annotated[bool, typer.Option(
        help="First index whole snapshots a killed writer left unindexed, drop index rows "
             "whose folder is gone and remove killed writers' temporary folders (corrupt "
             "snapshots are reported, never removed).")] = False,
) -> None:
    """Check snapshots against their manifests and the index; list each problem.

    Every file is read and its SHA-256 compared; missing and extra files, changed
    manifests, index rows without a folder and folders without a row are problems too.

    Exit codes: 0 no problem; 1 problems (listed); 2 a bad store or id.
    """
    for snapshot_id in ids or []:
        check_id(snapshot_id)
    console = Console(stderr=True)
    with SnapshotStore(store) as snapshots:
        repaired = snapshots.repair() if repair else []
        problems = snapshots.verify(ids or None)
        root = snapshots.root
    for line in repaired:
        console.print(f"repaired: {line}", markup=False, highlight=False, soft_wrap=True)
    if problems:
        console.print(_problems_table(problems, f"{len(problems)} problems in {root}"))
    else:
        console.print(f"{root}: no problems", markup=False, highlight=False)
    echo_json({"store": str(root), "ok": not problems, "repaired": repaired,
               "problems": [{"id": p.id, "file": p.file, "what": p.what} for p in problems]})
    if problems:
        raise typer.Exit(code=1)


@snapshots_app.command("export")
@cli_errors
def export_command(snapshot_id: Id, dest: Annotated[Path, typer.Argument(
        help="A new or empty folder outside the store.", show_default=False)],
                   store: Store = DEFAULT_STORE) -> None:
    """Copy a verified snapshot (files and manifest) into a new folder.

    Exit codes: 0 exported; 2 a bad store, id or destination, or a corrupt snapshot.
    """
    check_id(snapshot_id)
    with SnapshotStore(store) as snapshots:
        out = snapshots.export(snapshot_id, dest)
    Console(stderr=True).print(f"exported {snapshot_id} to {out}", markup=False,
                               highlight=False, soft_wrap=True)
    echo_json({"id": snapshot_id, "dest": str(out)})


@snapshots_app.command("rm")
@cli_errors
def rm_command(
    ids: Annotated[list[str], typer.Argument(metavar="ID", help="Snapshots to remove.",
                                             show_default=False)],
    store: Store = DEFAULT_STORE,
) -> None:
    """Remove snapshots (folder and index row).

    A snapshot folder holding a file its manifest does not list is left as it is, with an
    error naming the file.

    Exit codes: 0 removed; 2 a bad store or id (nothing is removed when an id is bad or
    unknown).
    """
    for snapshot_id in ids:
        check_id(snapshot_id)
    removed = []
    with SnapshotStore(store) as snapshots:
        unknown = [i for i in ids if i not in snapshots]
        if unknown:  # nothing removed
            raise UnknownSnapshot(f"no snapshot {', '.join(unknown)} in {snapshots.root}; "
                                  "nothing was removed")
        for snapshot_id in dict.fromkeys(ids):
            snapshots.rm(snapshot_id)
            removed.append(snapshot_id)
    Console(stderr=True).print(f"removed {len(removed)} snapshots", markup=False,
                               highlight=False)
    echo_json({"removed": removed})


def _rows_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("id", "created", "triggers", "family", "time", "weather", "model", "seed",
                 "frames"):
        table.add_column(name, justify="right" if name in ("seed", "frames") else "left",
                         no_wrap=name in ("id", "created"))
    for r in rows:
        table.add_row(*(escape("" if v is None else str(v)) for v in (
            r["id"], r["created"][:19], ",".join(r["triggers"]), r["family"],
            r["time_of_day"], r["weather"], r["model_version"], r["seed"], r["n_frames"])))
    return table


def _problems_table(problems: list[Problem], title: str) -> Table:
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("snapshot", "file", "problem"):
        table.add_column(name, no_wrap=name == "snapshot")
    for p in problems:
        table.add_row(escape(p.id), escape(p.file or ""), escape(p.what))
    return table
