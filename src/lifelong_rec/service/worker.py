"""``lifelong-rec learn``: one learner process for one model, under a lease.

API replicas (``serve --role api``) learn nothing; a learner process follows the PostgreSQL
event log for one model and publishes its snapshots to the database, where every replica
loads them. One learner per model learns at a time: each holds a :class:`Lease`, a PostgreSQL
session-level advisory lock of ``(schema, name)``. A second process for the same model waits
for the lease and takes over when the holder dies:

- the holder's process ends (a crash, SIGKILL): its connection closes and PostgreSQL frees
  the lock at once;
- the holder's machine or network goes away: the server notices the dead connection through
  TCP keep-alives (:data:`LEASE_KEEPALIVE` gives about :data:`LEASE_SECONDS` s) and frees it.

The new holder restores the newest snapshot in the database and learns the log from its
offset on, so nothing is skipped and nothing is learned twice into the restored state. It also
listens for the catalogue's notices: an item added through any replica reaches a text model
(which makes it rankable through its text) in the next snapshot. A holder
that loses its lease (its connection breaks, e.g. while PostgreSQL restarts) stops learning at
once without persisting, and queues for the lease again. A stale holder that did not notice is
fenced off by the snapshot table: the version it would write next is taken (the save fails,
and it starts over from the newest snapshot).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from lifelong_rec.events import Catalog
from lifelong_rec.models import parse_model, with_catalog
from lifelong_rec.policy import Decisions, Greedy, Policy, parse_policy
from lifelong_rec.service.decisions import Served, settled_since
from lifelong_rec.service.experiments import DEFAULT_POLICY, Experiment, policy_key
from lifelong_rec.service.learner import Learner
from lifelong_rec.service.settings import Settings
from lifelong_rec.service.snapshots import PostgresSnapshotStore
from lifelong_rec.store import is_unavailable, open_log

if TYPE_CHECKING:  # psycopg is imported only where a PostgreSQL database is used
    from lifelong_rec.store import EventLog
    from lifelong_rec.store.postgres import PostgresEventLog

log = logging.getLogger("lifelong_rec.service")

#: a replica's learned offset reaches the log's end this long after impressions alone arrive
IDLE_PUBLISH_SECONDS = 2.0
_LEASE_LOCK = 0x4C52_0003  # first key of the two-key advisory lock (see store.postgres)
#: TCP keep-alive settings of the lease's session, on the server's side (seconds, probes)
LEASE_KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2,
                   "tcp_keepalives_count": 3}  # fmt: skip
#: about how long a lease outlives a holder whose machine vanished
LEASE_SECONDS = (
    LEASE_KEEPALIVE["tcp_keepalives_idle"]
    + LEASE_KEEPALIVE["tcp_keepalives_interval"] * LEASE_KEEPALIVE["tcp_keepalives_count"]
)


class Lease:
    """The right to learn model ``name`` in ``schema``: an advisory lock held by a session.

    Parameters
    ----------
    url : str
    schema : str
    name : str
    retry_seconds : float
        How often a waiting process asks for the lease again.
    """

    def __init__(self, url: str, schema: str, name: str, retry_seconds: float = 0.5) -> None:
        self.url, self.schema, self.name = url, schema, name
        self.retry_seconds = retry_seconds
        self.key = (_LEASE_LOCK, zlib.crc32(f"{schema}/{name}".encode()) - 2**31)
        self._link: object | None = None

    def acquire(self, stop: threading.Event) -> bool:
        """Wait until this process holds the lease (True), or ``stop`` is set (False).
        Reconnects while the database is away."""
        import psycopg

        said = False
        while not stop.is_set():
            try:
                link = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                try:
                    for setting, value in LEASE_KEEPALIVE.items():
                        link.execute(f"SET {setting} = {int(value)}")
                    while not stop.is_set():
                        row = link.execute("SELECT pg_try_advisory_lock(%s, %s)", self.key)
                        if row.fetchone() == (True,):
                            self._link = link
                            return True
                        if not said:
                            log.info("waiting for the lease of %s (another learner holds it)",
                                     self.name)  # fmt: skip
                            said = True
                        stop.wait(self.retry_seconds)
                finally:
                    if self._link is not link:
                        link.close()
            except Exception as error:
                if not is_unavailable(error):
                    raise
                log.warning("the database is unreachable; waiting for the lease: %s", error)
                stop.wait(1.0)
        return False

    def held(self) -> bool:
        """Whether the lease is still this process's: its session answers (a broken
        connection means PostgreSQL has freed the lock, or will)."""
        import psycopg

        link = self._link
        if not isinstance(link, psycopg.Connection):
            return False
        try:
            link.execute("SELECT 1")
            return True
        except Exception as error:
            if not is_unavailable(error):
                raise
            return False

    def release(self) -> None:
        """Give the lease up (closing the session frees the lock)."""
        link, self._link = self._link, None
        if link is not None:
            try:
                link.close()  # type: ignore[attr-defined]
            except Exception:  # already broken: the lock is gone with it
                log.debug("closing the lease's connection failed", exc_info=True)


def learner_name(spec: str, arm: bool = False) -> str:
    """The name a model's snapshots, consumer offset and lease go by: the spec, or
    ``arm:<spec>`` for a model an experiment arm learns apart."""
    return f"arm:{spec}" if arm else spec


def run_learner(
    settings: Settings,
    stop: threading.Event,
    *,
    name: str | None = None,
    check_seconds: float = 0.5,
) -> None:
    """Learn ``settings.model`` under its lease until ``stop`` is set.

    Publishes a snapshot to the database every ``settings.publish_seconds`` when it learned
    something (the replicas' freshness), and persists at the end. Returns when ``stop`` is set.

    Parameters
    ----------
    settings : Settings
        ``db`` must be a PostgreSQL URL.
    stop : threading.Event
    name : str, optional
        The snapshots' name (default: the model spec; ``arm:<spec>`` learns an arm's model).
    check_seconds : float
        How often the lease and the learner are checked.
    """
    name = name or settings.model
    _, factory = parse_model(settings.model)
    lease = Lease(settings.db, settings.db_schema, name)
    while not stop.is_set():
        if not lease.acquire(stop):
            return
        log.info("holding the lease of %s: learning", name)
        learner: Learner | None = None
        store: PostgresSnapshotStore | None = None
        items: _CatalogFollower | None = None
        trainer: PolicyTrainer | None = None
        try:
            catalog_log = open_log(settings.db, schema=settings.db_schema)
            try:
                catalog = catalog_log.catalog()
            finally:
                catalog_log.close()
            store = PostgresSnapshotStore(settings.db, settings.db_schema, name)
            trainer = PolicyTrainer(settings)
            learner = Learner(
                db=settings.db,
                schema=settings.db_schema,
                store=store,
                factory=with_catalog(factory, catalog),
                strategy=settings.strategy,
                publish_seconds=settings.publish_seconds,
                persist_seconds=settings.publish_seconds,  # published = in the database
                learn_batch=settings.learn_batch,
                keep_snapshots=settings.keep_snapshots,
                consumer=f"learner:{name}",
                policies=trainer.copies,
                settled=trainer.copied,
                idle_publish_seconds=IDLE_PUBLISH_SECONDS,
                trained_poll_seconds=settings.trained_poll_seconds,
            )
            started, caught_up = time.monotonic(), False
            learner.start()
            trainer.restore(learner.restored_policies, learner.restored_settled)
            log.info("restored offset %s of %s", learner.offset, name)
            items = _CatalogFollower(settings, learner.log, catalog)
            while True:
                items.wait(check_seconds)  # a catalogue notice ends the wait early
                if stop.is_set():
                    break
                taught = trainer.step()
                if taught:
                    learner.touch()  # the policies changed: publish them
                changed = items.changes()
                if changed is not None and len(changed):
                    learner.add_items(changed)
                    log.info("%d catalogue items added or changed", len(changed))
                if learner.error is not None:
                    log.error("the learner of %s failed (%r): starting over", name,
                              learner.error)  # fmt: skip
                    break
                if not lease.held():
                    log.warning("lost the lease of %s: stopping without persisting", name)
                    break
                if learner.caught_up.is_set() and not caught_up:
                    caught_up = True
                    log.info("caught up with the log in %.1f s (offset %s)",
                             time.monotonic() - started, learner.offset)  # fmt: skip
        except Exception as error:
            if not is_unavailable(error):
                raise
            log.warning("the database is unreachable; starting over: %s", error)
        finally:
            if trainer is not None:
                trainer.close()
            if items is not None:
                items.close()
            if learner is not None:  # it closes the store
                keep = stop.is_set() and learner.error is None and lease.held()
                learner.stop(persist=keep)
            elif store is not None:
                store.close()
            lease.release()
        stop.wait(1.0)


class PolicyTrainer:
    """The serving policies, taught in the learner process from the feedback every replica
    records, and saved with each snapshot, where every replica takes them.

    Replicas record feedback in the decisions table, where each settlement gets a number in
    commit order (``settled_seq``). The trainer reads the settlements after the last one it
    learned, teaches each decision's policy (the default one, configured by ``policy`` as on
    the replicas, or the running experiment arm's), and remembers where it is; the learner saves
    that number with the policies (:meth:`copies`, then :meth:`copied`), so a learner taking
    over restores both from the newest snapshot and goes on from there.
    """

    def __init__(self, settings: Settings) -> None:
        from lifelong_rec.service.experiments import PostgresExperiments
        from lifelong_rec.service.stores import open_pool

        self.settings = settings
        self._pool = open_pool(settings.db, settings.db_schema, pool_size=1, timeout=30.0)
        try:
            self._experiments = PostgresExperiments(settings.db, settings.db_schema)
        except BaseException:
            self._pool.close()
            raise
        self._lock = threading.Lock()  # the policies: taught here, copied by the learner
        self._policies: dict[str, Policy] = {DEFAULT_POLICY: _configured(settings.policy)}
        self._restored: Mapping[str, Policy] = {}
        self.settled = 0  # the last settlement taught
        self._copied = 0

    def restore(self, saved: Mapping[str, Policy], settled: int) -> None:
        """Go on from a snapshot's policies (each that matches its configuration) and its
        settlement number."""
        default = _matching(saved.get(DEFAULT_POLICY), _configured(self.settings.policy))
        with self._lock:
            self._restored = saved
            self._policies = {DEFAULT_POLICY: default}
            self.settled = settled

    def step(self, limit: int = 10_000) -> int:
        """Teach the policies the settlements since the last step; how many were read."""
        rows = settled_since(self._pool, self.settled, limit)
        if not rows:
            return 0
        running = self._experiments.running()
        groups: dict[tuple[str, str, int], list[Served]] = {}
        for _, served in rows:
            key = policy_key(served.experiment, served.arm)
            if served.experiment is not None and (
                running is None or served.experiment != running.name
            ):
                continue  # a stopped experiment's policies are gone
            groups.setdefault((key, served.decisions.policy, served.decisions.k), []).append(served)
        with self._lock:
            for (key, _, _), group in groups.items():
                policy = self._policy(key, running)
                if policy is None:
                    continue
                decisions = Decisions.concat([served.decisions for served in group])
                rewards = np.array([served.rewards for served in group], dtype=np.float64)
                try:
                    policy.update(decisions, rewards)
                except Exception:  # one policy's failure must not stop the others
                    log.exception("policy %s could not learn %d decisions", key, len(group))
            self.settled = rows[-1][0]
        return len(rows)

    def _policy(self, key: str, running: Experiment | None) -> Policy | None:
        """The policy saved under ``key``, made (or restored) on first use for an arm of the
        running experiment."""
        if key in self._policies:
            return self._policies[key]
        if running is None:
            return None
        for arm in running.arms:
            if policy_key(running.name, arm.name) == key:
                made = _matching(self._restored.get(key), _configured(arm.policy))
                self._policies[key] = made
                return made
        return None

    def copies(self) -> dict[str, Policy]:
        """Copies of the policies, to save with a snapshot (the learner's thread calls it)."""
        with self._lock:
            self._copied = self.settled
            return {key: copy.deepcopy(policy) for key, policy in self._policies.items()}

    def copied(self) -> int:
        """The settlement number the last :meth:`copies` had learned."""
        return self._copied

    def close(self) -> None:
        self._pool.close()
        self._experiments.close()


def _configured(spec: str | None) -> Policy:
    """The policy a spec configures, as the service makes it (greedy when None)."""
    return Greedy(k=1) if spec is None else parse_policy(spec, k=1)


def _matching(saved: Policy | None, configured: Policy) -> Policy:
    """``saved`` if it is the configured policy (same repr), else ``configured``."""
    return saved if saved is not None and repr(saved) == repr(configured) else configured


class _CatalogFollower:
    """Hears the catalogue's notices (:data:`~lifelong_rec.store.postgres.CATALOG_CHANNEL`) on
    a connection of its own, and tells which items are new or changed since it last looked:
    an item added through any API replica reaches the learner's text model within a second."""

    def __init__(
        self, settings: Settings, log: EventLog | PostgresEventLog, known: Catalog
    ) -> None:
        import psycopg

        from lifelong_rec.store.postgres import CATALOG_CHANNEL

        self.settings = settings
        self.log = log  # the learner's: thread-safe, and open already
        self.known = known
        self._link = psycopg.connect(settings.db, autocommit=True, connect_timeout=5)
        self._link.execute(f"LISTEN {CATALOG_CHANNEL}")
        # An upsert that committed between the learner's catalogue read and the LISTEN above
        # sent its notice to nobody: look once anyway.
        self._heard = True

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for a catalogue notice (of any schema)."""
        schema = self.settings.db_schema
        for notice in self._link.notifies(timeout=seconds, stop_after=1):
            self._heard = self._heard or notice.payload == schema

    def changes(self) -> Catalog | None:
        """The items new or changed since the last look, if a notice came; None otherwise."""
        if not self._heard:
            return None
        self._heard = False
        current = self.log.catalog()
        changed = catalog_changes(self.known, current)
        self.known = current
        return changed

    def close(self) -> None:
        self._link.close()


def catalog_changes(before: Catalog, after: Catalog) -> Catalog:
    """The items of ``after`` that ``before`` lacks, or whose title, text or categories differ.

    Examples
    --------
    >>> old = Catalog.from_records([{"item": "a", "title": "A"}, {"item": "b", "title": "B"}])
    >>> new = Catalog.from_records([{"item": "a", "title": "A"}, {"item": "b", "title": "B2"},
    ...                             {"item": "c", "title": "C"}])
    >>> catalog_changes(old, new).item.tolist()
    ['b', 'c']
    """

    def keys(catalog: Catalog) -> np.ndarray:
        joined = ["\x1f".join(categories) for categories in catalog.categories]
        parts = (catalog.item, catalog.title, catalog.text, np.array(joined, dtype=str))
        out = parts[0].astype(object)
        for part in parts[1:]:
            out = out + "\x1e" + part.astype(object)
        return out

    changed = np.flatnonzero(~np.isin(keys(after), keys(before)))
    return Catalog(
        item=after.item[changed],
        title=after.title[changed],
        text=after.text[changed],
        categories=tuple(after.categories[row] for row in changed.tolist()),
        attributes=tuple(after.attributes[row] for row in changed.tolist()),
    )
