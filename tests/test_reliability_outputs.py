"""Reliability: no data loss. Every command that writes a folder refuses one it did not
write (and --force removes nothing of it), reruns leave no stale files, a killed writer
leaves a visibly partial output and no processes, outputs never name a missing file, and
the CLI's error contract (one `error:` line, exit 2; strict JSON last lines).
docs/reliability.md lists the promises these tests hold."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from launch.cli import app
from launch.runner import JOB as RUN
from perception.datasets import JOB as DATASET
from perception.datasets import DatasetPlan, clean_partials, generate
from sim.outputs import MARKER, Job, OutputFolder, OutputFolderError, json_text, read_marker
from sim.types import CameraSpec

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SMALL = CameraSpec(width=96, height=64)
TINY_RUN = """
family: highway
episodes: {episodes}
seed: 0
max_steps: {steps}
camera: {{width: 96, height: 64}}
video: {{enabled: {video}, fps: 15, episodes: 3}}
"""
TINY_DATASET = """
frames: {frames}
frames_per_episode: 2
stride: 2
warmup: 2
camera: {{width: 96, height: 64}}
"""


def _user_folder(path: Path) -> dict[Path, bytes]:
    """A folder with files drivestack did not write; returns their contents."""
    (path / "sub").mkdir(parents=True)
    files = {path / "notes.txt": b"mine", path / "sub" / "data.bin": b"\x00\x01",
             path / "metrics.json": b"{\"mine\": true}"}
    for p, data in files.items():
        p.write_bytes(data)
    return files


def _intact(files: dict[Path, bytes]) -> bool:
    return all(p.is_file() and p.read_bytes() == data for p, data in files.items())


def _launch(tmp_path: Path, text: str, name: str = "launch.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _commands(tmp_path: Path, out: Path) -> dict[str, list[str]]:
    """Every command that writes a folder, pointed at `out` (each refuses before work)."""
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True, exist_ok=True)
    (data / "data.yaml").write_text("names: {0: car}\n")
    (data / "annotations" / "test.json").write_text("{}")
    return {
        "run": ["run", str(_launch(tmp_path, TINY_RUN.format(episodes=1, steps=2,
                                                             video="false"))),
                "--out", str(out)],
        "dataset": ["dataset", str(_launch(tmp_path, TINY_DATASET.format(frames=2), "d.yaml")),
                    "--out", str(out)],
        "eval": ["eval", "--planner", "rule-privileged", "--episodes", "1", "--out", str(out)],
        "train-perception": ["train-perception", "--data", str(data), "--out", str(out),
                             "--model", "lanes", "--device", "cpu"],
        "train-planner": ["train-planner", "--out", str(out), "--timesteps", "8"],
        "eval-perception": ["eval-perception", "--data", str(data), "--plots", str(out)],
    }


@pytest.mark.parametrize("command", ["run", "dataset", "eval", "train-perception",
                                     "train-planner", "eval-perception"])
def test_every_writing_command_refuses_a_folder_it_did_not_write(
        tmp_path: Path, command: str) -> None:
    out = tmp_path / "precious"
    files = _user_folder(out)
    result = runner.invoke(app, _commands(tmp_path, out)[command])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "is not empty" in result.output
    assert ("--force" in result.output) == (command != "eval-perception")  # has none
    assert "Traceback" not in result.output
    assert _intact(files) and not (out / MARKER).exists()
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt", "sub"]


@pytest.mark.parametrize("command", ["run", "dataset", "eval", "train-perception",
                                     "train-planner"])
def test_every_writing_command_refuses_another_jobs_output(tmp_path: Path,
                                                           command: str) -> None:
    out = tmp_path / "other"
    job, name = (DATASET, "data.yaml") if command != "dataset" else (RUN, "metrics.json")
    kind = job.kind
    folder = OutputFolder.claim(out, job)
    (folder.own(name)).write_text("x")
    folder.finish()
    result = runner.invoke(app, _commands(tmp_path, out)[command])
    assert result.exit_code == 2, result.output
    assert f"holds the output of `drivestack {kind}`" in result.output
    assert (out / name).read_text() == "x"


def test_dataset_out_dot_and_dotdot_are_refused_and_nothing_is_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out ..` used to empty the parent folder (the current one included) and exit 0;
    `--out .` was a traceback."""
    cwd = tmp_path / "project"
    files = _user_folder(cwd)
    monkeypatch.chdir(cwd)
    spec = _launch(tmp_path, TINY_DATASET.format(frames=2), "d.yaml")
    for out in (".", ".."):
        result = runner.invoke(app, ["dataset", str(spec), "--out", out])
        assert result.exit_code == 2, result.output
        assert "is not empty" in result.output and "Traceback" not in result.output
        assert _intact(files) and spec.is_file()


