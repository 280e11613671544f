"""The durable, append-only event log on SQLite (standard library; nothing else to run).

Durability
----------
The database runs in WAL mode with ``synchronous=FULL``: SQLite then syncs the write-ahead log
to disk at every commit, so an append that has returned survives a crash of the process *and*
of the machine (power loss). ``synchronous=NORMAL`` in WAL mode would survive a killed process
but could lose the last commits on power loss; it is available as an option for users who
accept that for speed, never the default.

Each append is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): a batch is in the log whole
or not at all. An optional idempotency ``key`` per batch makes retries safe: appending a key
that is already in the log writes nothing and returns the first append's offsets, so a client
that resends after a crash gets exactly-once appends.

Layout
------
- ``events``: one row per event; ``seq`` is the event's offset (0, 1, 2, ... without gaps);
  users and items are stored as dense indexes into ``users`` and ``items``.
- ``users`` / ``items``: the id indexes (external id <-> dense index, in order of first
  sight) with first-seen times; ``items`` also holds the catalog (title, text, categories).
- ``batches``: one row per append (key, first offset, count, source, time).
- ``consumers``: named consumer offsets (the next offset each learner will read).
- ``quarantine``: rejected rows with their source line and reason.
- ``events_readable``: a view with external ids, kind names and ISO times, for people with
  ``sqlite3``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lifelong_rec.data.report import Rejected
from lifelong_rec.events import KIND_NAMES, Catalog, EventBatch, IdIndex

FORMAT_VERSION = 1
SYNCHRONOUS_MODES = ("FULL", "NORMAL")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kinds(code INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS users(
    idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, first_seen REAL);
CREATE TABLE IF NOT EXISTS items(
    idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, first_seen REAL,
    title TEXT, text TEXT, categories TEXT, attributes TEXT);
CREATE TABLE IF NOT EXISTS batches(
    id INTEGER PRIMARY KEY, key TEXT UNIQUE, first_offset INTEGER NOT NULL,
    count INTEGER NOT NULL, source TEXT NOT NULL, appended_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY, batch INTEGER NOT NULL, user INTEGER NOT NULL,
    item INTEGER NOT NULL, ts REAL NOT NULL, kind INTEGER NOT NULL, value REAL,
    weight REAL NOT NULL, policy TEXT NOT NULL, model_version TEXT NOT NULL,
    propensity REAL, context TEXT);
CREATE TABLE IF NOT EXISTS consumers(
    name TEXT PRIMARY KEY, next_offset INTEGER NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine(
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, line INTEGER NOT NULL, reason TEXT NOT NULL,
    field TEXT NOT NULL, detail TEXT NOT NULL, raw TEXT NOT NULL, quarantined_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS quarantine_reason ON quarantine(reason);
CREATE VIEW IF NOT EXISTS events_readable AS
    SELECT e.seq AS offset, u.id AS user, i.id AS item,
           strftime('%Y-%m-%dT%H:%M:%fZ', e.ts, 'unixepoch') AS time, k.name AS kind,
           e.value, e.weight, e.policy, e.model_version, e.propensity, e.context
    FROM events e JOIN users u ON u.idx = e.user JOIN items i ON i.idx = e.item
    JOIN kinds k ON k.code = e.kind;
"""


@dataclass(frozen=True)
class Appended:
    """Where an append landed: offsets ``first_offset`` .. ``first_offset + count - 1``.

    ``duplicate`` is True when the batch's key was already in the log, so nothing was written
    and the offsets are those of the first append with that key.
    """

    batch_id: int
    first_offset: int
    count: int
    duplicate: bool = False

    @property
    def next_offset(self) -> int:
        return self.first_offset + self.count


