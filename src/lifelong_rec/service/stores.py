"""The service's own tables (decisions, experiments, snapshots) on SQLite or PostgreSQL.

:func:`open_decisions`, :func:`open_experiments` and :func:`open_snapshots` pick the backend the way
:func:`lifelong_rec.store.open_log` does: a ``postgresql://`` URL gives the PostgreSQL class, a
path the SQLite one, and psycopg is imported only for a URL.

Migrations
----------
On PostgreSQL the service's tables live in the event log's schema but are versioned apart, in
``service_schema_version`` with their own :data:`SERVICE_MIGRATIONS`: the log's version then
says only what a log reader needs, so a lifelong-rec that reads logs is not refused a schema
(:class:`~lifelong_rec.store.postgres.SchemaVersionError`) because the service added a table.
Both sets of migrations take the same advisory lock of the schema, so a log and a service
store opened at once on a new schema never race to create it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lifelong_rec.service.decisions import DecisionStore, PostgresDecisionStore
from lifelong_rec.service.experiments import Experiments, PostgresExperiments
from lifelong_rec.service.snapshots import PostgresSnapshotStore, SnapshotStore
from lifelong_rec.store import is_postgres

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = [
    "SERVICE_MIGRATIONS",
    "SERVICE_SCHEMA_VERSION",
    "open_decisions",
    "open_experiments",
    "open_snapshots",
]

# (version, description, DDL), applied in order; never edit one that has shipped, add a new one.
SERVICE_MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "the service's decisions and experiments",
        """
CREATE TABLE decisions(
    id text PRIMARY KEY, user_id text NOT NULL, experiment text, arm text, policy text NOT NULL,
    model_version text NOT NULL, slate text NOT NULL, propensities text NOT NULL,
    exploring text NOT NULL, features text, created_at float8 NOT NULL,
    feedback_at float8, rewards text);
CREATE INDEX decisions_experiment ON decisions(experiment, arm);
CREATE TABLE experiments(
    name text PRIMARY KEY, arms text NOT NULL, created_at float8 NOT NULL, stopped_at float8);
-- One running experiment across every process: at most one row has no stopped_at.
CREATE UNIQUE INDEX experiments_one_running ON experiments((true)) WHERE stopped_at IS NULL;
""",
    ),
    (
        2,
        "model snapshots and pins in the database (PostgresSnapshotStore)",
        """
