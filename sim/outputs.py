"""Output folders every drivestack job writes into, and atomic writes.

It lives in `sim` (the bottom layer) because every job, from `dataset` in perception to
`train-planner` in planning and `run` in launch, writes through it. The promises
(docs/reliability.md):

- **Never delete or overwrite what drivestack did not write.** A job writes only into a
  folder that is missing, empty, or marked as an output of the same job by drivestack: the
  marker file `.drivestack.json` names the job (`kind`), the entries (top-level files or
  sub-folders) drivestack wrote there and, for a finished job, every file inside its
  sub-folders. Any other folder is refused with `OutputFolderError`; `force=True` writes
  beside its files, but an entry the job would write that exists and is not drivestack's
  stops the job before it writes anything. A marker that cannot be read, or one that
  lists anything but plain names in the folder, is not drivestack's.
- **An output says whether it is complete.** The marker holds `"complete": false` from the
  job's first write until its last (`finish`), so a killed job leaves a visibly partial
  folder; the job's own files (metrics.json, ...) say the same.
- A rerun of the same job may remove the entries of the previous run (`remove_stale`), so
  old videos never sit beside new metrics; a file the user put inside one of drivestack's
  sub-folders makes the folder refused instead. Removal never follows a symbolic link.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = ".drivestack.json"
"""Name of the marker file in every output folder."""
FORMAT = 1
"""Version of the marker's layout."""


class OutputFolderError(ValueError):
    """An output folder drivestack must not write into; `str(err)` says why and what to do."""


@dataclass(frozen=True)
class Job:
    """A drivestack job that writes a folder: its name and every entry it can write there.
    A marker that lists anything else was not written by this job, and is not trusted."""

    kind: str
    """The command, e.g. "run" (the marker's `kind`)."""
    files: tuple[str, ...] = ()
    """Regular expressions of the file names it writes (whole names)."""
    folders: tuple[str, ...] = ()
    """Regular expressions of the sub-folder names it writes."""
    force_option: str = "--force"
    """How its command-line option to write beside foreign files is spelled ("" if none)."""
    trust_unconfirmed: bool = False
    """Whether an entry a killed run of it had claimed but not yet confirmed (no identity
    in the marker) still counts as its own: True for the training jobs, whose libraries
    write inside the entries as they go."""
    partial_in_place: bool = True
    """Whether its output folder holds a partial marker while it runs (False for a job
    that writes elsewhere and moves the finished output in: its folder's marker is always
    complete, and a partial one there is not its own)."""

    def writes(self, entry: str, folder: bool | None = None) -> bool:
        """Whether the job writes `entry` (as a folder, when `folder` is given)."""
        kinds = (self.files if folder is not True else ()) + (
            self.folders if folder is not False else ())
        return any(re.fullmatch(p, entry) for p in kinds)