class EventLog:
    """A durable append-only log of events in one SQLite file.

    Parameters
    ----------
    path : path
        The database file; created with its folder if missing.
    synchronous : {"FULL", "NORMAL"}
        SQLite's sync level; FULL (the default) makes every returned append survive power loss.
    timeout : float
        Seconds to wait for another process's write lock.

    Examples
    --------
    >>> import tempfile, os
    >>> from lifelong_rec.events import EventBatch
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with EventLog(os.path.join(folder, "events.db")) as log:
    ...         first = log.append(EventBatch.from_columns(["u1"], ["i1"], [1.7e9]), key="b1")
    ...         again = log.append(EventBatch.from_columns(["u1"], ["i1"], [1.7e9]), key="b1")
    ...         log.end_offset, again.duplicate, log.read(0).user.tolist()
    (1, True, ['u1'])
    """

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", timeout: float = 30.0
    ) -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous: {synchronous!r} is not one of {SYNCHRONOUS_MODES}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)  # idempotent; executescript commits on its own
        with self._transaction():
            self._check_format()
            self._db.executemany(
                "INSERT OR IGNORE INTO kinds(code, name) VALUES (?, ?)", enumerate(KIND_NAMES)
            )
        # In-memory copies of the id indexes; re-read from the table before each use, so
        # several processes can share one log.
        self._users = IdIndex()
        self._items = IdIndex()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventLog({str(self.path)!r}, events={self.end_offset})"

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _check_format(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES ('format_version', ?)", (str(FORMAT_VERSION),)
            )
        elif int(row[0]) != FORMAT_VERSION:
            raise ValueError(
                f"{self.path}: event log format {row[0]} is not the supported {FORMAT_VERSION}"
            )

    # ------------------------------------------------------------------ appending

    @property
    def end_offset(self) -> int:
        """The offset the next appended event will get (= number of events in the log)."""
        with self._lock:
            (last,) = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return 0 if last is None else last + 1

    def __len__(self) -> int:
        return self.end_offset

    def append(self, events: EventBatch, *, key: str | None = None, source: str = "") -> Appended:
        """Append a batch atomically and durably.

        Parameters
        ----------
        events : EventBatch
        key : str, optional
            Idempotency key: if a batch with this key was appended before, nothing is written
            and the earlier append is returned (``duplicate=True``).
        source : str
            Where the batch came from (a file, "http", a producer's name), kept with it.

        Returns
        -------
        Appended
            Offsets of the batch. When this returns, the batch is on disk.
        """
        with self._transaction():
            if key is not None:
                row = self._db.execute(
                    "SELECT id, first_offset, count FROM batches WHERE key = ?", (key,)
                ).fetchone()
                if row is not None:
                    batch_id, first_offset, count = row
                    return Appended(batch_id, first_offset, count, duplicate=True)
            (last,) = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
            first = 0 if last is None else last + 1
            cursor = self._db.execute(
                "INSERT INTO batches(key, first_offset, count, source, appended_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, first, len(events), source, time.time()),
            )
            batch_id = cursor.lastrowid
            assert batch_id is not None  # set by the INSERT just run
            if len(events):
                users = self._grow("users", self._users, events.user, events.timestamp)
                items = self._grow("items", self._items, events.item, events.timestamp)
                self._db.executemany(
                    "INSERT INTO events(seq, batch, user, item, ts, kind, value, weight, policy, "
                    "model_version, propensity, context) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    zip(
                        range(first, first + len(events)),
                        [batch_id] * len(events),
                        users.tolist(),
                        items.tolist(),
                        events.timestamp.tolist(),
                        events.kind.tolist(),
                        _nullable(events.value),
                        events.weight.tolist(),
                        events.policy.tolist(),
                        events.model_version.tolist(),
                        _nullable(events.propensity),
                        _context_json(events),
                        strict=True,
                    ),
                )
        return Appended(batch_id, first, len(events))

    def _grow(
        self, table: str, index: IdIndex, ids: np.ndarray, timestamps: np.ndarray
    ) -> np.ndarray:
        """Dense indexes of ``ids``, adding unknown ones to ``table`` (inside a transaction)."""
        self._sync(table, index)
        known = len(index)
        indexes = index.add(ids)
        new = indexes >= known
        if new.any():
            first_seen = np.full(len(index) - known, np.inf)
            np.minimum.at(first_seen, indexes[new] - known, timestamps[new])
            self._db.executemany(
                f"INSERT INTO {table}(idx, id, first_seen) VALUES (?, ?, ?)",
                zip(
                    range(known, len(index)),
                    index.ids(np.arange(known, len(index))).tolist(),
                    first_seen.tolist(),
                    strict=True,
                ),
            )
        return indexes

    def _sync(self, table: str, index: IdIndex) -> None:
        """Bring an in-memory index up to date with rows other connections added."""
        rows = self._db.execute(
            f"SELECT idx, id FROM {table} WHERE idx >= ? ORDER BY idx", (len(index),)
        ).fetchall()
        if rows:
            indexes, ids = zip(*rows, strict=True)
            if indexes[0] != len(index) or indexes[-1] != len(index) + len(rows) - 1:
                raise RuntimeError(f"{self.path}: {table} index has gaps; the log is damaged")
            index.add(np.array(ids, dtype=str))

    def _reset_caches(self) -> None:
        # After a rolled-back append the in-memory indexes may hold ids that never reached
        # the table: rebuild them from scratch on next use.
        self._users = IdIndex()
        self._items = IdIndex()

    # ------------------------------------------------------------------ reading

    def read(
        self, start: int = 0, stop: int | None = None, *, positive: bool = False
    ) -> EventBatch:
        """Events with offsets ``start`` <= offset < ``stop`` (to the end when None), in order;
        with ``positive=True`` only those of weight > 0 (what a model learns from: a learner
        then skips the impressions the service logs, ten per served list)."""
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad offset range [{start}, {stop})")
        where = "seq >= ? AND seq < ?" + (" AND weight > 0" if positive else "")
        with self._lock:
            rows = self._db.execute(
                "SELECT user, item, ts, kind, value, weight, policy, model_version, "
                f"propensity, context FROM events WHERE {where} ORDER BY seq",
                (start, 2**62 if stop is None else stop),
            ).fetchall()
            self._sync("users", self._users)
            self._sync("items", self._items)
            users, items = self._users, self._items
        if not rows:
            return EventBatch.empty()
        return events_from_rows(rows, users, items)

    def iter_batches(self, start: int = 0, size: int = 10_000) -> Iterator[tuple[int, EventBatch]]:
        """Read from ``start`` to the current end in chunks: yields (first offset, batch)."""
        if size < 1:
            raise ValueError("size must be >= 1")
        end = self.end_offset
        for first in range(start, end, size):
            yield first, self.read(first, min(first + size, end))

    def batches(self) -> pd.DataFrame:
        """One row per append: id, key, first_offset, count, source, appended_at."""
        with self._lock:
            return pd.read_sql_query("SELECT * FROM batches ORDER BY id", self._db)

    # ------------------------------------------------------------------ consumers

    def committed(self, consumer: str) -> int:
        """The next offset ``consumer`` will read (0 for a consumer that never committed)."""
        with self._lock:
            row = self._db.execute(
                "SELECT next_offset FROM consumers WHERE name = ?", (consumer,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def commit(self, consumer: str, next_offset: int) -> None:
        """Record atomically that ``consumer`` has processed everything before ``next_offset``."""
        if not consumer:
            raise ValueError("consumer: a name is required")
        end = self.end_offset
        if not 0 <= next_offset <= end:
            raise ValueError(f"next_offset {next_offset} is outside the log [0, {end}]")
        with self._transaction():
            self._db.execute(
                "INSERT INTO consumers(name, next_offset, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET next_offset = excluded.next_offset, "
                "updated_at = excluded.updated_at",
                (consumer, next_offset, time.time()),
            )

    def consumers(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT name, next_offset FROM consumers ORDER BY name")
            return dict(rows.fetchall())

    # ------------------------------------------------------------------ ids and catalog

    def user_index(self) -> IdIndex:
        """A copy of the user id index (external id <-> dense index, in order of first sight)."""
        with self._lock:
            self._sync("users", self._users)
            return self._users.copy()

    def item_index(self) -> IdIndex:
        """A copy of the item id index, catalog-only items included."""
        with self._lock:
            self._sync("items", self._items)
            return self._items.copy()

    def upsert_catalog(self, catalog: Catalog) -> int:
        """Add or replace the metadata of ``catalog``'s items; new items join the index.

        An item's ``first_seen`` is the time of its first event, or the time it was added to
        the catalog if it had no event yet. Returns the number of items written.
        """
        if not len(catalog):
            return 0
        with self._transaction():
            now = np.full(len(catalog), time.time())
            indexes = self._grow("items", self._items, catalog.item, now)
            self._db.executemany(
                "UPDATE items SET title = ?, text = ?, categories = ?, attributes = ? "
                "WHERE idx = ?",
                zip(
                    catalog.title.tolist(),
                    catalog.text.tolist(),
                    [json.dumps(list(c)) for c in catalog.categories],
                    [json.dumps(a) for a in catalog.attributes],
                    indexes.tolist(),
                    strict=True,
                ),
            )
        return len(catalog)

    def catalog(self) -> Catalog:
        """Every item that has catalog metadata."""
        with self._lock:
            return catalog_from_rows(self._db.execute(CATALOG_QUERY).fetchall())

    # ------------------------------------------------------------------ quarantine

    def quarantine(self, rejected: Rejected) -> int:
        """Keep rejected rows with their reasons. Returns how many were stored."""
        if not len(rejected):
            return 0
        with self._transaction():
            self._db.executemany(
                "INSERT INTO quarantine(source, line, reason, field, detail, raw, quarantined_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                zip(
                    rejected.source.tolist(),
                    rejected.line.tolist(),
                    rejected.reason.tolist(),
                    rejected.field.tolist(),
                    rejected.detail.tolist(),
                    rejected.raw.tolist(),
                    [time.time()] * len(rejected),
                    strict=True,
                ),
            )
        return len(rejected)

    def rejected(self, reason: str | None = None, limit: int | None = None) -> Rejected:
        """Quarantined rows, oldest first, optionally of one reason only."""
        query, params = quarantine_query(reason, limit, "?")
        with self._lock:
            return rejected_from_rows(self._db.execute(query, params).fetchall())

    def rejected_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason"
            )
            return dict(rows.fetchall())

    # ------------------------------------------------------------------ summary

    def stats(self) -> dict[str, object]:
        """Counts of events, users, items, catalog entries, batches, quarantined rows."""
        with self._lock:
            one = lambda sql: self._db.execute(sql).fetchone()[0]  # noqa: E731
            return {
                "path": str(self.path),
                "events": self.end_offset,
                "users": one("SELECT COUNT(*) FROM users"),
                "items": one("SELECT COUNT(*) FROM items"),
                "items_with_metadata": one("SELECT COUNT(*) FROM items WHERE title IS NOT NULL"),
                "batches": one("SELECT COUNT(*) FROM batches"),
                "quarantined": one("SELECT COUNT(*) FROM quarantine"),
                "consumers": self.consumers(),
                "synchronous": self.synchronous,
            }


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) under the log's thread lock.

    IMMEDIATE takes SQLite's write lock at once, so offsets and index positions read inside
    the transaction cannot be taken by another process before the commit.
    """

    def __init__(self, log: EventLog) -> None:
        self.log = log

    def __enter__(self) -> None:
        self.log._lock.acquire()
        try:
            self.log._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.log._lock.release()
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.log._db.execute("COMMIT")
            else:
                self.log._db.execute("ROLLBACK")
                self.log._reset_caches()
        finally:
            self.log._lock.release()


# Reading back what both backends store alike (PostgresEventLog uses these too).

CATALOG_QUERY = (
    "SELECT id, title, text, categories, attributes FROM items WHERE title IS NOT NULL ORDER BY idx"
)


def catalog_from_rows(rows: Sequence[Sequence[Any]]) -> Catalog:
    """The catalogue from the rows of :data:`CATALOG_QUERY`."""
    return Catalog.from_records(
        {
            "item": item,
            "title": title,
            "text": text,
            "categories": json.loads(categories),
            "attributes": json.loads(attributes),
        }
        for item, title, text, categories, attributes in rows
    )


def events_from_rows(rows: Sequence[Sequence[Any]], users: IdIndex, items: IdIndex) -> EventBatch:
    """A batch from rows of (user index, item index, timestamp, kind, value, weight, policy,
    model version, propensity, context JSON), ids looked up in ``users`` and ``items``."""
    user, item, ts, kind, value, weight, policy, version, propensity, context = zip(
        *rows, strict=True
    )
    return EventBatch(
        user=users.ids(np.array(user, dtype=np.int64)),
        item=items.ids(np.array(item, dtype=np.int64)),
        timestamp=np.array(ts, dtype=np.float64),
        kind=np.array(kind, dtype=np.uint8),
        value=np.array(value, dtype=np.float64),  # NULL -> NaN
        weight=np.array(weight, dtype=np.float32),
        policy=np.array(policy, dtype=str),
        model_version=np.array(version, dtype=str),
        propensity=np.array(propensity, dtype=np.float64),
        context=_context_columns(context),
    )


def quarantine_query(
    reason: str | None, limit: int | None, placeholder: str
) -> tuple[str, tuple[object, ...]]:
    """The query of quarantined rows (oldest first, of one ``reason`` if given, at most
    ``limit``) and its parameters, with the driver's ``placeholder`` ("?" or "%s")."""
    query = "SELECT source, line, reason, field, detail, raw FROM quarantine"
    params: tuple[object, ...] = ()
    if reason is not None:
        query, params = f"{query} WHERE reason = {placeholder}", (reason,)
    query += " ORDER BY id"
    if limit is not None:
        query, params = f"{query} LIMIT {placeholder}", (*params, int(limit))
    return query, params


