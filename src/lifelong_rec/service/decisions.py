"""Served decisions: logged with their propensities, joined with their feedback.

Every recommendation the service returns is a decision (the model's own ranking counts as the
"greedy" policy, propensity 1). A decision is kept in memory for feedback and written, with
its impressions, by a background writer that commits many at once: one commit (and one
fsync) per ~20 ms instead of one per request. :class:`DecisionStore` keeps them in the SQLite
event log's file, :class:`PostgresDecisionStore` in a PostgreSQL schema that many replicas
share. Impressions go to the event log as events of weight 0 (kind ``impression``, with
policy, model version, propensity and position), so any policy can be evaluated off-policy
from the log later.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lifelong_rec.events import EventBatch
from lifelong_rec.policy import Decisions
from lifelong_rec.service.errors import Unavailable
from lifelong_rec.store import EventLog, is_unavailable, open_log

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

    from lifelong_rec.store.postgres import PostgresEventLog

log = logging.getLogger("lifelong_rec.service")
RETRY_SECONDS = 1.0  # between tries to write decisions while the database is away
MAX_PENDING = 100_000  # decisions that wait for the database, at most
_SETTLE_LOCK = 0x4C52_0004  # first key of the advisory lock that numbers settlements

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions(
    id TEXT PRIMARY KEY, user TEXT NOT NULL, experiment TEXT, arm TEXT, policy TEXT NOT NULL,
    model_version TEXT NOT NULL, slate TEXT NOT NULL, propensities TEXT NOT NULL,
    exploring TEXT NOT NULL, features TEXT, created_at REAL NOT NULL,
    feedback_at REAL, rewards TEXT);
CREATE INDEX IF NOT EXISTS decisions_experiment ON decisions(experiment, arm);
"""


@dataclass(eq=False)
class Served:
    """One served decision, as feedback needs it."""

    id: str
    decisions: Decisions  # one row
    experiment: str | None
    arm: str | None
    created_at: float
    rewards: list[float] | None = None  # set once, by the feedback


