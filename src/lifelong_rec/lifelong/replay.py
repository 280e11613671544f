"""The replay buffer: a uniform sample of the whole history plus the most recent events."""

from __future__ import annotations

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import EventBatch

_COLUMNS = ("user", "item", "timestamp", "kind", "value", "weight")


class ReplayBuffer:
    """Keeps up to ``size`` events for experience replay.

    Two parts: a reservoir (Vitter's algorithm R, vectorised over batches) holding a uniform
    sample of every event ever added, so old knowledge keeps being rehearsed; and a ring of the
    latest events, so what just changed is rehearsed more. ``sample`` draws
    ``recent_share`` of its events from the ring and the rest from the reservoir.

    Parameters
    ----------
    size : int
        Events kept in all; ``recent_share * size`` of them in the ring.
    recent_share : float
        Share of the buffer (and of each sample) given to the latest events, 0 to 1.
    seed : int

    Examples
    --------
    >>> buffer = ReplayBuffer(size=4, recent_share=0.5, seed=0)
    >>> buffer.add(EventBatch.from_columns(list("abcdef"), list("uvwxyz"), range(6)))
    >>> len(buffer), buffer.seen
    (4, 6)
    >>> sorted(buffer.sample(2).user.tolist())[-1] in "ef"  # one of the two latest
    True
    """

    def __init__(self, size: int = 10_000, recent_share: float = 0.5, seed: int = 0) -> None:
        check_positive_ints(size=size)
        if not 0 <= recent_share <= 1:
            raise ValueError(f"recent_share must be between 0 and 1, got {recent_share!r}")
        self.size = size
        self.recent_share = recent_share
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._recent_size = round(recent_share * size)
        self._reservoir_size = size - self._recent_size
        self._reservoir = {name: np.empty(0, dtype=object) for name in _COLUMNS}
        self._recent = {name: np.empty(0, dtype=object) for name in _COLUMNS}
        self.seen = 0  # events ever added

    def __len__(self) -> int:
        return len(self._reservoir["user"]) + len(self._recent["user"])

    def add(self, events: EventBatch) -> None:
        """Offer every event of a batch to both parts."""
        n = len(events)
        if n == 0:
            return
        columns = {name: np.asarray(getattr(events, name), dtype=object) for name in _COLUMNS}
        self._add_to_reservoir(columns, n)
        if self._recent_size:
            self._recent = {
                name: np.concatenate([self._recent[name], columns[name]])[-self._recent_size :]
                for name in _COLUMNS
            }
        self.seen += n

    def _add_to_reservoir(self, columns: dict[str, np.ndarray], n: int) -> None:
        if not self._reservoir_size:
            return
        filled = len(self._reservoir["user"])
        room = min(self._reservoir_size - filled, n)
        if room > 0:  # fill up first
            for name in _COLUMNS:
                self._reservoir[name] = np.concatenate(
                    [self._reservoir[name], columns[name][:room]]
                )
        # Algorithm R: the t-th event (1-based) replaces a random slot with probability size / t.
        positions = np.arange(self.seen + room + 1, self.seen + n + 1)
        if len(positions):
            slots = self._rng.integers(0, positions)  # one draw per event, each in [0, t)
            taken = slots < self._reservoir_size
            # later events overwrite earlier ones in the same slot, as sequential R would
            for name in _COLUMNS:
                self._reservoir[name][slots[taken]] = columns[name][room:][taken]

    def sample(self, n: int) -> EventBatch:
        """Up to ``n`` events: ``recent_share`` from the latest, the rest from the reservoir."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n!r}")
        from_recent = min(round(self.recent_share * n), len(self._recent["user"]))
        from_reservoir = min(n - from_recent, len(self._reservoir["user"]))
        parts = []
        for part, count in ((self._recent, from_recent), (self._reservoir, from_reservoir)):
            if count:
                chosen = self._rng.choice(len(part["user"]), size=count, replace=False)
                parts.append({name: part[name][chosen] for name in _COLUMNS})
        if not parts:
            return EventBatch.empty()
        joined = {name: np.concatenate([p[name] for p in parts]) for name in _COLUMNS}
        return EventBatch(
            user=joined["user"].astype(str),
            item=joined["item"].astype(str),
            timestamp=joined["timestamp"].astype(np.float64),
            kind=joined["kind"].astype(np.uint8),
            value=joined["value"].astype(np.float64),
            weight=joined["weight"].astype(np.float32),
        )
