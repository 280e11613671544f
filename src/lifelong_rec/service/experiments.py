"""A/B tests between policies and models: a stable split of users, and live results.

One experiment runs at a time, which the table enforces (:class:`Experiments` in the SQLite
event log's file, :class:`PostgresExperiments` in a PostgreSQL schema that many replicas
share). A user's arm is a stable hash of (experiment, user): the same user always sees the
same arm, across requests and restarts. Each arm has its own policy object, learning from its
own traffic; an arm that names a model is served by a learner of its own over the same log
(the engine starts it), so every model learns from all events and the arms differ only in
what they serve. Results are read from the decisions table, so they survive a restart; arms
are compared with the first arm by a two-proportion test on the share of shown items with a
positive reward.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong_rec.evaluate.simulate.stats import two_proportion_test
from lifelong_rec.service.errors import Conflict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments(
    name TEXT PRIMARY KEY, arms TEXT NOT NULL, created_at REAL NOT NULL, stopped_at REAL);
"""

# (name, arms as JSON, created_at, stopped_at): a row of the experiments table.
_Row = tuple[str, str, float, float | None]


#: the default policy's name among the policies saved with a snapshot
DEFAULT_POLICY = "default"


def policy_key(experiment: str | None, arm: str | None) -> str:
    """The name a policy is saved under with a snapshot: the default policy's, or an
    experiment arm's (``arm-<experiment>-<arm>``)."""
    return DEFAULT_POLICY if experiment is None or arm is None else f"arm-{experiment}-{arm}"


@dataclass(frozen=True)
class Arm:
    name: str
    policy: str  # a parse_policy spec
    weight: float
    model: str | None = None  # a parse_model spec: None serves the service's own model


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    created_at: float
    stopped_at: float | None = None

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def arm_of(self, user: str) -> int:
        """The arm index of ``user``: a stable hash of (experiment, user) against the weights."""
        digest = hashlib.blake2b(f"{self.name}\x00{user}".encode(), digest_size=8).digest()
        position = int.from_bytes(digest, "big") / 2.0**64
        weights = np.array([arm.weight for arm in self.arms])
        edges = np.cumsum(weights) / weights.sum()
        return min(int(np.searchsorted(edges, position, side="right")), len(self.arms) - 1)


class ExperimentRunning(Conflict):
    """Another experiment runs (started by this process or another): stop it first (409)."""


