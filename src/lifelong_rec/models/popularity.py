"""Popularity: the most-interacted items, with an exponential time decay."""

from __future__ import annotations

import numpy as np

from lifelong_rec.models.base import IndexedEvents, Recommender
from lifelong_rec.models.explanation import Attribution


class Popularity(Recommender):
    """Ranks items by their summed event weights, each halving every ``half_life_days``.

    The same ranking for every user (minus what they have seen). Strong on news and on
    streams where most traffic comes from new users.

    Parameters
    ----------
    half_life_days : float or None
        None keeps all-time counts.

    Examples
    --------
    >>> from lifelong_rec.events import EventBatch
    >>> model = Popularity(half_life_days=None)
    >>> model.learn(EventBatch.from_columns(["u1", "u2", "u2"], ["a", "a", "b"], [1.0, 2.0, 3.0]))
    >>> model.recommend(["new-user"], k=2).items.tolist()
    [['a', 'b']]
    """

    name = "pop"

    def __init__(self, half_life_days: float | None = 7.0) -> None:
        if half_life_days is not None and not half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0 or None, got {half_life_days!r}")
        self.half_life_days = half_life_days

    def _fallback_half_life_days(self) -> float | None:
        return self.half_life_days

    def _reset_model(self) -> None:
        pass  # the base class's decayed counts are the whole model

    def _grow(self, n_users: int, n_items: int) -> None:
        pass

    def _learn(self, events: IndexedEvents) -> None:
        pass  # counted in the base class's popularity_

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        row = self.popularity_.counts[item_index].astype(np.float32)
        return np.broadcast_to(row, (len(user_index), len(row))).copy()

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        n, k = items.shape
        return Attribution(
            method="decayed popularity",
            history=np.full((n, 0), -1, dtype=np.int64),
            weights=np.zeros((n, 0, k)),
            kinds=np.full((n, k), "popularity", dtype=object),
            popularity=self.popularity_.counts[items].astype(np.float32).astype(np.float64),
            trend=True,
        )

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        pass
