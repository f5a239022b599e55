"""Output folders every drivestack job writes into, and atomic writes.

It lives in `sim` (the bottom layer) because every job, from `dataset` in perception to
`train-planner` in planning and `run` in launch, writes through it. The promises
(docs/reliability.md):

- **Never delete or overwrite what drivestack did not write.** A job writes only into a
  folder that is missing, empty, or marked as an output of the same job by drivestack: the
  marker file `.drivestack.json` names the job (`kind`) and the entries (files or
  sub-folders, relative to the folder) that drivestack wrote there. Any other folder is
  refused with `OutputFolderError`; `force=True` writes beside its files, but still never
  removes or overwrites an entry the marker does not list.
- **An output says whether it is complete.** The marker holds `"complete": false` from the
  job's first write until its last (`finish`), so a killed job leaves a visibly partial
  folder; the job's own files (metrics.json, ...) say the same.
- A rerun of the same job removes the entries of the previous run that it does not write
  again (`remove_stale`), so old videos never sit beside new metrics.

A sub-folder listed as an entry (e.g. `checkpoints`, made by a training library) counts as
drivestack's whole; keep your own files outside drivestack's output folders.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MARKER = ".drivestack.json"
"""Name of the marker file in every output folder."""
FORMAT = 1
"""Version of the marker's layout."""


class OutputFolderError(ValueError):
    """An output folder drivestack must not write into; `str(err)` says why and what to do."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same folder and `os.replace`, so a
    reader (or a crash) sees the old file or the new one, never half of one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write_text` for bytes; the file gets mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of `folder`, or None when it has none or an unreadable one."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    entries = data.get("entries")
    if not isinstance(entries, list) or not all(_safe_entry(e) for e in entries):
        return None
    return data


def _safe_entry(entry: Any) -> bool:
    """A relative path inside the folder (no `..`, not absolute, not the marker)."""
    if not isinstance(entry, str) or not entry or entry == MARKER:
        return False
    p = Path(entry)
    return not p.is_absolute() and ".." not in p.parts


class OutputFolder:
    """A folder one job writes into (see the module docstring). Make it with `claim`."""

    def __init__(self, path: Path, kind: str, previous: set[str], foreign: bool) -> None:
        self.path = path
        self.kind = kind
        self.previous = previous
        """Entries the previous run of the same job wrote (drivestack's own)."""
        self.foreign = foreign
        """True when the folder also holds files drivestack did not write (force=True)."""
        self.entries: list[str] = []
        self.info: dict[str, Any] = {}
        self._write(complete=False)

    @classmethod
    def claim(cls, path: str | Path, kind: str, *, force: bool = False,
              key: str = "out") -> OutputFolder:
        """Check that `kind` may write into `path` and mark it as a partial output of it.

        Raises `OutputFolderError` (naming `key`, the launch-file key or option) for a file,
        a folder drivestack did not write (unless `force`), or an output of another job.
        """
        folder, previous, foreign = check_folder(path, kind, force=force, key=key)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputFolderError(f"{key}: cannot create the folder {folder}: "
                                    f"{exc.strerror or exc}") from None
        return cls(folder, kind, previous, foreign)

    def own(self, entry: str) -> Path:
        """The path of `entry` (relative), recorded as drivestack's before it is written.
        Raises `OutputFolderError` when a file that drivestack did not write is there."""
        if not _safe_entry(entry):
            raise ValueError(f"output entry {entry!r} must be a relative path inside the folder")
        target = self.path / entry
        if entry not in self.entries:
            ours = entry in self.previous or any(
                Path(entry).parts[:len(Path(p).parts)] == Path(p).parts for p in self.previous)
            if not ours and (target.exists() or target.is_symlink()):
                raise OutputFolderError(
                    f"out: {target} exists and was not written by drivestack; it is left "
                    "as it is: move it, or choose another output folder")
            self.entries.append(entry)
            self._write(complete=False)
        return target

    def remove_stale(self) -> list[str]:
        """Remove the previous run's entries that this run did not write again; returns
        them. Only entries the marker listed are touched."""
        removed = []
        for entry in sorted(self.previous - set(self.entries)):
            target = self.path / entry
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            removed.append(entry)
        self.previous -= set(removed)
        self._write(complete=False)
        return removed

    def finish(self, **info: Any) -> None:
        """Mark the output complete (with `info`, e.g. counts, in the marker)."""
        self.info.update(info)
        self._write(complete=True)

    def _write(self, complete: bool) -> None:
        entries = list(dict.fromkeys([*self.entries, *sorted(self.previous)]))
        doc = {"format": FORMAT, "kind": self.kind, "complete": complete,
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
               "entries": entries, **({"info": self.info} if self.info else {})}
        atomic_write_text(self.path / MARKER, json_text(doc, indent=1) + "\n")


def check_folder(path: str | Path, kind: str, *, force: bool = False, key: str = "out"
                 ) -> tuple[Path, set[str], bool]:
    """(absolute folder, entries its previous `kind` run wrote, whether it holds files
    drivestack did not write) for a job of `kind` about to write into `path`; changes
    nothing. Raises `OutputFolderError` as `OutputFolder.claim` does."""
    folder = Path(path).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{key}: {folder} is a file, not a folder")
    if not folder.is_dir() or not _has_entries(folder):
        return folder, set(), False
    marker = read_marker(folder)
    if marker is None:
        if not force:
            raise OutputFolderError(
                f"{key}: {folder} is not empty and is not an output of `drivestack {kind}` "
                f"(it has no readable {MARKER}); choose a new or empty folder, or pass "
                "--force to write beside its files (drivestack never removes or overwrites "
                "files it did not write)")
        return folder, set(), True
    if marker["kind"] != kind:
        raise OutputFolderError(
            f"{key}: {folder} holds the output of `drivestack {marker['kind']}`; `drivestack "
            f"{kind}` writes into a folder of its own: choose another")
    previous = {e for e in marker["entries"]
                if (folder / e).exists() or (folder / e).is_symlink()}
    return folder, previous, bool(foreign_entries(folder, previous))


def _has_entries(folder: Path) -> bool:
    return any(True for _ in folder.iterdir())


def foreign_entries(folder: Path, entries: Iterable[str]) -> list[str]:
    """Top-level names in `folder` that neither `entries` nor the marker account for."""
    listed = {Path(e).parts[0] for e in entries} | {MARKER}
    return sorted(p.name for p in folder.iterdir() if p.name not in listed)


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
