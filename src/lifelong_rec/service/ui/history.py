"""What the dashboard draws over time: the service's state, sampled every few seconds.

The engine keeps the present (the log's end, the learner's offset, the online quality of each
serving model, the running experiment's results); :class:`History` samples it every
:data:`SAMPLE_SECONDS` into a ring of the last :data:`KEEP_SAMPLES`, and splits the events
appended between two samples by kind (from the newest :data:`KIND_SAMPLE` of them, read on a
log connection of its own, so the API's appends never wait behind it). The ring lives in the
process: a restart starts it afresh, and each API replica keeps its own.

What a sample costs is bounded, except the running experiment's results, which are counted
over its decisions: they are sampled only while someone has had the dashboard open in the last
:data:`WATCH_SECONDS` (a service nobody watches does not pay for them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import numpy as np

from lifelong_rec.events import KIND_NAMES
from lifelong_rec.store import is_unavailable

if TYPE_CHECKING:
    from lifelong_rec.service.engine import Engine
    from lifelong_rec.store import EventLog
    from lifelong_rec.store.postgres import PostgresEventLog

__all__ = ["KEEP_SAMPLES", "KIND_SAMPLE", "SAMPLE_SECONDS", "WATCH_SECONDS", "History", "Sample"]

log = logging.getLogger("lifelong_rec.service")

SAMPLE_SECONDS = 2.0
KEEP_SAMPLES = 1_800  # an hour
#: at most this many of the events appended between two samples are read to split them by kind
KIND_SAMPLE = 5_000
#: the experiment's results are sampled while a dashboard page was viewed this recently
WATCH_SECONDS = 600.0


@dataclass(frozen=True)
class Sample:
    """The service at one moment.

    Attributes
    ----------
    at : float
        Unix seconds.
    seconds : float
        Since the previous sample (0 for the first).
    log_end, learned : int
        The log's end offset, and the serving learner's offset (what it has learned up to).
    appended : mapping of kind to float
        Events appended since the previous sample, by kind (scaled from the newest
        :data:`KIND_SAMPLE` of them when more came).
    quality : mapping of model to mapping
        ``Engine.online_quality()``: each serving model's test-then-train HR@10 and NDCG@10.
    experiment : str or None
        The running experiment.
    arms : mapping of arm to mapping, or None
        Its results per arm (``decisions``, ``impressions``, ``positives``, ``reward``); None
        when they were not sampled (nobody watched).
    """

    at: float
    seconds: float
    log_end: int
    learned: int
    appended: Mapping[str, float]
    quality: Mapping[str, Mapping[str, float]]
    experiment: str | None
    arms: Mapping[str, Mapping[str, float]] | None


class History:
    """Samples ``engine`` every ``every`` seconds, keeping the last ``keep`` samples;
    ``log`` is a connection of its own to the engine's event log."""

    def __init__(
        self,
        engine: Engine,
        log: EventLog | PostgresEventLog,
        every: float = SAMPLE_SECONDS,
        keep: int = KEEP_SAMPLES,
    ) -> None:
        self.engine = engine
        self.log = log
        self.every = every
        self._samples: deque[Sample] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._failing = False  # said once per failure spell
        self._watched = -float("inf")  # time.monotonic() of the last page view

    def watch(self) -> None:
        """Someone views the dashboard: sample what only viewers need, for a while."""
        self._watched = time.monotonic()

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def sample(self) -> Sample:
        """Take one sample now, keep it and return it."""
        engine = self.engine
        now = time.time()
        with self._lock:
            previous = self._samples[-1] if self._samples else None
        end = self.log.end_offset
        start = end if previous is None else previous.log_end
        running = engine.live.experiment if engine.live is not None else None
        watched = time.monotonic() - self._watched < WATCH_SECONDS
        taken = Sample(
            at=now,
            seconds=0.0 if previous is None else now - previous.at,
            log_end=end,
            learned=engine.learner.offset,
            appended=self._appended(start, end),
            quality=engine.online_quality(),
            experiment=None if running is None else running.name,
            arms=engine.decisions.results(running.name) if running and watched else None,
        )
        with self._lock:
            self._samples.append(taken)
        return taken

    async def run(self) -> None:
        """Sample until cancelled (a sample runs in a worker thread, off the event loop)."""
        while True:
            try:
                await anyio.to_thread.run_sync(self.sample)
                self._failing = False
            except Exception as error:
                if not self._failing and is_unavailable(error):
                    log.warning("the dashboard cannot sample the service: %s", error)
                elif not self._failing:
                    log.exception("the dashboard could not sample the service (retrying)")
                self._failing = True
            await asyncio.sleep(self.every)

    async def __aenter__(self) -> History:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="dashboard")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task  # a sample in its thread finishes first

    def _appended(self, start: int, end: int) -> dict[str, float]:
        """Events of offsets [start, end) by kind, from at most the newest KIND_SAMPLE."""
        if end <= start:
            return {}
        read_from = max(start, end - KIND_SAMPLE)
        codes = self.log.read(read_from, end).kind
        scale = (end - start) / max(len(codes), 1)
        counts = np.bincount(codes, minlength=len(KIND_NAMES))
        return {
            KIND_NAMES[code]: float(count) * scale
            for code, count in enumerate(counts.tolist())
            if count
        }
