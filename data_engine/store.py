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

The parts: what a snapshot is on disk and how its folder is checked against its manifest
(`data_engine.store_format`), the SQLite index (`data_engine.store_index`) and the
file-level helpers (`data_engine.store_files`); their public names are importable from
here as well.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import os
import re
import secrets
import shutil
import sqlite3
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from data_engine.store_files import (
    check_file,
    dead,
    fsync_dir,
    fsync_tree,
    write_new,
)
from data_engine.store_format import COLUMNS as COLUMNS
from data_engine.store_format import FORMAT as FORMAT
from data_engine.store_format import ID_PATTERN as ID_PATTERN
from data_engine.store_format import MANIFEST as MANIFEST
from data_engine.store_format import MAX_DEPTH as MAX_DEPTH
from data_engine.store_format import MAX_FILES as MAX_FILES
from data_engine.store_format import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES
from data_engine.store_format import MAX_META_BYTES as MAX_META_BYTES
from data_engine.store_format import MAX_NAME as MAX_NAME
from data_engine.store_format import MAX_PART as MAX_PART
from data_engine.store_format import NAME_PART as NAME_PART
from data_engine.store_format import PARTIAL as PARTIAL
from data_engine.store_format import SNAPSHOT_KIND as SNAPSHOT_KIND
from data_engine.store_format import CorruptSnapshot as CorruptSnapshot
from data_engine.store_format import Problem as Problem
from data_engine.store_format import Snapshot as Snapshot
from data_engine.store_format import SnapshotWarning as SnapshotWarning
from data_engine.store_format import StoreError as StoreError
from data_engine.store_format import UnknownSnapshot as UnknownSnapshot
from data_engine.store_format import check_id as check_id
from data_engine.store_format import check_name as check_name
from data_engine.store_format import (
    check_own,
    index_values,
    inspect_snapshot,
    meta_doc,
    only_ours,
    read_checked,
    read_manifest,
)
from data_engine.store_index import CREATING_INDEX, create_index, select_rows, store_info
from data_engine.store_index import KIND as KIND
from sim.outputs import json_text, read_small_file

INDEX, SNAPSHOTS, TMP = "index.sqlite", "snapshots", "tmp"
BUSY_TIMEOUT_S = 60.0
"""How long a writer waits for another one's transaction on the index [s]."""
_TMP_ENTRY = re.compile(rf"([0-9]{{1,10}})-({ID_PATTERN.pattern})")


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
        doc = meta_doc(meta)
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
        columns, triggers = index_values(manifest["meta"])
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
            check_own(sid, folder)
            gone = self.tmp / f"{os.getpid()}-{sid}"
            os.rename(folder, gone)  # the snapshot disappears at once, whole
        self._drop_row(sid)
        if gone is not None and only_ours(sid, gone):  # checked by check_own, again
            shutil.rmtree(gone)

    def _drop_row(self, sid: str) -> None:
        with self._writing() as con:
            con.execute("DELETE FROM snapshots WHERE id = ?", (sid,))  # and its triggers

    # -- reading -------------------------------------------------------------------------

    @_index_errors
    def get(self, snapshot_id: str) -> Snapshot:
        """The snapshot, once every file is checked against its manifest (raises
        CorruptSnapshot naming the file, UnknownSnapshot, StoreError for a bad id)."""
        sid = self._known(snapshot_id)
        found = inspect_snapshot(sid, self.snapshots / sid, self._manifest_sha(sid))
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
        folder = self.snapshots / sid
        manifest, _ = read_manifest(sid, folder, self._manifest_sha(sid))
        return read_checked(sid, folder, manifest, name)

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
        return select_rows(self._con, trigger, time_of_day, weather, family,
                           model_version, since, until)

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
        found = inspect_snapshot(sid, self.snapshots / sid, indexed_sha)
        if not found.problems and indexed_sha is not None:
            return []
        now = self._manifest_sha(sid)  # look again: a writer or `rm` may be at work
        if now is None and not os.path.lexists(self.snapshots / sid):
            return []  # removed meanwhile
        if now != indexed_sha:
            found = inspect_snapshot(sid, self.snapshots / sid, now)
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
                found = inspect_snapshot(sid, self.snapshots / sid, None)
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
        its partial marker or manifest does not name is left (`only_ours`); nothing else is
        touched."""
        stale = [(self.tmp / e, stat.S_ISDIR) for e in sorted(os.listdir(self.tmp))
                 if (m := _TMP_ENTRY.fullmatch(e)) and dead(int(m[1]))]
        stale += [(self.root / e, stat.S_ISREG) for e in sorted(os.listdir(self.root))
                  if (m := CREATING_INDEX.fullmatch(e)) and dead(int(m[1]))]
        removed = []
        for path, kind in stale:
            try:
                if not kind(path.lstat().st_mode):  # never a link
                    continue
                if kind is stat.S_ISDIR:
                    if not only_ours(path.name.split("-", 1)[1], path):
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
        if any(not CREATING_INDEX.fullmatch(e) for e in entries):
            raise StoreError(
                f"{self.root} is not empty and is not a snapshot store (it has no {INDEX}); "
                "its files are left as they are: choose a new or empty folder")
        if not create:
            raise StoreError(f"no snapshot store at {self.root} (a recorder makes one when "
                             "it adds the first snapshot)")
        create_index(self.root, self.index)
        self._check_index()

    def _check_index(self) -> None:
        """Raise StoreError unless `index.sqlite` is a store's index (read only)."""
        info = store_info(self.index)
        if info.get("kind") != KIND:
            raise StoreError(f"{self.root} is not a snapshot store: its {INDEX} is not a "
                             "drivestack snapshot index; its files are left as they are: "
                             "choose a new or empty folder")
        if info.get("format") != str(FORMAT):
            raise StoreError(f"{self.index}: store format {info.get('format')}, this "
                             f"drivestack reads format {FORMAT}")

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
