"""The durable, append-only event log on PostgreSQL: the SQLite log's contract, shared by many
processes on many machines.

:class:`PostgresEventLog` has the public API of :class:`lifelong_rec.store.EventLog` and returns
the same types; everything lives in one PostgreSQL schema (``public`` unless told otherwise).

Offsets that never skip
-----------------------
A sequence (or an identity column) hands out numbers when a transaction asks, not when it
commits: writer A takes offsets 0..999, writer B takes 1000..1999 and commits first, and a
reader that reads "everything up to the end" at that moment sees 1000..1999, moves its offset to
2000 and never sees A's events when they commit a moment later. This log avoids it by never
letting an offset exist before every smaller offset has committed:

- every append (and every catalogue upsert, which also grows the item index) first takes a
  transaction-scoped advisory lock of its schema, ``pg_advisory_xact_lock``, and only then
  computes its first offset as ``MAX(seq) + 1``, so the offsets are contiguous;
- the lock is held until the transaction ends, and PostgreSQL makes a commit visible before it
  releases the transaction's locks, so the next append reads an end that includes every event
  committed before it. Offsets are therefore assigned in commit order: when offset ``n`` is
  visible, so is every offset below ``n``;
- a reader needs no lock: any snapshot sees a prefix ``0 .. end - 1`` of the log, so reading up
  to :attr:`end_offset` and resuming from there skips nothing.

Appends thus serialise around the offset assignment, the inserts and the commit (a batch of
1,000 events takes a few milliseconds); readers and other work run in parallel. The same lock
makes keyed appends exactly-once across processes: the key is looked up while holding it.

Durability: PostgreSQL's defaults (``fsync=on``, ``synchronous_commit=on``) make an append that
has returned survive a crash of the process and of the server.

Schema and migrations
---------------------
``schema_version`` holds one row per applied migration. Opening a log applies the missing
migrations of :data:`MIGRATIONS` in one transaction under a second advisory lock, so two
processes that open a new schema at once apply each migration once. A schema whose version is
newer than :data:`SCHEMA_VERSION` (written by a newer lifelong-rec) is refused with
:class:`SchemaVersionError`. The tables mirror the SQLite log's (``events``, ``users``,
``items``, ``batches``, ``consumers``, ``quarantine``, ``kinds`` and an ``events_readable``
view), with ``user_idx`` and ``item_idx`` for the event's dense ids (``user`` is reserved).
"""

from __future__ import annotations

import json
import re
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from lifelong_rec.data.report import Rejected
from lifelong_rec.events import KIND_NAMES, Catalog, EventBatch, IdIndex
from lifelong_rec.store.eventlog import (
    CATALOG_QUERY,
    Appended,
    _context_json,
    _nullable,
    catalog_from_rows,
    events_from_rows,
    quarantine_query,
    rejected_from_rows,
)

__all__ = [
    "CATALOG_CHANNEL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "PostgresEventLog",
    "SchemaVersionError",
]

#: the channel on which a catalogue upsert is announced when it commits (payload: the schema)
CATALOG_CHANNEL = "lifelong_rec_catalog"