def rejected_from_rows(rows: Sequence[Sequence[Any]]) -> Rejected:
    """Quarantined rows as :class:`Rejected` (the columns of :func:`quarantine_query`)."""
    if not rows:
        return Rejected.empty()
    return Rejected(*(np.array(column) for column in zip(*rows, strict=True)))


def _nullable(values: np.ndarray) -> list[float | None]:
    """Floats for SQLite, NaN as None (NULL)."""
    if np.isfinite(values).all():
        return values.tolist()
    return pd.Series(values).astype(object).where(np.isfinite(values), None).tolist()


def _context_json(events: EventBatch) -> Sequence[str | None]:
    if not events.context:
        return [None] * len(events)
    frame = pd.DataFrame(dict(events.context))
    return frame.to_json(orient="records", lines=True).splitlines()


def _context_columns(context: tuple[str | None, ...]) -> dict[str, np.ndarray]:
    present = {i: text for i, text in enumerate(context) if text is not None}
    if not present:
        return {}
    frame = pd.DataFrame.from_records(
        [json.loads(text) for text in present.values()], index=list(present)
    )
    frame = frame.reindex(range(len(context)))
    columns = {}
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column):
            columns[str(name)] = column.to_numpy(dtype=np.float64)
        else:
            columns[str(name)] = column.to_numpy(dtype=object, na_value="").astype(str)
    return columns
