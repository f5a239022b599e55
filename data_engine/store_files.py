"""File-level helpers of the snapshot store (data_engine/store.py): opening a file inside
a snapshot without following a symbolic link, hashing it against its manifest entry,
writing a new file, fsync of files and folders, and whether a writer's process is gone
(capped reads: `sim.outputs.read_small_file`)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sim.outputs import pid_alive

_CHUNK = 1 << 20


def open_inside(folder: Path, name: str) -> int:
    """A descriptor of `folder/name`, opened without following any symbolic link below
    `folder` (and without blocking on a pipe)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW
    fd = os.open(folder, flags | os.O_DIRECTORY)
    try:
        *parents, last = name.split("/")
        for part in parents:
            inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(last, flags | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)


def check_file(folder: Path, name: str, entry: dict[str, Any],
                sink: Callable[[bytes], Any] | None = None) -> str | None:
    """What is wrong with file `name` of a snapshot against its manifest `entry`, or None;
    every chunk read goes to `sink`."""
    try:
        fd = open_inside(folder, name)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc}; a symbolic link?)"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_size != entry["size"]:
            return f"{info.st_size} bytes, the manifest says {entry['size']}"
        digest = hashlib.sha256()
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
            if sink is not None:
                sink(chunk)
    finally:
        os.close(fd)
    if digest.hexdigest() != entry["sha256"]:
        return "changed: its SHA-256 is not the manifest's"
    return None


def files_under(folder: Path) -> set[str]:
    """Everything under `folder` but folders (files, links, pipes), relative and
    '/'-separated; links to folders count as files and are not followed."""
    found: set[str] = set()
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.update(prefix + f for f in files)
        found.update(prefix + d for d in dirs if os.path.islink(os.path.join(root, d)))
    return found


def write_new(path: Path, source: bytes | os.PathLike[str]) -> dict[str, Any]:
    """Write `source` (bytes, or a regular file to copy) to the new file `path`, synced;
    returns its manifest entry {sha256, size}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(path, "xb") as out:
        for chunk in chunks(source):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"sha256": digest.hexdigest(), "size": size}


def chunks(source: bytes | os.PathLike[str]) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _store_error()(f"{os.fspath(source)} is not a regular file")
        while chunk := os.read(fd, _CHUNK):
            yield chunk
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the entries of `folder` durable (where the file system can)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


def fsync_tree(top: Path) -> None:
    """`fsync_dir` every folder under `top`, deepest first, then `top`."""
    for root, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count(os.sep)):
        fsync_dir(Path(root))


def dead(pid: int) -> bool:
    return pid != os.getpid() and not pid_alive(pid)


def _store_error() -> type[ValueError]:
    from data_engine.store_format import StoreError  # which imports this module first

    return StoreError
