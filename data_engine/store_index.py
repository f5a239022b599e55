"""The snapshot store's index (data_engine/store.py): one SQLite file in WAL mode with a
row per snapshot (its manifest's SHA-256, its file count and size, the meta and the meta's
`COLUMNS`) and its trigger names. Every column comes from a manifest, so the store can
rebuild any missing row. Here: the schema, making an index without another process ever
seeing half of one, telling a store's index from another SQLite file (`store_info`), and
the rows `SnapshotStore.list` finds (`select_rows`).
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from data_engine.store_files import fsync_dir
from data_engine.store_format import COLUMNS, FORMAT, StoreError, show
from sim.outputs import read_small_file

KIND = "drivestack-snapshots"
"""The index's `store_info.kind`: what tells a store's index from another SQLite file."""
CREATING_INDEX = re.compile(r"\.index-([0-9]{1,10})-[0-9a-f]{8}\.sqlite(-wal|-shm|-journal)?")
"""An index being made by process PID (`create_index`): .index-PID-HEX.sqlite and its
SQLite side files."""
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


def create_index(root: Path, index: Path) -> None:
    """Make the index `index` of a store at `root` in a temporary file and link it into
    place, so another process never sees half an index (two creating at once both end up
    with the same one)."""
    root.mkdir(parents=True, exist_ok=True)
    work = root / f".index-{os.getpid()}-{secrets.token_hex(4)}.sqlite"
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
            os.link(work, index)
        except FileExistsError:
            pass  # another process made it first
        except OSError:  # a file system without hard links
            if not os.path.lexists(index):
                os.rename(work, index)
        fsync_dir(root)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)


def store_info(index: Path) -> dict[str, str]:
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


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise StoreError(f"{key}: must be a string, not {show(value)}")
    return value


def _utc(value: str | datetime, key: str) -> str:
    """`value` (a datetime, or an ISO time or date; naive means UTC) as the index writes
    times."""
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise StoreError(f"{key}: {show(value)} is not an ISO time such as 2026-12-06 "
                             "or 2026-12-06T06:15:00Z") from None
    if not isinstance(value, datetime):
        raise StoreError(f"{key}: must be an ISO time or a datetime, not {show(value)}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def select_rows(con: sqlite3.Connection, trigger: str | None, time_of_day: str | None,
                weather: str | None, family: str | None, model_version: str | None,
                since: str | datetime | None, until: str | datetime | None
                ) -> list[dict[str, Any]]:
    """The rows of `SnapshotStore.list` (see there) from the index `con`."""
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
    for *values, name in con.execute(sql, args):
        row = rows.setdefault(values[0], dict(zip(_ROW, values, strict=True)))
        row.setdefault("triggers", [])
        if name is not None:
            row["triggers"].append(name)
    return list(rows.values())

