"""data_engine.rerun_replay and `drivestack replay ID --rerun`: a snapshot's clip recorded
with Rerun during its replay (stored frames, ground truth and predictions, the triggers
as markers at their steps), read back with Rerun's own API."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from data_engine.clip import PERCEPTION, TRUTH, boxes_per_frame, npz_arrays, read_clip
from data_engine.recorder import Recorder, RecorderConfig
from data_engine.replay import replay_clip
from data_engine.rerun_replay import SnapshotRecording
from data_engine.store import SnapshotStore
from launch.cli import app
from planning.rollout import AutopilotAgent, rollout
from sim.env import DrivingEnv

rr = pytest.importorskip("rerun")


def _perceiver(images: list[np.ndarray]) -> list[Any]:
    det = SimpleNamespace(boxes_xyxy=np.array([[5.0, 6.0, 25.0, 30.0]], np.float32),
                          scores=np.array([0.75], np.float32), classes=np.array([1]),
                          distance=np.array([20.0], np.float32))
    return [SimpleNamespace(detections=det, lanes=None) for _ in images]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> tuple[SnapshotStore, str]:
    """A store holding one short clip: the control mode fires "random" at every step."""
    store = SnapshotStore(tmp_path_factory.mktemp("rr") / "store", create=True)
    env = DrivingEnv(obs_type="camera", action_type="continuous",
                     camera={"width": 160, "height": 96})
    rec = Recorder(store, RecorderConfig(pre_seconds=0.0, post_seconds=0.2),
                   {"seed": 2, "scenario_seed": 2, "driver": "autopilot"}, random_rate=1.0)
    rollout(env, AutopilotAgent(), seed=2, scenario_seed=2, max_steps=8, listeners=[rec],
            perceiver=_perceiver, perceive_every_frame=True)
    assert rec.saved
    return store, rec.saved[0]


def _read(path: Path, contents: str | list[str], index: str | None = "step") -> Any:
    """Rows of the recording on timeline `index` (None: its static data)."""
    server = rr.server.Server(host="127.0.0.1", datasets={"d": [str(path)]})
    try:
        ds = rr.catalog.CatalogClient(server.url()).get_dataset("d")
        return ds.filter_contents(contents).reader(index=index).to_pandas()
    finally:
        server.shutdown()


def test_a_snapshot_recording_holds_the_stored_clip(snapshot: tuple[SnapshotStore, str],
                                                    tmp_path: Path) -> None:
    store, sid = snapshot
    snap = store.get(sid)
    clip = read_clip(snap.read, snap.id)
    path = tmp_path / "clip.rrd"
    recording = SnapshotRecording(snap, path)
    check, _ = replay_clip(snap, listeners=[recording])
    assert check.ok and recording.written == path
    assert [p.name for p in tmp_path.iterdir()] == ["clip.rrd"], "no temporary file left"

    steps = [f["index"] for f in clip.doc["frames"]]
    images = _read(path, "/camera/image")
    assert sorted(images["step"]) == steps
    assert set(images["/camera/image:EncodedImage:media_type"].map(lambda v: list(v)[0])) \
        == {"image/png"}, "the stored PNGs, as stored"

    truth = boxes_per_frame(npz_arrays(snap.read(TRUTH), TRUTH), "", clip.n_frames, TRUTH)
    k = next(i for i, b in enumerate(truth) if b is not None and len(b))
    df = _read(path, "/camera/**").set_index("step")
    x0, y0, x1, y1 = truth[k].xyxy[0]
    centers = np.asarray(list(df.loc[steps[k], "/camera/truth/boxes:Boxes2D:centers"]))
    assert centers[0] == pytest.approx([(x0 + x1) / 2, (y0 + y1) / 2])
    assert list(df.loc[steps[0], "/camera/pred/boxes:Boxes2D:labels"]) == ["truck 0.75"]
    assert "/camera/truth/lanes:LineStrips2D:strips" in df.columns, "from the re-simulation"
    seen = boxes_per_frame(npz_arrays(snap.read(PERCEPTION), PERCEPTION), "", clip.n_frames,
                           PERCEPTION)
    assert seen[0] is not None

    fired = sorted({t["index"] for t in clip.doc["triggers"]})
    marks = _read(path, "/metrics/triggers/**").dropna(
        subset=["/metrics/triggers/random:Scalars:scalars"])
    assert sorted(marks["step"]) == fired and fired
    log = _read(path, "/triggers")
    texts = [list(v)[0] for v in log["/triggers:TextLog:text"]]
    assert texts and all(t.startswith("trigger random: ") for t in texts)
    (doc,) = _read(path, "/info", index=None)["/info:TextDocument:text"].iloc[0]
    assert doc.startswith(f"# snapshot {sid}") and f"step {fired[0]}: random" in doc


def test_replay_cli_writes_a_recording_and_refuses_to_overwrite(
        snapshot: tuple[SnapshotStore, str], tmp_path: Path) -> None:
    store, sid = snapshot
    out = tmp_path / "r.rrd"
    args = ["replay", sid, "--store", str(store.root), "--rerun", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000 and f'"rerun":"{out}"' in result.stdout
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "Traceback" not in again.output
    assert again.stderr.strip() == f"error: --rerun: {out} exists; drivestack does not " \
                                   "overwrite it"
    bad = CliRunner().invoke(app, ["replay", sid, "--store", str(store.root), "--rerun",
                                   str(tmp_path / "r.txt")])
    assert bad.exit_code == 2 and "must end in .rrd" in bad.stderr
    spawn_only = CliRunner().invoke(app, ["replay", sid, "--store", str(store.root),
                                          "--rerun-spawn"])
    assert spawn_only.exit_code == 2 and "give --rerun" in spawn_only.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.rrd"]
