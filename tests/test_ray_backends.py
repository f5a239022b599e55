"""Ray on this machine (`ray.init(num_cpus=2)`): `drivestack dataset`, `eval`, mining and
relabeling give the same output as their serial runs, byte for byte (datasets in episode
order, the same eval table, the same snapshots, the same labels)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sim.fanout import Fanout

ray = pytest.importorskip("ray")

SMALL = {"width": 160, "height": 96}
RAY = Fanout(ray="local")


@pytest.fixture(scope="module", autouse=True)
def _ray_local() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_dataset_is_the_same_bytes(tmp_path: Path) -> None:
    from perception.datasets import DatasetPlan, generate
    from sim.outputs import MARKER
    from sim.types import CameraSpec

    plan = DatasetPlan(frames=12, frames_per_episode=3, stride=3, warmup=6,
                       camera=CameraSpec(**SMALL))
    generate(plan, tmp_path / "serial")
    generate(plan, tmp_path / "ray", fanout=RAY)
    serial, fanned = _files(tmp_path / "serial"), _files(tmp_path / "ray")
    assert sorted(serial) == sorted(fanned) and len(serial) > 12
    for name in serial:
        if Path(name).name not in ("data.yaml", MARKER):  # own folder's path; time and pid
            assert fanned[name] == serial[name], name


def _eval_app() -> typer.Typer:
    from launch.cli_eval import eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    app.callback()(lambda: None)
    return app


def test_eval_table_is_the_same(tmp_path: Path) -> None:
    from launch.eval_suite import SMOKE_SUITE

    app, runner = _eval_app(), CliRunner()
    docs = []
    for name, extra in (("serial", []), ("ray", ["--ray", "local"])):
        result = runner.invoke(app, ["eval", "--suite", str(SMOKE_SUITE), "--planner",
                                     "rule-privileged", "--out", str(tmp_path / name),
                                     *extra])
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / name / "eval.json").read_text())
        for e in doc["episodes"]:
            e.pop("wall_time")
        docs.append(doc)
    assert docs[0]["episodes"] and docs[0] == docs[1]
    assert (tmp_path / "serial" / "summary.csv").read_bytes() == (
        tmp_path / "ray" / "summary.csv").read_bytes()


def _cases() -> list[Any]:
    from planning.evaluate import Case

    return [Case("mine", "urban", "night", "clear", 500900),
            Case("mine", "highway", "day", "fog", 500901)]


def _snapshots(store: Any) -> list[tuple[dict[str, Any], dict[str, str]]]:
    out = []
    for row in sorted(store.list(), key=lambda r: (r["created"], r["id"])):
        snap = store.get(row["id"])
        out.append((snap.meta, {n: e["sha256"] for n, e in snap.manifest["files"].items()}))
    return out


def test_mining_and_relabeling_give_the_same_snapshots_and_labels(tmp_path: Path) -> None:
    from data_engine.mine import MineSpec, mine, mine_fanout
    from data_engine.recorder import RecorderConfig
    from data_engine.relabel import relabel_fanout, relabel_snapshot
    from data_engine.store import SnapshotStore
    from planning.evaluate import make_perceiver
    from sim.types import CameraSpec

    camera = CameraSpec()
    rec = RecorderConfig(pre_seconds=0.5, post_seconds=0.2, cooldown_seconds=1.0,
                         max_per_episode=2)
    backends = {"ray": RAY, "processes": Fanout(workers=2)}  # processes: 1 thread each
    stores = {f"{k}{suffix}": SnapshotStore(tmp_path / f"{k}{suffix}", create=True)
              for k in ("serial", *backends) for suffix in ("", "_random")}
    perceiver, _ = make_perceiver("cpu", camera)
    serial = mine(stores["serial"], _cases(), perceiver=perceiver, recorder=rec,
                  max_steps=45, camera=camera, control=(stores["serial_random"], 0.05))
    spec = MineSpec(driver="rule", device="cpu", camera=camera, recorder=rec, max_steps=45,
                    control_rate=0.05)
    for name, fanout in backends.items():
        fanned = mine_fanout(stores[name], _cases(), spec, fanout,
                             control_store=stores[f"{name}_random"])
        assert serial.as_dict()["fired_by_trigger"] == fanned.as_dict()["fired_by_trigger"]
        assert [e.end for e in serial.episodes] == [e.end for e in fanned.episodes]
        for a, b in (("serial", name), ("serial_random", f"{name}_random")):
            assert _snapshots(stores[a]) == _snapshots(stores[b]), (a, b)
    assert len(_snapshots(stores["serial_random"])) >= 2  # something to compare

    picked = [stores["ray_random"].get(r["id"]) for r in stores["ray_random"].list()][:2]
    one = [relabel_snapshot(s) for s in picked]
    for fanout in backends.values():
        _same_labels(one, list(relabel_fanout(picked, fanout)))


def _same_labels(one: list[Any], two: list[Any]) -> None:
    assert [r.snapshot for r in one] == [r.snapshot for r in two]
    for a, b in zip(one, two, strict=True):
        assert a.labels.labeler == b.labels.labeler
        for field in ("boxes", "classes", "scores", "track_ids", "ignore"):
            for x, y in zip(getattr(a.labels, field), getattr(b.labels, field), strict=True):
                np.testing.assert_array_equal(x, y)


MINE_YAML = """
driver: rule
device: cpu
max_steps: 45
second_detector: false
scenarios:
  families: [urban]
  conditions: [{time_of_day: night, weather: clear}]
  seeds: [500902]
recorder: {pre_seconds: 0.5, post_seconds: 0.2, cooldown_seconds: 1.0, max_per_episode: 3}
"""


def test_mine_and_relabel_commands_with_ray(tmp_path: Path) -> None:
    """`drivestack mine --ray local` and `relabel --ray local`: the same snapshots and the
    same label files as without --ray."""
    from data_engine.store import SnapshotStore
    from launch.cli import app

    launch = tmp_path / "mine.yaml"
    launch.write_text(MINE_YAML)
    runner = CliRunner()
    for name, extra in (("serial", []), ("ray", ["--ray", "local"])):
        result = runner.invoke(app, ["mine", str(launch), "--store", str(tmp_path / name),
                                     *extra])
        assert result.exit_code == 0, result.output
    one, two = SnapshotStore(tmp_path / "serial"), SnapshotStore(tmp_path / "ray")
    assert _snapshots(one) == _snapshots(two) and _snapshots(one)
    labels = {}
    for name, extra in (("serial", []), ("ray", ["--ray", "local"])):
        out = tmp_path / f"labels-{name}"
        result = runner.invoke(app, ["relabel", "--store", str(tmp_path / "ray"), "--out",
                                     str(out), "--no-quality", *extra])
        assert result.exit_code == 0, result.output
        labels[name] = {p.name: p.read_bytes() for p in out.glob("2*.json")}
        labels[name + ".npz"] = {p.name: dict(np.load(p, allow_pickle=False))
                                 for p in out.glob("2*.npz")}
    assert labels["serial"] == labels["ray"] and labels["serial"]
    one_npz, two_npz = labels["serial.npz"], labels["ray.npz"]
    assert sorted(one_npz) == sorted(two_npz)
    for clip, arrays in one_npz.items():
        assert sorted(arrays) == sorted(two_npz[clip])
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, two_npz[clip][key])
