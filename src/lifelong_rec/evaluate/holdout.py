"""Static hold-out checks: train once, then measure top-10 hits on held-out events.

These are the quick quality checks of single models (issue #3); the streaming protocols of
PROTOCOLS.md (P1-P4) build on the same models.
"""

from __future__ import annotations

import numpy as np

from lifelong_rec.events import EventBatch
from lifelong_rec.models import Recommender


def temporal_hit_rate(
    model: Recommender,
    events: EventBatch,
    train_fraction: float = 0.8,
    next_events: int | None = 20,
    k: int = 10,
) -> float:
    """Train on the first ``train_fraction`` of ``events`` by time; HR@k on what follows.

    For every user known at the cut, their next ``next_events`` events after it (all when
    None) are the test events. An event is a hit if its item is in the user's top-``k``
    computed at the cut, seen items excluded. Returns the share of test events that hit.
    """
    _check_fraction(train_fraction)
    events = events.sorted_by_time()
    cut = int(train_fraction * len(events))
    train, test = events.take(slice(0, cut)), events.take(slice(cut, None))
    test = test.take(np.isin(test.user, train.user))
    if next_events is not None:
        order = np.lexsort((test.timestamp, test.user))
        users = test.user[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        test = test.take(np.sort(order[rank < next_events]))
    model.fit(train)
    return float(_hits(model, test, k).mean())


def random_precision(
    model: Recommender, events: EventBatch, test_fraction: float = 0.2, k: int = 10, seed: int = 0
) -> float:
    """Hold out a seeded random ``test_fraction`` of rows; precision@k averaged over users."""
    _check_fraction(test_fraction)
    held_out = np.random.default_rng(seed).random(len(events)) < test_fraction
    model.fit(events.take(~held_out))
    test = events.take(held_out)
    return float(_hits(model, test, k).sum() / (k * len(np.unique(test.user))))


def _hits(model: Recommender, test: EventBatch, k: int) -> np.ndarray:
    """For each test event, whether its item is in the user's top-k, shape (n,)."""
    users = np.unique(test.user)
    recommendations = model.recommend(users, k=k)
    rows = np.searchsorted(recommendations.users, test.user)
    return (recommendations.items[rows] == test.item[:, None]).any(axis=1)


def _check_fraction(value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {value!r}")