def test_dataset_force_writes_beside_foreign_files_and_replaces_only_its_own(
        tmp_path: Path) -> None:
    out = tmp_path / "shared"
    files = _user_folder(out)
    (out / "labels").mkdir()  # a name the dataset uses: never overwritten, even forced
    with pytest.raises(OutputFolderError, match="labels"):
        generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out, force=True)
    (out / "labels").rmdir()
    assert _intact(files) and not (out / "images").exists()
    for frames in (4, 2):  # a forced rerun replaces the dataset's own entries only
        generate(DatasetPlan(frames=frames, frames_per_episode=2, camera=SMALL), out,
                 force=True)
        assert _intact(files)
        assert len(list((out / "images").rglob("*.jpg"))) == frames
        assert read_marker(out)["complete"] is True
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".shared")]
    assert leftovers == []


def test_dataset_rerun_replaces_its_own_dataset_and_keeps_the_users_files(
        tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(DatasetPlan(frames=6, frames_per_episode=2, camera=SMALL), out)
    (out / "mine.txt").write_text("mine")  # beside the dataset: stays through reruns
    (out / "labels" / "train.cache").write_bytes(b"ultralytics")  # training made it
    generate(DatasetPlan(frames=2, frames_per_episode=2, seed=50, camera=SMALL), out)
    assert len(list((out / "images").rglob("*.jpg"))) == 2
    assert (out / "mine.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [MARKER]


def test_a_users_file_inside_a_dataset_folder_is_refused_and_kept(tmp_path: Path) -> None:
    """Extra images dropped into images/train used to be deleted by the next run."""
    out = tmp_path / "ds"
    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    extra = out / "images" / "train" / "extra" / "mine.jpg"
    extra.parent.mkdir()
    extra.write_bytes(b"mine")
    for force in (False, True):
        with pytest.raises(OutputFolderError, match="mine.jpg"):
            generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out,
                     force=force)
    assert extra.read_bytes() == b"mine"
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()
                  and p != extra) == before


def test_force_refuses_a_clash_before_rendering_and_keeps_everything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perception.datasets

    out = tmp_path / "shared"
    files = _user_folder(out)
    (out / "images").mkdir()  # the user's, with a name the dataset uses

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered before refusing")

    monkeypatch.setattr(perception.datasets, "_episodes", never)
    with pytest.raises(OutputFolderError, match="images"):
        generate(DatasetPlan(frames=2, camera=SMALL), out, force=True)
    assert _intact(files) and (out / "images").is_dir() and not (out / MARKER).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]


def test_dataset_into_a_symlink_or_the_current_empty_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), real)
    link = tmp_path / "link"
    link.symlink_to(real)
    generate(DatasetPlan(frames=4, frames_per_episode=2, camera=SMALL), link)
    assert link.is_symlink() and len(list((real / "images").rglob("*.jpg"))) == 4
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), ".")
    assert Path.cwd() == here and (here / "data.yaml").is_file()


def test_run_rerun_removes_its_old_videos_and_names_only_written_files(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=3, steps=2, video="true"))), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"episode_00{i}.mp4" for i in range(3)]
    (out / "notes.txt").write_text("mine")  # the user's file in a run folder
    second = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="false"), "b.yaml")), "--out", str(out)])
    assert second.exit_code == 0, second.output
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["complete"] is True and [e["video"] for e in doc["episodes"]] == [None]
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "metrics.csv", "metrics.json",
                                                     "notes.txt"]