# -- atomic writes and strict JSON ------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` for a temporary file beside `path`, then rename it to `path`, so a
    reader (or a crash) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (synced to disk before the rename)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so that `json.dumps(...,
    allow_nan=False)` gives strict JSON (RFC 8259 has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars
        return finite_json(value.item())
    return value


def json_text(value: Any, indent: int | None = None) -> str:
    """Strict JSON of `value` (non-finite floats as null)."""
    separators = (",", ":") if indent is None else None
    return json.dumps(finite_json(value), indent=indent, separators=separators,
                      allow_nan=False)


# -- the marker -------------------------------------------------------------------------


def plain_name(entry: Any) -> bool:
    """Whether `entry` names something directly inside a folder: no separator, not `.`,
    `..` or the marker."""
    return (isinstance(entry, str) and entry not in ("", ".", "..", MARKER)
            and "/" not in entry and "\\" not in entry and "\0" not in entry)


def _relative_file(path: Any) -> bool:
    parts = path.split("/") if isinstance(path, str) else []
    return bool(parts) and plain_name(parts[0]) and all(
        p not in ("", ".", "..") and "\\" not in p and "\0" not in p for p in parts)


MAX_MARKER_BYTES = 64 << 20
"""Largest marker read (a dataset of 24,000 frames lists about 2 MB of file names)."""


def read_small_file(path: Path, limit: int, size: int | None = None) -> bytes | None:
    """The bytes of `path` (the first `size` of them, when given) when it is a regular file
    (not a link, a pipe or a device) of at most `limit` bytes; None otherwise. Never
    blocks on a pipe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1 if size is None else size)
        return data if len(data) <= limit else None
    finally:
        os.close(fd)


def identity(path: Path) -> list[int] | None:
    """What tells a written entry from another one of the same name: device and inode,
    and for a file its size and modification time [ns]; None when nothing is there."""
    try:
        info = path.lstat()
    except OSError:
        return None
    if stat.S_ISDIR(info.st_mode):
        return [info.st_dev, info.st_ino]
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of `folder`, or None when it has none or one drivestack did not write:
    not a regular file of at most MAX_MARKER_BYTES, not JSON, listing anything but plain
    names, or saying it is complete without listing the files of each of its folders."""
    raw = read_small_file(folder / MARKER, MAX_MARKER_BYTES)
    try:
        data = None if raw is None else json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    if not isinstance(data.get("complete", False), bool):
        return None
    entries, files, pid = data.get("entries"), data.get("files", {}), data.get("pid")
    if not isinstance(entries, list) or not all(plain_name(e) for e in entries):
        return None
    if not isinstance(files, dict) or not all(
            k in entries and isinstance(v, list) and all(_relative_file(f) for f in v)
            for k, v in files.items()):
        return None
    if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid < 2 ** 31):
        return None
    ids = data.get("ids", {})
    if not isinstance(ids, dict) or not all(
            k in entries and isinstance(v, list) and len(v) in (2, 4)
            and all(isinstance(x, int) for x in v) for k, v in ids.items()):
        return None
    if data.get("complete") and any(
            (folder / e).is_dir() and not (folder / e).is_symlink() and e not in files
            for e in entries):  # drivestack lists every file of a finished job's folders
        return None
    return data


def remove_entry(folder: Path, entry: str) -> None:
    """Remove `folder/entry`, a plain name: a folder with its contents, a file, or a
    symbolic link itself (never what it points to)."""
    if not plain_name(entry):
        raise ValueError(f"output entry {entry!r} must be a plain name inside the folder")
    target = folder / entry
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)  # removes links inside as links
    else:
        target.unlink(missing_ok=True)


def _files_in(folder: Path, entry: str) -> list[str]:
    """The files (and links) under `folder/entry`, relative to `folder`, '/'-separated."""
    top = folder / entry
    if not top.is_dir() or top.is_symlink():
        return []
    found = []
    for root, dirs, files in os.walk(top):
        base = Path(root).relative_to(folder).as_posix()
        found += [f"{base}/{name}" for name in files]
        found += [f"{base}/{name}" for name in dirs if (Path(root) / name).is_symlink()]
    return sorted(found)


class Existing:
    """What a folder holds before a job writes into it (see `check_folder`)."""

    def __init__(self, folder: Path, previous: set[str]) -> None:
        self.folder = folder
        """The folder, absolute (a symbolic link to a folder is followed)."""
        self.previous = previous
        """Entries the previous run of the same job wrote (drivestack's own)."""

    def clashes(self, entries: Iterable[str]) -> list[str]:
        """Those of `entries` that exist and are not drivestack's."""
        return [e for e in entries if e not in self.previous and (
            (self.folder / e).exists() or (self.folder / e).is_symlink())]


