"""The background learner: follows the event log, updates the model, publishes snapshots.

Serving never waits for learning. The learner owns the model it trains; at most every
``publish_seconds`` it publishes a deep copy as the serving :class:`Snapshot` (one attribute
swap, atomic under the GIL), and at most every ``persist_seconds`` it writes the newest one to
disk with the log offset it has learned up to, then commits that offset as the consumer
``learner`` in the log. After a crash, :meth:`Learner.start` loads the newest snapshot on disk
and replays the log from its offset: the events acknowledged since are learned again, none is
lost, and none is learned twice into the restored state.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lifelong_rec.events import Catalog
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import Recommender
from lifelong_rec.service.snapshots import SnapshotInfo, SnapshotStore
from lifelong_rec.store import EventLog

log = logging.getLogger("lifelong_rec.service")
CONSUMER = "learner"


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


class Learner:
    """Consumes the log from its committed offset on a thread of its own.

    Parameters
    ----------
    db : path
        The event log; the learner opens its own connection.
    store : SnapshotStore
    factory : callable
        Makes a fresh model (with the catalogue when the model reads text).
    strategy : str
        ``parse_strategy`` spec.
    publish_seconds, persist_seconds : float
    learn_batch : int
    keep_snapshots : int
    on_publish : callable, optional
        Called with every published snapshot (metrics).
    """

    def __init__(
        self,
        db: str,
        store: SnapshotStore,
        factory: Callable[[], Recommender],
        strategy: str,
        publish_seconds: float,
        persist_seconds: float,
        learn_batch: int,
        keep_snapshots: int,
        on_publish: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.log = EventLog(db)
        self.store = store
        self.factory = factory
        self.strategy = parse_strategy(strategy, factory)
        self.publish_seconds = publish_seconds
        self.persist_seconds = persist_seconds
        self.learn_batch = learn_batch
        self.keep_snapshots = keep_snapshots
        self.on_publish = on_publish
        self.current = Snapshot(None, 0, 0, time.time())  # what serving reads
        self.latest = self.current  # the newest published, served or not (pinning)
        self.pinned = False
        self.offset = 0  # next log offset to learn
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._items: list[Catalog] = []  # catalogue updates for the model, applied in order
        self._items_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="learner", daemon=True)
        self._persisted_version = 0
        self._dirty = False  # learned something since the last publish

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Restore the newest snapshot (if any), then learn from its offset on."""
        newest = self.store.newest()
        if newest is not None:
            model, info = self.store.load(newest.version)
            self.strategy.model = model
            self.offset = info.offset
            self.current = self.latest = Snapshot(
                copy.deepcopy(model), info.version, info.offset, time.time()
            )
            self._persisted_version = info.version
            log.info("restored snapshot %s (offset %s)", info.version, info.offset)
            if self.on_publish:
                self.on_publish(self.current)
        self._thread.start()

    def stop(self, persist: bool = True) -> None:
        """Stop the thread; write the newest model to disk unless told not to."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        if persist and self.error is None:
            self._learn_pending()
            self._publish()
            self._persist()
        self.log.close()

    def wake(self) -> None:
        """New events are in the log: learn them now rather than at the next poll."""
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

    # -------------------------------------------------------------- serving control

    def activate(self, version: int | None) -> Snapshot:
        """Serve snapshot ``version`` from disk and stay on it (a rollback), or with None go
        back to serving the newest model as the learner publishes it."""
        if version is None:
            self.pinned = False
            self.current = self.latest
        else:
            model, info = self.store.load(version)
            self.pinned = True
            self.current = Snapshot(model, info.version, info.offset, time.time())
        if self.on_publish:
            self.on_publish(self.current)
        return self.current

    # -------------------------------------------------------------- the loop

    def _run(self) -> None:
        last_publish = last_persist = time.monotonic()
        try:
            while not self._stop.is_set():
                learned = self._learn_pending()
                now = time.monotonic()
                if now - last_publish >= self.publish_seconds and self._publish():
                    last_publish = now
                if now - last_persist >= self.persist_seconds:
                    self._persist()
                    last_persist = now
                if not learned:
                    self._wake.wait(timeout=0.05)
                    self._wake.clear()
        except BaseException as error:  # surfaced by /readyz, never silently
            self.error = error
            log.exception("the learner stopped")

    def _learn_pending(self) -> bool:
        """Apply catalogue updates, then learn one batch from the log; whether it did any."""
        with self._items_lock:
            items, self._items = self._items, []
        model = self.strategy.model
        for catalog in items:  # (before the first fit, the factory reads them from the log)
            if model is not None and getattr(model, "text_encoder", None):
                model.add_items(catalog)
                self._dirty = True
        stop = min(self.log.end_offset, self.offset + self.learn_batch)
        if stop <= self.offset:
            self.caught_up.set()
            return bool(items)
        # Only what models learn from: impressions (weight 0) change no score, and would make
        # every served list cost a read, a learn and a publish.
        batch = self.log.read(self.offset, stop, positive=True)
        self.offset = stop
        if not len(batch):
            return True
        if self.strategy.model is None:
            self.strategy.warm_up(batch)
        else:
            self.strategy.observe(batch)
            self.strategy.end_block(batch, np.zeros(len(batch)))
        self._dirty = True
        return True

    def _publish(self) -> bool:
        """Publish the learner's model as a new version, if it changed."""
        if not self._dirty or self.strategy.model is None:
            return False
        snapshot = Snapshot(
            copy.deepcopy(self.strategy.model), self.latest.version + 1, self.offset, time.time()
        )
        self._dirty = False
        self.latest = snapshot
        if not self.pinned:
            self.current = snapshot
        if self.on_publish:
            self.on_publish(self.current)
        return True

    def _persist(self) -> SnapshotInfo | None:
        """Write the newest published snapshot to disk and commit its offset."""
        snapshot = self.latest
        if snapshot.model is None or snapshot.version <= self._persisted_version:
            return None
        info = self.store.save(snapshot.model, snapshot.version, snapshot.offset)
        self.log.commit(CONSUMER, snapshot.offset)
        self._persisted_version = snapshot.version
        protect = {self.current.version}
        self.store.prune(self.keep_snapshots, protect)
        return info
