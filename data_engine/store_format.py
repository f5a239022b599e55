"""What a snapshot of the store (data_engine/store.py) is on disk, and how one is checked:
snapshot ids and file names, the manifest and the meta, the errors, and a snapshot's folder
read against its manifest (no missing, extra or changed file; no symbolic links).

    snapshots/<id>/manifest.json    format, kind, id, created, meta, files {name: {sha256, size}}
    snapshots/<id>/<name>           the files, each checked against its SHA-256 and size
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_engine.store_files import check_file, files_under
from sim.outputs import json_text, read_small_file

SNAPSHOT_KIND = "drivestack-snapshot"
"""A manifest's `kind`."""
FORMAT = 1
"""Version of the store's layout (index and manifests)."""
MANIFEST = "manifest.json"
"""The file of a snapshot's folder that lists its files (SHA-256 and size) and holds its meta."""
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
COLUMNS: dict[str, type] = {"time_of_day": str, "weather": str, "family": str,
                            "model_version": str, "seed": int, "scenario_seed": int,
                            "n_frames": int}
"""Meta keys indexed for filtering, with their types (missing or null: NULL); the list of
trigger names `triggers` is indexed too."""


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
        return read_checked(self.id, self.path, self.manifest, name)


def check_id(value: Any) -> str:
    """`value` when it is a well-formed snapshot id; raises StoreError otherwise."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise StoreError(f"{show(value)} is not a snapshot id (ids look like "
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
            f"{show(value)} is not a snapshot file name: names are relative, with "
            "segments of letters, digits and ._+- (not starting with a dot) separated by /, "
            f"at most {MAX_DEPTH} segments of {MAX_PART} characters, {MAX_NAME} in all, "
            f"and not {MANIFEST}")
    return value


def read_manifest(sid: str, folder: Path, indexed_sha: str | None
                  ) -> tuple[dict[str, Any], str]:
    """The parsed manifest of snapshot `sid` (in `folder`) and its SHA-256, which must be
    `indexed_sha` unless that is None; raises CorruptSnapshot."""
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


@dataclass
class Inspection:
    """What `inspect_snapshot` found in a snapshot's folder."""

    problems: list[Problem]
    manifest: dict[str, Any] | None
    """The parsed manifest; None when it cannot be read."""
    manifest_sha: str


def inspect_snapshot(sid: str, folder: Path, indexed_sha: str | None) -> Inspection:
    """Every problem of snapshot `sid`'s folder, with its manifest when readable."""
    try:
        manifest, sha = read_manifest(sid, folder, indexed_sha)
    except CorruptSnapshot as exc:
        return Inspection(exc.problems, None, "")
    listed = manifest["files"]
    present = files_under(folder)
    problems = [Problem(sid, n, "extra file: not in the manifest")
                for n in sorted(present - set(listed) - {MANIFEST})]
    for name, entry in listed.items():
        what = "missing" if name not in present else check_file(folder, name, entry)
        if what is not None:
            problems.append(Problem(sid, name, what))
    return Inspection(problems, manifest, sha)


def read_checked(sid: str, folder: Path, manifest: dict[str, Any], name: str) -> bytes:
    """The bytes of file `name` of snapshot `sid`, checked against its manifest."""
    entry = manifest["files"].get(check_name(name))
    if entry is None:
        raise StoreError(f"snapshot {sid} has no file {name!r}")
    chunks: list[bytes] = []
    what = check_file(folder, name, entry, chunks.append)
    if what is not None:
        raise CorruptSnapshot(sid, [Problem(sid, name, what)])
    return b"".join(chunks)


def check_own(sid: str, folder: Path) -> None:
    """Raise StoreError unless `folder` holds only the files of snapshot `sid`."""
    if folder.is_symlink() or not folder.is_dir():
        raise StoreError(f"{folder} is not a snapshot folder; it is left as it is")
    try:
        manifest, _ = read_manifest(sid, folder, None)
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


def only_ours(sid: str, folder: Path) -> bool:
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


# -- helpers ------------------------------------------------------------------------------


def show(value: Any) -> str:
    """`repr(value)`, cut to 100 characters."""
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:100]}..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def meta_doc(meta: Mapping[str, Any] | None) -> dict[str, Any]:
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
    index_values(doc)
    return doc


def index_values(meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The indexed values of `meta` and its trigger names; raises StoreError."""
    columns = {}
    for key, kind in COLUMNS.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or (
                isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63)):
            raise StoreError(f"meta[{key!r}] must be {'an int' if kind is int else 'a string'}"
                             f" or missing, not {show(value)}")
        columns[key] = value
    triggers = meta.get("triggers") or []
    if not isinstance(triggers, list) or not all(
            isinstance(t, str) and t for t in triggers):
        raise StoreError(f"meta['triggers'] must be a list of names, not {show(triggers)}")
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
        raise StoreError(f"not JSON ({show(str(exc))})") from None
    if not isinstance(doc, dict) or doc.get("kind") != SNAPSHOT_KIND:
        raise StoreError("not a drivestack snapshot manifest")
    if doc.get("format") != FORMAT:
        raise StoreError(f"format {show(doc.get('format'))}; this drivestack reads {FORMAT}")
    if doc.get("id") != sid:
        raise StoreError(f"names snapshot {show(doc.get('id'))}, not {sid}")
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
    index_values(doc["meta"])
    return doc
