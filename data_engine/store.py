"""The snapshot store: crash-safe folders of files, indexed in SQLite, generic over what a
snapshot holds (frames, npz arrays, JSON; the recorder decides).

A store is one folder (`drivestack snapshots --store`, default `out/snapshots`):

    index.sqlite        the index (SQLite, WAL): one row per snapshot, its trigger names
    snapshots/<id>/     one folder per snapshot: its files and manifest.json
    tmp/<pid>-<id>/     a snapshot process <pid> is writing (or removing); never a snapshot

The promises (docs/reliability.md):

- **A snapshot appears whole or not at all.** `add` writes every file and the manifest
  (SHA-256 and size of each file, the meta, the format) into `tmp/`, syncs them, renames
  the folder into `snapshots/` and only then indexes it. A killed writer leaves a temporary
  folder (removed once its process is gone: on open, by `gc` or `repair`) or, killed
  between the rename and the index, an unindexed but whole snapshot (`reindex`).
- **The manifest is the truth, the index is derived from it.** Every column of the index
  comes from a manifest, so `reindex` rebuilds any missing row; the index keeps each
  manifest's SHA-256, so a changed manifest is caught too.
- **Nothing unverified is returned.** `get`, `read` and `export` check the manifest and
  the files against it (no missing, extra or changed file; no symbolic links) and raise
  `CorruptSnapshot` naming the snapshot and the file; `verify` reports every problem and
  never raises on one; `iter_verified` skips a corrupt snapshot with a `SnapshotWarning`.
- **No path escapes the store.** Snapshot ids are checked against `ID_PATTERN` on every
  entry point, file names against `check_name`; files are opened without following links.
- **Never delete or overwrite what drivestack did not write.** A folder that is not empty
  and is not a store is refused (`StoreError`) and left as it is; `rm` removes a snapshot
  only when its folder holds nothing but the files its manifest lists; nothing else in
  `snapshots/` or `tmp/` is touched.
- No pickle: manifests are JSON read with a size cap; the meta is strict JSON (NaN and
  infinities become null, `sim.outputs.json_text`).

A store lives on one machine's disk (SQLite's WAL needs shared memory between its
processes, and a temporary folder counts as abandoned when its process id is not running
here); any number of processes on that machine may add, read and remove at once.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from data_engine.store_files import (
    check_file,
    dead,
    files_under,
    fsync_dir,
    fsync_tree,
    write_new,
)
from sim.outputs import json_text, read_small_file

KIND = "drivestack-snapshots"
"""The index's `store_info.kind`: what tells a store's index from another SQLite file."""
SNAPSHOT_KIND = "drivestack-snapshot"
"""A manifest's `kind`."""
FORMAT = 1
"""Version of the store's layout (index and manifests)."""
INDEX, SNAPSHOTS, TMP, MANIFEST = "index.sqlite", "snapshots", "tmp", "manifest.json"
PARTIAL = ".partial.json"
"""The first file of a snapshot being written: its id and the names it will write, so
that only what drivestack wrote is ever removed from `tmp/`."""
ID_PATTERN = re.compile(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{8}")
"""A snapshot id: its UTC creation time and 8 random hex digits, e.g. 20261206T061500-3f9a2b1c."""
NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
"""One segment of a file name inside a snapshot (no leading dot: no `..`, no hidden files)."""
MAX_NAME, MAX_PART, MAX_DEPTH, MAX_FILES = 255, 128, 8, 100_000
"""Limits of file names [characters, characters, segments] and files per snapshot."""
MAX_MANIFEST_BYTES = 16 << 20
"""Largest manifest read or written [bytes]."""
MAX_META_BYTES = 4 << 20
"""Largest meta, as JSON [bytes]; big arrays belong in files (npz)."""
BUSY_TIMEOUT_S = 60.0
"""How long a writer waits for another one's transaction on the index [s]."""
COLUMNS: dict[str, type] = {"time_of_day": str, "weather": str, "family": str,
                            "model_version": str, "seed": int, "scenario_seed": int,
                            "n_frames": int}
"""Meta keys indexed for filtering, with their types (missing or null: NULL); the list of
trigger names `triggers` is indexed too."""
_TMP_ENTRY = re.compile(rf"([0-9]{{1,10}})-({ID_PATTERN.pattern})")
_CREATING = re.compile(r"\.index-([0-9]{1,10})-[0-9a-f]{8}\.sqlite(-wal|-shm|-journal)?")
_CHUNK = 1 << 20
_SCHEMA = """
CREATE TABLE store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE snapshots (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, manifest_sha256 TEXT NOT NULL,
    n_files INTEGER NOT NULL, bytes INTEGER NOT NULL, meta TEXT NOT NULL,
    time_of_day TEXT, weather TEXT, family TEXT, model_version TEXT,
    seed INTEGER, scenario_seed INTEGER, n_frames INTEGER);
CREATE INDEX snapshots_created ON snapshots (created);
CREATE TABLE triggers (
    id TEXT NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE, name TEXT NOT NULL,
    PRIMARY KEY (id, name));
CREATE INDEX triggers_name ON triggers (name);
"""
_ROW = ("id", "created", "n_files", "bytes", *COLUMNS)


class StoreError(ValueError):
    """A store or snapshot drivestack cannot use; `str(err)` names the path or id and why."""


class UnknownSnapshot(StoreError):
    """A well-formed snapshot id that the store does not hold."""


class CorruptSnapshot(StoreError):
    """A snapshot whose files do not match its manifest (or whose manifest is damaged)."""

    def __init__(self, snapshot_id: str, problems: list[Problem]) -> None:
        self.id = snapshot_id
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"snapshot {snapshot_id} is corrupt: {problems[0]}{more}; "
                         "`drivestack snapshots verify` lists every problem")


