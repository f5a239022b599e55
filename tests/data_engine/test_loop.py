"""drivestack loop --quick: every stage end to end in well under a minute; a killed loop
resumes at its first unfinished stage; a bad launch file is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import data_engine.loop as loop
from data_engine.loop import STAGES, LoopConfig, run_loop
from launch.cli import app
from launch.cli_data import QUICK_LOOP_LAUNCH
from launch.loader import load_launch
from perception.registry import Registry

runner = CliRunner()


def test_quick_loop_runs_every_stage_and_resumes(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIVESTACK_REGISTRY", str(tmp_path / "registry"))
    cfg = load_launch(QUICK_LOOP_LAUNCH, LoopConfig, overrides={"out": tmp_path / "loop"})

    def killed(self: object) -> dict:
        raise KeyboardInterrupt  # as a kill between stages would leave it

    real = loop._Context.stage_train
    monkeypatch.setattr(loop._Context, "stage_train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(cfg)
    state = json.loads((tmp_path / "loop" / "loop_state.json").read_text())
    assert list(state["stages"]) == list(STAGES[:STAGES.index("train")])
    monkeypatch.setattr(loop._Context, "stage_train", real)
    seen: list[tuple[str, str]] = []
    doc = run_loop(cfg, on_stage=lambda s, what: seen.append((s, what)))
    assert [s for s, w in seen if w == "skip"] == list(STAGES[:STAGES.index("train")])
    assert [s for s, w in seen if w == "done"] == list(STAGES[STAGES.index("train"):])
    st = doc["stages"]
    assert st["mine"]["replay"]["byte_equal"] == st["mine"]["replay"]["checked"] >= 1
    assert set(st["evaluate"]["reports"]) == {"before", "mined_auto", "random_auto"}
    assert st["promote"]["promoted"] is False  # quick never promotes
    assert st["promote"]["registered"] in [e.name for e in Registry().entries()]
    report = (tmp_path / "loop" / "report.md").read_text()
    for part in ("## Mining", "## Auto-label quality", "random frames, auto labels",
                 "## Closed-loop hard suite", "## Promotion", "map_before_after.png"):
        assert part in report
    assert (tmp_path / "loop" / "map_before_after.png").stat().st_size > 1000
    seen.clear()
    run_loop(cfg, redo_from="promote", on_stage=lambda s, what: seen.append((s, what)))
    assert [s for s, w in seen if w == "done"] == ["promote", "report"]
    assert len(Registry().entries()) == 3, "the shipped one and two registrations"
    with pytest.raises(ValueError, match="not a stage"):
        run_loop(cfg, redo_from="everything")
    # redoing the labels removes the loop's own label files, and never a user's
    labels = tmp_path / "loop" / "labels"
    ours = sorted(labels.glob("*.npz"))
    assert ours
    (labels / "notes.txt").write_text("mine")
    from sim.outputs import OutputFolderError

    with pytest.raises(OutputFolderError, match="notes.txt"):
        run_loop(cfg, redo_from="relabel")
    assert all(p.exists() for p in ours) and (labels / "notes.txt").read_text() == "mine"
    (labels / "notes.txt").unlink()
    from sim.outputs import OutputFolder

    loop.State(OutputFolder.claim(cfg.out, loop.JOB, entries=loop.ENTRIES)).drop_from(
        "relabel")
    assert not any(p.exists() for p in ours) and not any(labels.iterdir())


def test_a_bad_loop_launch_file_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "loop.yaml"
    bad.write_text("train:\n  arms: [mined_auto, everything]\n")
    result = runner.invoke(app, ["loop", str(bad)])
    assert result.exit_code == 2 and "train.arms" in result.stderr
    assert "mined_auto" in result.stderr and "Traceback" not in result.output
    bad.write_text("mine:\n  seeds: [900001]\n")
    result = runner.invoke(app, ["loop", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "900001" in result.stderr