class _Decisions:
    """What both backends share: decisions in memory, and the writer that commits them in
    groups. A subclass opens its table and ``_log``, then calls ``__init__``; its hooks run
    with ``_write_lock`` held."""

    _log: EventLog | PostgresEventLog

    def __init__(self, memory: int) -> None:
        # Two locks, so that serving never waits for a write: ``_lock`` guards the in-memory
        # state (_recent, _pending) for a few microseconds at a time; ``_write_lock`` guards
        # the connection and keeps writes in order, and is held through the commits.
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._recent: OrderedDict[str, tuple] = OrderedDict()  # id -> _kept(served)
        self._memory = memory
        self._pending: list[Served] = []  # served, not written yet
        self._arrived = threading.Event()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="decisions", daemon=True)
        self._writer.start()

    def add(self, served: Served) -> None:
        """Remember a decision; it reaches the table and the log within about 20 ms."""
        kept = _kept(served)
        with self._lock:
            self._recent[served.id] = kept
            if len(self._recent) > self._memory:
                self._recent.popitem(last=False)
            self._pending.append(served)
        self._arrived.set()

    def get(self, decision_id: str) -> Served | None:
        """The decision ``decision_id``: from memory, else from the table (where another
        process's decisions are too, once its writer has committed them)."""
        with self._lock:
            kept = self._recent.get(decision_id)
        if kept is not None:
            return _unkept(kept)
        with self._write_lock:
            row = self._select(decision_id)
        return None if row is None else _from_row(row)

    def settle(self, served: Served, rewards: list[float]) -> bool:
        """Record a decision's feedback once; False if it had feedback already.

        Once across processes too: the table decides (an update of a row without feedback).
        """
        with self._write_lock:
            if served.rewards is not None:
                return False
            if not self._flush_locked():  # the decision itself may be among those waiting
                raise Unavailable("the database is unreachable: feedback cannot be stored now")
            changed = self._record_feedback(served.id, json.dumps(rewards))
            if changed:
                served.rewards = rewards
                with self._lock:
                    if served.id in self._recent:
                        self._recent[served.id] = _kept(served)
            return changed

    def flush(self) -> None:
        """Write every pending decision now."""
        with self._write_lock:
            self._flush_locked()

    def results(self, experiment: str) -> dict[str, dict[str, float]]:
        """Per arm: decisions, impressions (shown items with feedback), positives, reward."""
        with self._write_lock:
            self._flush_locked()
            rows = self._arm_rewards(experiment)
        out: dict[str, dict[str, float]] = {}
        for arm, rewards in rows:
            entry = out.setdefault(
                arm, {"decisions": 0, "impressions": 0, "positives": 0, "reward": 0.0}
            )
            entry["decisions"] += 1
            if rewards is not None:
                values = json.loads(rewards)
                entry["impressions"] += len(values)
                entry["positives"] += sum(value > 0 for value in values)
                entry["reward"] += float(sum(values))
        return out

    def close(self) -> None:
        self._closing = True
        self._arrived.set()
        self._writer.join(timeout=10)
        with self._write_lock:
            self._flush_locked()
            self._close_table()
        self._log.close()

    # -------------------------------------------------------------- writing

    def _write_loop(self) -> None:
        while not self._closing:
            self._arrived.wait()
            self._arrived.clear()
            time.sleep(0.02)  # gather what arrives meanwhile into the same commit
            with self._write_lock:
                written = self._flush_locked()
            if not written:  # the database is away: try again in a moment
                time.sleep(RETRY_SECONDS)
                self._arrived.set()

    def _flush_locked(self) -> bool:
        """Write what is pending (the caller holds ``_write_lock``); False if the database
        could not be reached, the batch then waiting for the next try."""
        with self._lock:
            batch, self._pending = self._pending, []
        return self._write(batch)

    def _write(self, batch: list[Served]) -> bool:
        """One transaction for the decisions, one append for their impressions. While the
        database is unreachable the batch goes back to the front of the queue (at most
        :data:`MAX_PENDING` decisions wait; beyond, the oldest are dropped, and said)."""
        if not batch:
            return True
        try:
            self._insert([_to_row(served) for served in batch])
            self._log.append(impressions(batch), source="decisions")
        except Exception as error:
            if not is_unavailable(error):
                log.exception("could not write %d decisions", len(batch))
                return True
            with self._lock:
                self._pending[:0] = batch
                dropped = len(self._pending) - MAX_PENDING
                if dropped > 0:
                    del self._pending[:dropped]
            log.warning(
                "the database is unreachable (%s): %d decisions wait to be written%s",
                error, len(batch), f", {dropped} oldest dropped" if dropped > 0 else "",
            )  # fmt: skip
            return False
        return True

    # -------------------------------------------------------------- the backend's hooks

    def _insert(self, rows: list[tuple]) -> None:
        """Insert decisions (rows of :func:`_to_row`) in one transaction, skipping known ids."""
        raise NotImplementedError

    def _select(self, decision_id: str) -> tuple | None:
        """The row of ``decision_id`` in :func:`_from_row`'s order, or None."""
        raise NotImplementedError

    def _record_feedback(self, decision_id: str, rewards: str) -> bool:
        """Set the feedback of a decision that has none; False if it had some (or is unknown)."""
        raise NotImplementedError

    def _arm_rewards(self, experiment: str) -> list[tuple[str, str | None]]:
        """(arm, rewards as JSON or None) of each decision of ``experiment``."""
        raise NotImplementedError

    def _close_table(self) -> None:
        raise NotImplementedError