class SnapshotWarning(UserWarning):
    """A corrupt snapshot skipped by `iter_verified`."""


@dataclass(frozen=True)
class Problem:
    """Something wrong in a store, found by `verify`."""

    id: str
    """The snapshot id (or the name of an entry in snapshots/ that is not a snapshot)."""
    file: str | None
    """The file inside the snapshot, or None for the snapshot as a whole."""
    what: str
    """What is wrong, and what to do about it when there is something to do."""

    def __str__(self) -> str:
        return f"{self.id}/{self.file}: {self.what}" if self.file else f"{self.id}: {self.what}"


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot (`SnapshotStore.get`)."""

    id: str
    path: Path
    """Its folder; files read from it later are not checked again (use `read`)."""
    created: str
    """When it was written (UTC, ISO 8601, e.g. 2026-12-06T06:15:00.123456Z)."""
    meta: dict[str, Any]
    manifest: dict[str, Any]
    """The whole manifest: format, id, created, meta and files {name: {sha256, size}}."""

    @property
    def names(self) -> tuple[str, ...]:
        """Its file names (relative, '/'-separated), sorted."""
        return tuple(self.manifest["files"])

    def read(self, name: str) -> bytes:
        """The bytes of file `name`, checked against the manifest (raises CorruptSnapshot)."""
        return _read_file(self.id, self.path, self.manifest, name)


def check_id(value: Any) -> str:
    """`value` when it is a well-formed snapshot id; raises StoreError otherwise."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise StoreError(f"{_show(value)} is not a snapshot id (ids look like "
                         "20261206T061500-3f9a2b1c: `drivestack snapshots list` shows them)")
    return value


def check_name(value: Any) -> str:
    """`value` when it is a file name a snapshot may hold: relative, '/'-separated segments
    of letters, digits and `._+-` (not starting with a dot), at most MAX_DEPTH segments of
    MAX_PART characters, MAX_NAME in all, not the manifest. Raises StoreError otherwise."""
    parts = value.split("/") if isinstance(value, str) else []
    if not (parts and len(value) <= MAX_NAME and len(parts) <= MAX_DEPTH
            and all(len(p) <= MAX_PART and NAME_PART.fullmatch(p) for p in parts)
            and value != MANIFEST):
        raise StoreError(
            f"{_show(value)} is not a snapshot file name: names are relative, with "
            "segments of letters, digits and ._+- (not starting with a dot) separated by /, "
            f"at most {MAX_DEPTH} segments of {MAX_PART} characters, {MAX_NAME} in all, "
            f"and not {MANIFEST}")
    return value


_F = TypeVar("_F", bound=Callable[..., Any])


