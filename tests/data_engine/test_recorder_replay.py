"""The recorder saves clips of failures into the store; replay re-simulates them byte
for byte in a fresh process; damaged snapshots are one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_engine.clip import CLIP, PERCEPTION, TRUTH, frame_name, read_clip
from data_engine.mine import mine
from data_engine.recorder import Recorder, RecorderConfig
from data_engine.replay import closed_loop, replay_clip
from data_engine.store import CorruptSnapshot, SnapshotStore
from data_engine.triggers import TriggerConfig
from planning.evaluate import Case, build_planner, scenario_config
from planning.rollout import PlannerAgent, rollout
from planning.rule_based import RulePlanner
from planning.sources import PrivilegedSource
from sim.actions import FASTER, SLOWER
from sim.env import DrivingEnv

ROOT = Path(__file__).resolve().parents[2]


class Reckless(RulePlanner):
    """Always faster: it crashes into what is ahead."""

    def act(self, scene: Any) -> int:
        return FASTER


def _crash_store(tmp_path: Path, frames: str = "png") -> tuple[SnapshotStore, list[str]]:
    """A store with the clip of a reckless episode that collides (found by seed)."""
    store = SnapshotStore(tmp_path / "store", create=True)
    env = DrivingEnv(obs_type="camera", action_type="meta")
    env.config = scenario_config(Case("t", "highway", "day", "clear", 3))
    only = {name: {"enabled": name == "collision"} for name in TriggerConfig.model_fields}
    cfg = RecorderConfig(pre_seconds=0.6, post_seconds=0.2, frames=frames,
                         triggers=TriggerConfig.model_validate(only))
    for seed in range(3, 40):
        rec = Recorder(store, cfg, {"seed": seed, "scenario_seed": seed, "driver": "test"})
        end = rollout(env, PlannerAgent(Reckless(), PrivilegedSource()), seed=seed,
                      scenario_seed=seed, max_steps=400, listeners=[rec])
        if end.end == "collision" and rec.saved:
            return store, rec.saved
    pytest.fail("no reckless episode collided")


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> tuple[SnapshotStore, list[str]]:
    return _crash_store(tmp_path_factory.mktemp("crash"))


def test_a_collision_is_saved_as_a_clip(crash: tuple[SnapshotStore, list[str]]) -> None:
    store, ids = crash
    snap = store.get(ids[-1])
    clip = read_clip(snap.read, snap.id)
    assert "collision" in snap.meta["triggers"]
    assert clip.doc["events"][-1]["collision"] is True, "the clip ends at the crash"
    assert clip.n_frames == len([n for n in snap.names if n.startswith("frames/")])
    assert {CLIP, TRUTH, PERCEPTION, "state.json", "state.npz"} <= set(snap.names)
    assert snap.meta["family"] == "highway" and snap.meta["seed"] == clip.doc["seed"]
    assert all(not n.endswith((".pkl", ".pt", ".pickle")) for n in snap.names)


def test_replay_matches_byte_for_byte(crash: tuple[SnapshotStore, list[str]]) -> None:
    store, ids = crash
    check, frames = replay_clip(store.get(ids[-1]), keep_frames=True)
    assert check.ok, check
    assert check.frames_equal == check.frames == len(frames) and check.truth_checked > 0
    assert check.stored_png_equal == check.frames


def test_replay_in_a_fresh_process(crash: tuple[SnapshotStore, list[str]]) -> None:
    store, ids = crash
    proc = subprocess.run([sys.executable, "-m", "launch", "replay", ids[-1], "--store",
                           str(store.root)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["ok"] is True and doc["frames_equal"] == doc["frames"]


def test_replay_notices_a_different_world(tmp_path: Path) -> None:
    """A replay that diverges is reported, not passed: the same clip with one action
    changed no longer matches."""
    store, ids = _crash_store(tmp_path, frames="hash")
    snap = store.get(ids[-1])
    clip = read_clip(snap.read, snap.id)
    doc = dict(clip.doc)
    doc["actions"] = [SLOWER] * (len(doc["actions"]) - 1) + [None]  # brake instead
    files = {n: snap.read(n) for n in snap.names}
    files[CLIP] = json.dumps(doc).encode()
    other = store.add(files, snap.meta)
    check, _ = replay_clip(store.get(other))
    assert not check.ok and check.first_mismatch is not None and check.first_mismatch >= 1


def test_a_flipped_byte_is_found_and_replay_refuses(tmp_path: Path) -> None:
    store, ids = _crash_store(tmp_path)
    path = store.root / "snapshots" / ids[-1] / frame_name(0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [p.file for p in store.verify([ids[-1]])] == [frame_name(0)]
    with pytest.raises(CorruptSnapshot):
        store.get(ids[-1])
    proc = subprocess.run([sys.executable, "-m", "launch", "replay", ids[-1], "--store",
                           str(store.root)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert ids[-1] in proc.stderr and frame_name(0) in proc.stderr


@pytest.mark.parametrize("bad", ["../etc", "/abs", "a/b", "20991231T000000-00000000"])
def test_replay_of_a_bad_id_is_one_clear_error(crash: tuple[SnapshotStore, list[str]],
                                               bad: str) -> None:
    store, _ = crash
    proc = subprocess.run([sys.executable, "-m", "launch", "replay", bad, "--store",
                           str(store.root)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:")


def test_closed_loop_from_the_clip_start(crash: tuple[SnapshotStore, list[str]]) -> None:
    """The reckless planner crashes again from the clip's start; the rule planner on the
    exact scene brakes in time."""
    store, ids = crash
    snap = store.get(ids[-1])
    results = closed_loop(snap, {"reckless": (Reckless(), PrivilegedSource()),
                                 "rule-privileged": build_planner("rule-privileged")})
    by = {r.stack: r for r in results}
    assert by["reckless"].failed and by["reckless"].collision
    assert not by["rule-privileged"].failed


def test_mine_with_triggers_on_perception(tmp_path: Path) -> None:
    """Mining drives the stack with perception on every frame; a lane error (set to 1 cm
    so that it fires at once) is saved with the perception of every frame."""
    from perception.perceiver import Perceiver

    store = SnapshotStore(tmp_path / "m", create=True)
    trig = TriggerConfig.model_validate({"lane_error": {"error": 0.01}})
    summary = mine(store, [Case("m", "highway", "day", "clear", 500_001)], driver="rule",
                   perceiver=Perceiver(device="cpu"), max_steps=20,
                   recorder=RecorderConfig(pre_seconds=0.2, post_seconds=0.2,
                                           triggers=trig, max_per_episode=1))
    assert len(summary.snapshots) == 1
    snap = store.get(summary.snapshots[0])
    clip = read_clip(snap.read, snap.id)
    assert "lane_error" in snap.meta["triggers"] and clip.doc["driver"] == "rule"
    from data_engine.clip import boxes_per_frame, npz_arrays

    seen = boxes_per_frame(npz_arrays(snap.read(PERCEPTION), PERCEPTION), "",
                           clip.n_frames, PERCEPTION)
    assert all(s is not None for s in seen), "perception ran on every frame"
    assert np.isfinite(clip.doc["speed"]).all()


def test_replay_video_compares_old_and_new(crash: tuple[SnapshotStore, list[str]],
                                           tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from launch.cli import app

    store, ids = crash
    video = tmp_path / "cmp.mp4"
    args = ["replay", ids[-1], "--store", str(store.root), "--video", str(video),
            "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert video.stat().st_size > 1000
    import imageio.v2 as imageio

    reader = imageio.get_reader(video)
    first = reader.get_data(0)
    reader.close()
    assert first.shape[1] >= 2 * first.shape[0], "two panels side by side"
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "does not overwrite" in again.stderr