class _Experiments:
    """What both backends share; a subclass gives the table's queries."""

    def list(self) -> list[Experiment]:
        """Every experiment, oldest first."""
        return [
            Experiment(name, tuple(Arm(**arm) for arm in json.loads(arms)), created, stopped)
            for name, arms, created, stopped in self._rows()
        ]

    def get(self, name: str) -> Experiment | None:
        return next((e for e in self.list() if e.name == name), None)

    def exists(self, name: str) -> bool:
        return self._exists(name)

    def running(self) -> Experiment | None:
        """The experiment that has not been stopped, if any."""
        return next((e for e in self.list() if e.running), None)

    def create(self, name: str, arms: tuple[Arm, ...]) -> Experiment:
        """Record a new running experiment.

        Raises
        ------
        KeyError
            If ``name`` was used before (even while another experiment runs).
        ExperimentRunning
            If another experiment runs: the table holds one running experiment at most, also
            when several processes (replicas) start one at once.
        """
        experiment = Experiment(name, arms, time.time())
        inserted = self._insert(
            name, json.dumps([arm.__dict__ for arm in arms]), experiment.created_at
        )
        if inserted == "used" or (inserted == "running" and self._exists(name)):
            raise KeyError(f"an experiment {name!r} exists already")
        if inserted == "running":
            running = self.running()
            which = "another experiment" if running is None else f"experiment {running.name!r}"
            raise ExperimentRunning(f"{which} is running; stop it first", "name")
        return experiment

    def stop(self, name: str) -> Experiment:
        """Record that ``name`` stopped now. Raises KeyError if it is not running."""
        changed = self._stop(name, time.time())
        experiment = self.get(name)
        if not changed or experiment is None:
            raise KeyError(f"experiment {name!r} is not running")
        return experiment

    def close(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- the backend's hooks

    def _rows(self) -> Sequence[_Row]:
        """(name, arms as JSON, created_at, stopped_at) of every experiment, oldest first."""
        raise NotImplementedError

    def _exists(self, name: str) -> bool:
        raise NotImplementedError

    def _insert(self, name: str, arms: str, created_at: float) -> str | None:
        """Insert a running experiment: None, or why not ("used" name, another "running")."""
        raise NotImplementedError

    def _stop(self, name: str, stopped_at: float) -> bool:
        """Stop ``name`` if it runs; False if it does not."""
        raise NotImplementedError


class Experiments(_Experiments):
    """The experiments table: what ran, with which arms, and what runs now.

    Not the live state: the engine holds the running experiment's policies and learners in
    one object it swaps, and serialises starts and stops.
    """

    def __init__(self, db: str | Path) -> None:
        self._db = sqlite3.connect(db, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # guards the connection

    def _rows(self) -> Sequence[_Row]:
        with self._lock:
            return self._db.execute(
                "SELECT name, arms, created_at, stopped_at FROM experiments ORDER BY created_at"
            ).fetchall()

    def _exists(self, name: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM experiments WHERE name = ?", (name,)).fetchone()
        return row is not None

    def _insert(self, name: str, arms: str, created_at: float) -> str | None:
        with self._lock:
            # BEGIN IMMEDIATE takes the file's write lock: no other process (sharing the file)
            # can start an experiment between the check and the insert.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                running = self._db.execute(
                    "SELECT 1 FROM experiments WHERE stopped_at IS NULL"
                ).fetchone()
                if running is not None:
                    return "running"
                try:
                    self._db.execute(
                        "INSERT INTO experiments(name, arms, created_at) VALUES (?, ?, ?)",
                        (name, arms, created_at),
                    )
                except sqlite3.IntegrityError:
                    return "used"
                self._db.execute("COMMIT")
                return None
            finally:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")

    def _stop(self, name: str, stopped_at: float) -> bool:
        with self._lock:
            changed = self._db.execute(
                "UPDATE experiments SET stopped_at = ? WHERE name = ? AND stopped_at IS NULL",
                (stopped_at, name),
            ).rowcount
        return bool(changed)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresExperiments(_Experiments):
    """:class:`Experiments` on PostgreSQL, shared by every replica of the service.

    The table lives in the event log's schema (a migration of
    :mod:`lifelong_rec.service.stores`). A partial unique index over the experiments without
    ``stopped_at`` lets one run at a time: of two replicas that start one at once, the database
    accepts the first commit and the other gets :class:`ExperimentRunning`.

    Parameters
    ----------
    url : str
        A libpq connection URL, ``postgresql://user@host:port/dbname``.
    schema : str
        The event log's schema, created if missing.
    pool_size : int
        The most connections this object opens.
    timeout : float
        Seconds to wait for a connection.
    """

    def __init__(
        self, url: str, schema: str = "public", *, pool_size: int = 2, timeout: float = 30.0
    ) -> None:
        from lifelong_rec.service.stores import open_pool  # imports psycopg

        self.url = url
        self.schema = schema
        self._pool = open_pool(url, schema, pool_size=pool_size, timeout=timeout)

    def _rows(self) -> Sequence[_Row]:
        with self._pool.connection() as connection:
            return connection.execute(
                "SELECT name, arms, created_at, stopped_at FROM experiments ORDER BY created_at"
            ).fetchall()

    def _exists(self, name: str) -> bool:
        with self._pool.connection() as connection:
            row = connection.execute(
                "SELECT 1 FROM experiments WHERE name = %s", (name,)
            ).fetchone()
        return row is not None

    def _insert(self, name: str, arms: str, created_at: float) -> str | None:
        import psycopg

        try:
            with self._pool.connection() as connection:
                connection.execute(
                    "INSERT INTO experiments(name, arms, created_at) VALUES (%s, %s, %s)",
                    (name, arms, created_at),
                )
        except psycopg.errors.UniqueViolation as error:
            if error.diag.constraint_name == "experiments_one_running":
                return "running"
            return "used"
        return None

    def _stop(self, name: str, stopped_at: float) -> bool:
        with self._pool.connection() as connection:
            changed = connection.execute(
                "UPDATE experiments SET stopped_at = %s WHERE name = %s AND stopped_at IS NULL",
                (stopped_at, name),
            ).rowcount
        return changed == 1

    def close(self) -> None:
        self._pool.close()


def compare(
    experiment: Experiment, results: dict[str, dict[str, float]]
) -> list[dict[str, object]]:
    """Per arm: counts, rate of positive shown items, and the difference to the first arm
    with its 95 % interval and p-value (two-proportion test)."""
    out = []
    first = results.get(experiment.arms[0].name)
    for index, arm in enumerate(experiment.arms):
        counts = results.get(
            arm.name, {"decisions": 0, "impressions": 0, "positives": 0, "reward": 0.0}
        )
        impressions, positives = int(counts["impressions"]), int(counts["positives"])
        entry: dict[str, object] = {
            "name": arm.name,
            "policy": arm.policy,
            "model": arm.model,
            "weight": arm.weight,
            "decisions": int(counts["decisions"]),
            "impressions": impressions,
            "positives": positives,
            "reward": float(counts["reward"]),
            "rate": positives / impressions if impressions else None,
        }
        if index and first and first["impressions"] and impressions:
            test = two_proportion_test(
                first["positives"], first["impressions"], positives, impressions
            )
            entry |= {
                "difference": test.difference,
                "interval": list(test.interval),
                "p_value": test.p_value,
            }
        out.append(entry)
    return out