def _index_errors(method: _F) -> _F:
    """Report an SQLite failure (a damaged index, a lock held too long) as a StoreError."""

    @functools.wraps(method)
    def wrapper(self: SnapshotStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"snapshot index {self.index}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


class SnapshotStore:
    """A snapshot store (see the module docstring). Raises StoreError when `root` is not a
    store: missing (unless `create`), or not empty and not a store (left as it is).

    One object per process and thread; any number of processes may add at once."""

    @_index_errors
    def __init__(self, root: str | Path, create: bool = False) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self.index = self.root / INDEX
        self.snapshots = self.root / SNAPSHOTS
        self.tmp = self.root / TMP
        self._open_or_create(create)
        self._con = sqlite3.connect(self.index, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        self._con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._con.execute("PRAGMA foreign_keys = ON")
        self._con.execute("PRAGMA synchronous = NORMAL")  # a lost row is found by reindex
        for folder in (self.snapshots, self.tmp):
            folder.mkdir(exist_ok=True)
        try:
            self.gc()
        except OSError:  # a read-only store is still readable
            pass

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @_index_errors
    def __contains__(self, snapshot_id: object) -> bool:
        """Whether `snapshot_id` is a well-formed id of a snapshot here (a row or a
        folder, corrupt or not)."""
        try:
            self._known(snapshot_id)
        except StoreError:
            return False
        return True

    # -- writing -------------------------------------------------------------------------

    @_index_errors
    def add(self, files: Mapping[str, bytes | Path], meta: Mapping[str, Any] | None = None
            ) -> str:
        """Write a new snapshot of `files` ({name: bytes or a Path to copy}, names as
        `check_name` allows) and `meta` (a JSON-able dict; the keys of COLUMNS and
        `triggers`, a list of names, are indexed); returns its id. Atomic: a crash leaves
        no half snapshot (see the module docstring)."""
        if not isinstance(files, Mapping) or len(files) > MAX_FILES:
            raise StoreError(f"files must be a dict of at most {MAX_FILES} {{name: bytes or "
                             "Path}}")
        names = sorted(check_name(n) for n in files)
        for name in names:
            if not isinstance(files[name], (bytes, os.PathLike)):
                raise StoreError(f"file {name!r}: must be bytes or a Path, not "
                                 f"{type(files[name]).__name__}")
        folders = {n[:i] for n in names for i, c in enumerate(n) if c == "/"}
        clash = sorted(folders.intersection(names))
        if clash:
            raise StoreError(f"file {clash[0]!r} is also the folder of another file")
        doc = _meta_doc(meta)
        created = datetime.now(timezone.utc)
        sid, work = self._new_folder(created)
        try:
            write_new(work / PARTIAL, json_text({"id": sid, "files": names}).encode())
            entries = {name: write_new(work / name, files[name]) for name in names}
            manifest = {"format": FORMAT, "kind": SNAPSHOT_KIND, "id": sid,
                        "created": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "meta": doc, "files": entries}
            raw = (json_text(manifest, indent=1) + "\n").encode("utf-8")
            if len(raw) > MAX_MANIFEST_BYTES:
                raise StoreError(f"the manifest would be over {MAX_MANIFEST_BYTES} bytes: "
                                 "fewer files, or a smaller meta")
            write_new(work / MANIFEST, raw)
            (work / PARTIAL).unlink()  # from here the manifest says what the folder holds
            fsync_tree(work)
            os.rename(work, self.snapshots / sid)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # made by this call: all ours
            raise
        fsync_dir(self.snapshots)
        try:
            self._index(sid, manifest, hashlib.sha256(raw).hexdigest())
        except sqlite3.Error as exc:
            raise StoreError(f"snapshot {sid} is written but not indexed ({exc}); "
                             "`drivestack snapshots verify --repair` indexes it") from exc
        return sid

    def _new_folder(self, created: datetime) -> tuple[str, Path]:
        """A fresh id and its (new, empty) temporary folder."""
        for _ in range(100):
            sid = f"{created.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
            work = self.tmp / f"{os.getpid()}-{sid}"
            if os.path.lexists(self.snapshots / sid):
                continue
            try:
                work.mkdir()
            except FileExistsError:
                continue
            return sid, work
        raise StoreError(f"{self.root}: no free snapshot id found")  # pragma: no cover

    def _index(self, sid: str, manifest: dict[str, Any], manifest_sha: str) -> None:
        """Add the row of a verified snapshot (nothing when it is indexed already)."""
        columns, triggers = _columns(manifest["meta"])
        values = [sid, manifest["created"], manifest_sha, len(manifest["files"]),
                  sum(e["size"] for e in manifest["files"].values()),
                  json_text(manifest["meta"]), *columns.values()]
        with self._writing() as con:
            con.execute(
                "INSERT OR IGNORE INTO snapshots (id, created, manifest_sha256, n_files, "
                f"bytes, meta, {', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(values))})",
                values)
            con.executemany("INSERT OR IGNORE INTO triggers (id, name) VALUES (?, ?)",
                            [(sid, t) for t in triggers])

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the index, its lock taken at once (BEGIN IMMEDIATE: it
        waits up to BUSY_TIMEOUT_S for another writer's, where a deferred one could fail)."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    @_index_errors
    def rm(self, snapshot_id: str) -> None:
        """Remove a snapshot: its folder (only when it holds nothing but the files its
        manifest lists: anything else is left, with a StoreError naming it) and its row."""
        sid = self._known(snapshot_id)
        folder = self.snapshots / sid
        gone = None
        if os.path.lexists(folder):
            self._check_own(sid, folder)
            gone = self.tmp / f"{os.getpid()}-{sid}"
            os.rename(folder, gone)  # the snapshot disappears at once, whole
        self._drop_row(sid)
        if gone is not None and self._ours(gone, sid):  # checked by _check_own, again
            shutil.rmtree(gone)

    def _check_own(self, sid: str, folder: Path) -> None:
        """Raise StoreError unless `folder` holds only the files of snapshot `sid`."""
        if folder.is_symlink() or not folder.is_dir():
            raise StoreError(f"{folder} is not a snapshot folder; it is left as it is")
        try:
            manifest, _ = self._manifest(sid, None)
        except CorruptSnapshot as exc:
            raise StoreError(
                f"{exc.problems[0]}; drivestack removes only the files a manifest lists: "
                f"remove {folder} yourself, then run `drivestack snapshots verify "
                "--repair`") from None
        foreign = sorted(files_under(folder) - set(manifest["files"]) - {MANIFEST})
        if foreign:
            raise StoreError(
                f"{folder / foreign[0]} is not a file of snapshot {sid} (not in its "
                f"manifest; {len(foreign)} such files); it is left as it is: move it "
                "out, then remove the snapshot")

    def _ours(self, folder: Path, sid: str) -> bool:
        """Whether every file under a temporary `folder` is one drivestack wrote for
        snapshot `sid`: those its partial marker (a write in progress) or its manifest (a
        finished or removed snapshot) names; links and foreign files make it not ours."""
        names = files_under(folder)
        if names <= {PARTIAL}:  # killed before its first file was whole
            return not any(os.path.islink(folder / n) for n in names)
        allowed: set[str] | None = None
        raw = read_small_file(folder / PARTIAL, MAX_MANIFEST_BYTES)
        if raw is not None:
            try:
                doc = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                doc = None
            if isinstance(doc, dict) and doc.get("id") == sid and isinstance(
                    doc.get("files"), list) and all(isinstance(n, str) for n in doc["files"]):
                allowed = {*doc["files"], PARTIAL, MANIFEST}
        if allowed is None:
            try:
                manifest = _parse_manifest(sid, read_small_file(folder / MANIFEST,
                                                            MAX_MANIFEST_BYTES))
            except StoreError:
                return False
            allowed = {*manifest["files"], MANIFEST}
        return names <= allowed and not any(os.path.islink(folder / n) for n in names)

    def _drop_row(self, sid: str) -> None:
        with self._writing() as con:
            con.execute("DELETE FROM snapshots WHERE id = ?", (sid,))  # and its triggers

    # -- reading -------------------------------------------------------------------------

    @_index_errors
    def get(self, snapshot_id: str) -> Snapshot:
        """The snapshot, once every file is checked against its manifest (raises
        CorruptSnapshot naming the file, UnknownSnapshot, StoreError for a bad id)."""
        sid = self._known(snapshot_id)
        found = self._inspect(sid, self._manifest_sha(sid))
        if found.problems or found.manifest is None:
            raise CorruptSnapshot(sid, found.problems)
        m = found.manifest
        return Snapshot(sid, self.snapshots / sid, m["created"], m["meta"], m)

    @_index_errors
    def read(self, snapshot_id: str, name: str) -> bytes:
        """The bytes of one file of a snapshot, checked against its manifest (the other
        files are not read)."""
        sid = self._known(snapshot_id)
        check_name(name)
        manifest, _ = self._manifest(sid, self._manifest_sha(sid))
        return _read_file(sid, self.snapshots / sid, manifest, name)

    def iter_verified(self, **filters: str | datetime | None) -> Iterator[Snapshot]:
        """The snapshots `list(**filters)` finds, verified; a corrupt one is skipped with a
        SnapshotWarning naming it and the file (one removed meanwhile, silently)."""
        for row in self.list(**filters):  # type: ignore[arg-type]
            try:
                yield self.get(row["id"])
            except CorruptSnapshot as exc:
                warnings.warn(f"skipped: {exc}", SnapshotWarning, stacklevel=2)
            except UnknownSnapshot:
                continue

    def good_ids(self, **filters: str | datetime | None) -> builtins.list[str]:
        """The ids of the verified snapshots `list(**filters)` finds (see `iter_verified`)."""
        return [snap.id for snap in self.iter_verified(**filters)]

    @_index_errors
    def export(self, snapshot_id: str, dest: str | Path) -> Path:
        """Copy a verified snapshot (its files and manifest) into `dest`, a new or empty
        folder outside the store; it appears there only when complete. Returns `dest`."""
        sid = self._known(snapshot_id)
        out = Path(os.path.abspath(Path(dest).expanduser()))
        if os.path.lexists(out) and (out.is_symlink() or not out.is_dir() or any(out.iterdir())):
            raise StoreError(f"export: {out} exists and is not an empty folder; choose a new "
                             "one (drivestack never writes over files it did not write)")
        if out == self.root or self.root in out.parents:
            raise StoreError(f"export: {out} is inside the store {self.root}; choose a "
                             "folder outside it")
        manifest_sha = self._manifest_sha(sid)
        snap = self.get(sid)
        out.parent.mkdir(parents=True, exist_ok=True)
        work = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()
        try:
            for name, entry in snap.manifest["files"].items():
                (work / name).parent.mkdir(parents=True, exist_ok=True)
                with open(work / name, "xb") as f:
                    what = check_file(snap.path, name, entry, f.write)
                    os.fsync(f.fileno())
                if what is not None:  # changed since `get`
                    raise CorruptSnapshot(sid, [Problem(sid, name, what)])
            raw = read_small_file(snap.path / MANIFEST, MAX_MANIFEST_BYTES)
            if raw is None or (manifest_sha is not None
                               and hashlib.sha256(raw).hexdigest() != manifest_sha):
                raise CorruptSnapshot(sid, [Problem(sid, MANIFEST, "changed while exported")])
            write_new(work / MANIFEST, raw)
            fsync_tree(work)
            os.rename(work, out)  # replaces `out` only when it is an empty folder
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # made (exclusively) by this call
            raise
        fsync_dir(out.parent)
        return out

    @_index_errors
    def list(self, trigger: str | None = None, time_of_day: str | None = None,
             weather: str | None = None, family: str | None = None,
             model_version: str | None = None, since: str | datetime | None = None,
             until: str | datetime | None = None) -> builtins.list[dict[str, Any]]:
        """The index rows (id, created, triggers, n_files, bytes and the COLUMNS), oldest
        first, filtered by equality and by `since <= created < until` (ISO times or dates,
        UTC unless they say otherwise). Not verified: use `get` or `iter_verified`."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("time_of_day", time_of_day), ("weather", weather),
                              ("family", family), ("model_version", model_version)):
            if value is not None:
                where.append(f"s.{column} = ?")
                args.append(_text(value, column))
        if trigger is not None:
            where.append("EXISTS (SELECT 1 FROM triggers f WHERE f.id = s.id AND f.name = ?)")
            args.append(_text(trigger, "trigger"))
        for bound, op, key in ((since, ">=", "since"), (until, "<", "until")):
            if bound is not None:
                where.append(f"s.created {op} ?")
                args.append(_utc(bound, key))
        sql = (f"SELECT {', '.join('s.' + c for c in _ROW)}, t.name FROM snapshots s "
               "LEFT JOIN triggers t ON t.id = s.id"
               + (f" WHERE {' AND '.join(where)}" if where else "")
               + " ORDER BY s.created, s.id, t.name")
        rows: dict[str, dict[str, Any]] = {}
        for *values, name in self._con.execute(sql, args):
            row = rows.setdefault(values[0], dict(zip(_ROW, values, strict=True)))
            row.setdefault("triggers", [])
            if name is not None:
                row["triggers"].append(name)
        return list(rows.values())

    # -- checking and repairing ------------------------------------------------------------

    @_index_errors
    def verify(self, ids: Iterable[str] | None = None) -> builtins.list[Problem]:
        """Every problem of the snapshots `ids` (default: all, and entries of snapshots/
        that are not snapshots): damaged or changed manifests, missing, extra or changed
        files, rows without a folder, folders without a row. Never raises on a corrupt
        snapshot (a bad or unknown id in `ids` raises StoreError)."""
        indexed = self._indexed()
        problems: list[Problem] = []
        if ids is None:
            entries = sorted(os.listdir(self.snapshots))
            problems += [Problem(e, None, "is not a snapshot (its name is not a snapshot "
                                 "id); left as it is")
                         for e in entries if not ID_PATTERN.fullmatch(e)]
            targets = sorted(set(indexed) | {e for e in entries if ID_PATTERN.fullmatch(e)})
        else:
            targets = [self._known(i) for i in ids]
        for sid in targets:
            problems += self._problems(sid, indexed.get(sid))
        return problems

    def _problems(self, sid: str, indexed_sha: str | None) -> builtins.list[Problem]:
        found = self._inspect(sid, indexed_sha)
        if not found.problems and indexed_sha is not None:
            return []
        now = self._manifest_sha(sid)  # look again: a writer or `rm` may be at work
        if now is None and not os.path.lexists(self.snapshots / sid):
            return []  # removed meanwhile
        if now != indexed_sha:
            found = self._inspect(sid, now)
        if not found.problems and now is None:
            return [Problem(sid, None, "not in the index (its writer stopped before "
                            "indexing it); `drivestack snapshots verify --repair` indexes it")]
        return found.problems

    @_index_errors
    def reindex(self) -> builtins.list[str]:
        """Index every whole snapshot folder that has no row (a writer killed between the
        rename and the index); returns their ids. Corrupt ones stay unindexed."""
        indexed = self._indexed()
        added = []
        for sid in sorted(os.listdir(self.snapshots)):
            if ID_PATTERN.fullmatch(sid) and sid not in indexed:
                found = self._inspect(sid, None)
                if not found.problems and found.manifest is not None:
                    self._index(sid, found.manifest, found.manifest_sha)
                    added.append(sid)
        return added

    @_index_errors
    def repair(self) -> builtins.list[str]:
        """Fix what can be fixed without losing data: index whole unindexed snapshots, drop
        rows whose folder is gone, remove temporary folders of writers no longer running.
        Returns what it did, one line each; corrupt snapshots stay (see `verify`)."""
        done = [f"{sid}: indexed" for sid in self.reindex()]
        for sid in self._indexed():
            if not os.path.lexists(self.snapshots / sid):
                self._drop_row(sid)
                done.append(f"{sid}: dropped from the index (its folder is gone)")
        done += [f"{path}: removed (left by a killed writer)" for path in self.gc()]
        return done

    def gc(self) -> builtins.list[Path]:
        """Remove the temporary folders (tmp/PID-ID) and index files (.index-PID-*) that
        processes no longer running left behind; returns them. A folder holding anything
        its partial marker or manifest does not name is left (`_ours`); nothing else is
        touched."""
        stale = [(self.tmp / e, stat.S_ISDIR) for e in sorted(os.listdir(self.tmp))
                 if (m := _TMP_ENTRY.fullmatch(e)) and dead(int(m[1]))]
        stale += [(self.root / e, stat.S_ISREG) for e in sorted(os.listdir(self.root))
                  if (m := _CREATING.fullmatch(e)) and dead(int(m[1]))]
        removed = []
        for path, kind in stale:
            try:
                if not kind(path.lstat().st_mode):  # never a link
                    continue
                if kind is stat.S_ISDIR:
                    if not self._ours(path, path.name.split("-", 1)[1]):
                        continue  # something drivestack did not write: left as it is
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
            except FileNotFoundError:  # another process removed it first
                continue
        return removed

    # -- internals ----------------------------------------------------------------------

    def _open_or_create(self, create: bool) -> None:
        if os.path.lexists(self.root) and not self.root.is_dir():
            raise StoreError(f"{self.root} is not a folder, so not a snapshot store")
        if os.path.lexists(self.index):
            self._check_index()
            return
        entries = os.listdir(self.root) if self.root.is_dir() else []
        if any(not _CREATING.fullmatch(e) for e in entries):
            raise StoreError(
                f"{self.root} is not empty and is not a snapshot store (it has no {INDEX}); "
                "its files are left as they are: choose a new or empty folder")
        if not create:
            raise StoreError(f"no snapshot store at {self.root} (a recorder makes one when "
                             "it adds the first snapshot)")
        self._create()

    def _check_index(self) -> None:
        """Raise StoreError unless `index.sqlite` is a store's index (read only)."""
        info = _store_info(self.index)
        if info.get("kind") != KIND:
            raise StoreError(f"{self.root} is not a snapshot store: its {INDEX} is not a "
                             "drivestack snapshot index; its files are left as they are: "
                             "choose a new or empty folder")
        if info.get("format") != str(FORMAT):
            raise StoreError(f"{self.index}: store format {info.get('format')}, this "
                             f"drivestack reads format {FORMAT}")

    def _create(self) -> None:
        """Make the index in a temporary file and link it into place, so another process
        never sees half an index (two creating at once both end up with the same one)."""
        self.root.mkdir(parents=True, exist_ok=True)
        work = self.root / f".index-{os.getpid()}-{secrets.token_hex(4)}.sqlite"
        try:
            con = sqlite3.connect(work, isolation_level=None)
            try:
                con.execute("PRAGMA journal_mode = WAL")
                con.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
                con.execute("INSERT INTO store_info VALUES ('kind', ?), ('format', ?)",
                            (KIND, str(FORMAT)))
            finally:
                con.close()
            with open(work, "rb") as f:
                os.fsync(f.fileno())
            try:
                os.link(work, self.index)
            except FileExistsError:
                pass  # another process made it first
            except OSError:  # a file system without hard links
                if not os.path.lexists(self.index):
                    os.rename(work, self.index)
            fsync_dir(self.root)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{work}{suffix}").unlink(missing_ok=True)
        self._check_index()

    def _known(self, snapshot_id: Any) -> str:
        """A well-formed id of a snapshot the store has (a row or a folder)."""
        sid = check_id(snapshot_id)
        if self._manifest_sha(sid) is None and not os.path.lexists(self.snapshots / sid):
            raise UnknownSnapshot(f"no snapshot {sid} in {self.root}")
        return sid

    def _manifest_sha(self, sid: str) -> str | None:
        row = self._con.execute("SELECT manifest_sha256 FROM snapshots WHERE id = ?",
                                (sid,)).fetchone()
        return None if row is None else str(row[0])

    def _indexed(self) -> dict[str, str]:
        return dict(self._con.execute("SELECT id, manifest_sha256 FROM snapshots"))

    def _manifest(self, sid: str, indexed_sha: str | None) -> tuple[dict[str, Any], str]:
        """The parsed manifest of snapshot `sid` and its SHA-256; raises CorruptSnapshot."""
        folder = self.snapshots / sid
        if not os.path.lexists(folder):
            what = ("its folder is missing (the index lists it); `drivestack snapshots "
                    "verify --repair` drops it from the index")
            raise CorruptSnapshot(sid, [Problem(sid, None, what)])
        if folder.is_symlink() or not folder.is_dir():
            raise CorruptSnapshot(sid, [Problem(sid, None, "is not a folder")])
        raw = read_small_file(folder / MANIFEST, MAX_MANIFEST_BYTES)
        try:
            manifest = _parse_manifest(sid, raw)
        except StoreError as exc:
            raise CorruptSnapshot(sid, [Problem(sid, MANIFEST, str(exc))]) from None
        sha = hashlib.sha256(raw or b"").hexdigest()
        if indexed_sha is not None and sha != indexed_sha:
            raise CorruptSnapshot(sid, [Problem(sid, MANIFEST, "changed since it was "
                                                "indexed (its SHA-256 is not the index's)")])
        return manifest, sha

    def _inspect(self, sid: str, indexed_sha: str | None) -> _Inspection:
        """Every problem of snapshot `sid`'s folder, with its manifest when readable."""
        try:
            manifest, sha = self._manifest(sid, indexed_sha)
        except CorruptSnapshot as exc:
            return _Inspection(exc.problems, None, "")
        folder = self.snapshots / sid
        listed = manifest["files"]
        present = files_under(folder)
        problems = [Problem(sid, n, "extra file: not in the manifest")
                    for n in sorted(present - set(listed) - {MANIFEST})]
        for name, entry in listed.items():
            what = "missing" if name not in present else check_file(folder, name, entry)
            if what is not None:
                problems.append(Problem(sid, name, what))
        return _Inspection(problems, manifest, sha)


@dataclass
class _Inspection:
    problems: list[Problem]
    manifest: dict[str, Any] | None
    manifest_sha: str


# -- helpers ------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:100]}..."


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{key}: must be a string, not {_show(value)}")
    return value


def _utc(value: str | datetime, key: str) -> str:
    """`value` (a datetime, or an ISO time or date; naive means UTC) as the index writes
    times."""
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise StoreError(f"{key}: {_show(value)} is not an ISO time such as 2026-12-06 "
                             "or 2026-12-06T06:15:00Z") from None
    if not isinstance(value, datetime):
        raise StoreError(f"{key}: must be an ISO time or a datetime, not {_show(value)}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _meta_doc(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """`meta` as strict JSON data (NaN and infinities as null), its indexed keys checked."""
    if not isinstance(meta, (Mapping, type(None))):
        raise StoreError(f"meta must be a dict, not {type(meta).__name__}")
    try:
        text = json_text(dict(meta or {}))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"meta must be JSON data (numbers, strings, lists, dicts): {exc}"
                         ) from None
    if len(text) > MAX_META_BYTES:
        raise StoreError(f"meta is over {MAX_META_BYTES} bytes as JSON; put arrays in files")
    doc: dict[str, Any] = json.loads(text)
    _columns(doc)
    return doc


def _columns(meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The indexed values of `meta` and its trigger names; raises StoreError."""
    columns = {}
    for key, kind in COLUMNS.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or (
                isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63)):
            raise StoreError(f"meta[{key!r}] must be {'an int' if kind is int else 'a string'}"
                             f" or missing, not {_show(value)}")
        columns[key] = value
    triggers = meta.get("triggers") or []
    if not isinstance(triggers, list) or not all(
            isinstance(t, str) and t for t in triggers):
        raise StoreError(f"meta['triggers'] must be a list of names, not {_show(triggers)}")
    return columns, sorted(set(triggers))


def _parse_manifest(sid: str, raw: bytes | None) -> dict[str, Any]:
    """The manifest of snapshot `sid` from its bytes; raises StoreError saying what is
    wrong."""
    if raw is None:
        raise StoreError(f"missing, or not a regular file of at most {MAX_MANIFEST_BYTES} "
                         "bytes")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise StoreError(f"not JSON ({_show(str(exc))})") from None
    if not isinstance(doc, dict) or doc.get("kind") != SNAPSHOT_KIND:
        raise StoreError("not a drivestack snapshot manifest")
    if doc.get("format") != FORMAT:
        raise StoreError(f"format {_show(doc.get('format'))}; this drivestack reads {FORMAT}")
    if doc.get("id") != sid:
        raise StoreError(f"names snapshot {_show(doc.get('id'))}, not {sid}")
    files = doc.get("files")
    if not (isinstance(doc.get("created"), str) and isinstance(doc.get("meta"), dict)
            and isinstance(files, dict)):
        raise StoreError("lacks created, meta or files")
    for name, entry in files.items():
        check_name(name)
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
                and type(entry.get("size")) is int and entry["size"] >= 0):
            raise StoreError(f"its entry for {name!r} is not {{sha256, size}}")
    _columns(doc["meta"])
    return doc


def _store_info(index: Path) -> dict[str, str]:
    """The `store_info` table of the SQLite file `index`; empty when there is none. Read
    as immutable: no lock taken and no -wal or -shm file left beside a foreign database (a
    store's info is in the main file from its creation on, and never changes)."""
    if read_small_file(index, 1 << 40, 16) != b"SQLite format 3\x00":
        return {}
    for attempt in range(3):
        con = sqlite3.connect(f"{index.as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            return dict(con.execute("SELECT key, value FROM store_info"))
        except sqlite3.Error as exc:  # not a store, or a page being written: look again
            if "no such table" in str(exc):
                return {}
            time.sleep(0.05 * (attempt + 1))
        finally:
            con.close()
    return {}


def _read_file(sid: str, folder: Path, manifest: dict[str, Any], name: str) -> bytes:
    """The bytes of file `name` of snapshot `sid`, checked against its manifest."""
    entry = manifest["files"].get(check_name(name))
    if entry is None:
        raise StoreError(f"snapshot {sid} has no file {name!r}")
    chunks: list[bytes] = []
    what = check_file(folder, name, entry, chunks.append)
    if what is not None:
        raise CorruptSnapshot(sid, [Problem(sid, name, what)])
    return b"".join(chunks)