# (version, description, DDL), applied in order; never edit one that has shipped, add a new one.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "the event log: events, ids, catalogue, batches, consumers, quarantine",
        """
CREATE TABLE kinds(code smallint PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE users(idx bigint PRIMARY KEY, id text NOT NULL UNIQUE, first_seen float8);
CREATE TABLE items(
    idx bigint PRIMARY KEY, id text NOT NULL UNIQUE, first_seen float8,
    title text, text text, categories text, attributes text);
CREATE TABLE batches(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, key text UNIQUE,
    first_offset bigint NOT NULL, count integer NOT NULL, source text NOT NULL,
    appended_at float8 NOT NULL);
CREATE TABLE events(
    seq bigint PRIMARY KEY, batch bigint NOT NULL, user_idx bigint NOT NULL,
    item_idx bigint NOT NULL, ts float8 NOT NULL, kind smallint NOT NULL, value float8,
    weight real NOT NULL, policy text NOT NULL, model_version text NOT NULL,
    propensity float8, context text);
CREATE TABLE consumers(
    name text PRIMARY KEY, next_offset bigint NOT NULL, updated_at float8 NOT NULL);
CREATE TABLE quarantine(
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, source text NOT NULL,
    line bigint NOT NULL, reason text NOT NULL, field text NOT NULL, detail text NOT NULL,
    raw text NOT NULL, quarantined_at float8 NOT NULL);
CREATE INDEX quarantine_reason ON quarantine(reason);
CREATE VIEW events_readable AS
    SELECT e.seq AS "offset", u.id AS "user", i.id AS item,
           to_char(to_timestamp(e.ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
               AS time,
           k.name AS kind, e.value, e.weight, e.policy, e.model_version, e.propensity, e.context
    FROM events e JOIN users u ON u.idx = e.user_idx JOIN items i ON i.idx = e.item_idx
    JOIN kinds k ON k.code = e.kind;
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# First keys of the two-key advisory locks (the second is the schema's CRC-32), so a schema's
# locks differ from other schemas' and, very likely, from other applications'.
_APPEND_LOCK = 0x4C52_0001
_MIGRATE_LOCK = 0x4C52_0002
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

_INSERT_EVENTS = """
INSERT INTO events(seq, batch, user_idx, item_idx, ts, kind, value, weight, policy,
                   model_version, propensity, context)
SELECT %(first)s + n - 1, %(batch)s, u, i, t, k, v, w, p, m, pr, c
FROM unnest(%(user)s::bigint[], %(item)s::bigint[], %(ts)s::float8[], %(kind)s::int2[],
            %(value)s::float8[], %(weight)s::float4[], %(policy)s::text[],
            %(version)s::text[], %(propensity)s::float8[], %(context)s::text[])
     WITH ORDINALITY AS x(u, i, t, k, v, w, p, m, pr, c, n)
