"""What an API replica serves: the snapshots a learner process publishes in PostgreSQL.

``lifelong-rec serve --role api`` runs no learner. Its :class:`Follower` stands where the
in-process :class:`~lifelong_rec.service.learner.Learner` stands for the engine (``current``,
``pinned``, ``activate``, ``quality``, ``lag``, ...), but every model it serves comes from the
:class:`~lifelong_rec.service.snapshots.PostgresSnapshotStore` that ``lifelong-rec learn``
writes:

- at start it loads the pinned snapshot, or else the newest;
- a thread of its own holds a ``LISTEN`` connection on the snapshots' channel: a notice (sent
  when a snapshot or a pin commits) makes it look at once, and it looks at least every
  ``poll_seconds`` whatever it hears, so a lost notice or connection delays a model by that
  much at most;
- a rollback (:meth:`Follower.activate`) writes the pin, which every replica then follows.

While the database cannot be reached, the follower keeps serving the model it has and
reconnects in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from lifelong_rec.events import Catalog
from lifelong_rec.service.learner import OnlineQuality, Snapshot
from lifelong_rec.service.snapshots import (
    CHANNEL,
    DamagedSnapshot,
    PostgresSnapshotStore,
    SnapshotInfo,
)
from lifelong_rec.store import is_unavailable

if TYPE_CHECKING:
    from lifelong_rec.models import Recommender
    from lifelong_rec.policy import Policy
    from lifelong_rec.store.postgres import PostgresEventLog

log = logging.getLogger("lifelong_rec.service")


class Follower:
    """Serves the newest published (or the pinned) snapshot of ``store``.

    Parameters
    ----------
    store : PostgresSnapshotStore
        The snapshots of the model this replica serves; closed by :meth:`stop`.
    log : PostgresEventLog
        The event log, for :attr:`lag` (the engine's own; not closed here).
    on_publish : callable, optional
        Called with the serving snapshot whenever it changes (metrics).
    poll_seconds : float
        The longest the follower goes without looking for a new snapshot.

    Attributes
    ----------
    current : Snapshot
        What serving reads (no model until a learner has published one).
    pinned : bool
        Whether serving is pinned to a snapshot (a rollback, by any replica).
    caught_up : threading.Event
        Set once a model is loaded: the replica is ready.
    error : BaseException or None
        Always None: a follower's failures are retried, never fatal.
    restored_policies : dict of str to Policy
        The policies saved with the serving snapshot: those the learner process taught from
        every replica's feedback, which the engine serves (see ``Engine._adopt_policies``).
    """

    def __init__(
        self,
        store: PostgresSnapshotStore,
        log: PostgresEventLog,
        on_publish: Callable[[Snapshot], None] | None = None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.store = store
        self.log = log
        self.on_publish = on_publish
        self.poll_seconds = poll_seconds
        self.current = Snapshot(None, 0, 0, time.time())
        self.pinned = False
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self.restored_policies: dict[str, Policy] = {}
        self._quality = OnlineQuality()
        self._lock = threading.Lock()  # one refresh at a time: the thread's, or activate's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follower", daemon=True)

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Load what serves now (if anything is published), then follow."""
        self.refresh()
        self._thread.start()

    def stop(self, persist: bool = True) -> None:
        """Stop following (``persist`` is the learner's argument: a follower has nothing to
        persist)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.store.close()

    def wake(self) -> None:
        """New events: the learner process learns them (this replica has nothing to do)."""

    def add_items(self, catalog: Catalog) -> None:
        """Catalogue items: written to the log by the engine; the learner process reads them."""

    # -------------------------------------------------------------- what the engine reads

    @property
    def latest(self) -> Snapshot:
        return self.current

    @property
    def offset(self) -> int:
        """The log offset the serving model has learned up to."""
        return self.current.offset

    @property
    def lag(self) -> int:
        """Events in the log the serving model has not learned yet."""
        return max(0, self.log.end_offset - self.current.offset)

    @property
    def quality(self) -> OnlineQuality:
        """The online quality the learner measured when it saved the serving snapshot."""
        return self._quality

    def activate(self, version: int | None) -> Snapshot:
        """Pin every replica to snapshot ``version`` (None: follow the newest again), and
        serve it here at once.

        Raises
        ------
        KeyError
            If there is no snapshot ``version``.
        DamagedSnapshot
            If it cannot be read.
        """
        with self._lock:
            if version is not None:
                loaded = self.store.load_all(version)  # fails before anything is pinned
                self.store.write_pin(version)
                self.pinned = True
                self._serve(*loaded)
                return self.current
            self.store.write_pin(None)
        self.refresh()
        return self.current

    # -------------------------------------------------------------- following

    def refresh(self) -> bool:
        """Serve the pinned snapshot, or else the newest, if it is not what serves now;
        whether the model changed. A snapshot pruned or damaged meanwhile is skipped (the next
        look finds what replaced it)."""
        with self._lock:
            newest, pin = self.store.head()
            self.pinned = pin is not None
            target = pin if pin is not None else (newest.version if newest else None)
            if target is None or (target == self.current.version and self.current.model):
                return False
            try:
                loaded = self.store.load_all(target)
            except (KeyError, DamagedSnapshot) as error:
                log.warning("snapshot %s of %s cannot be served: %s", target, self.store.name,
                            error)  # fmt: skip
                return False
            self._serve(*loaded)
            return True

    def _serve(self, model: Recommender, info: SnapshotInfo, policies: dict[str, Policy]) -> None:
        self.current = Snapshot(model, info.version, info.offset, time.time())
        self.restored_policies = policies
        if info.quality is not None:  # OnlineQuality's fields, saved as JSON numbers
            values = dict(info.quality) | {"scored": int(info.quality.get("scored", 0))}
            self._quality = OnlineQuality(**values)  # type: ignore[arg-type]
        self.caught_up.set()
        if self.on_publish:
            self.on_publish(self.current)

    def _run(self) -> None:
        """Listen for notices on a connection of its own; look on each one, and at least every
        ``poll_seconds``; reconnect after a failure."""
        import psycopg

        away = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.store.url, autocommit=True, connect_timeout=5) as link:
                    link.execute(f"LISTEN {CHANNEL}")
                    if away:
                        log.info("the database is back: following snapshots again")
                        away = False
                    self.refresh()  # what was published while nobody listened
                    while not self._stop.is_set():
                        heard = [
                            notice.payload
                            for notice in link.notifies(timeout=self.poll_seconds, stop_after=1)
                        ]
                        if not heard or self.store.key in heard:
                            self.refresh()
            except Exception as error:
                if not is_unavailable(error):
                    log.exception("following snapshots failed; trying again")
                elif not away:
                    log.warning("the database is unreachable; serving %s meanwhile: %s",
                                self.current.name, error)  # fmt: skip
                away = True
                self._stop.wait(1.0)