class DecisionStore(_Decisions):
    """Decisions by id: recent ones in memory, all of them in the ``decisions`` table.

    Parameters
    ----------
    db : path
        The event log's file; the table lives next to the events.
    memory : int
        Decisions kept in memory for fast feedback (older ones are read back from SQLite).
        Each is two objects the garbage collector tracks, and a full collection walks them
        all: 200,000 decisions paused serving for ~130 ms, 20,000 for ~10 ms.
    """

    def __init__(self, db: str | Path, memory: int = 20_000) -> None:
        self._db = sqlite3.connect(db, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._log = EventLog(db)
        super().__init__(memory)

    def _insert(self, rows: list[tuple]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO decisions(id, user, experiment, arm, policy, "
                "model_version, slate, propensities, exploring, features, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute("COMMIT")
        except Exception:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _select(self, decision_id: str) -> tuple | None:
        row: tuple | None = self._db.execute(
            "SELECT id, user, experiment, arm, policy, model_version, slate, propensities, "
            "exploring, features, created_at, rewards FROM decisions WHERE id = ?",
            (decision_id,),
        ).fetchone()
        return row

    def _record_feedback(self, decision_id: str, rewards: str) -> bool:
        changed = self._db.execute(
            "UPDATE decisions SET feedback_at = ?, rewards = ? "
            "WHERE id = ? AND feedback_at IS NULL",
            (time.time(), rewards, decision_id),
        ).rowcount
        return bool(changed)

    def _arm_rewards(self, experiment: str) -> list[tuple[str, str | None]]:
        return self._db.execute(
            "SELECT arm, rewards FROM decisions WHERE experiment = ?", (experiment,)
        ).fetchall()

    def _close_table(self) -> None:
        self._db.close()


class PostgresDecisionStore(_Decisions):
    """:class:`DecisionStore` on PostgreSQL, shared by every replica of the service.

    The ``decisions`` table lives in the event log's schema (created by a migration of
    :mod:`lifelong_rec.service.stores`); impressions go to the :class:`PostgresEventLog` of
    that schema. Feedback is accepted once across replicas: the update that records it only
    changes a row without feedback, and PostgreSQL's row lock makes a second, concurrent
    update wait for the first and then find the feedback there.

    Parameters
    ----------
    url : str
        A libpq connection URL, ``postgresql://user@host:port/dbname``.
    schema : str
        The event log's schema, created if missing.
    memory : int
        Decisions kept in memory for fast feedback (others are read back from the table).
    pool_size : int
        The most connections the table uses (the log has a pool of its own).
    timeout : float
        Seconds to wait for a connection.
    """

    def __init__(
        self,
        url: str,
        schema: str = "public",
        memory: int = 20_000,
        *,
        pool_size: int = 4,
        timeout: float = 30.0,
    ) -> None:
        from lifelong_rec.service.stores import open_pool  # imports psycopg

        self.url = url
        self.schema = schema
        self._settle_lock = (_SETTLE_LOCK, zlib.crc32(schema.encode()) - 2**31)
        self._log = open_log(url, schema=schema)  # first: it creates the schema
        try:
            self._pool = open_pool(url, schema, pool_size=pool_size, timeout=timeout)
        except BaseException:
            self._log.close()
            raise
        super().__init__(memory)

    def _insert(self, rows: list[tuple]) -> None:
        with self._pool.connection() as connection, connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO decisions(id, user_id, experiment, arm, policy, model_version, "
                "slate, propensities, exploring, features, created_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING",
                rows,
            )

    def _select(self, decision_id: str) -> tuple | None:
        with self._pool.connection() as connection:
            return connection.execute(
                "SELECT id, user_id, experiment, arm, policy, model_version, slate, "
                "propensities, exploring, features, created_at, rewards FROM decisions "
                "WHERE id = %s",
                (decision_id,),
            ).fetchone()

    def _record_feedback(self, decision_id: str, rewards: str) -> bool:
        with self._pool.connection() as connection:
            # Settlements are numbered in commit order, as the log's offsets are (a lock held
            # to the commit): a reader of settled_seq > n never steps over a late commit.
            connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", self._settle_lock)
            changed = connection.execute(
                "UPDATE decisions SET feedback_at = %s, rewards = %s, settled_seq = "
                "(SELECT COALESCE(MAX(settled_seq), 0) + 1 FROM decisions) "
                "WHERE id = %s AND feedback_at IS NULL",
                (time.time(), rewards, decision_id),
            ).rowcount
        return changed == 1

    def _arm_rewards(self, experiment: str) -> list[tuple[str, str | None]]:
        with self._pool.connection() as connection:
            return connection.execute(
                "SELECT arm, rewards FROM decisions WHERE experiment = %s", (experiment,)
            ).fetchall()

    def _close_table(self) -> None:
        self._pool.close()


def settled_since(
    pool: ConnectionPool, after: int, limit: int = 10_000
) -> list[tuple[int, Served]]:
    """Decisions whose feedback was recorded after settlement number ``after``, with their
    numbers, in the order they were settled (at most ``limit``), read through ``pool`` (of the
    decisions' schema): what a learner process teaches the policies. Every process's
    settlements are there once committed, and one committed late never numbers below one read
    before it (:meth:`PostgresDecisionStore._record_feedback`)."""
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT settled_seq, id, user_id, experiment, arm, policy, model_version, "
            "slate, propensities, exploring, features, created_at, rewards FROM decisions "
            "WHERE settled_seq > %s ORDER BY settled_seq LIMIT %s",
            (after, limit),
        ).fetchall()
    return [(int(row[0]), _from_row(row[1:])) for row in rows]


def _to_row(served: Served) -> tuple:
    d = served.decisions
    features = None if d.features is None else json.dumps(d.features[0].tolist())
    return (
        served.id,
        str(d.users[0]),
        served.experiment,
        served.arm,
        d.policy,
        d.model_version or "",
        json.dumps(d.slates[0].tolist()),
        json.dumps(d.propensities[0].tolist()),
        json.dumps([] if d.exploring is None else d.exploring[0].tolist()),
        features,
        served.created_at,
    )


def _kept(served: Served) -> tuple:
    """A decision as memory keeps it: a tuple of strings, numbers and numpy arrays, which
    the garbage collector stops tracking at its first pass (a :class:`Served` and its
    :class:`Decisions` are five tracked objects; 20,000 of them in memory made every full
    collection walk 100,000 more objects, 20 ms more of every request in flight)."""
    d = served.decisions
    rewards = None if served.rewards is None else tuple(served.rewards)
    return (
        served.id, served.experiment, served.arm, served.created_at, rewards, d.users,
        d.slates, d.propensities, d.policy, json.dumps(d.params), d.model_version, d.explored,
        d.features, d.exploring,
    )  # fmt: skip


def _unkept(kept: tuple) -> Served:
    """The :class:`Served` that :func:`_kept` keeps."""
    (id_, experiment, arm, created_at, rewards, users, slates, propensities, policy, params,
     version, explored, features, exploring) = kept  # fmt: skip
    decisions = Decisions(
        users=users, slates=slates, propensities=propensities, policy=policy,
        params=json.loads(params), model_version=version, explored=explored,
        features=features, exploring=exploring,
    )  # fmt: skip
    served = Served(id_, decisions, experiment, arm, created_at)
    served.rewards = None if rewards is None else list(rewards)
    return served


def _from_row(row: tuple) -> Served:
    (
        id_,
        user,
        experiment,
        arm,
        policy,
        version,
        slate,
        propensities,
        exploring,
        features,
        created_at,
        rewards,
    ) = row
    decisions = Decisions(
        users=np.array([user]),
        slates=np.array([json.loads(slate)]),
        propensities=np.array([json.loads(propensities)], dtype=np.float64),
        policy=policy,
        params={},
        model_version=version or None,
        explored=np.zeros(1, dtype=bool),
        features=None if features is None else np.array([json.loads(features)]),
        exploring=np.array([json.loads(exploring)], dtype=bool),
    )
    served = Served(id_, decisions, experiment, arm, created_at)
    served.rewards = None if rewards is None else json.loads(rewards)
    return served


def impressions(batch: list[Served]) -> EventBatch:
    """The impression events of decisions, in the order they were served.

    ``Decisions.to_events`` for each decision, computed once per group of decisions with the
    same policy, model version and slate length (in steady state one group): per decision,
    it costs more than all the other work of writing it.
    """
    groups: dict[tuple[str, str | None, int], list[int]] = {}
    for number, served in enumerate(batch):
        d = served.decisions
        groups.setdefault((d.policy, d.model_version, d.k), []).append(number)
    parts, order = [], []
    for (_, _, k), numbers in groups.items():
        joined = Decisions.concat([batch[number].decisions for number in numbers])
        parts.append(joined.to_events(np.array([batch[n].created_at for n in numbers])))
        order.append(np.repeat(numbers, k))  # the decision of each event
    if len(parts) == 1:
        return parts[0]
    return EventBatch.concat(parts).take(np.argsort(np.concatenate(order), kind="stable"))


def rewards_matrix(served: Served, rewarded: dict[str, float]) -> np.ndarray:
    """The reward of each shown item, by position, shape (1, k): 0 where none was given."""
    slate = served.decisions.slates[0].tolist()
    return np.array([[rewarded.get(item, 0.0) for item in slate]])