CREATE TABLE snapshots(
    name text NOT NULL, version integer NOT NULL, "offset" bigint NOT NULL,
    created_at float8 NOT NULL, model text NOT NULL, quality text, archive bytea NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE snapshot_pins(name text PRIMARY KEY, version integer NOT NULL);
""",
    ),
    (
        3,
        "settlements numbered in commit order; the policies' place in them, per snapshot",
        """
ALTER TABLE decisions ADD COLUMN settled_seq bigint;
CREATE UNIQUE INDEX decisions_settled ON decisions(settled_seq);
ALTER TABLE snapshots ADD COLUMN settled bigint;
""",
    ),
)
SERVICE_SCHEMA_VERSION = SERVICE_MIGRATIONS[-1][0]


def open_decisions(
    target: str | Path, *, schema: str = "public", memory: int = 20_000, timeout: float = 30.0
) -> DecisionStore | PostgresDecisionStore:
    """The decision store at ``target``: a PostgreSQL URL or the event log's SQLite file.

    Parameters
    ----------
    target : str or path
        ``postgresql://user@host:port/dbname`` (or ``postgres://``) opens a
        :class:`PostgresDecisionStore` in ``schema``; anything else an SQLite
        :class:`DecisionStore`.
    schema : str
        The PostgreSQL schema (the event log's); must stay "public" for SQLite.
    memory : int
        Decisions kept in memory for fast feedback.
    timeout : float
        PostgreSQL: seconds to wait for the server, and for a pooled connection.
    """
    if _is_url(target, schema):
        return PostgresDecisionStore(str(target), schema, memory=memory, timeout=timeout)
    return DecisionStore(target, memory=memory)


def open_experiments(
    target: str | Path, *, schema: str = "public", timeout: float = 30.0
) -> Experiments | PostgresExperiments:
    """The experiments table at ``target``: a PostgreSQL URL or the event log's SQLite file
    (parameters as in :func:`open_decisions`)."""
    if _is_url(target, schema):
        return PostgresExperiments(str(target), schema, timeout=timeout)
    return Experiments(target)


def open_snapshots(
    target: str | Path,
    *,
    folder: Path | None,
    name: str,
    schema: str = "public",
    timeout: float = 30.0,
) -> SnapshotStore | PostgresSnapshotStore:
    """The snapshots of model ``name``: in the database at ``target`` when it is a PostgreSQL
    URL (every machine reads them), else in ``folder`` beside the SQLite log."""
    if _is_url(target, schema):
        return PostgresSnapshotStore(str(target), schema, name, timeout=timeout)
    if folder is None:
        raise ValueError(f"snapshots: an SQLite db ({target}) keeps its snapshots in a folder")
    return SnapshotStore(folder)


def _is_url(target: str | Path, schema: str) -> bool:
    if is_postgres(target):
        return True
    if schema != "public":
        raise ValueError(f"schema: {schema!r} is for PostgreSQL; {target} is an SQLite file")
    return False


# ---------------------------------------------------------------------- PostgreSQL plumbing


def open_pool(
    url: str, schema: str, *, pool_size: int, timeout: float, migrate: bool = True
) -> ConnectionPool:
    """An open pool whose connections use ``schema``, with the service's tables migrated
    (unless told not to).

    Imports psycopg (and the PostgreSQL log module) on first use: SQLite users never need it.
    """
    from psycopg import sql

    from lifelong_rec.store.postgres import _SCHEMA_NAME, FailFastPool

    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema: {schema!r} must be lower-case letters, digits and underscores")
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")

    def configure(connection: psycopg.Connection) -> None:
        connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        connection.commit()

    pool = FailFastPool(
        url,
        min_size=1,
        max_size=pool_size,
        timeout=timeout,
        configure=configure,
        name=f"lifelong-rec-service:{schema}",
        open=False,
    )
    try:
        pool.open(wait=True, timeout=timeout)
        if migrate:
            with pool.connection() as connection:
                _migrate(connection, schema)
    except BaseException:
        pool.close()
        raise
    return pool


def upgrade(url: str, schema: str = "public") -> dict[str, dict[str, object]]:
    """Apply every missing migration of the event log and of the service's tables in
    ``schema`` (what each process also does at start); returns, for each, the version the
    schema is at and the versions this call applied.

    Raises
    ------
    SchemaVersionError
        If either part of the schema is newer than this lifelong-rec knows.
    """
    from lifelong_rec.store.postgres import SCHEMA_VERSION, PostgresEventLog

    with PostgresEventLog(url, schema, pool_size=1) as log:
        log_applied = log.applied_migrations
    pool = open_pool(url, schema, pool_size=1, timeout=30.0, migrate=False)
    try:
        with pool.connection() as connection:
            service_applied = _migrate(connection, schema)
    finally:
        pool.close()
    return {
        "event_log": {"version": SCHEMA_VERSION, "applied": list(log_applied)},
        "service": {"version": SERVICE_SCHEMA_VERSION, "applied": list(service_applied)},
    }


def _migrate(connection: psycopg.Connection, schema: str) -> tuple[int, ...]:
    """Apply the missing :data:`SERVICE_MIGRATIONS` in one transaction; returns those applied."""
    from lifelong_rec.store.postgres import apply_migrations

    return apply_migrations(
        connection, schema, "service_schema_version", SERVICE_MIGRATIONS,
        f"schema {schema}: the service's tables are",
    )  # fmt: skip