def test_run_names_no_video_it_did_not_write(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import launch.runner

    def broken(*args: object, **kwargs: object) -> np.ndarray:
        raise RuntimeError("no frame")

    monkeypatch.setattr(launch.runner, "video_frame", broken)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="true"))), "--out", str(out)])
    assert result.exit_code == 1, result.output  # the episode failed, recorded
    (ep,) = json.loads((out / "metrics.json").read_text())["episodes"]
    assert ep["end"] == "error" and ep["video"] is None
    assert not list(out.glob("*.mp4")) and "video:" not in result.output


@pytest.mark.parametrize("entry", ["../victim", "link/keep", ".", "", "/abs", "a/b",
                                   MARKER, 3])
def test_a_marker_drivestack_did_not_write_is_refused_even_forced(tmp_path: Path,
                                                                  entry: object) -> None:
    """A crafted marker listing a path through a symlink used to delete files outside the
    folder; "." crashed. Such a marker is not drivestack's, and nothing is touched."""
    victim = tmp_path / "victim"
    (victim / "keep").mkdir(parents=True)
    (victim / "keep" / "f.txt").write_text("mine")
    out = tmp_path / "run"
    out.mkdir()
    (out / "link").symlink_to(victim)
    (out / MARKER).write_text(json.dumps({"kind": "run", "pid": 1, "entries": [entry]}))
    for force in (False, True):
        with pytest.raises(OutputFolderError, match="was not written by drivestack"):
            OutputFolder.claim(out, RUN, force=force)
    result = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="false"))), "--out", str(out), "--force"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (victim / "keep" / "f.txt").read_text() == "mine"
    assert json.loads((out / MARKER).read_text())["entries"] == [entry]


def test_removal_never_follows_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f.txt").write_text("mine")
    job = Job("test", files=("videos",), folders=("sub",))
    folder = OutputFolder.claim(tmp_path / "run", job)
    folder.own("videos").symlink_to(victim)  # say a job's entry became a link
    inner = folder.own("sub")
    inner.mkdir()
    (inner / "link").symlink_to(victim)
    folder.finish()
    again = OutputFolder.claim(tmp_path / "run", job)
    assert sorted(again.remove_stale()) == ["sub", "videos"]
    assert (victim / "f.txt").read_text() == "mine"
    for bad in ("../victim", "other.txt"):
        with pytest.raises(ValueError, match="plain name"):
            again.own(bad)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        OutputFolder.claim(tmp_path / "f", job)


@pytest.mark.parametrize("entries", [["data", "user.txt"], ["metrics.json", "data"],
                                     ["images"]])
def test_a_marker_listing_what_the_job_never_writes_is_not_trusted(
        tmp_path: Path, entries: list[str]) -> None:
    """A marker copied or crafted into a user's folder, claiming the user's files for
    `run`: it used to make `run` delete them."""
    out = tmp_path / "cm"
    (out / "data").mkdir(parents=True)
    (out / "data" / "x").write_text("precious")
    (out / "user.txt").write_text("precious")
    (out / "images").mkdir()
    for complete in (False, True):  # a complete one would also have to list its files
        (out / MARKER).write_text(json.dumps({"format": 1, "kind": "run", "complete": complete,
                                              "pid": 999_999, "entries": entries}))
        result = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
            episodes=1, steps=2, video="false"))), "--out", str(out), "--force"])
        assert result.exit_code == 2, result.output
        assert "does not write" in result.output or "not written by" in result.output
    assert (out / "data" / "x").read_text() == "precious"
    assert (out / "user.txt").read_text() == "precious"


def test_a_folder_a_running_job_writes_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / MARKER).write_text(json.dumps({"format": 1, "kind": "run", "complete": False,
                                              "pid": sleeper.pid,
                                              "entries": ["metrics.json"]}))
        with pytest.raises(OutputFolderError, match=f"still running .process {sleeper.pid}"):
            OutputFolder.claim(out, RUN)
    finally:
        sleeper.kill()
        sleeper.wait()
    OutputFolder.claim(out, RUN).remove_stale()  # its process gone: a killed run's folder