"""


class FailFastPool(ConnectionPool):
    """A connection pool that stops making its callers wait once the server is known to be away.

    ``getconn`` waits up to ``timeout`` for a connection. While the server is down none comes,
    so every request would wait that long before it fails. Once a connection comes back broken,
    or a wait runs out, this pool waits at most :attr:`away_timeout` until it hands out a
    connection again; the pool's own reconnection runs meanwhile. A request then fails within
    half a second (503) instead of waiting out the timeout.
    """

    away_timeout = 0.5

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._away = False
        super().__init__(*args, **kwargs)

    def getconn(self, timeout: float | None = None) -> psycopg.Connection:
        if timeout is None and self._away:
            timeout = min(self.timeout, self.away_timeout)
        try:
            connection = super().getconn(timeout)
        except PoolTimeout:
            self._away = True
            raise
        self._away = False
        return connection

    def putconn(self, conn: psycopg.Connection) -> None:
        if conn.broken:  # the server closed it: it is stopping, or gone
            self._away = True
        super().putconn(conn)


class SchemaVersionError(RuntimeError):
    """The database schema was written by a newer lifelong-rec than this one."""


def apply_migrations(
    connection: psycopg.Connection,
    schema: str,
    version_table: str,
    migrations: tuple[tuple[int, str, str], ...],
    what: str,
) -> tuple[int, ...]:
    """Apply the ``migrations`` (version, description, DDL) newer than what ``version_table``
    records, in the connection's transaction, under the schema's migration lock (so processes
    opening at once migrate once); creates the schema if it is missing.

    Parameters
    ----------
    what : str
        The subject of the refusal, with its verb: "<where>: the database schema is".

    Returns
    -------
    applied : tuple of int
        The versions this call applied.

    Raises
    ------
    SchemaVersionError
        If ``version_table`` records a version newer than the newest of ``migrations``.
    """
    schema_key = zlib.crc32(schema.encode()) - 2**31  # an int4 for the lock functions
    connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_MIGRATE_LOCK, schema_key))
    connection.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    connection.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}(version integer PRIMARY KEY, "
            "description text NOT NULL, applied_at float8 NOT NULL)"
        ).format(sql.Identifier(version_table))
    )
    row = connection.execute(
        sql.SQL("SELECT MAX(version) FROM {}").format(sql.Identifier(version_table))
    ).fetchone()
    current = 0 if row is None or row[0] is None else int(row[0])
    newest = max(version for version, _, _ in migrations)
    if current > newest:
        raise SchemaVersionError(
            f"{what} at version {current}, newer than version {newest}, the newest this "
            "lifelong-rec knows; upgrade lifelong-rec to use it"
        )
    applied = []
    insert = sql.SQL("INSERT INTO {}(version, description, applied_at) VALUES (%s, %s, %s)")
    for version, description, ddl in migrations:
        if version > current:
            connection.execute(ddl.encode())  # bytes: several statements, no params
            connection.execute(
                insert.format(sql.Identifier(version_table)), (version, description, time.time())
            )
            applied.append(version)
    return tuple(applied)


class PostgresEventLog:
    """A durable append-only log of events in one PostgreSQL schema.

    Parameters
    ----------
    url : str
        A libpq connection URL, ``postgresql://user@host:port/dbname``.
    schema : str
        The schema that holds the log's tables, created if missing: lower-case letters,
        digits and underscores.
    pool_size : int
        The most connections this object opens (one per thread that uses it at once).
    timeout : float
        Seconds to wait for a connection from the pool (and for the server at open).

    Raises
    ------
    SchemaVersionError
        If the schema is newer than :data:`SCHEMA_VERSION`.

    Examples
    --------
    >>> with PostgresEventLog("postgresql://postgres@127.0.0.1/test") as log:  # doctest: +SKIP
    ...     log.append(EventBatch.from_columns(["u1"], ["i1"], [1.7e9]), key="b1")
    Appended(batch_id=1, first_offset=0, count=1, duplicate=False)
    """

    def __init__(
        self, url: str, schema: str = "public", *, pool_size: int = 4, timeout: float = 30.0
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema: {schema!r} must be lower-case letters, digits and underscores"
            )
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.url = url
        self.schema = schema
        self.pool_size = pool_size
        self.timeout = timeout
        schema_key = zlib.crc32(schema.encode()) - 2**31  # an int4 for the lock functions
        self._append_lock = (_APPEND_LOCK, schema_key)
        self._migrate_lock = (_MIGRATE_LOCK, schema_key)
        self._pool = FailFastPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            configure=self._configure,
            name=f"lifelong-rec:{schema}",
            open=False,
        )
        # In-memory copies of the id indexes, holding committed rows only: brought up to date
        # from the tables before each use (other processes add ids), never written otherwise.
        self._cache_lock = threading.Lock()
        self._users = IdIndex()
        self._items = IdIndex()
        try:
            self._pool.open(wait=True, timeout=timeout)
            self.applied_migrations = self._migrate()
        except BaseException:
            self._pool.close()
            raise

    def _configure(self, connection: psycopg.Connection) -> None:
        connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        connection.commit()

    def _migrate(self) -> tuple[int, ...]:
        """Apply the missing migrations; returns the versions applied by this call."""
        with self._pool.connection() as connection:
            applied = apply_migrations(
                connection, self.schema, "schema_version", MIGRATIONS,
                f"{self._where()}: the database schema is",
            )  # fmt: skip
            with connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO kinds(code, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    list(enumerate(KIND_NAMES)),
                )
        return applied

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresEventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresEventLog({self._where()!r}, events={self.end_offset})"

    def _where(self) -> str:
        """The URL without its password, and the schema: for messages."""
        parts = urlsplit(self.url)
        netloc = parts.netloc
        if "@" in netloc:
            credentials, host = netloc.rsplit("@", 1)
            netloc = f"{credentials.split(':', 1)[0]}@{host}"
        return urlunsplit(parts._replace(netloc=netloc)) + f" (schema {self.schema})"

    # ------------------------------------------------------------------ appending

    @property
    def end_offset(self) -> int:
        """The offset the next appended event will get (= number of events in the log)."""
        with self._pool.connection() as connection:
            return _end(connection)

    def __len__(self) -> int:
        return self.end_offset

    def append(self, events: EventBatch, *, key: str | None = None, source: str = "") -> Appended:
        """Append a batch atomically and durably.

        Parameters
        ----------
        events : EventBatch
        key : str, optional
            Idempotency key: if a batch with this key was appended before (by any process),
            nothing is written and the earlier append is returned (``duplicate=True``).
        source : str
            Where the batch came from (a file, "http", a producer's name), kept with it.

        Returns
        -------
        Appended
            Offsets of the batch. When this returns, the batch is committed.
        """
        with self._pool.connection() as connection:
            # Held to the commit: offsets are contiguous and in commit order (module docstring).
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", self._append_lock)
            if key is not None:
                row = connection.execute(
                    "SELECT id, first_offset, count FROM batches WHERE key = %s", (key,)
                ).fetchone()
                if row is not None:
                    return Appended(int(row[0]), int(row[1]), int(row[2]), duplicate=True)
            first = _end(connection)
            row = connection.execute(
                "INSERT INTO batches(key, first_offset, count, source, appended_at) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (key, first, len(events), source, time.time()),
            ).fetchone()
            assert row is not None  # RETURNING gives one row
            batch_id = int(row[0])
            if len(events):
                users = self._grow(connection, "users", events.user, events.timestamp)
                items = self._grow(connection, "items", events.item, events.timestamp)
                connection.execute(
                    _INSERT_EVENTS,
                    {
                        "first": first,
                        "batch": batch_id,
                        "user": users.tolist(),
                        "item": items.tolist(),
                        "ts": events.timestamp.tolist(),
                        "kind": events.kind.tolist(),
                        "value": _nullable(events.value),
                        "weight": events.weight.tolist(),
                        "policy": events.policy.tolist(),
                        "version": events.model_version.tolist(),
                        "propensity": _nullable(events.propensity),
                        "context": list(_context_json(events)),
                    },
                )
        return Appended(batch_id, first, len(events))

    def _grow(
        self, connection: psycopg.Connection, table: str, ids: np.ndarray, timestamps: np.ndarray
    ) -> np.ndarray:
        """Dense indexes of ``ids``, inserting unknown ones into ``table``.

        Runs inside a transaction holding the append lock, so no other writer adds ids until
        it ends; the in-memory index is left alone (it may only hold committed rows).
        """
        index = self._index(connection, table)
        known = len(index)
        indexes = index.lookup(ids)
        unknown = indexes < 0
        if unknown.any():
            fresh = IdIndex()  # the new ids, numbered in order of first sight
            positions = fresh.add(ids[unknown])
            indexes[unknown] = known + positions
            first_seen = np.full(len(fresh), np.inf)
            np.minimum.at(first_seen, positions, timestamps[unknown])
            connection.execute(
                sql.SQL(
                    "INSERT INTO {}(idx, id, first_seen) "
                    "SELECT %s + n - 1, id, t FROM unnest(%s::text[], %s::float8[]) "
                    "WITH ORDINALITY AS x(id, t, n)"
                ).format(sql.Identifier(table)),
                (known, fresh.to_array().tolist(), first_seen.tolist()),
            )
        return indexes

    def _index(self, connection: psycopg.Connection, table: str) -> IdIndex:
        """The in-memory index of ``table``, brought up to date with committed rows."""
        with self._cache_lock:
            index = self._users if table == "users" else self._items
            rows = connection.execute(
                sql.SQL("SELECT idx, id FROM {} WHERE idx >= %s ORDER BY idx").format(
                    sql.Identifier(table)
                ),
                (len(index),),
            ).fetchall()
            if rows:
                indexes, ids = zip(*rows, strict=True)
                if indexes[0] != len(index) or indexes[-1] != len(index) + len(rows) - 1:
                    raise RuntimeError(f"{self._where()}: {table} index has gaps; it is damaged")
                index.add(np.array(ids, dtype=str))
            return index

    # ------------------------------------------------------------------ reading

    def read(
        self, start: int = 0, stop: int | None = None, *, positive: bool = False
    ) -> EventBatch:
        """Events with offsets ``start`` <= offset < ``stop`` (to the end when None), in order;
        with ``positive=True`` only those of weight > 0."""
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad offset range [{start}, {stop})")
        where = "seq >= %s AND seq < %s" + (" AND weight > 0" if positive else "")
        with self._pool.connection() as connection:
            rows = connection.execute(
                "SELECT user_idx, item_idx, ts, kind, value, weight, policy, model_version, "
                f"propensity, context FROM events WHERE {where} ORDER BY seq",
                (start, 2**62 if stop is None else stop),
            ).fetchall()
            if not rows:
                return EventBatch.empty()
            # Read after the events (a later snapshot), so the indexes hold all their ids.
            users = self._index(connection, "users")
            items = self._index(connection, "items")
            with self._cache_lock:  # an index only grows: ids of old indexes never change
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
        columns = ["id", "key", "first_offset", "count", "source", "appended_at"]
        with self._pool.connection() as connection:
            rows = connection.execute(
                f"SELECT {', '.join(columns)} FROM batches ORDER BY id"
            ).fetchall()
        return pd.DataFrame(rows, columns=columns)

    # ------------------------------------------------------------------ consumers

    def committed(self, consumer: str) -> int:
        """The next offset ``consumer`` will read (0 for a consumer that never committed)."""
        with self._pool.connection() as connection:
            row = connection.execute(
                "SELECT next_offset FROM consumers WHERE name = %s", (consumer,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def commit(self, consumer: str, next_offset: int) -> None:
        """Record atomically that ``consumer`` has processed everything before ``next_offset``."""
        if not consumer:
            raise ValueError("consumer: a name is required")
        end = self.end_offset
        if not 0 <= next_offset <= end:
            raise ValueError(f"next_offset {next_offset} is outside the log [0, {end}]")
        with self._pool.connection() as connection:
            connection.execute(
                "INSERT INTO consumers(name, next_offset, updated_at) VALUES (%s, %s, %s) "
                "ON CONFLICT(name) DO UPDATE SET next_offset = excluded.next_offset, "
                "updated_at = excluded.updated_at",
                (consumer, next_offset, time.time()),
            )

    def consumers(self) -> dict[str, int]:
        with self._pool.connection() as connection:
            rows = connection.execute(
                "SELECT name, next_offset FROM consumers ORDER BY name"
            ).fetchall()
        return {str(name): int(offset) for name, offset in rows}

    # ------------------------------------------------------------------ ids and catalog

    def user_index(self) -> IdIndex:
        """A copy of the user id index (external id <-> dense index, in order of first sight)."""
        with self._pool.connection() as connection:
            index = self._index(connection, "users")
            with self._cache_lock:
                return index.copy()

    def item_index(self) -> IdIndex:
        """A copy of the item id index, catalog-only items included."""
        with self._pool.connection() as connection:
            index = self._index(connection, "items")
            with self._cache_lock:
                return index.copy()

    def upsert_catalog(self, catalog: Catalog) -> int:
        """Add or replace the metadata of ``catalog``'s items; new items join the index.

        An item's ``first_seen`` is the time of its first event, or the time it was added to
        the catalog if it had no event yet. Returns the number of items written.
        """
        if not len(catalog):
            return 0
        with self._pool.connection() as connection:
            # The append lock: new items take index positions, as in an append.
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", self._append_lock)
            now = np.full(len(catalog), time.time())
            indexes = self._grow(connection, "items", catalog.item, now)
            connection.execute(
                "UPDATE items SET title = x.title, text = x.text, categories = x.categories, "
                "attributes = x.attributes FROM unnest(%s::bigint[], %s::text[], %s::text[], "
                "%s::text[], %s::text[]) AS x(idx, title, text, categories, attributes) "
                "WHERE items.idx = x.idx",
                (
                    indexes.tolist(),
                    catalog.title.tolist(),
                    catalog.text.tolist(),
                    [json.dumps(list(c)) for c in catalog.categories],
                    [json.dumps(a) for a in catalog.attributes],
                ),
            )
            # Learner processes listen: a text model makes the new items rankable at once.
            connection.execute("SELECT pg_notify(%s, %s)", (CATALOG_CHANNEL, self.schema))
        return len(catalog)

    def catalog(self) -> Catalog:
        """Every item that has catalog metadata."""
        with self._pool.connection() as connection:
            return catalog_from_rows(connection.execute(CATALOG_QUERY).fetchall())

    # ------------------------------------------------------------------ quarantine

    def quarantine(self, rejected: Rejected) -> int:
        """Keep rejected rows with their reasons. Returns how many were stored."""
        if not len(rejected):
            return 0
        with self._pool.connection() as connection:
            connection.execute(
                "INSERT INTO quarantine(source, line, reason, field, detail, raw, quarantined_at)"
                " SELECT s, l, r, f, d, w, %s FROM unnest(%s::text[], %s::bigint[], %s::text[], "
                "%s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS x(s, l, r, f, d, w, n) "
                "ORDER BY n",
                (
                    time.time(),
                    rejected.source.tolist(),
                    rejected.line.tolist(),
                    rejected.reason.tolist(),
                    rejected.field.tolist(),
                    rejected.detail.tolist(),
                    rejected.raw.tolist(),
                ),
            )
        return len(rejected)

    def rejected(self, reason: str | None = None, limit: int | None = None) -> Rejected:
        """Quarantined rows, oldest first, optionally of one reason only."""
        query, params = quarantine_query(reason, limit, "%s")
        with self._pool.connection() as connection:
            return rejected_from_rows(connection.execute(query.encode(), params).fetchall())

    def rejected_counts(self) -> dict[str, int]:
        with self._pool.connection() as connection:
            rows = connection.execute(
                "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason"
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    # ------------------------------------------------------------------ summary

    def stats(self) -> dict[str, object]:
        """Counts of events, users, items, catalog entries, batches, quarantined rows."""
        with self._pool.connection() as connection:

            def one(query: str) -> object:
                row = connection.execute(query.encode()).fetchone()
                assert row is not None  # an aggregate or SHOW gives one row
                return row[0]

            return {
                "path": self._where(),
                "events": _end(connection),
                "users": one("SELECT COUNT(*) FROM users"),
                "items": one("SELECT COUNT(*) FROM items"),
                "items_with_metadata": one("SELECT COUNT(*) FROM items WHERE title IS NOT NULL"),
                "batches": one("SELECT COUNT(*) FROM batches"),
                "quarantined": one("SELECT COUNT(*) FROM quarantine"),
                "consumers": {
                    str(name): int(offset)
                    for name, offset in connection.execute(
                        "SELECT name, next_offset FROM consumers ORDER BY name"
                    ).fetchall()
                },
                "synchronous": one("SHOW synchronous_commit"),
                "schema_version": one("SELECT MAX(version) FROM schema_version"),
            }


def _end(connection: psycopg.Connection) -> int:
    """One past the last committed offset (0 for an empty log); the events' index answers."""
    row = connection.execute("SELECT MAX(seq) FROM events").fetchone()
    return 0 if row is None or row[0] is None else int(row[0]) + 1
