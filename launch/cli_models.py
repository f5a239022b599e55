"""`drivestack models list|register|promote|rollback`: the model registry
(perception/registry.py), the one place that names the current detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from launch.cli_common import cli_errors, echo_json

models_app = typer.Typer(help="The detector registry: which detector every job uses.",
                         no_args_is_help=True, add_completion=False)


def _registry(root: Path | None):  # noqa: ANN202 - perception.registry.Registry
    from perception.registry import Registry

    return Registry(root)


Root = Annotated[Path | None, typer.Option(
    "--registry", help="Registry folder (default: $DRIVESTACK_REGISTRY, else "
                       "~/.local/share/drivestack/registry).")]


@models_app.command("list")
@cli_errors
def list_models(registry: Root = None) -> None:
    """The registered detectors, the current one marked."""
    reg = _registry(registry)
    current = reg.current().name
    table = Table(box=box.SIMPLE_HEAD, title=f"models in {reg.root}")
    for col in ("", "name", "created", "sha256", "refiner exp.", "metrics"):
        table.add_column(col)
    rows = []
    for e in reg.entries():
        mark = "*" if e.name == current else ""
        metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in list(e.metrics.items())[:4])
        exp = "" if e.refiner_iou_weight is None else f"{e.refiner_iou_weight:g}"
        table.add_row(mark, e.name, e.created, e.sha256[:12], exp, metrics)
        rows.append({"name": e.name, "current": e.name == current, "path": str(e.path),
                     "sha256": e.sha256, "refiner_iou_weight": e.refiner_iou_weight,
                     "metrics": e.metrics})
    Console(stderr=True).print(table)
    echo_json({"current": current, "models": rows})


@models_app.command("register")
@cli_errors
def register(weights: Annotated[Path, typer.Argument(help="Detector .pt file.")],
             name: Annotated[str, typer.Option(help="A new name for it.")],
             refiner_iou_weight: Annotated[float | None, typer.Option(
                 help="The box refiner's score exponent calibrated for this detector "
                      "(`drivestack loop` calibrates its own; default: the refiner's).")
             ] = None,
             registry: Root = None) -> None:
    """Copy a detector into the registry (not yet current: see `promote`)."""
    from perception.detector import load_detector

    load_detector(weights)  # a file that is not a detector is refused here, not later
    entry = _registry(registry).register(weights, name,
                                         refiner_iou_weight=refiner_iou_weight)
    echo_json({"registered": entry.name, "sha256": entry.sha256, "path": str(entry.path),
               "refiner_iou_weight": entry.refiner_iou_weight})


@models_app.command("promote")
@cli_errors
def promote(name: Annotated[str, typer.Argument(help="Registered name (or 'shipped').")],
            registry: Root = None) -> None:
    """Make a registered detector the current one for every job."""
    entry = _registry(registry).promote(name)
    echo_json({"current": entry.name, "path": str(entry.path)})


@models_app.command("rollback")
@cli_errors
def rollback(registry: Root = None) -> None:
    """Return to the detector that was current before the last promotion."""
    entry = _registry(registry).rollback()
    echo_json({"current": entry.name, "path": str(entry.path)})