def check_folder(path: str | Path, job: Job, *, force: bool = False, key: str = "out",
                 entries: Iterable[str] = (), generated: tuple[str, ...] = ()) -> Existing:
    """What `path` holds, checked for `job` about to write `entries` there; changes nothing.

    Raises `OutputFolderError` (naming `key`, the launch-file key or option) for:
    - a file; a folder drivestack did not write (unless `force`);
    - a marker drivestack did not write (unreadable, or listing an entry `job` does not
      write; even with `force`); an output of another job; one a live job is writing;
    - a file the user put inside one of drivestack's sub-folders (paths matching a
      `generated` regular expression, written there by the job's own tools, count as
      drivestack's);
    - an entry of `entries` that exists and is not drivestack's."""
    folder = Path(os.path.abspath(Path(path).expanduser()))  # "..", "." resolved by name
    if folder.is_symlink() and folder.is_dir():
        folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{key}: {folder} is a file, not a folder")
    if not folder.is_dir() or not any(True for _ in folder.iterdir()):
        return Existing(folder, set())
    marker = _trusted_marker(folder, job, key)
    if marker is None and not force:
        beside = (f", or pass {job.force_option} to write beside its files (drivestack "
                  "never removes or overwrites files it did not write)"
                  if job.force_option else "")
        raise OutputFolderError(
            f"{key}: {folder} is not empty and is not an output of `drivestack {job.kind}` "
            f"(it has no {MARKER}); choose a new or empty folder{beside}")
    previous = set() if marker is None else _own_entries(folder, marker, job)
    listed = {} if marker is None else marker.get("files", {})
    for entry in sorted(previous & set(listed)):
        known = set(listed[entry])
        extra = [f for f in _files_in(folder, entry) if f not in known
                 and not any(re.fullmatch(g, f) for g in generated)]
        if extra:
            raise OutputFolderError(
                f"{key}: {folder / extra[0]} was not written by drivestack, inside its "
                f"folder {entry}/ ({len(extra)} such files); it is left as it is: move "
                "them out, or choose another folder")
    existing = Existing(folder, previous)
    clash = existing.clashes(entries)
    if clash:
        raise OutputFolderError(
            f"{key}: {folder / clash[0]} exists and was not written by drivestack; it is "
            "left as it is: move it, or choose another folder")
    return existing


def _own_entries(folder: Path, marker: dict[str, Any], job: Job) -> set[str]:
    """The entries of `marker` that are still there as drivestack wrote them: their
    identity is the one the marker recorded (an entry of the same name put there since, or
    claimed by a marker copied from elsewhere, is not); for a job that trusts them, also
    the unconfirmed entries of a killed run."""
    ids = marker.get("ids", {})
    unconfirmed_ok = job.trust_unconfirmed and not marker.get("complete")
    return {e for e in marker["entries"] if (now := identity(folder / e)) is not None
            and (ids.get(e) == now or (e not in ids and unconfirmed_ok))}


def _trusted_marker(folder: Path, job: Job, key: str) -> dict[str, Any] | None:
    """The marker of `folder` when it is `job`'s and no run of it is writing there; None
    when there is no marker. Raises `OutputFolderError` otherwise."""
    if not ((folder / MARKER).exists() or (folder / MARKER).is_symlink()):
        return None
    marker = read_marker(folder)
    if marker is None or (folder / MARKER).is_symlink():
        raise OutputFolderError(
            f"{key}: {folder / MARKER} was not written by drivestack (it cannot be read as "
            "its marker); it is left as it is: choose another folder")
    if marker["kind"] != job.kind:
        raise OutputFolderError(
            f"{key}: {folder} holds the output of `drivestack {marker['kind']}`; `drivestack "
            f"{job.kind}` writes into a folder of its own: choose another")
    for entry in marker["entries"]:
        target = folder / entry
        as_folder = None if not target.exists() else target.is_dir() and not target.is_symlink()
        if not job.writes(entry, as_folder):
            raise OutputFolderError(
                f"{key}: {folder / MARKER} lists {entry!r}, which `drivestack {job.kind}` "
                "does not write: it was not written by drivestack, and nothing in the folder "
                "is touched; choose another folder")
    if not marker.get("complete") and not job.partial_in_place:
        raise OutputFolderError(
            f"{key}: {folder / MARKER} says a `drivestack {job.kind}` is partial there, but "
            f"`drivestack {job.kind}` moves only finished output into its folder: the marker "
            "was not written by drivestack, and nothing in the folder is touched; choose "
            "another folder")
    if not marker.get("complete") and marker["pid"] != os.getpid() and pid_alive(marker["pid"]):
        raise OutputFolderError(
            f"{key}: {folder} is being written by a `drivestack {job.kind}` still running "
            f"(process {marker['pid']}); wait for it to end, or choose another folder")
    return marker


