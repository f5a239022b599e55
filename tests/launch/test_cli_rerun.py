"""`drivestack run --rerun`: one Rerun recording per episode beside the given name, named
in the metrics; bad --rerun values are one clear error before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from launch.cli import app

rr = pytest.importorskip("rerun")
runner = CliRunner()

TINY = """
family: highway
episodes: 1
seed: 0
max_steps: 3
camera: {width: 160, height: 96}
video: {enabled: false}
"""


def _frames(path: Path) -> list[int]:
    server = rr.server.Server(host="127.0.0.1", datasets={"d": [str(path)]})
    try:
        ds = rr.catalog.CatalogClient(server.url()).get_dataset("d")
        df: Any = ds.filter_contents("/camera/image").reader(index="step").to_pandas()
    finally:
        server.shutdown()
    return sorted(df["step"])


def test_one_episode_is_recorded_at_the_given_name(write_launch, tmp_path: Path) -> None:
    rec = tmp_path / "rec" / "ep.rrd"
    result = runner.invoke(app, ["run", str(write_launch(TINY)), "--out",
                                 str(tmp_path / "out"), "--rerun", str(rec)])
    assert result.exit_code == 0, result.output
    (ep,) = json.loads(result.stdout.strip().splitlines()[-1])["episodes"]
    assert ep["rerun"] == str(rec) and f"rerun {rec}" in result.stderr
    assert _frames(rec) == [0, 1, 2, 3]
    assert [p.name for p in rec.parent.iterdir()] == ["ep.rrd"], "no temporary file left"


def test_several_episodes_get_one_file_each(write_launch, tmp_path: Path) -> None:
    rec = tmp_path / "run.rrd"
    result = runner.invoke(app, ["run", str(write_launch(TINY)), "--episodes", "2",
                                 "--out", str(tmp_path / "out"), "--rerun", str(rec)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    files = [tmp_path / "run_000.rrd", tmp_path / "run_001.rrd"]
    assert [e["rerun"] for e in doc["episodes"]] == [str(f) for f in files]
    assert not rec.exists() and all(_frames(f) == [0, 1, 2, 3] for f in files)


@pytest.mark.parametrize("case", ["exists", "suffix", "spawn-only"])
def test_bad_rerun_options_are_one_clear_error(write_launch, tmp_path: Path,
                                               case: str) -> None:
    existing = tmp_path / "mine.rrd"
    existing.write_bytes(b"not ours")
    args = {"exists": ["--rerun", str(existing)],
            "suffix": ["--rerun", str(tmp_path / "rec.mp4")],
            "spawn-only": ["--rerun-spawn"]}[case]
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(write_launch(TINY)), "--out", str(out), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = {"exists": f"error: --rerun: {existing} exists; drivestack does not "
                         "overwrite it",
               "suffix": f"error: --rerun: {tmp_path / 'rec.mp4'} must end in .rrd",
               "spawn-only": "error: --rerun-spawn: give --rerun FILE.rrd too (the "
                             "recording is written to a file as well)"}[case]
    assert result.stderr.strip() == message
    assert existing.read_bytes() == b"not ours" and not out.exists(), "nothing ran"
