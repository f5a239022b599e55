"""The snapshot store (data_engine/store.py) and `drivestack snapshots`: round trips,
damage found, reported and skipped, ids and file names that would leave the store, folders
that are not stores left alone, writers killed with SIGKILL, two writers at once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from data_engine.store import (
    ID_PATTERN,
    MANIFEST,
    PARTIAL,
    CorruptSnapshot,
    SnapshotStore,
    SnapshotWarning,
    StoreError,
    UnknownSnapshot,
)
from launch.cli_snapshots import snapshots_app

ROOT = Path(__file__).resolve().parents[2]
META: dict[str, Any] = {
    "triggers": ["low_ttc", "collision"], "time_of_day": "night", "weather": "fog",
    "family": "urban", "model_version": "yolo-3", "seed": 7, "scenario_seed": 1007,
    "n_frames": 2, "steps": [10, 40], "note": "a cyclist at dusk"}
FRAME = "frames/000001.png"
UNKNOWN = "20000101T000000-00000000"
BAD_IDS = ["../etc", "/etc", "a/b", "", "..", "20261206T061500-3f9a2b1c/../x",
           "20261206T061500-3F9A2B1C", "20261206T061500-3f9a2b1c\n", "x" * 5000, None, 7]


def _files(i: int = 0) -> dict[str, bytes]:
    return {"frames/000000.png": bytes([i % 256]) * 300, FRAME: b"png" + bytes(range(256)),
            "actions.npz": b"npz" * 50 + bytes([i % 256]), "labels.json": b'{"boxes": []}'}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SnapshotStore]:
    with SnapshotStore(tmp_path / "store", create=True) as s:
        yield s


def _tree(folder: Path) -> dict[str, Any]:
    """Every path under `folder` with its bytes (files) and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None,
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def _flip(path: Path, at: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _drop_row(store: SnapshotStore, sid: str) -> None:
    con = sqlite3.connect(store.index, isolation_level=None)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("DELETE FROM snapshots WHERE id = ?", (sid,))
    con.close()


def test_round_trip(store: SnapshotStore, tmp_path: Path) -> None:
    big = os.urandom(3 << 20)  # read and copied in chunks
    (tmp_path / "big.bin").write_bytes(big)
    sid = store.add({**_files(), "raw/big.bin": tmp_path / "big.bin"}, META)
    assert ID_PATTERN.fullmatch(sid)
    snap = store.get(sid)
    assert snap.id == sid and snap.path == store.root / "snapshots" / sid
    assert snap.meta == META
    assert snap.names == tuple(sorted([*_files(), "raw/big.bin"]))
    for name, data in {**_files(), "raw/big.bin": big}.items():
        assert snap.read(name) == data and store.read(sid, name) == data
        entry = snap.manifest["files"][name]
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    [row] = store.list()
    assert row["id"] == sid and row["created"] == snap.created
    assert row["triggers"] == ["collision", "low_ttc"] and row["n_files"] == 5
    assert {k: row[k] for k in ("time_of_day", "weather", "family", "model_version", "seed",
                                "scenario_seed", "n_frames")} == {
        k: META[k] for k in ("time_of_day", "weather", "family", "model_version", "seed",
                             "scenario_seed", "n_frames")}
    with SnapshotStore(store.root) as again:
        assert again.get(sid).meta == META and again.verify() == []
    assert os.listdir(store.tmp) == []
    other = store.add({}, {"score": float("nan"), "size": float("inf")})  # strict JSON
    assert store.get(other).meta == {"score": None, "size": None}
    assert store.list(family="urban")[0]["id"] == sid


def test_list_filters(store: SnapshotStore) -> None:
    ids = [store.add(_files(i), {**META, "triggers": [t], "weather": w, "seed": i})
           for i, (t, w) in enumerate([("collision", "fog"), ("off_road", "rain"),
                                       ("collision", "clear")])]

    def found(**filters: Any) -> list[str]:
        return [row["id"] for row in store.list(**filters)]

    assert found() == ids
    assert found(trigger="collision") == [ids[0], ids[2]]
    assert found(trigger="collision", weather="clear") == [ids[2]]
    assert found(weather="snow") == [] and found(model_version="yolo-3") == ids
    created = store.list()[1]["created"]
    assert found(since=created) == ids[1:] and found(until=created) == ids[:1]
    assert found(since="2000-01-01") == ids and found(until="2000-01-01T00:00:00Z") == []
    with pytest.raises(StoreError, match="since: 'yesterday' is not an ISO time"):
        store.list(since="yesterday")


def test_a_flipped_byte_is_reported_and_skipped(store: SnapshotStore) -> None:
    bad, good = store.add(_files(1), META), store.add(_files(2), META)
    _flip(store.snapshots / bad / FRAME)
    [problem] = store.verify()
    assert (problem.id, problem.file) == (bad, FRAME) and "SHA-256" in problem.what
    with pytest.raises(CorruptSnapshot, match=f"snapshot {bad} is corrupt: {bad}/{FRAME}"):
        store.get(bad)
    with pytest.raises(CorruptSnapshot, match=FRAME):
        store.read(bad, FRAME)
    assert store.read(bad, "actions.npz") == _files(1)["actions.npz"]  # only FRAME is bad
    with pytest.warns(SnapshotWarning, match=f"{bad}.*{FRAME}"):
        assert store.good_ids() == [good]
    assert [row["id"] for row in store.list()] == [bad, good]  # the index lists both
    assert store.get(good).read(FRAME) == _files(2)[FRAME] and store.verify([good]) == []
    snap = store.get(good)
    _flip(store.snapshots / good / "labels.json")  # changed after `get`
    with pytest.raises(CorruptSnapshot, match="labels.json"):
        snap.read("labels.json")


def _truncate(folder: Path) -> str:
    (folder / FRAME).write_bytes((folder / FRAME).read_bytes()[:-1])
    return FRAME


def _remove(folder: Path) -> str:
    (folder / FRAME).unlink()
    return FRAME


def _extra(folder: Path) -> str:
    (folder / "frames" / "000002.png").write_bytes(b"not mine")
    return "frames/000002.png"


def _link(folder: Path) -> str:  # same bytes, but through a symbolic link
    copy = folder.parents[2] / "copy.png"
    copy.write_bytes((folder / FRAME).read_bytes())
    (folder / FRAME).unlink()
    (folder / FRAME).symlink_to(copy)
    return FRAME


def _edit_meta(folder: Path) -> str:  # valid JSON, one value changed
    text = (folder / MANIFEST).read_text()
    assert '"seed": 7' in text
    (folder / MANIFEST).write_text(text.replace('"seed": 7', '"seed": 8'))
    return MANIFEST


def _garble_manifest(folder: Path) -> str:
    (folder / MANIFEST).write_bytes(b"\x80{")
    return MANIFEST


@pytest.mark.parametrize("damage", [_truncate, _remove, _extra, _link, _edit_meta,
                                    _garble_manifest])
def test_missing_extra_changed_and_linked_files_are_found(
        store: SnapshotStore, damage: Callable[[Path], str]) -> None:
    bad, good = store.add(_files(1), META), store.add(_files(2), META)
    name = damage(store.snapshots / bad)
    problems = store.verify()
    assert [(p.id, p.file) for p in problems] == [(bad, name)], problems
    with pytest.raises(CorruptSnapshot, match=f"{bad}/{name}"):
        store.get(bad)
    with pytest.raises(CorruptSnapshot):
        store.export(bad, store.root.parent / "out")
    assert not (store.root.parent / "out").exists()
    assert store.get(good).meta == META and store.verify([good]) == []


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_and_unknown_ids_are_refused(store: SnapshotStore, tmp_path: Path,
                                         bad: Any) -> None:
    sid = store.add(_files(), META)
    (store.root / "etc").mkdir()
    (store.root / "etc" / "passwd").write_text("mine")
    calls: list[Callable[[Any], Any]] = [
        store.get, lambda i: store.read(i, "actions.npz"), store.rm,
        lambda i: store.export(i, tmp_path / "out"), lambda i: store.verify([i])]
    for call in calls:
        with pytest.raises(StoreError, match="is not a snapshot id"):
            call(bad)
        with pytest.raises(UnknownSnapshot, match=f"no snapshot {UNKNOWN}"):
            call(UNKNOWN)
    assert bad not in store and UNKNOWN not in store and sid in store
    assert (store.root / "etc" / "passwd").read_text() == "mine"
    assert not (tmp_path / "out").exists() and store.verify() == []


@pytest.mark.parametrize("name", [
    "../x", "/abs", "a\\b", "a//b", "a/", ".hidden", "a/./b", "a/../b", MANIFEST, "a b",
    "a" * 129, "/".join("a" * 9), "", 3])
def test_bad_file_names_are_refused(store: SnapshotStore, name: Any) -> None:
    with pytest.raises(StoreError, match="is not a snapshot file name"):
        store.add({name: b"x"}, {})
    assert os.listdir(store.snapshots) == os.listdir(store.tmp) == []


@pytest.mark.parametrize(("files", "meta", "match"), [
    ({"a": b"", "a/b": b""}, {}, "also the folder of another file"),
    ({"a": "text"}, {}, "must be bytes or a Path"),
    ({"a": b""}, {"seed": "7"}, r"meta\['seed'\] must be an int"),
    ({"a": b""}, {"seed": True}, r"meta\['seed'\] must be an int"),
    ({"a": b""}, {"seed": 2 ** 70}, r"meta\['seed'\] must be an int"),
    ({"a": b""}, {"weather": 3}, r"meta\['weather'\] must be a string"),
    ({"a": b""}, {"triggers": "collision"}, r"meta\['triggers'\] must be a list"),
    ({"a": b""}, {"x": object()}, "meta must be JSON data"),
    ({"a": b""}, [("seed", 1)], "meta must be a dict"),
])
def test_bad_files_and_meta_are_refused(store: SnapshotStore, files: Any, meta: Any,
                                        match: str) -> None:
    with pytest.raises(StoreError, match=match):
        store.add(files, meta)
    assert os.listdir(store.snapshots) == os.listdir(store.tmp) == []


def _foreign_sqlite(folder: Path, wal: bool = False) -> None:
    con = sqlite3.connect(folder / "index.sqlite")
    if wal:  # reading it must not leave -wal or -shm files
        con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE users (name TEXT)")
    con.execute("INSERT INTO users VALUES ('ada')")
    con.commit()
    con.close()


@pytest.mark.parametrize("make", [
    lambda f: (f / "notes.txt").write_text("mine"),
    lambda f: (f / "snapshots").mkdir(),
    lambda f: (f / "index.sqlite").write_text("not a database"),
    _foreign_sqlite,
    lambda f: _foreign_sqlite(f, wal=True),
], ids=["files", "snapshots-folder", "text-index", "sqlite-index", "sqlite-wal-index"])
def test_a_folder_that_is_not_a_store_is_refused_and_left_alone(
        tmp_path: Path, make: Callable[[Path], Any]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    make(folder)
    before = _tree(folder)
    for create in (True, False):
        with pytest.raises(StoreError, match=f"{folder} is not"):
            SnapshotStore(folder, create=create)
    assert _tree(folder) == before


def test_missing_stores_and_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=f"no snapshot store at {tmp_path / 'none'}"):
        SnapshotStore(tmp_path / "none")
    assert not (tmp_path / "none").exists()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(StoreError, match="is not a folder"):
        SnapshotStore(tmp_path / "file", create=True)
    assert (tmp_path / "file").read_text() == "mine"
    with SnapshotStore(tmp_path / "empty", create=True) as store:  # new, then empty: fine
        assert store.list() == []
    (tmp_path / "empty2").mkdir()
    SnapshotStore(tmp_path / "empty2", create=True).close()


def test_an_unindexed_snapshot_is_found_and_reindexed(store: SnapshotStore) -> None:
    """A writer killed between the rename and the index leaves a whole, unindexed one."""
    sid, corrupt = store.add(_files(1), META), store.add(_files(2), META)
    _drop_row(store, sid)
    _drop_row(store, corrupt)
    _flip(store.snapshots / corrupt / FRAME)
    assert store.list() == [] and sid in store
    problems = {(p.id, p.file): p.what for p in store.verify()}
    assert set(problems) == {(sid, None), (corrupt, FRAME)}
    assert "not in the index" in problems[sid, None]
    assert store.get(sid).meta == META  # the manifest is the truth
    assert store.reindex() == [sid]
    [row] = store.list()
    assert row["id"] == sid and row["triggers"] == ["collision", "low_ttc"]
    assert [(p.id, p.file) for p in store.verify()] == [(corrupt, FRAME)]


def test_a_row_without_its_folder_is_reported_and_repaired(store: SnapshotStore) -> None:
    sid, other = store.add(_files(1), META), store.add(_files(2), META)
    shutil.rmtree(store.snapshots / sid)
    [problem] = store.verify()
    assert problem.id == sid and "folder is missing" in problem.what
    with pytest.raises(CorruptSnapshot, match="folder is missing"):
        store.get(sid)
    assert store.repair() == [f"{sid}: dropped from the index (its folder is gone)"]
    assert [row["id"] for row in store.list()] == [other] and store.verify() == []


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_stale_temporary_folders_are_removed_and_nothing_else(store: SnapshotStore) -> None:
    dead, sid = _dead_pid(), "20261206T061500-3f9a2b1c"
    half = store.tmp / f"{dead}-{sid}"
    (half / "frames").mkdir(parents=True)
    (half / FRAME).write_bytes(b"half a snapshot")
    (half / PARTIAL).write_text(json.dumps({"id": sid, "files": [FRAME, "clip.json"]}))
    empty = store.tmp / f"{dead}-20261206T061500-00000001"  # killed before its marker
    empty.mkdir()
    keep = [store.tmp / f"{os.getpid()}-{sid}", store.tmp / "notes", store.tmp / f"{dead}-x"]
    for folder in keep:
        folder.mkdir()
    # a dead writer's name, but files drivestack did not write: left, files and all
    foreign = [store.tmp / f"{dead}-20261206T061500-00000002",  # no marker, no manifest
               store.tmp / f"{dead}-20261206T061500-00000003"]  # a file its marker omits
    for folder in foreign:
        folder.mkdir()
        (folder / "mine.txt").write_text("mine")
    (foreign[1] / PARTIAL).write_text(json.dumps({"id": foreign[1].name.split("-", 1)[1],
                                                  "files": ["clip.json"]}))
    keep += foreign
    creating = store.root / f".index-{dead}-0123abcd.sqlite"
    creating.write_bytes(b"")
    assert store.list() == [] and store.verify() == []  # temporary folders are not snapshots
    SnapshotStore(store.root).close()  # removed on open
    assert not half.exists() and not empty.exists() and not creating.exists()
    assert all(folder.is_dir() for folder in keep) and store.gc() == []
    assert all((f / "mine.txt").read_text() == "mine" for f in foreign)


def test_rm_removes_only_snapshots(store: SnapshotStore) -> None:
    a, b, c = (store.add(_files(i), META) for i in range(3))
    store.rm(a)
    assert a not in store and not (store.snapshots / a).exists()
    assert os.listdir(store.tmp) == [] and [r["id"] for r in store.list()] == [b, c]
    with pytest.raises(UnknownSnapshot):
        store.rm(a)
    (store.snapshots / b / "frames" / "mine.txt").write_text("mine")
    with pytest.raises(StoreError, match=f"{b}/frames/mine.txt is not a file of snapshot"):
        store.rm(b)
    assert (store.snapshots / b / "frames" / "mine.txt").read_text() == "mine" and b in store
    (store.snapshots / c / MANIFEST).write_text("{")
    with pytest.raises(StoreError, match="removes only the files a manifest lists"):
        store.rm(c)
    assert (store.snapshots / c / FRAME).exists()
    shutil.rmtree(store.snapshots / c)  # a row without its folder is removed too
    store.rm(c)
    assert [r["id"] for r in store.list()] == [b]


def test_export(store: SnapshotStore, tmp_path: Path) -> None:
    sid = store.add(_files(), META)
    out = store.export(sid, tmp_path / "out")
    assert out == tmp_path / "out"
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == {
        *_files(), MANIFEST}
    assert all((out / n).read_bytes() == d for n, d in _files().items())
    assert (out / MANIFEST).read_bytes() == (store.snapshots / sid / MANIFEST).read_bytes()
    (tmp_path / "empty").mkdir()
    store.export(sid, tmp_path / "empty")
    assert (tmp_path / "empty" / FRAME).read_bytes() == _files()[FRAME]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    for dest in (tmp_path / "full", tmp_path / "full" / "mine.txt", store.root / "x"):
        with pytest.raises(StoreError, match="export: "):
            store.export(sid, dest)
    assert os.listdir(tmp_path / "full") == ["mine.txt"]
    assert sorted(os.listdir(tmp_path)) == ["empty", "full", "out", "store"]


WRITER = """
import sys
from pathlib import Path
from data_engine.store import SnapshotStore
print("ready", flush=True)
sys.stdin.readline()
store = SnapshotStore(Path(sys.argv[1]), create=True)
count, tag, i = int(sys.argv[2]), sys.argv[3], 0
while i != count:
    data = bytes([i % 256]) * 40000
    store.add({"a.bin": data, "frames/000000.bin": data[:999], "frames/000001.bin": b"x"},
              {"triggers": ["collision"], "family": tag, "seed": i})
    i += 1
print("done", flush=True)
"""


def _writer(root: Path, count: int, tag: str) -> subprocess.Popen[str]:
    """A process that opens (or creates) the store once it reads a line, then adds
    `count` snapshots (-1: until killed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(count), tag],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_a_writer_killed_at_random_points_leaves_no_half_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "store"
    SnapshotStore(root, create=True).close()
    rng = random.Random(14)
    interrupted = 0
    for _ in range(20):
        proc = _writer(root, -1, "kill")
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(rng.uniform(0.003, 0.1))
        proc.kill()  # SIGKILL
        proc.wait()
        interrupted += any(e.startswith(f"{proc.pid}-") for e in os.listdir(root / "tmp"))
    with SnapshotStore(root) as store:
        assert os.listdir(store.tmp) == []  # the killed writers' folders, removed on open
        problems = store.verify()
        assert all("not in the index" in p.what for p in problems), problems
        store.reindex()
        assert store.verify() == []
        rows = {row["id"] for row in store.list()}
        assert rows == set(os.listdir(store.snapshots)) and len(rows) >= 20
        assert all(len(store.get(sid).names) == 3 for sid in rows)
    assert interrupted >= 1, "no kill landed while a snapshot was being written"


def test_two_writers_at_once_both_succeed(tmp_path: Path) -> None:
    """Both create the store (the index appears whole, once) and add 10 snapshots."""
    root = tmp_path / "store"
    procs = [_writer(root, 10, tag) for tag in ("one", "two")]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out == "done\n"
    with SnapshotStore(root) as store:
        assert len(store.list()) == 20 and store.verify() == []
        assert len(store.list(family="one")) == len(store.list(family="two")) == 10


# -- the command line ---------------------------------------------------------------------


def _cli(*args: str | Path) -> Any:
    app = typer.Typer()
    app.add_typer(snapshots_app, name="snapshots")
    return CliRunner().invoke(app, ["snapshots", *map(str, args)])


def _last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


def _one_error(result: Any, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


def test_cli_list_show_verify_export_rm(store: SnapshotStore, tmp_path: Path) -> None:
    a = store.add(_files(1), META)
    b = store.add(_files(2), {**META, "triggers": ["off_road"]})
    opt = ("--store", store.root)
    result = _cli("list", *opt)
    assert result.exit_code == 0 and _last_json(result.stdout)["count"] == 2
    assert a in result.stderr  # the table
    doc = _last_json(_cli("list", *opt, "--trigger", "off_road", "--weather", "fog").stdout)
    assert [row["id"] for row in doc["snapshots"]] == [b]
    result = _cli("show", a, *opt)
    assert result.exit_code == 0
    assert _last_json(result.stdout)["meta"] == META
    assert set(_last_json(result.stdout)["files"]) == set(_files())
    for bad in ("../etc", "a/b", "/etc"):
        _one_error(_cli("show", bad, *opt), "is not a snapshot id")
    _one_error(_cli("show", UNKNOWN, *opt), f"no snapshot {UNKNOWN}")
    result = _cli("verify", *opt)
    assert result.exit_code == 0 and _last_json(result.stdout)["ok"] is True
    _flip(store.snapshots / b / FRAME)
    result = _cli("verify", *opt)
    assert result.exit_code == 1 and b in result.stderr
    assert _last_json(result.stdout)["problems"] == [
        {"id": b, "file": FRAME, "what": "changed: its SHA-256 is not the manifest's"}]
    assert _cli("verify", a, *opt).exit_code == 0
    _one_error(_cli("show", b, *opt), f"snapshot {b} is corrupt")
    _one_error(_cli("export", b, tmp_path / "out", *opt), f"snapshot {b} is corrupt")
    result = _cli("export", a, tmp_path / "out", *opt)
    assert result.exit_code == 0 and (tmp_path / "out" / FRAME).is_file()
    _one_error(_cli("rm", a, "../etc", *opt), "is not a snapshot id")
    _one_error(_cli("rm", a, UNKNOWN, *opt), "nothing was removed")
    assert a in store
    result = _cli("rm", a, *opt)
    assert result.exit_code == 0 and _last_json(result.stdout) == {"removed": [a]}
    assert [row["id"] for row in store.list()] == [b]


def test_cli_repairs_and_refuses_folders(store: SnapshotStore, tmp_path: Path) -> None:
    sid = store.add(_files(), META)
    _drop_row(store, sid)
    result = _cli("verify", "--store", store.root)
    assert result.exit_code == 1 and "not in the index" in result.stderr
    result = _cli("verify", "--repair", "--store", store.root)
    assert result.exit_code == 0
    assert _last_json(result.stdout)["repaired"] == [f"{sid}: indexed"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    _one_error(_cli("list", "--store", tmp_path / "mine"), "is not a snapshot store")
    _one_error(_cli("list", "--store", tmp_path / "none"), "no snapshot store at")
    assert not (tmp_path / "none").exists()
