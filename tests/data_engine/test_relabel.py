"""drivestack relabel: labels from the frames alone (the ground truth deleted, the labels
are identical), quality against the truth only for the report, clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from data_engine.clip import TRUTH
from data_engine.relabel import quality_against_truth, quality_of, relabel_snapshot
from data_engine.store import SnapshotStore
from launch.cli import app
from tests.data_engine.test_recorder_replay import _crash_store

runner = CliRunner()


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> tuple[SnapshotStore, list[str]]:
    return _crash_store(tmp_path_factory.mktemp("relabel"))


class _Spy:
    """A snapshot whose reads are recorded."""

    def __init__(self, snap: Any) -> None:
        self.snap, self.id = snap, snap.id
        self.names_read: list[str] = []

    def read(self, name: str) -> bytes:
        self.names_read.append(name)
        return self.snap.read(name)


def _same(a: Any, b: Any) -> None:
    for name in ("boxes", "classes", "scores", "track_ids", "ignore"):
        assert all(np.array_equal(x, y) for x, y in zip(getattr(a, name), getattr(b, name),
                                                         strict=True))
    assert a.labeler == b.labeler


def test_labels_never_read_the_ground_truth(crash: tuple[SnapshotStore, list[str]]) -> None:
    store, ids = crash
    snap = store.get(ids[-1])
    spy = _Spy(snap)
    with_truth = relabel_snapshot(spy)
    assert TRUTH not in spy.names_read and spy.names_read
    # the same snapshot with its ground truth deleted, and with it replaced by nonsense
    files = {n: snap.read(n) for n in snap.names if n != TRUTH}
    without = store.get(store.add(files, snap.meta))
    assert TRUTH not in without.names
    _same(with_truth.labels, relabel_snapshot(without).labels)
    files[TRUTH] = b"not the truth"
    _same(with_truth.labels, relabel_snapshot(store.get(store.add(files, snap.meta))).labels)


def test_quality_is_measured_after_labeling(crash: tuple[SnapshotStore, list[str]]) -> None:
    store, ids = crash
    snap = store.get(ids[-1])
    r = relabel_snapshot(snap)
    q = quality_of(quality_against_truth(snap, r.labels))["overall"]
    assert 0.0 <= q["precision"] <= 1.0 and 0.0 <= q["recall"] <= 1.0 and q["objects"] > 0


def test_relabel_cli(crash: tuple[SnapshotStore, list[str]], tmp_path: Path) -> None:
    store, ids = crash
    out = tmp_path / "labels"
    result = runner.invoke(app, ["relabel", ids[-1], "--store", str(store.root), "--out",
                                 str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["snapshots"] == 1 and "precision" in doc["auto"]["overall"]
    assert (out / f"{ids[-1]}.json").is_file() and (out / f"{ids[-1]}.npz").is_file()
    from data_engine.autolabel import ClipLabels

    assert len(ClipLabels.load(out / ids[-1])) == store.get(ids[-1]).meta["n_frames"]


@pytest.mark.parametrize("bad", ["../x", "20991231T000000-00000000"])
def test_relabel_of_a_bad_id(crash: tuple[SnapshotStore, list[str]], tmp_path: Path,
                             bad: str) -> None:
    store, _ = crash
    result = runner.invoke(app, ["relabel", bad, "--store", str(store.root), "--out",
                                 str(tmp_path / "o")])
    assert result.exit_code == 2 and result.stderr.startswith("error:")
    assert not (tmp_path / "o").exists(), "nothing written for a refused id"


def test_fit_verifier_reads_the_clips_and_needs_both_kinds_of_track(
        crash: tuple[SnapshotStore, list[str]], tmp_path: Path) -> None:
    """`drivestack fit-verifier` labels the store's clips and matches them against their
    ground truth; one clear day clip has true labels only, and a verifier cannot be fitted
    from that: one error, no verifier file."""
    from data_engine.relabel import track_examples

    store, ids = crash
    snap = store.get(ids[-1])
    feats, real, false = track_examples(snap)
    assert len(feats) == len(real) == len(false) and real.sum() > 0 and false.sum() == 0
    alone = SnapshotStore(tmp_path / "store", create=True)  # (other tests add to `crash`)
    alone.add({n: snap.read(n) for n in snap.names}, snap.meta)
    r = runner.invoke(app, ["fit-verifier", "--store", str(alone.root), "--out",
                            str(tmp_path / "v")])
    assert r.exit_code == 2, r.output
    assert "error: need tracks with true labels and tracks with false ones" in r.output
    assert not (tmp_path / "v" / "track_verifier.json").exists()
