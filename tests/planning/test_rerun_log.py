"""planning.rerun_log: a few steps of a real camera env recorded with Rerun and read back
with Rerun's own API (entity paths, frame count, one box's coordinates); bad outputs are
one clear error and leave nothing behind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from planning.rerun_log import (
    VIZ_INSTALL,
    Recording,
    RerunLogger,
    RerunUnavailable,
    check_output,
    episode_paths,
    import_rerun,
)
from planning.rollout import AutopilotAgent, Collect, rollout
from sim.env import DrivingEnv

rr = pytest.importorskip("rerun")

STEPS = 4
CAMERA = {"width": 160, "height": 96}
PRED_BOX = np.array([[10.0, 20.0, 50.0, 60.0]], np.float32)


def fake_perceiver(images: list[np.ndarray]) -> list[Any]:
    """One car at PRED_BOX (score 0.9) and two lane slots, on every frame."""
    rows = np.array([60.0, 70.0, 80.0, 90.0], np.float32)
    xs = np.array([[40, 35, 30, 25], [-2, -2, -2, -2], [100, 105, 110, 115],
                   [-2, -2, -2, -2]], np.float32)
    lanes = SimpleNamespace(rows=rows, xs=xs, scores=np.array([0.9, 0, 0.8, 0], np.float32),
                            ego_offset=0.1, heading_error=0.0,
                            slots=("left_outer", "ego_left", "ego_right", "right_outer"))
    det = SimpleNamespace(boxes_xyxy=PRED_BOX, scores=np.array([0.9], np.float32),
                          classes=np.array([0]), distance=np.array([12.0], np.float32))
    return [SimpleNamespace(detections=det, lanes=lanes) for _ in images]


def read_back(path: Path, contents: str | list[str], index: str | None = "step") -> Any:
    """The recording's rows under `contents` on timeline `index` (None: static data), as a
    pandas frame, read with Rerun's catalog API (an offline server on the file)."""
    server = rr.server.Server(host="127.0.0.1", datasets={"d": [str(path)]})
    try:
        ds = rr.catalog.CatalogClient(server.url()).get_dataset("d")
        return ds.filter_contents(contents).reader(index=index).to_pandas()
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Collect]]:
    """A recording of STEPS autopilot steps (and the steps themselves)."""
    path = tmp_path_factory.mktemp("rec") / "episode.rrd"
    env = DrivingEnv(obs_type="camera", action_type="continuous", camera=CAMERA)
    steps = Collect()
    logger = RerunLogger(path, name="test episode")
    end = rollout(env, AutopilotAgent(), seed=3, max_steps=STEPS, listeners=[steps, logger],
                  perceiver=fake_perceiver, perceive_every_frame=True)
    assert end.error is None
    yield path, steps
    env.close()


def test_the_file_appears_whole_with_no_temporary_left(recorded: tuple[Path, Collect]
                                                       ) -> None:
    path, _ = recorded
    assert path.is_file() and path.stat().st_size > 1000
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_entity_paths_and_frame_count(recorded: tuple[Path, Collect]) -> None:
    path, _ = recorded
    df = read_back(path, "/**")
    entities = {c.split(":")[0] for c in df.columns if c.startswith("/")}
    expected = {"/camera/image", "/camera/truth/boxes", "/camera/truth/lanes",
                "/camera/pred/boxes", "/camera/pred/lanes", "/bev/road", "/bev/actors",
                "/bev/ego", "/metrics/speed", "/metrics/action/steer", "/metrics/action/accel",
                "/metrics/reward", "/metrics/events/collision", "/metrics/events/off_road",
                "/events"}
    assert expected <= entities, sorted(expected - entities)
    assert any(e.startswith("/metrics/reward_terms/") for e in entities)
    images = read_back(path, "/camera/image")
    assert sorted(images["step"]) == list(range(STEPS + 1)), "one frame per step, reset too"
    assert {"sim_time", "step"} <= set(images.columns)
    (info,) = read_back(path, "/info", index=None)["/info:TextDocument:text"].iloc[0]
    assert info.startswith("# test episode") and "- seed: 3" in info


def test_a_ground_truth_box_reads_back_as_logged(recorded: tuple[Path, Collect]) -> None:
    path, steps = recorded
    k, gt = next((s.index, s.ground_truth) for s in steps.steps if len(s.ground_truth))
    df = read_back(path, "/camera/truth/boxes").set_index("step")
    centers = np.asarray(list(df.loc[k, "/camera/truth/boxes:Boxes2D:centers"]))
    halves = np.asarray(list(df.loc[k, "/camera/truth/boxes:Boxes2D:half_sizes"]))
    x0, y0, x1, y1 = gt.boxes_xyxy[0]
    assert centers[0] == pytest.approx([(x0 + x1) / 2, (y0 + y1) / 2])
    assert halves[0] == pytest.approx([(x1 - x0) / 2, (y1 - y0) / 2])
    assert list(df.loc[k, "/camera/truth/boxes:Boxes2D:class_ids"]) == list(gt.class_ids)


def test_predictions_are_a_separate_entity_with_scores(recorded: tuple[Path, Collect]
                                                       ) -> None:
    path, _ = recorded
    df = read_back(path, "/camera/pred/**").set_index("step")
    centers = np.asarray(list(df.loc[0, "/camera/pred/boxes:Boxes2D:centers"]))
    assert centers[0] == pytest.approx([30.0, 40.0])
    assert list(df.loc[0, "/camera/pred/boxes:Boxes2D:labels"]) == ["car 0.90"]
    strips = list(df.loc[0, "/camera/pred/lanes:LineStrips2D:strips"])
    assert len(strips) == 2, "the two seen slots; the absent ones draw nothing"


