"""Update strategies: how a model follows a stream (frozen, retrained, or learning as it goes).

A strategy wraps a model factory. The evaluation harnesses and the service drive the same
objects: ``warm_up`` once, then for every block of the stream, ``observe`` each event right
after it was served (row cadence only) and ``end_block`` once the block is over.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import EventBatch
from lifelong_rec.lifelong.drift import DriftDetector
from lifelong_rec.lifelong.replay import ReplayBuffer
from lifelong_rec.models import Recommender

ModelFactory = Callable[[], Recommender]
CADENCES = ("block", "row")


class Strategy(ABC):
    """How a model follows a stream. Subclasses set ``cadence`` and implement the hooks."""

    cadence: str = "block"

    def __init__(self, factory: ModelFactory) -> None:
        if not callable(factory):
            raise TypeError("factory must be a callable that returns a new Recommender")
        self.factory = factory
        self.model: Recommender | None = None

    @property
    @abstractmethod
    def name(self) -> str:
        """How reports call the strategy ("frozen", "retrain@10", "incremental@row", ...)."""

    @property
    def trained(self) -> Recommender:
        """The model the strategy serves now: :attr:`model`, which :meth:`warm_up` sets.

        Raises
        ------
        RuntimeError
            Before :meth:`warm_up`.
        """
        if self.model is None:
            raise RuntimeError(f"{self!r} has no model yet: call warm_up first")
        return self.model

    def warm_up(self, events: EventBatch) -> None:
        """Train on the events before the stream starts."""
        self.model = self.factory().fit(events)

    def observe(self, event: EventBatch) -> None:  # noqa: B027 (an optional hook: the default does nothing)
        """An event right after it was served (row cadence only). Default: nothing."""

    @abstractmethod
    def end_block(self, block: EventBatch, errors: np.ndarray) -> None:
        """A block is over. ``errors``: 1 for each of its served events the model missed."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class Frozen(Strategy):
    """Trained on the warm-up, never updated: what a model that is never retrained serves."""

    @property
    def name(self) -> str:
        return "frozen"

    def end_block(self, block: EventBatch, errors: np.ndarray) -> None:
        pass


class Retrain(Strategy):
    """Refit from scratch on every event so far after every ``every``-th block: the nightly
    batch job, at a chosen frequency."""

    def __init__(self, factory: ModelFactory, every: int = 1) -> None:
        super().__init__(factory)
        check_positive_ints(every=every)
        self.every = every
        self._seen: list[EventBatch] = []
        self._blocks = 0

    @property
    def name(self) -> str:
        return f"retrain@{self.every}"

    def warm_up(self, events: EventBatch) -> None:
        self._seen = [events]
        super().warm_up(events)

    def end_block(self, block: EventBatch, errors: np.ndarray) -> None:
        self._seen.append(block)
        self._blocks += 1
        if self._blocks % self.every == 0:
            self._seen = [EventBatch.concat(self._seen)]
            self.model = self.factory().fit(self._seen[0])


class Incremental(Strategy):
    """Learns from the stream as it comes, reusing experience so it does not forget.

    - ``cadence="block"`` learns each block once it is over; ``"row"`` learns every event
      right after it was served, as a live system does.
    - Replay: after each block the model rehearses ``replay_ratio`` times as many events as
      the block had, drawn from a :class:`ReplayBuffer` (a uniform sample of all history
      plus the latest events).
    - Pull: after each update the model is anchored with L2 strength ``pull`` to its
      parameters as they are, so the next burst of events cannot drag them far.
    - Consolidation: when the :class:`DriftDetector` sees the model's error rate shift, it
      rehearses ``consolidation_passes`` more samples, to settle into the new regime.

    With ``replay_size=0``, ``pull=0`` and ``drift_delta=None`` it is the naive learner.
    """

    def __init__(
        self,
        factory: ModelFactory,
        cadence: str = "block",
        replay_size: int = 20_000,
        replay_ratio: float = 1.0,
        recent_share: float = 0.5,
        pull: float = 1.0,
        drift_delta: float | None = 0.002,
        consolidation_passes: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(factory)
        if cadence not in CADENCES:
            raise ValueError(f"cadence must be one of {CADENCES}, got {cadence!r}")
        if not isinstance(replay_size, int) or replay_size < 0:
            raise ValueError(f"replay_size must be an integer >= 0, got {replay_size!r}")
        if not replay_ratio >= 0:
            raise ValueError(f"replay_ratio must be >= 0, got {replay_ratio!r}")
        if not (np.isfinite(pull) and pull >= 0):
            raise ValueError(f"pull must be finite and >= 0, got {pull!r}")
        if not isinstance(consolidation_passes, int) or consolidation_passes < 0:
            raise ValueError(
                f"consolidation_passes must be an integer >= 0, got {consolidation_passes!r}"
            )
        self.cadence = cadence
        self.replay_size = replay_size
        self.replay_ratio = replay_ratio
        self.recent_share = recent_share
        self.pull = pull
        self.drift_delta = drift_delta
        self.consolidation_passes = consolidation_passes
        self.seed = seed
        self.buffer = ReplayBuffer(replay_size, recent_share, seed) if replay_size else None
        self.drift = DriftDetector(drift_delta) if drift_delta is not None else None

    @property
    def naive(self) -> bool:
        return self.buffer is None and self.pull == 0 and self.drift is None

    @property
    def name(self) -> str:
        return f"{'naive' if self.naive else 'incremental'}@{self.cadence}"

    def warm_up(self, events: EventBatch) -> None:
        super().warm_up(events)
        if self.buffer is not None:
            self.buffer.add(events)
        self._anchor()

    def observe(self, event: EventBatch) -> None:
        if self.cadence == "row":
            self.trained.learn(event)

    def end_block(self, block: EventBatch, errors: np.ndarray) -> None:
        if self.cadence == "block":
            self.trained.learn(block)
        if self.buffer is not None:
            size = math.ceil(self.replay_ratio * len(block))
            if size:
                self.trained.replay(self.buffer.sample(size))
            if self.drift is not None and self.drift.update(errors):
                for _ in range(self.consolidation_passes):
                    self.trained.replay(self.buffer.sample(max(size, 1) * 10))
            self.buffer.add(block)
        elif self.drift is not None:
            self.drift.update(errors)
        self._anchor()

    def _anchor(self) -> None:
        if self.pull > 0:
            self.trained.anchor(self.pull)


def parse_strategy(spec: str, factory: ModelFactory, seed: int = 0) -> Strategy:
    """A strategy from its report name.

    ``frozen``, ``retrain@N``, ``incremental@block``, ``incremental@row`` (with replay, pull and
    drift consolidation), ``naive@block``, ``naive@row`` (plain ``learn``).

    Raises
    ------
    ValueError
        Naming the spec, if it is none of these.
    """
    name, _, arg = spec.strip().partition("@")
    if name == "frozen" and not arg:
        return Frozen(factory)
    if name == "retrain":
        if not arg.isdigit() or int(arg) < 1:
            raise ValueError(f"strategy {spec!r}: retrain needs a block count, e.g. retrain@10")
        return Retrain(factory, every=int(arg))
    if name in ("incremental", "naive") and arg in CADENCES:
        if name == "naive":
            return Incremental(factory, arg, replay_size=0, pull=0.0, drift_delta=None, seed=seed)
        return Incremental(factory, arg, seed=seed)
    raise ValueError(
        f"unknown strategy {spec!r}: use frozen, retrain@N, incremental@block, "
        "incremental@row, naive@block or naive@row"
    )