@pytest.mark.parametrize("pid", ["abc", None, 1e300, -5, 2 ** 40, True])
def test_a_partial_folder_with_a_bad_pid_is_left_alone(tmp_path: Path, pid: object) -> None:
    left = tmp_path / ".ds.partial-1-x"
    left.mkdir()
    (left / MARKER).write_text(json.dumps({"kind": "dataset", "pid": pid, "entries": []}))
    assert clean_partials(tmp_path / "ds") == [] and left.is_dir()


def test_force_with_a_clash_fails_before_writing_a_marker(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    files = _user_folder(out)  # holds metrics.json, a name `run` writes
    result = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="false"))), "--out", str(out), "--force"])
    assert result.exit_code == 2 and "metrics.json" in result.output, result.output
    assert _intact(files) and not (out / MARKER).exists()


def test_a_rerun_that_fails_to_start_keeps_the_previous_results(tmp_path: Path) -> None:
    out = tmp_path / "run"
    good = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="true"))), "--out", str(out)])
    assert good.exit_code == 0, good.output
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != MARKER}
    bad = _launch(tmp_path, TINY_RUN.format(episodes=1, steps=2, video="false")
                  + "driver: privileged\npolicy: /nonexistent/p.zip\n", "bad.yaml")
    result = runner.invoke(app, ["run", str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "p.zip" in result.output, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != MARKER} == before


def test_strict_json_has_no_nan_or_infinity() -> None:
    doc = {"a": math.nan, "b": [-math.inf, 1.5], "c": np.float32("nan"), "d": {"e": math.inf},
           "f": np.float64(2.0), "g": None}
    text = json_text(doc)

    def refuse(name: str) -> None:
        raise ValueError(name)

    back = json.loads(text, parse_constant=refuse)  # NaN / Infinity would call refuse
    assert back == {"a": None, "b": [None, 1.5], "c": None, "d": {"e": None}, "f": 2.0,
                    "g": None}


def test_cli_last_line_is_strict_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import launch.runner

    real = launch.runner.metrics_document

    def with_nan(*args: object, **kwargs: object) -> dict:
        doc = real(*args, **kwargs)  # type: ignore[arg-type]
        doc["summary"]["min_ttc"] = -math.inf
        return doc

    monkeypatch.setattr(launch.runner, "metrics_document", with_nan)
    result = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="false"))), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert "Infinity" not in last and json.loads(last)["summary"]["min_ttc"] is None
    saved = (tmp_path / "run" / "metrics.json").read_text()
    assert "Infinity" not in saved and "NaN" not in saved


def test_expected_failures_are_one_error_line_and_bugs_keep_their_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import launch.runner

    blocker = tmp_path / "file"
    blocker.write_text("x")
    spec = _launch(tmp_path, TINY_RUN.format(episodes=1, steps=2, video="false"))
    result = runner.invoke(app, ["run", str(spec), "--out", str(blocker / "sub")])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "Traceback" not in result.output

    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(launch.runner, "make_env", bug)
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, ZeroDivisionError), result.output

    def library_bug(*args: object, **kwargs: object) -> None:
        np.zeros(3).reshape(2, 2)  # a ValueError raised inside numpy: a bug, not bad input

    monkeypatch.setattr(launch.runner, "make_env", library_bug)
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "run2")])
    assert isinstance(result.exception, ValueError), result.output
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    (data / "annotations" / "test.json").write_text("{}")
    result = runner.invoke(app, ["eval-perception", "--data", str(data), "--device", "gpu"])
    assert result.exit_code == 2 and "error:" in result.output and "cuda:N" in result.output


def test_long_error_messages_are_cut(tmp_path: Path) -> None:
    from launch.cli_common import MAX_MESSAGE

    result = runner.invoke(app, ["run", "--out", str(tmp_path / ("x" * 200) / ("y" * 5000))])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert "more characters)" in line and len(line) < MAX_MESSAGE + 100, len(line)


# -- killed writers ---------------------------------------------------------------------