def test_bev_is_ego_centred_in_metres(recorded: tuple[Path, Collect]) -> None:
    """The ego's box centre sits half a wheelbase ahead of the rear axle: y < 0 is ahead."""
    path, steps = recorded
    df = read_back(path, "/bev/ego").set_index("step")
    (strip,) = list(df.loc[STEPS, "/bev/ego:LineStrips2D:strips"])
    corners = np.asarray(list(strip))
    assert len(corners) == 5 and corners[0] == pytest.approx(corners[-1]), "closed outline"
    ego = steps.steps[-1].env.world.state.ego
    assert corners[:4].mean(axis=0) == pytest.approx([0.0, -0.5 * ego.wheelbase], abs=1e-4)


def test_speed_series_matches_the_world(recorded: tuple[Path, Collect]) -> None:
    path, _ = recorded
    df = read_back(path, "/metrics/speed").set_index("step")
    speeds = [float(np.ravel(list(v))[0]) for v in df["/metrics/speed:Scalars:scalars"]]
    assert len(speeds) == STEPS + 1 and all(v >= 0 for v in speeds)


def test_existing_or_misnamed_outputs_are_one_clear_error(tmp_path: Path) -> None:
    existing = tmp_path / "mine.rrd"
    existing.write_bytes(b"not ours")
    for bad, message in ((existing, "exists; drivestack does not overwrite it"),
                         (tmp_path / "out.mp4", "must end in .rrd"),
                         (tmp_path / "noext", "must end in .rrd")):
        with pytest.raises(ValueError, match=message) as err:
            RerunLogger(bad)
        assert "\n" not in str(err.value)
    assert existing.read_bytes() == b"not ours"
    with pytest.raises(ValueError, match="--rerun: .*exists"):
        check_output(existing, "--rerun")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.rrd"]


def test_episode_paths(tmp_path: Path) -> None:
    assert episode_paths(tmp_path / "r.rrd", 1) == [tmp_path / "r.rrd"]
    assert episode_paths(tmp_path / "r.rrd", 3) == [tmp_path / f"r_{i:03d}.rrd"
                                                    for i in range(3)]
    (tmp_path / "r_001.rrd").write_bytes(b"")
    with pytest.raises(ValueError, match="r_001.rrd exists"):
        episode_paths(tmp_path / "r.rrd", 3)


def test_an_aborted_episode_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.rrd"
    env = DrivingEnv(obs_type="camera", action_type="continuous", camera=CAMERA)

    class Boom(Collect):
        def on_step(self, step: Any) -> None:
            if step.index == 2:
                raise KeyboardInterrupt

    logger = RerunLogger(path)
    with pytest.raises(KeyboardInterrupt):
        rollout(env, AutopilotAgent(), seed=0, max_steps=5, listeners=[logger, Boom()])
    assert list(tmp_path.iterdir()), "the temporary file is there while recording"
    logger.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_appears_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "late.rrd"
    rec = Recording(path)
    rec.set_time(0, 0.0)
    rec.scalar("/metrics/speed", 1.0)
    path.write_bytes(b"someone else's")
    with pytest.raises(ValueError, match="appeared while it was recorded"):
        rec.close()
    assert path.read_bytes() == b"someone else's"
    assert [p.name for p in tmp_path.iterdir()] == ["late.rrd"]


def test_spawn_starts_a_viewer_and_streams_to_it(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--rerun-spawn: a viewer is spawned (not connected to the global stream) and the
    recording goes to it as well as to the file (a file sink stands in for the viewer)."""
    spawned: list[dict[str, Any]] = []
    monkeypatch.setattr(rr, "spawn", lambda **kw: spawned.append(kw))
    viewer = tmp_path / "viewer.rrd"
    monkeypatch.setattr(rr, "GrpcSink", lambda: rr.FileSink(str(viewer)))
    path = tmp_path / "s.rrd"
    with Recording(path, spawn=True) as rec:
        rec.set_time(0, 0.0)
        rec.scalar("/metrics/speed", 2.5)
    assert [kw["connect"] for kw in spawned] == [False]
    assert spawned[0]["recording"] is rec.stream, "never the global stream"
    for f in (path, viewer):
        df = read_back(f, "/metrics/speed")
        assert float(np.ravel(list(df["/metrics/speed:Scalars:scalars"].iloc[0]))[0]) == 2.5


def test_no_viewer_and_no_global_stream_by_default(recorded: tuple[Path, Collect]) -> None:
    assert rr.get_global_data_recording() is None


def test_missing_rerun_names_the_viz_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rerun", None)  # `import rerun` raises ImportError
    with pytest.raises(RerunUnavailable, match="pip install") as err:
        import_rerun()
    assert VIZ_INSTALL in str(err.value) and isinstance(err.value, ValueError)


def test_importing_the_module_does_not_import_rerun() -> None:
    """`rerun` loads only when a recording is made: `import planning.rerun_log` (and the
    run job that imports it) stays light."""
    import subprocess

    code = ("import sys, planning.rerun_log, launch.runner\n"
            "assert 'rerun' not in sys.modules, 'rerun imported at module level'\n")
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
