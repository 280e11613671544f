"""Durable storage: the append-only event log (SQLite, or PostgreSQL) with consumer offsets, ids
and catalog."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lifelong_rec.store.eventlog import FORMAT_VERSION, Appended, EventLog

if TYPE_CHECKING:
    from lifelong_rec.store.postgres import PostgresEventLog

__all__ = [
    "FORMAT_VERSION",
    "Appended",
    "EventLog",
    "PostgresEventLog",
    "is_postgres",
    "is_unavailable",
    "open_log",
]

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target: str | Path) -> bool:
    """Whether ``target`` names a PostgreSQL database (a URL) rather than an SQLite file."""
    return isinstance(target, str) and target.startswith(_POSTGRES_SCHEMES)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached now (PostgreSQL stopped,
    restarting, unreachable, or no pooled connection came in time): worth a retry later, not
    a bug. Never true without psycopg loaded (an SQLite log raises no such error)."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(error, psycopg.OperationalError)


def open_log(
    target: str | Path, *, schema: str = "public", timeout: float = 30.0
) -> EventLog | PostgresEventLog:
    """Open the event log at ``target``: a PostgreSQL URL or an SQLite file.

    Parameters
    ----------
    target : str or path
        ``postgresql://user@host:port/dbname`` (or ``postgres://``) opens a
        :class:`PostgresEventLog`; anything else is the path of an SQLite :class:`EventLog`.
    schema : str
        The PostgreSQL schema that holds the log; must stay "public" for SQLite.
    timeout : float
        PostgreSQL: seconds to wait for the server, and for a pooled connection.

    Raises
    ------
    ImportError
        For a URL when psycopg is not installed (``pip install 'lifelong-rec[postgres]'``).

    Examples
    --------
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with open_log(os.path.join(folder, "events.db")) as log:
    ...         type(log).__name__
    'EventLog'
    """
    if is_postgres(target):
        return _postgres_class()(str(target), schema, timeout=timeout)
    if schema != "public":
        raise ValueError(f"schema: {schema!r} is for PostgreSQL; {target} is an SQLite file")
    return EventLog(target)


def _postgres_class() -> type[PostgresEventLog]:
    # Imported on first use: psycopg is an optional extra, and SQLite users never need it.
    try:
        from lifelong_rec.store.postgres import PostgresEventLog
    except ImportError as error:
        if error.name is None or not error.name.startswith("psycopg"):
            raise
        raise ImportError(
            "a postgresql:// event log needs psycopg 3: pip install 'lifelong-rec[postgres]' "
            f"({error})"
        ) from error
    return PostgresEventLog


def __getattr__(name: str) -> object:
    if name == "PostgresEventLog":
        return _postgres_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