def _drivestack(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "launch", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = {int(x) for x in (task / "children").read_text().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def _wait(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killed_dataset_leaves_no_workers_and_a_partial_folder_the_next_run_removes(
        tmp_path: Path) -> None:
    spec = _launch(tmp_path, TINY_DATASET.format(frames=100_000))
    out = tmp_path / "ds"
    proc = _drivestack("dataset", str(spec), "--out", str(out), "--workers", "2",
                       cwd=tmp_path)
    try:
        partial = lambda: [p for p in tmp_path.glob(".ds.partial-*")  # noqa: E731
                           if any((p / "images" / "train").glob("*.jpg"))]
        assert _wait(lambda: bool(partial()), 120), proc.stderr.read() if proc.stderr else ""
        workers = _children(proc.pid)
        assert len(workers) >= min(2, len(os.sched_getaffinity(0))), "renders in workers"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _wait(lambda: not any(_alive(w) for w in workers), 15), "workers end with parent"
    assert not out.exists(), "no half dataset at out"
    (left,) = partial()
    assert read_marker(left)["complete"] is False, "visibly partial"
    assert clean_partials(out) == [left] and not left.exists()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killed_run_leaves_metrics_that_say_incomplete(tmp_path: Path) -> None:
    spec = _launch(tmp_path, TINY_RUN.format(episodes=1000, steps=3, video="false"))
    out = tmp_path / "run"
    proc = _drivestack("run", str(spec), "--out", str(out), cwd=tmp_path)

    def episodes_done() -> int:
        try:
            return len(json.loads((out / "metrics.json").read_text())["episodes"])
        except (OSError, ValueError, KeyError):
            return 0

    try:
        assert _wait(lambda: episodes_done() >= 2, 120)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["complete"] is False and doc["episodes_planned"] == 1000
    assert read_marker(out)["complete"] is False


def test_a_complete_marker_without_its_file_list_claims_nothing(tmp_path: Path) -> None:
    """A 70-byte marker claiming `images/` for `dataset` used to get the user's pictures
    deleted; drivestack lists every file of a finished job's folders."""
    out = tmp_path / "u"
    (out / "images").mkdir(parents=True)
    (out / "images" / "holiday.jpg").write_bytes(b"precious")
    for complete in (True, False):  # a partial marker is never a dataset's in `out`
        (out / MARKER).write_text(json.dumps({"kind": "dataset", "complete": complete,
                                              "pid": 999_999, "entries": ["images"]}))
        with pytest.raises(OutputFolderError, match="not written by drivestack"):
            generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out,
                     force=True)
    assert (out / "images" / "holiday.jpg").read_bytes() == b"precious"


@pytest.mark.timeout(60)
def test_a_marker_that_is_a_pipe_or_a_device_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO marker used to block every command; /dev/zero read until memory ran out."""
    for name, make in (("fifo", lambda p: os.mkfifo(p)),
                       ("zero", lambda p: p.symlink_to("/dev/zero"))):
        out = tmp_path / name
        out.mkdir()
        make(out / MARKER)
        with pytest.raises(OutputFolderError, match="not written by drivestack"):
            OutputFolder.claim(out, RUN, force=True)


def test_a_users_cache_file_deeper_in_labels_is_not_drivestacks(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    mine = out / "labels" / "train" / "mywork.cache"
    mine.write_bytes(b"mine")
    with pytest.raises(OutputFolderError, match="mywork.cache"):
        generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    assert mine.read_bytes() == b"mine"


def test_a_dataset_can_be_moved_and_still_names_its_own_images(tmp_path: Path) -> None:
    """data.yaml used to hold an absolute path, so a moved copy trained on the original."""
    from perception.offline import ultralytics_offline

    ultralytics_offline()
    from ultralytics.data.utils import check_det_dataset

    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), tmp_path / "a")
    (tmp_path / "a").rename(tmp_path / "b")
    found = check_det_dataset(str(tmp_path / "b" / "data.yaml"), autodownload=False)
    assert Path(found["train"]) == tmp_path / "b" / "images" / "train"


def test_a_killed_move_into_place_is_cleaned_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    aside = out / ".replaced-999999-0123abcd"  # what a kill during the move leaves
    (aside / "images").mkdir(parents=True)
    mine = out / ".replaced-notes"  # not of that form: the user's, kept
    mine.write_text("mine")
    summary = generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    assert str(aside) in summary["cleaned"] and not aside.exists()
    assert mine.read_text() == "mine"


def test_a_refused_dataset_run_cleans_nothing_in_another_jobs_folder(tmp_path: Path) -> None:
    out = tmp_path / "r1"
    folder = OutputFolder.claim(out, RUN)
    folder.own("metrics.json").write_text("{}")
    folder.finish()
    notes = out / ".replaced-999999-deadbeef" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("precious")
    with pytest.raises(OutputFolderError, match="holds the output of `drivestack run`"):
        generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    assert notes.read_text() == "precious"


def test_only_ultralytics_own_label_caches_count_as_drivestacks(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    (out / "labels" / "train.cache").write_bytes(b"ultralytics")  # training made it
    mine = out / "labels" / "my_notes.cache"
    mine.write_bytes(b"mine")
    with pytest.raises(OutputFolderError, match="my_notes.cache"):
        generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    assert mine.read_bytes() == b"mine"


def test_a_marker_names_only_what_drivestack_wrote_there(tmp_path: Path) -> None:
    """A marker claiming a user's files by name (copied, or crafted) used to make `run`
    delete and overwrite them: each entry's identity (inode, size, time) must match."""
    out = tmp_path / "u"
    out.mkdir()
    video, metrics = out / "episode_007.mp4", out / "metrics.json"
    video.write_text("my holiday video")
    metrics.write_text('{"my": "metrics"}')
    (out / MARKER).write_text(json.dumps({"kind": "run", "complete": True, "pid": 1,
                                          "entries": ["episode_007.mp4", "metrics.json"]}))
    result = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="false"))), "--out", str(out)])
    assert result.exit_code == 2 and "metrics.json exists" in result.output, result.output
    assert video.read_text() == "my holiday video"
    assert metrics.read_text() == '{"my": "metrics"}'


