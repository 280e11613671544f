"""The background learner: follows the event log, updates the model, publishes snapshots.

Serving never waits for learning. The learner owns the model it trains; at most every
``publish_seconds`` it publishes a deep copy as the serving :class:`Snapshot`, and at most every
``persist_seconds`` it writes the newest one to disk (with the live policies, when it was
given them) with the log offset it has learned up to, then commits that offset as the consumer
``learner`` in the log. After a crash, :meth:`Learner.start` loads the newest readable snapshot
on disk (a damaged one is skipped with a warning) and replays the log from its offset: the
events acknowledged since are learned again, none is lost, and none is learned twice into the
restored state.

Only the learner's thread learns, publishes and persists. :meth:`Learner.stop` asks it to
stop: it finishes the chunk it is learning (at most ``learn_chunk`` log offsets), publishes and
persists once, at the offset it has learned, and ends; the rest of the log is learned at the
next start.

Test then train: before it learns a batch, the learner scores the batch's first sightings of
(user, item) pairs against the serving model (HR@10, NDCG@10, see :class:`OnlineQuality`) and
hands the misses to the strategy, whose drift detection watches them.

A rollback (:meth:`Learner.activate`) pins serving to a snapshot until it is released; the pin
is persisted and holds across restarts.

Delegated training (``trained_poll_seconds``): a distributed trainer (``lifelong-rec train``,
:mod:`lifelong_rec.train`) fine-tunes the model on the whole log elsewhere and publishes it in
this learner's store. The learner keeps learning every event as it comes (for the transformer:
appending it to the user's sequence, and its own few steps), and every
``trained_poll_seconds`` looks for a version in the store newer than any it has published:
the trainer's. It then takes that model's network into its own (``adopt_network``: weights
matched by item id; its sequences, ids and newer items stay), distilling from it from then on
when its strategy distils, and publishes the result as its next version.

The snapshot store is a folder (one machine) or PostgreSQL (:class:`PostgresSnapshotStore`),
where API replicas on other machines follow what the learner publishes (``Follower``). While
the database cannot be reached, the learner waits and tries again: what it has not read is
read later, what it has not persisted is persisted later.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.evaluate import hits, ndcg
from lifelong_rec.events import Catalog, EventBatch
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import Recommender
from lifelong_rec.policy import Policy
from lifelong_rec.service.snapshots import (
    DamagedSnapshot,
    PostgresSnapshotStore,
    SavesItself,
    SnapshotInfo,
    SnapshotStore,
)
from lifelong_rec.store import is_unavailable, open_log

log = logging.getLogger("lifelong_rec.service")
CONSUMER = "learner"
QUALITY_K = 10
STOP_LOG_SECONDS = 10.0  # while stop waits for the thread, it says so this often
RETRY_SECONDS = 1.0  # between tries while the database cannot be reached


@dataclass(frozen=True, eq=False)
class Snapshot:
    """What serving reads: a model nobody mutates, its version and the log offset it has
    learned up to (exclusive). ``model`` is None until something has been learned."""

    model: Recommender | None
    version: int
    offset: int
    published_at: float

    @property
    def name(self) -> str | None:
        return None if self.model is None else f"{self.model.name}-v{self.version}"


@dataclass(frozen=True)
class OnlineQuality:
    """How the serving model ranked the events that came next (test then train), since start.

    Each scored event (u, i) is a first sighting of the pair: one the serving model has not
    learned and the first of its batch. It is a hit when i is in the model's top 10 for u,
    as served (seen items excluded); its gain is ``1 / log2(rank + 1)`` (NDCG@10 with one
    relevant item). Per learned chunk at most ``Learner.quality_sample`` events are scored,
    a uniform sample drawn with the learner's seeded generator.

    Attributes
    ----------
    scored : int
        Events scored since start.
    hr_at_10, ndcg_at_10 : float
        Means over all scored events (0 while none is).
    recent_hr_at_10, recent_ndcg_at_10 : float
        Means with exponentially decaying weights: an event's weight halves with every
        ``Learner.quality_half_life`` events scored after it.
    """

    scored: int = 0
    hr_at_10: float = 0.0
    ndcg_at_10: float = 0.0
    recent_hr_at_10: float = 0.0
    recent_ndcg_at_10: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Learner:
    """Consumes the log from its committed offset on a thread of its own.

    Parameters
    ----------
    db : path or str
        The event log (an SQLite file or a PostgreSQL URL); the learner opens its own
        connection.
    store : SnapshotStore or PostgresSnapshotStore
        Where snapshots are persisted; the learner closes it when it stops.
    factory : callable
        Makes a fresh model (with the catalogue when the model reads text).
    strategy : str
        ``parse_strategy`` spec.
    publish_seconds, persist_seconds : float
    learn_batch : int
        Log offsets learned between two looks at the publish and persist clocks.
    keep_snapshots : int
    on_publish : callable, optional
        Called with the serving snapshot whenever it changes (metrics), under the lock that
        orders publishes and rollbacks: it must be quick and must not wait for other threads.
    policies : callable, optional
        Called at every persist; returns copies of the live policies by name (made under the
        caller's own lock), saved with the snapshot. Names must be safe folder names.
    learn_chunk : int
        Log offsets the strategy learns as one block; a stop waits for at most one chunk.
    quality_sample : int
        At most this many events per chunk are scored for :attr:`quality` (a uniform sample).
    quality_half_life : int
        Scored events after which an event's weight in the recent quality halves.
    seed : int
        Seeds the sampling of scored events.
    schema : str
        The PostgreSQL schema of the log ("public"; SQLite has none).
    consumer : str
        The name under which the learned offset is committed in the log.
    settled : callable, optional
        Called at every persist right after ``policies``: the last settlement number (of the
        decisions table) the copies it returned have learned, saved with the snapshot.
    idle_publish_seconds : float, optional
        Also publish when the log moved on by events that change no score (impressions),
        at most this often, so that a snapshot's offset (what API replicas report as learned)
        reaches the log's end. None (in-process serving reads :attr:`offset`) never does.
    trained_poll_seconds : float, optional
        With a distributed trainer publishing into ``store``: how often to look for its
        snapshots and adopt their networks (see the module). None: no trainer.

    Attributes
    ----------
    current : Snapshot
        What serving reads.
    latest : Snapshot
        The newest published snapshot, served or not (while pinned).
    pinned : bool
        Whether serving is pinned to a snapshot (a rollback).
    offset : int
        The next log offset to learn.
    restored_policies : dict of str to Policy
        The policies of the snapshot restored at start (empty if none).
    adopted : SnapshotInfo or None
        The trainer's snapshot whose network was adopted last.
    """

    def __init__(
        self,
        db: str | Path,
        store: SnapshotStore | PostgresSnapshotStore,
        factory: Callable[[], Recommender],
        strategy: str,
        publish_seconds: float,
        persist_seconds: float,
        learn_batch: int,
        keep_snapshots: int,
        on_publish: Callable[[Snapshot], None] | None = None,
        policies: Callable[[], Mapping[str, SavesItself]] | None = None,
        learn_chunk: int = 5_000,
        quality_sample: int = 500,
        quality_half_life: int = 1_000,
        seed: int = 0,
        schema: str = "public",
        consumer: str = CONSUMER,
        settled: Callable[[], int] | None = None,
        idle_publish_seconds: float | None = None,
        trained_poll_seconds: float | None = None,
    ) -> None:
        check_positive_ints(
            learn_batch=learn_batch,
            keep_snapshots=keep_snapshots,
            learn_chunk=learn_chunk,
            quality_sample=quality_sample,
            quality_half_life=quality_half_life,
        )
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if trained_poll_seconds is not None and not trained_poll_seconds > 0:
            raise ValueError(f"trained_poll_seconds must be > 0, got {trained_poll_seconds!r}")
        self.log = open_log(db, schema=schema)
        self.store = store
        self.factory = factory
        self.strategy = parse_strategy(strategy, factory, seed=seed)
        self.publish_seconds = publish_seconds
        self.persist_seconds = persist_seconds
        self.learn_batch = learn_batch
        self.keep_snapshots = keep_snapshots
        self.on_publish = on_publish
        self.policies = policies
        self.learn_chunk = learn_chunk
        self.quality_sample = quality_sample
        self.quality_half_life = quality_half_life
        self.seed = seed
        self.consumer = consumer
        self.settled = settled
        self.restored_settled = 0  # the restored snapshot's settlement number
        self.idle_publish_seconds = idle_publish_seconds
        self.trained_poll_seconds = trained_poll_seconds
        self.adopted: SnapshotInfo | None = None
        self._known_versions: set[int] = set()  # on disk and not a trainer's to adopt
        self.current = Snapshot(None, 0, 0, time.time())  # what serving reads
        self.latest = self.current  # the newest published, served or not (pinning)
        self.pinned = False
        self.offset = 0  # next log offset to learn; moves only once a chunk is learned
        self.restored_policies: dict[str, Policy] = {}
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        # current, latest and pinned change together under this lock, and a prune runs under
        # it: a publish cannot undo a rollback, nor a prune delete what is being activated.
        self._serving_lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._persist_at_stop = True
        self._closed = False
        self._items: list[Catalog] = []  # catalogue updates for the model, applied in order
        self._items_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self._last_version = 0  # the highest version on disk or published: the next is above
        self._persisted_version = 0
        self._dirty = False  # learned something since the last publish
        self._rng = np.random.default_rng(seed)
        self._quality = OnlineQuality()
        self._quality_sums = np.zeros(2)  # hits, gains over all scored events
        self._recent_sums = np.zeros(3)  # decayed hits, gains, weights
        self._quality_failed = False

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Restore the newest readable snapshot (if any) and the pin, then learn from the
        snapshot's offset on (from 0 without one)."""
        versions = self.store.versions()
        self._last_version = max(versions, default=0)  # damaged ones too: never overwritten
        self._known_versions = set(versions)
        for version in reversed(versions):
            try:
                model, info = self.store.load(version)
                policies = self.store.load_policies(version)
            except KeyError:
                continue  # deleted since it was listed
            except DamagedSnapshot as error:
                log.warning("%s: trying the snapshot before it", error)
                continue
            self.strategy.model = model
            self.offset = info.offset
            self.restored_policies = policies
            self.restored_settled = info.settled or 0
            self.current = self.latest = Snapshot(
                copy.deepcopy(model), info.version, info.offset, time.time()
            )
            self._persisted_version = info.version
            log.info("restored snapshot %s (offset %s)", info.version, info.offset)
            break
        else:
            if versions:
                log.warning("no snapshot could be read: starting fresh, learning the log from 0")
        self._restore_pin()
        if self.on_publish and self.current.model is not None:
            self.on_publish(self.current)
        self._thread.start()

    def stop(self, persist: bool = True) -> None:
        """Stop learning: the thread finishes the chunk it is learning, then (unless told not
        to) publishes and persists once, at the offset it has learned. Waits for it, however
        long the chunk takes (saying so in the log every ``STOP_LOG_SECONDS``)."""
        self._persist_at_stop = persist
        self._stop.set()
        self._wake.set()
        started = time.monotonic()
        while self._thread.is_alive():
            self._thread.join(timeout=STOP_LOG_SECONDS)
            if self._thread.is_alive():
                log.warning(
                    "stopping: the learner is still finishing its chunk (%.0f s so far)",
                    time.monotonic() - started,
                )
        if not self._closed:
            self._closed = True
            self.log.close()
            self.store.close()

    def wake(self) -> None:
        """New events are in the log: learn them now rather than at the next poll."""
        self._wake.set()

    def touch(self) -> None:
        """Something saved with the snapshots changed (the policies): publish and persist at
        the next turn, even if no event was learned."""
        self._dirty = True
        self._wake.set()

    def add_items(self, catalog: Catalog) -> None:
        """Make catalogue items known to models that read text (applied by the learner)."""
        with self._items_lock:
            self._items.append(catalog)
        self._wake.set()

    @property
    def lag(self) -> int:
        """Events in the log the learner has not learned yet."""
        return max(0, self.log.end_offset - self.offset)

    @property
    def quality(self) -> OnlineQuality:
        """Online HR@10 and NDCG@10 of the serving model on the events that came next."""
        return self._quality

    # -------------------------------------------------------------- serving control

    def activate(self, version: int | None) -> Snapshot:
        """Serve snapshot ``version`` from disk and stay on it (a rollback), across restarts,
        whatever the learner publishes meanwhile; with None, go back to serving the newest
        model as the learner publishes it.

        Raises
        ------
        KeyError
            If there is no snapshot ``version`` (or it was pruned while it was loaded).
        DamagedSnapshot
            If snapshot ``version`` cannot be read.
        """
        with self._serving_lock:
            if version is None:
                self.store.write_pin(None)
                self.pinned = False
                self.current = self.latest
            else:
                model, info = self.store.load(version)
                self.store.write_pin(info.version)
                self.pinned = True
                self.current = Snapshot(model, info.version, info.offset, time.time())
            if self.on_publish:  # under the lock: a publish cannot report out of order
                self.on_publish(self.current)
            return self.current

    def _restore_pin(self) -> None:
        """Serve the persisted pin again; if its snapshot is gone or damaged, say so, drop
        the pin and follow the newest model."""
        version = self.store.read_pin()
        if version is None:
            return
        if version == self.latest.version and self.latest.model is not None:
            self.pinned = True
            log.info("serving stays pinned to snapshot %s", version)
            return
        try:
            model, info = self.store.load(version)
        except (KeyError, DamagedSnapshot) as error:
            log.warning(
                "serving was pinned to snapshot %s, which cannot be loaded (%s): "
                "following the newest model",
                version,
                error,
            )
            self.store.write_pin(None)
            return
        self.current = Snapshot(model, info.version, info.offset, time.time())
        self.pinned = True
        log.info("serving stays pinned to snapshot %s", version)

    # -------------------------------------------------------------- the loop

    def _run(self) -> None:
        last_publish = last_persist = last_poll = time.monotonic()
        away = False  # the database cannot be reached (said once per outage)
        try:
            while not self._stop.is_set():
                try:
                    learned = self._learn_pending()
                    if self._stop.is_set():
                        break  # the final publish and persist follow
                    now = time.monotonic()
                    poll = self.trained_poll_seconds
                    if poll is not None and now - last_poll >= poll:
                        self._adopt_trained()
                        last_poll = now
                    if now - last_publish >= self.publish_seconds and self._publish():
                        last_publish = now
                    if now - last_persist >= self.persist_seconds:
                        self._persist()
                        last_persist = now
                except Exception as error:
                    if not is_unavailable(error):
                        raise
                    if not away:
                        log.warning("the database is unreachable, learning waits: %s", error)
                    away = True
                    self._stop.wait(RETRY_SECONDS)
                    continue
                if away:
                    log.info("the database is back: learning goes on at offset %s", self.offset)
                    away = False
                if not learned:
                    self._wake.wait(timeout=0.05)
                    self._wake.clear()
            if self._persist_at_stop:
                self._publish()
                self._persist()
        except BaseException as error:  # surfaced by /readyz, never silently
            self.error = error
            log.exception("the learner stopped")

    def _learn_pending(self) -> bool:
        """Apply catalogue updates, then learn up to ``learn_batch`` log offsets, a chunk at a
        time, until asked to stop; whether it did anything."""
        with self._items_lock:
            items, self._items = self._items, []
        model = self.strategy.model
        # Only models that read text take catalogue items (before the first fit, the factory
        # reads them from the log).
        add_items = getattr(model, "add_items", None) if hasattr(model, "text_encoder") else None
        for catalog in items:
            if add_items is not None and getattr(model, "text_encoder", None):
                add_items(catalog)
                self._dirty = True
        end = min(self.log.end_offset, self.offset + self.learn_batch)
        if end <= self.offset:
            self.caught_up.set()
            return bool(items)
        while self.offset < end and not self._stop.is_set():
            stop = min(end, self.offset + self.learn_chunk)
            # Only what models learn from: impressions (weight 0) change no score, and would
            # make every served list cost a read, a learn and a publish.
            batch = self.log.read(self.offset, stop, positive=True)
            if len(batch):
                self._learn(batch)
                self._dirty = True
            self.offset = stop  # after the learn: a snapshot never claims what is not in it
        return True

    def _learn(self, batch: EventBatch) -> None:
        if self.strategy.model is None:
            self.strategy.warm_up(batch)
            return
        errors = self._test(batch)
        self.strategy.observe(batch)
        self.strategy.end_block(batch, errors)

    def _publish(self) -> bool:
        """Publish the learner's model as a new version, if it changed (or, with
        ``idle_publish_seconds``, if only its offset moved and that long has passed)."""
        if self.strategy.model is None:
            return False
        if not self._dirty:
            idle = self.idle_publish_seconds
            moved = self.offset > self.latest.offset
            if idle is None or not moved or time.time() - self.latest.published_at < idle:
                return False
        model = copy.deepcopy(self.strategy.model)  # only this thread changes the model
        with self._serving_lock:
            self._last_version += 1
            snapshot = Snapshot(model, self._last_version, self.offset, time.time())
            self._dirty = False
            self.latest = snapshot
            if not self.pinned:
                self.current = snapshot
            if self.on_publish:
                self.on_publish(self.current)
        return True

    def _adopt_trained(self) -> bool:
        """Adopt the network of the newest snapshot a trainer published since this learner's
        last version, if any; whether it did."""
        versions = self.store.versions()
        newer = [version for version in versions if version not in self._known_versions]
        # forget what was pruned; what is there now is known from here on
        self._known_versions = set(versions)
        if not newer:
            return False
        # this learner's next version comes after them (it may have published in memory
        # the very number a trainer took on disk: its persist then takes the next)
        self._last_version = max(self._last_version, *newer)
        model = self.strategy.model
        adopt = getattr(model, "adopt_network", None)
        for version in reversed(newer):
            try:
                trained, info = self.store.load(version)
            except (KeyError, DamagedSnapshot) as error:
                log.warning("trained snapshot %s cannot be adopted: %s", version, error)
                continue
            if model is None or adopt is None:
                log.warning("snapshot %s was published beside this learner, whose model "
                            "cannot adopt a network: ignored", version)  # fmt: skip
                return False
            try:
                adopt(trained)
            except ValueError as error:
                log.warning("trained snapshot %s cannot be adopted: %s", version, error)
                return False
            self.adopted = info
            self._dirty = True  # the next publish serves it
            log.info("adopted the network of trained snapshot %s (trained to offset %s)",
                     version, info.offset)  # fmt: skip
            return True
        return False

    def _persist(self) -> SnapshotInfo | None:
        """Write the newest published snapshot to disk and commit its offset."""
        snapshot = self.latest
        if snapshot.model is None or snapshot.version <= self._persisted_version:
            return None
        policies = self.policies() if self.policies is not None else None
        settled = self.settled() if self.settled is not None else None
        quality = asdict(self._quality) if self._quality.scored else None
        try:
            info = self.store.save(
                snapshot.model, snapshot.version, snapshot.offset, policies, quality, settled
            )
        except FileExistsError:
            if self.trained_poll_seconds is None:
                raise
            # a trainer published this version number first: adopt it, publish ours after
            self._adopt_trained()
            self._dirty = True
            self._publish()
            return self._persist()
        self._persisted_version = snapshot.version  # saved: a retry must not save it again
        self._known_versions.add(snapshot.version)  # this learner's own
        self.log.commit(self.consumer, snapshot.offset)
        with self._serving_lock:  # what serves, or is pinned, stays on disk
            self.store.prune(self.keep_snapshots, {self.current.version})
        return info

    # -------------------------------------------------------------- test then train

    def _test(self, batch: EventBatch) -> np.ndarray:
        """Score a sample of the batch's first sightings against the serving model; the
        misses (1) and hits (0) of the scored events, in batch order (the strategy's errors:
        one per scored event, as in P1; events not scored are left out, not counted as hits).
        """
        model = self.current.model
        if model is None:
            return np.zeros(0)
        try:
            rows = np.flatnonzero(first_sightings(model, batch.user, batch.item))
            if len(rows) > self.quality_sample:
                rows = np.sort(self._rng.choice(rows, self.quality_sample, replace=False))
            if not len(rows):
                return np.zeros(0)
            ranks = next_item_ranks(model, batch.user[rows], batch.item[rows], QUALITY_K)
        except Exception:  # a measurement: learning goes on without it
            if not self._quality_failed:
                log.exception("online quality: the serving model could not be scored")
                self._quality_failed = True
            return np.zeros(0)
        hit, gain = hits(ranks, QUALITY_K), ndcg(ranks, QUALITY_K)
        self._record_quality(hit, gain)
        return 1.0 - hit

    def _record_quality(self, hit: np.ndarray, gain: np.ndarray) -> None:
        n = len(hit)
        self._quality_sums += (hit.sum(), gain.sum())
        decay = 0.5 ** (1.0 / self.quality_half_life)
        weights = decay ** np.arange(n - 1, -1, -1, dtype=np.float64)  # the newest weighs 1
        self._recent_sums *= decay**n
        self._recent_sums += (weights @ hit, weights @ gain, weights.sum())
        scored = self._quality.scored + n
        recent_hits, recent_gains, recent_weight = self._recent_sums
        self._quality = OnlineQuality(  # one swap: readers see a consistent set
            scored=scored,
            hr_at_10=float(self._quality_sums[0] / scored),
            ndcg_at_10=float(self._quality_sums[1] / scored),
            recent_hr_at_10=float(recent_hits / recent_weight),
            recent_ndcg_at_10=float(recent_gains / recent_weight),
        )


def first_sightings(model: Recommender, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Which events are the first sighting of their (user, item) pair: not in the model's
    history, and the first of the pair among ``users``/``items``.

    Returns
    -------
    first : array of bool, shape (n,)
    """
    n = len(users)
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, user_codes = np.unique(users, return_inverse=True)
    item_names, item_codes = np.unique(items, return_inverse=True)
    keys = user_codes.astype(np.int64) * len(item_names) + item_codes
    first = np.zeros(n, dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    user_index, item_index = model.users_.lookup(users), model.items_.lookup(items)
    known = np.flatnonzero((user_index >= 0) & (item_index >= 0))
    seen = np.zeros(n, dtype=bool)
    seen[known] = model.history_.contains(user_index[known], item_index[known])
    return first & ~seen


def next_item_ranks(
    model: Recommender, users: np.ndarray, items: np.ndarray, k: int = QUALITY_K
) -> np.ndarray:
    """The rank (1 = first) of each ``items[j]`` in the model's top ``k`` for ``users[j]``,
    as served (seen items excluded); inf where it is not in it. One ``recommend`` call for
    the distinct users.

    Returns
    -------
    ranks : array of float, shape (n,)
    """
    if len(users) == 0:
        return np.zeros(0)
    distinct, row = np.unique(users, return_inverse=True)
    top = model.recommend(distinct, k=k).items  # (n_distinct, k), "" for padding
    match = top[row] == np.asarray(items, dtype=str)[:, None]
    found = match.any(axis=1)
    return np.where(found, match.argmax(axis=1) + 1.0, math.inf)
