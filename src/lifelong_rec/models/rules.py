"""Sequential rules: the items that come next after the user's latest ones."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from lifelong_rec.checks import check_decays, check_positive_ints
from lifelong_rec.models.base import IndexedEvents, Recommender
from lifelong_rec.models.explanation import Attribution
from lifelong_rec.models.sparse import GrowingSparse


class SequentialRules(Recommender):
    """Which items follow which, learned per event: the sequential rules of session-based
    recommendation (Ludewig and Jannach, 2018), weighted by how recent the user's items are.

    Each user keeps a window of their ``window`` latest distinct items (``recent_``, latest
    first; every positive event, a repeat too, moves its item to the front). When a user
    interacts with an item for the first time, each item of the window becomes a rule to it,
    weighted ``1 / g`` for the item ``g`` steps back (the latest: 1): ``rules_[j, i]`` sums
    those weights and ``out_[j]`` their total per source item. A user's score of item ``i`` is
    ::

        sum_p recency_decay ** p * rules_[j_p, i] / (out_[j_p] + shrink)

    over the window's items ``j_p`` (``p = 0``: the latest), so ``explain`` splits a score
    exactly over the user's recent items. Unlike item-kNN's co-occurrence, a rule has a
    direction: what people take after a phone is not what they take before it.

    Events are taken in time order, in rounds of at most one event per user (vectorised over
    the users), so a stream learned batch by batch, in time order, gives the same rules as
    ``fit`` on the whole of it.

    Parameters
    ----------
    window : int
        How many of the user's latest distinct items a rule reaches back to, and score.
    recency_decay : float in (0, 1]
        Each step back in the window multiplies an item's weight in the score by this.
    shrink : float
        Added to a source item's total: damps the rules of items seen only a few times.
    fallback_half_life_days : float or None
        Half-life of the popularity fallback for cold users.
    """

    name = "sequential-rules"

    def __init__(
        self,
        window: int = 10,
        recency_decay: float = 0.5,
        shrink: float = 1.0,
        fallback_half_life_days: float | None = 7.0,
    ) -> None:
        check_positive_ints(window=window)
        check_decays(recency_decay=recency_decay)
        if not shrink >= 0:
            raise ValueError(f"shrink must be >= 0, got {shrink!r}")
        self.window = window
        self.recency_decay = recency_decay
        self.shrink = shrink
        self.fallback_half_life_days = fallback_half_life_days

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {"window": 5}

    # -------------------------------------------------------------- learning

    def _reset_model(self) -> None:
        self.rules_ = GrowingSparse((0, 0), "sum", np.float32)
        self.out_ = np.zeros(0)
        self.recent_ = np.full((0, self.window), -1, dtype=np.int64)

    def _grow(self, n_users: int, n_items: int) -> None:
        self.rules_.grow(n_items, n_items)
        self.out_ = np.concatenate([self.out_, np.zeros(n_items - len(self.out_))])
        extra = np.full((n_users - len(self.recent_), self.window), -1, dtype=np.int64)
        self.recent_ = np.concatenate([self.recent_, extra])

    def _learn(self, events: IndexedEvents) -> None:
        positive = np.flatnonzero(events.positive)
        positive = positive[np.argsort(events.timestamp[positive], kind="stable")]
        users, items = events.user[positive], events.item[positive]
        new = events.new_pair[positive]
        # each event's round: how many events of its user come before it
        by_user = np.argsort(users, kind="stable")
        starts = np.searchsorted(users[by_user], users[by_user], side="left")
        rounds = np.empty(len(users), dtype=np.int64)
        rounds[by_user] = np.arange(len(users)) - starts
        sources, targets, weights = [], [], []
        gaps = np.arange(1, self.window + 1, dtype=np.float64)
        for r in range(int(rounds.max(initial=-1)) + 1):
            rows = np.flatnonzero(rounds == r)  # one event per user
            user, item = users[rows], items[rows]
            recent = self.recent_[user]
            fresh = np.flatnonzero(new[rows])
            counted = recent[fresh] >= 0
            sources.append(recent[fresh][counted])
            targets.append(np.broadcast_to(item[fresh, None], counted.shape)[counted])
            weights.append(np.broadcast_to(1.0 / gaps, counted.shape)[counted])
            self.recent_[user] = _to_front(recent, item)
        if sources:
            source, target, weight = map(np.concatenate, (sources, targets, weights))
            self.rules_.add(source, target, weight.astype(np.float32))
            np.add.at(self.out_, source, weight)

    # -------------------------------------------------------------- scoring

    def _rules(self, sources: np.ndarray) -> sp.csr_matrix:
        """The normalised rules of ``sources``, shape (len(sources), n_items)."""
        rows = self.rules_.rows(sources)
        scale = 1.0 / (self.out_[sources] + self.shrink)
        return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ rows)

    def _window(self, user_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each user's window (-1 pads) and the weights of its places, shape (n, window)."""
        recent = self.recent_[user_index]
        weights = self.recency_decay ** np.arange(self.window, dtype=np.float64)
        return recent, np.where(recent >= 0, weights[None, :], 0.0)

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        recent, weights = self._window(user_index)
        return self._combine(recent, weights)[:, item_index].astype(np.float32)

    def _combine(self, recent: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """sum_p weights[:, p] * normalised rules of recent[:, p], shape (n, n_items)."""
        counted = recent >= 0
        sources, column = np.unique(recent[counted], return_inverse=True)
        rows = np.repeat(np.arange(len(recent)), counted.sum(axis=1))
        mixing = sp.csr_matrix(
            (weights[counted], (rows, column)), shape=(len(recent), len(sources))
        )
        if not len(sources):
            return np.zeros((len(recent), len(self.items_)))
        return np.asarray((mixing @ self._rules(sources)).toarray(), dtype=np.float64)

    # -------------------------------------------------------------- explaining

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        """The exact split of the score over the window's items."""
        recent, weights = self._window(users)
        counted = recent >= 0
        sources = np.unique(recent[counted])
        targets, column = np.unique(items, return_inverse=True)
        table = np.zeros((len(sources) + 1, len(targets)))  # last row: padding
        if len(sources):
            table[:-1] = self._rules(sources)[:, targets].toarray()
        row = np.where(counted, np.searchsorted(sources, recent), len(sources))
        parts = table[row[:, :, None], column.reshape(items.shape)[:, None, :]]
        kinds = np.full(items.shape, "history", dtype=object)
        return Attribution("exact sum over the rules from the latest items", recent,
                           parts * weights[:, :, None], kinds)  # fmt: skip

    def _deletion_scores(self, user: int, items: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """Scores from the window, then from the window without each removed item (the items
        behind it move one step up; the window keeps no older item to move in)."""
        recent = self.recent_[user]
        variants = np.repeat(recent[None, :], len(removed) + 1, axis=0)
        variants[1:][recent[None, :] == removed[:, None]] = -1
        variants = _packed(variants)
        weights = self.recency_decay ** np.arange(self.window, dtype=np.float64)
        weights = np.where(variants >= 0, weights[None, :], 0.0)
        return self._combine(variants, weights)[:, items]

    def _item_similarity(self, item: int) -> np.ndarray:
        """What follows ``item``: its normalised rules."""
        return self._rules(np.array([item])).toarray()[0]

    # -------------------------------------------------------------- persistence

    def _state(self) -> dict[str, np.ndarray]:
        state = {f"rules.{k}": v for k, v in self.rules_.state().items()}
        return state | {"out": self.out_, "recent": self.recent_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        rules = {k.removeprefix("rules."): v for k, v in arrays.items() if "." in k}
        self.rules_ = GrowingSparse.from_state(rules, "sum", np.float32)
        self.out_ = arrays["out"].astype(np.float64)
        self.recent_ = arrays["recent"].astype(np.int64)


def _to_front(recent: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Each window (row) with its item moved, or added, to the front; the oldest drops out."""
    kept = _packed(np.where(recent == item[:, None], -1, recent))
    return np.concatenate([item[:, None], kept[:, :-1]], axis=1)


def _packed(windows: np.ndarray) -> np.ndarray:
    """Each row's items (>= 0) first, in their order, the -1 pads after them."""
    order = np.argsort(windows < 0, axis=1, kind="stable")
    return np.take_along_axis(windows, order, axis=1)