def test_a_name_a_killed_run_claimed_but_never_wrote_stays_the_users(tmp_path: Path) -> None:
    out = tmp_path / "r"
    folder = OutputFolder.claim(out, RUN)
    folder.own("episode_000.mp4")  # claimed; then the run is killed before writing it
    marker = json.loads((out / MARKER).read_text())
    (out / MARKER).write_text(json.dumps({**marker, "pid": 999_999}))
    recovered = out / "episode_000.mp4"
    recovered.write_bytes(b"the user's own copy")
    result = runner.invoke(app, ["run", str(_launch(tmp_path, TINY_RUN.format(
        episodes=1, steps=2, video="false"))), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert recovered.read_bytes() == b"the user's own copy"


def test_a_user_folder_dressed_as_a_partial_dataset_is_kept(tmp_path: Path) -> None:
    """clean_partials removes only what a dead `generate` left: its own name pattern (pid
    of the marker, 8 hex digits) and only a dataset's entries inside."""
    marker = {"kind": "dataset", "complete": False, "pid": 999_999, "entries": []}
    odd_name = tmp_path / ".ds.partial-mine"
    extra_file = tmp_path / ".ds.partial-999999-0123abcd"
    for folder in (odd_name, extra_file):
        folder.mkdir()
        (folder / MARKER).write_text(json.dumps(marker))
    (extra_file / "notes.txt").write_text("mine")
    assert clean_partials(tmp_path / "ds") == []
    assert odd_name.is_dir() and (extra_file / "notes.txt").read_text() == "mine"


def test_a_failed_move_into_place_puts_the_previous_dataset_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perception.datasets

    out = tmp_path / "ds"
    generate(DatasetPlan(frames=2, frames_per_episode=2, camera=SMALL), out)
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(perception.datasets.shutil, "move", full_disk)
    with pytest.raises(OSError, match="No space"):
        generate(DatasetPlan(frames=4, frames_per_episode=2, camera=SMALL), out)
    after = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()
                   and not p.parts[len(out.parts)].startswith(".replaced-"))
    assert after == before