class OutputFolder:
    """A folder one job writes into (see the module docstring). Make it with `claim`."""

    def __init__(self, existing: Existing, job: Job) -> None:
        self.path = existing.folder
        self.job = job
        self.existing = existing
        self.entries: list[str] = []
        self.info: dict[str, Any] = {}
        self._write(complete=False)

    @classmethod
    def claim(cls, path: str | Path, job: Job, *, force: bool = False, key: str = "out",
              entries: Iterable[str] = ()) -> OutputFolder:
        """Check that `kind` may write `entries` (and later others, each checked by `own`)
        into `path` (`check_folder`), then mark it as a partial output of `job`."""
        existing = check_folder(path, job, force=force, key=key, entries=entries)
        try:
            existing.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputFolderError(f"{key}: cannot create the folder {existing.folder}: "
                                    f"{exc.strerror or exc}") from None
        return cls(existing, job)

    def own(self, entry: str) -> Path:
        """The path of `entry` (a plain name), recorded as drivestack's before it is
        written. Raises `OutputFolderError` when something drivestack did not write is
        there."""
        if not plain_name(entry) or not self.job.writes(entry):
            raise ValueError(f"output entry {entry!r} must be a plain name that "
                             f"`drivestack {self.job.kind}` writes (sim.outputs.Job)")
        if entry not in self.entries:
            if self.existing.clashes([entry]):
                raise OutputFolderError(
                    f"out: {self.path / entry} exists and was not written by drivestack; it "
                    "is left as it is: move it, or choose another output folder")
            self.entries.append(entry)
            self._write(complete=False)
        return self.path / entry

    def remove_stale(self) -> list[str]:
        """Remove the previous run's entries that this run has not written again; returns
        them. Only entries the marker listed are touched."""
        stale = sorted(self.existing.previous - set(self.entries))
        for entry in stale:
            remove_entry(self.path, entry)
        self.existing.previous -= set(stale)
        self._write(complete=False)
        return stale

    def wrote(self) -> None:
        """Record what the job has written so far (the identity of each entry), so that a
        killed run's files are still known as drivestack's by the next run."""
        self._write(complete=False)

    def finish(self, **info: Any) -> None:
        """Mark the output complete (with `info`, e.g. counts, in the marker)."""
        self.info.update(info)
        self._write(complete=True)

    def _write(self, complete: bool) -> None:
        entries = list(dict.fromkeys([*self.entries, *sorted(self.existing.previous)]))
        if complete:  # what the job wrote and still holds (not its temporary names)
            entries = [e for e in entries
                       if (self.path / e).exists() or (self.path / e).is_symlink()]
        doc: dict[str, Any] = {
            "format": FORMAT, "kind": self.job.kind, "complete": complete,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
            "entries": entries}
        doc["ids"] = {e: i for e in entries if (i := identity(self.path / e)) is not None}
        if complete:  # every file in drivestack's sub-folders, to tell the user's apart
            doc["files"] = {e: _files_in(self.path, e) for e in entries
                            if (self.path / e).is_dir()}
        if self.info:
            doc["info"] = self.info
        atomic_write_text(self.path / MARKER, json_text(doc, indent=1) + "\n")


def restamp(folder: Path) -> None:
    """Record again the identity of each entry of `folder`'s marker (after drivestack moved
    them there, possibly as a copy from another device)."""
    marker = read_marker(folder)
    if marker is not None:
        marker["ids"] = {e: i for e in marker["entries"]
                         if (i := identity(folder / e)) is not None}
        atomic_write_text(folder / MARKER, json_text(marker, indent=1) + "\n")


def not_a_file(path: Path) -> str:
    """Why `path`, which is not a regular file, cannot be read: "is a folder, not a file",
    "is not a regular file" (a device, a pipe) or "not found" (for messages:
    f"weights {path} {not_a_file(path)}")."""
    if path.is_dir():
        return "is a folder, not a file"
    return "is not a regular file" if path.exists() else "not found"


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine."""
    if not 0 < pid < 2 ** 31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
