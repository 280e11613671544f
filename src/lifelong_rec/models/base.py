"""The recommender contract shared by every model, and the types a model returns.

Every model learns from :class:`EventBatch` es, incrementally (``learn``, any batch size down to
one event) or from scratch (``fit``); ranks (``recommend``), scores (``score``) and explains
(``explain``) without changing its state; and saves itself without pickle.

What the base class keeps for every model
-----------------------------------------
- ``users_`` and ``items_``: growing id indexes (new ids are added on first sight).
- ``history_``: the user x item matrix of summed positive weights the model has learned from.
  This is where the seen-history for ``exclude_seen`` lives: a model excludes what *it* has
  seen. Events of weight 0 (skips, impressions) make their ids known but are not history.
- ``last_seen_``: the user x item matrix of the latest time of each interaction (recency).
- ``popularity_``: item popularity with an exponential time decay: the explicit cold-start
  fallback for users the model does not know or knows nothing positive about.
- ``updates_``: how many fit, learn and replay calls changed the model (``version``).

Explanations (``explain``, ``explain_many``, ``recommend(explain=True)``) are built here from
each model's vectorised split of its scores (the ``_attribute`` hook); ``deletion_scores``
recomputes scores without a history item, to test that the reasons really drive the score.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import EventBatch, IdIndex, as_ids
from lifelong_rec.models.bounded import bounds_memory
from lifelong_rec.models.explanation import (
    Attribution,
    Explanation,
    Reason,
    Wording,
    top_reasons,
)
from lifelong_rec.models.sparse import GrowingSparse

FORMAT_VERSION = 1
_SCORE_BLOCK = 16_000_000  # scores computed per block of users: at most 64 MB of float32
_MODELS: dict[str, type[Recommender]] = {}
_PLAIN = Wording()  # reasons that name items by their ids
_HISTORY_KINDS = frozenset(("history", "similar_item", "text"))  # reasons on a history item
# Models whose module needs an optional extra: short name -> (module, package it needs, extra).
# They register themselves when imported, which happens on first need, so that importing
# lifelong_rec does not import PyTorch.
OPTIONAL_MODELS = {"transformer": ("lifelong_rec.models.sequential", "torch", "deep")}


# ------------------------------------------------------------------------------ result types


@dataclass(frozen=True, eq=False)
class Recommendations:
    """Top-k lists for a batch of users.

    Attributes
    ----------
    users : array of str, shape (n_users,)
    items : array of str, shape (n_users, k)
        Best first; "" where fewer than k items could be recommended.
    scores : array of float32, shape (n_users, k)
        The model's scores; -inf where ``items`` is "".
    fallback : array of bool, shape (n_users,)
        True for users who got the cold-start fallback (decayed popularity) because the model
        does not know them or has no positive history for them.
    explanations : tuple of tuple of Explanation, or None
        With ``recommend(..., explain=True)``: per user, the explanation of each recommended
        item, in list order (padding left out, as in :meth:`for_user`).
    """

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    fallback: np.ndarray
    explanations: tuple[tuple[Explanation, ...], ...] | None = None

    def __len__(self) -> int:
        return len(self.users)

    def for_user(self, row: int) -> list[tuple[str, float]]:
        """The (item, score) pairs of one user's list, without padding."""
        keep = self.items[row] != ""
        return list(
            zip(self.items[row][keep].tolist(), self.scores[row][keep].tolist(), strict=True)
        )


@dataclass(frozen=True, eq=False)
class IndexedEvents:
    """A batch with dense indexes, as the model implementations see it (internal)."""

    user: np.ndarray  # int64, (n,)
    item: np.ndarray  # int64, (n,)
    weight: np.ndarray  # float32, (n,)
    timestamp: np.ndarray  # float64, (n,)
    new_pair: np.ndarray  # bool, (n,): first positive event of this (user, item) pair
    source: EventBatch | None = None  # the batch these indexes were made from

    @property
    def positive(self) -> np.ndarray:
        return self.weight > 0


# ------------------------------------------------------------------------------ decayed counts


class DecayedCounts:
    """Per-item counts where each event's weight halves every ``half_life_days``.

    Counts are kept as of ``clock`` (the latest timestamp seen), so older events are discounted
    as newer ones arrive; ``half_life_days=None`` keeps plain all-time counts.
    """

    def __init__(self, half_life_days: float | None) -> None:
        self.half_life_seconds = None if half_life_days is None else half_life_days * 86_400.0
        self.counts = np.zeros(0, dtype=np.float64)
        self.clock = -np.inf

    def grow(self, n: int) -> None:
        if n > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(n - len(self.counts))])

    def add(self, items: np.ndarray, weights: np.ndarray, times: np.ndarray) -> None:
        if len(items) == 0:
            return
        if self.half_life_seconds is None:
            np.add.at(self.counts, items, weights)
            return
        latest = float(times.max())
        if latest > self.clock:
            if np.isfinite(self.clock):
                self.counts *= 2.0 ** (-(latest - self.clock) / self.half_life_seconds)
            self.clock = latest
        np.add.at(
            self.counts, items, weights * 2.0 ** (-(self.clock - times) / self.half_life_seconds)
        )

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "clock": np.array([self.clock])}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        self.counts = state["counts"].astype(np.float64)
        self.clock = float(state["clock"][0])


# ------------------------------------------------------------------------------ the contract


class Recommender(ABC):
    """Base class of every recommender. Subclasses implement the ``_``-prefixed hooks."""

    #: short name used by the command line and benchmarks ("mf", "itemknn", ...)
    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls):
            _MODELS[cls.__name__] = cls

    # -------------------------------------------------------------- parameters

    def get_params(self) -> dict[str, object]:
        """The constructor arguments, read back from the attributes of the same name."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def clone(self) -> Recommender:
        """A new, untrained model with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        """Small, fast parameters for the conformance suite."""
        return {}

    def _fallback_half_life_days(self) -> float | None:
        return getattr(self, "fallback_half_life_days", None)

    # -------------------------------------------------------------- learning

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "users_")

    def fit(self, events: EventBatch) -> Recommender:
        """Train from scratch on ``events`` (forgetting everything before)."""
        _check_batch(events)
        self._reset()
        self._fit(self._index(self._admissible(events)))
        self.updates_ += 1
        self._expire_idle()
        return self

    def learn(self, events: EventBatch) -> None:
        """Update from ``events`` (any size, down to one), adding new users and items."""
        _check_batch(events)
        if not self.is_fitted:
            self._reset()
        events = self._admissible(events)
        if len(events):
            self._learn(self._index(events))
            self.updates_ += 1
            self._expire_idle()

    def replay(self, events: EventBatch) -> None:
        """Learn again from events learned before (experience replay), without counting them
        as new: their weights are not added to the history or the popularity a second time.

        Models whose state is exact counts (popularity, co-occurrence) have nothing to
        refresh; factor models re-fit the rows the events touch. Unknown ids are ignored.
        """
        _check_batch(events)
        if not self.is_fitted or not len(events):
            return
        users, items = self.users_.lookup(events.user), self.items_.lookup(events.item)
        known = (users >= 0) & (items >= 0) & (events.weight > 0)
        if known.any():
            self._replay(users[known], items[known])
            self.updates_ += 1

    def anchor(self, strength: float) -> None:
        """Pull later updates toward the model as it is now (0 releases the pull).

        Factor models add an L2 penalty of ``strength`` on the distance of their parameters;
        the sequential transformer distils from a snapshot of its outputs instead (the KL
        divergence of its next-item distribution, weighted by ``strength``).

        The pull keeps what the model knew when a burst of new events would drag its
        parameters far; strategies re-anchor after every update. Not saved with the model.
        """
        if not np.isfinite(strength) or strength < 0:
            raise ValueError(f"strength must be finite and >= 0, got {strength!r}")
        self._check_fitted()
        self._anchor(float(strength))

    def _replay(self, users: np.ndarray, items: np.ndarray) -> None:  # noqa: B027 (an optional hook: the default does nothing)
        """Refresh what (users, items) pairs already learned touch. Default: nothing."""

    def _anchor(self, strength: float) -> None:  # noqa: B027 (an optional hook: the default does nothing)
        """Remember the current parameters as the anchor. Default: no parameters to pull."""

    def _admissible(self, events: EventBatch) -> EventBatch:
        """The events whose ids have (or now earn) parameters of their own: all of them,
        unless the model admits ids only after some sightings (:mod:`.bounded`)."""
        return events

    def _expire_idle(self) -> None:  # noqa: B027 (an optional hook: the default does nothing)
        """After an update: drop ids idle too long, where the model expires them
        (:mod:`.bounded`). Default: every id is kept."""

    def _compact_model(self, user_rows: np.ndarray, item_rows: np.ndarray) -> None:
        """Keep only ``user_rows`` and ``item_rows`` (old indexes, ascending) of the model's
        own arrays, renumbered in their order: for :func:`.bounded.compact`."""
        raise NotImplementedError(f"{type(self).__name__} does not expire ids")

    def _own_bytes(self) -> int:
        """Bytes held by the model's own state, for :func:`.bounded.footprint`."""
        return sum(array.nbytes for array in self._state().values())

    def _reset(self) -> None:
        self.users_ = IdIndex()
        self.items_ = IdIndex()
        self.history_ = GrowingSparse((0, 0), "sum", np.float32)
        self.last_seen_ = GrowingSparse((0, 0), "max", np.float64)
        self.history_size_ = np.zeros(0, dtype=np.int64)  # distinct positive items per user
        self.popularity_ = DecayedCounts(self._fallback_half_life_days())
        self.updates_ = 0  # fit, learn and replay calls that changed the model: its version
        self._reset_model()

    def _index(self, events: EventBatch, new_pair: np.ndarray | None = None) -> IndexedEvents:
        """Dense indexes for a batch; grows the ids, the history and the popularity counts.
        ``new_pair``: the batch's first pairs (:meth:`_first_pairs`), where an index kept in
        step with this one has just found them."""
        n_users, n_items = len(self.users_), len(self.items_)
        users = self.users_.add(events.user)
        items = self.items_.add(events.item)
        if len(self.users_) > n_users or len(self.items_) > n_items:
            self._grow_all(len(self.users_), len(self.items_))
        weight = events.weight.astype(np.float32)
        positive = weight > 0
        if new_pair is None:
            new_pair = self._first_pairs(users, items, positive)
        if positive.any():
            self.history_.add(users[positive], items[positive], weight[positive])
            self.last_seen_.add(users[positive], items[positive], events.timestamp[positive])
            np.add.at(self.history_size_, users[new_pair], 1)
        self.popularity_.add(items, weight.astype(np.float64), events.timestamp)
        return IndexedEvents(users, items, weight, events.timestamp, new_pair, events)

    def _share_index(self, owner: Recommender) -> None:
        """Reset, then keep ``owner``'s ids and histories instead of indexes of its own.

        An ensemble indexes each batch once for all its candidates and hands it on with
        :meth:`_learn_indexed`; each candidate still keeps its own history sizes and
        popularity (its fallback has its own half-life). Only for models that index through
        this class (:func:`can_share_index`)."""
        self._reset()
        self._adopt_index(owner)

    def _adopt_index(self, owner: Recommender) -> None:
        """Point at ``owner``'s ids and histories (equal to this model's, as after a load)."""
        self.users_, self.items_ = owner.users_, owner.items_
        self.history_, self.last_seen_ = owner.history_, owner.last_seen_

    def _learn_indexed(self, events: IndexedEvents, fit: bool = False) -> None:
        """:meth:`learn` (``fit``: :meth:`fit` on a model just shared) on a batch that the
        owner of the shared index (:meth:`_share_index`) has indexed."""
        n_users, n_items = len(self.users_), len(self.items_)
        if len(self.history_size_) != n_users or len(self.popularity_.counts) != n_items:
            self._grow_all(n_users, n_items)  # the shared histories have grown already
        np.add.at(self.history_size_, events.user[events.new_pair], 1)
        self.popularity_.add(events.item, events.weight.astype(np.float64), events.timestamp)
        (self._fit if fit else self._learn)(events)
        self.updates_ += 1

    def _grow_all(self, n_users: int, n_items: int) -> None:
        self.history_.grow(n_users, n_items)
        self.last_seen_.grow(n_users, n_items)
        self.history_size_ = np.concatenate(
            [self.history_size_, np.zeros(n_users - len(self.history_size_), dtype=np.int64)]
        )
        self.popularity_.grow(n_items)
        self._grow(n_users, n_items)

    def _first_pairs(
        self,
        users: np.ndarray,
        items: np.ndarray,
        positive: np.ndarray,
        item_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """Which events are the first positive one of their (user, item) pair by a known user:
        first in the batch and not in the history. ``users`` and ``items`` are the batch's
        indexes; before it is indexed they are -1 where unknown, and ``item_ids`` (the batch's
        item ids) tell unknown items apart (an unknown item's pair is new)."""
        new = positive & (users >= 0)
        rows = np.flatnonzero(new)
        if len(rows) > 1:  # a pair's later events in the batch are not first (one event: first)
            codes = items[rows]
            unknown = codes < 0
            if unknown.any():
                assert item_ids is not None, "unknown items are told apart by their ids"
                codes = codes.copy()
                codes[unknown] = (
                    len(self.items_) + np.unique(item_ids[rows[unknown]], return_inverse=True)[1]
                )
            pairs = users[rows] * (int(codes.max(initial=0)) + 1) + codes
            first = np.zeros(len(rows), dtype=bool)
            first[np.unique(pairs, return_index=True)[1]] = True
            new[rows[~first]] = False
        rows = np.flatnonzero(new & (items >= 0))
        new[rows] = ~self.history_.contains(users[rows], items[rows])
        return new

    # -------------------------------------------------------------- ranking

    def recommend(
        self,
        users: object,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: object | None = None,
        explain: bool = False,
        reasons: int = 3,
        wording: Wording | None = None,
    ) -> Recommendations:
        """Top-``k`` items for each user, with their explanations when asked.

        Parameters
        ----------
        users : sequence of ids, shape (n_users,)
            Known or unknown; unknown users get the cold-start fallback.
        k : int
        exclude_seen : bool
            Leave out items in the user's history (as this model has learned it).
        candidates : sequence of item ids, optional
            Rank only these (unknown ones are ignored); all known items when None.
        explain : bool
            Also explain every recommended item (see :meth:`explain`), vectorised over the
            whole batch.
        reasons, wording
            The reasons kept per explanation and their wording (see :meth:`explain`).

        Returns
        -------
        Recommendations
        """
        self._check_fitted()
        check_positive_ints(k=k, reasons=reasons)
        wording = _wording(wording) if explain else None
        ids = _ids(users, "users")
        user_index = self.users_.lookup(ids)
        cold = self._cold(user_index)
        # All items as a slice, not an index array: the models then score views of their
        # tables instead of copying them (on 100,000 items the copy costs more than the score).
        item_index: np.ndarray | slice = slice(None)
        n_candidates = len(self.items_)
        if candidates is not None:
            item_index = np.unique(self.items_.lookup(_ids(candidates, "candidates")))
            item_index = item_index[item_index >= 0]
            n_candidates = len(item_index)
        width = min(k, n_candidates)
        top_items = np.full((len(ids), k), "", dtype=object)
        top_index = np.full((len(ids), k), -1, dtype=np.int64)
        top_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        block = max(1, _SCORE_BLOCK // max(n_candidates, 1))
        for start in range(0, len(ids) if width else 0, block):
            rows = np.arange(start, min(start + block, len(ids)))
            best = np.zeros((len(rows), width), dtype=np.int64)
            best_scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
            exact = np.ones(len(rows), dtype=bool)
            if isinstance(item_index, slice):  # the whole catalogue: an index may answer
                warm = np.flatnonzero(~cold[rows])
                found = self._retrieved(user_index[rows[warm]], width, exclude_seen)
                if found is not None:
                    complete, found_items, found_scores = found
                    best[warm[complete]] = found_items[complete]
                    best_scores[warm[complete]] = found_scores[complete]
                    exact[warm[complete]] = False
            if exact.any():
                at = rows[exact]
                scores = self._scores(user_index[at], cold[at], item_index, n_candidates)
                if exclude_seen:
                    self._mask_seen(scores, user_index[at], item_index)
                top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
                kept = np.take_along_axis(scores, top, axis=1)
                order = np.argsort(-kept, axis=1, kind="stable")
                top = np.take_along_axis(top, order, axis=1)
                best[exact] = top if isinstance(item_index, slice) else item_index[top]
                best_scores[exact] = np.take_along_axis(kept, order, axis=1)
            names = self.items_.ids(best.ravel()).reshape(best.shape).astype(object)
            names[~np.isfinite(best_scores)] = ""
            top_items[rows, :width] = names
            top_index[rows, :width] = np.where(np.isfinite(best_scores), best, -1)
            top_scores[rows, :width] = np.where(np.isfinite(best_scores), best_scores, -np.inf)
        top_items = top_items.astype(str)
        explanations = None
        if wording is not None:
            explanations = self._explanations(
                ids, top_items, top_scores, reasons, wording, (user_index, top_index)
            )
        return Recommendations(ids, top_items, top_scores, cold, explanations)

    def _retrieved(
        self, user_index: np.ndarray, width: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The warm users' top ``width`` items from the model's approximate index, if it has
        one: (whether a user's list is complete, item indexes, scores), best first. A user
        whose retrieved items run out once the seen ones are dropped is incomplete: the
        caller scores every item for them instead."""
        if not len(user_index) or not self._retrieves():
            return None
        seen = int(self.history_size_[user_index].max()) if exclude_seen else 0
        depth = min(width + seen, len(self.items_))
        items, scores = self._retrieve(user_index, depth, width)
        if exclude_seen:
            valid = items >= 0
            users = np.broadcast_to(user_index[:, None], items.shape)
            scores[valid] = np.where(
                self.history_.contains(users[valid], items[valid]), -np.inf, scores[valid]
            )
        order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
        items = np.take_along_axis(items, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        return np.isfinite(scores).all(axis=1), items, scores

    def _retrieves(self) -> bool:
        """Whether :meth:`_retrieve` answers now: the model has an approximate top-k index
        and it is ready. Default: no, every item is scored."""
        return False

    def _retrieve(
        self, user_index: np.ndarray, depth: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` best items of each (warm) user from the approximate index, as item
        indexes (-1: none) and their scores (as :meth:`_score` gives them), best first.
        ``width`` items are asked for (the others make room for seen ones): what the recall
        check checks."""
        raise NotImplementedError

    def score_all(self, users: object) -> np.ndarray:
        """Scores of every item the model knows, in the order of ``items_``.

        Returns
        -------
        scores : array of float32, shape (n_users, len(items_))
            Cold users get the fallback's scores. Seen items are not masked.
        """
        self._check_fitted()
        user_index = self.users_.lookup(_ids(users, "users"))
        return self._scores(user_index, self._cold(user_index), slice(None), len(self.items_))

    def score(self, users: object, items: object) -> np.ndarray:
        """Scores of every (user, item) pair.

        Returns
        -------
        scores : array of float32, shape (n_users, n_items)
            Cold users get the fallback's scores; items the model does not know get NaN.
        """
        self._check_fitted()
        user_index = self.users_.lookup(_ids(users, "users"))
        item_index = self.items_.lookup(_ids(items, "items"))
        known = item_index >= 0
        scores = np.full((len(user_index), len(item_index)), np.nan, dtype=np.float32)
        if known.any() and len(user_index):
            scores[:, known] = self._scores(
                user_index, self._cold(user_index), item_index[known], int(known.sum())
            )
        return scores

    def similar_items(self, item: object, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` items most like ``item`` by the model's own item representations: the
        cosine of item factors (MF, BPR) or of the transformer's item vectors, the item-kNN
        similarity; the most popular items for the popularity model. Pure.

        Returns
        -------
        list of (item id, similarity), most similar first; empty for an unknown item.
        """
        self._check_fitted()
        check_positive_ints(k=k)
        index = int(self.items_.lookup(_ids([item], "item"))[0])
        if index < 0:
            return []
        scores = np.asarray(self._item_similarity(index), dtype=np.float64).copy()
        scores[index] = -np.inf
        width = min(k, len(scores) - 1)
        if width <= 0:
            return []
        best = np.argpartition(-scores, width - 1)[:width]
        best = best[np.argsort(-scores[best], kind="stable")]
        best = best[np.isfinite(scores[best])]
        return list(zip(self.items_.ids(best).tolist(), scores[best].tolist(), strict=True))

    def _item_similarity(self, item: int) -> np.ndarray:
        """Similarity of every item to ``item``, shape (n_items,). Default: popularity."""
        return self.popularity_.counts[: len(self.items_)]

    # -------------------------------------------------------------- explaining

    @property
    def version(self) -> str:
        """The model's name and how many updates (fit, learn, replay, anchor) made it."""
        return f"{self.name or type(self).__name__}-{self.updates_ if self.is_fitted else 0}"

    def explain(
        self,
        user: object,
        item: object,
        top: int = 5,
        wording: Wording | None = None,
    ) -> Explanation:
        """Why ``item`` gets its score for ``user``: the reasons that raise it, strongest first.

        Each model splits its score its own way (``Explanation.method``): MF exactly over the
        history through the fold-in solve, item-kNN exactly over the neighbours in the
        history, the transformer by integrated gradients over the history items, popularity
        (and every model's cold-start fallback) by the item's decayed popularity.

        Parameters
        ----------
        user, item : id
            Either may be unknown: an unknown user gets the fallback's explanation, an unknown
            item an explanation without reasons and a NaN score.
        top : int
            Reasons kept (the others go into ``Explanation.rest``).
        wording : Wording, optional
            Titles and categories from a catalogue, and the verb for a history item
            ("watched", "read", "bought"), to word the reasons with; build it once, it
            indexes the catalogue. Items are named by their ids without one.

        Returns
        -------
        Explanation
        """
        self._check_fitted()
        check_positive_ints(top=top)
        user_id, item_id = _ids([user], "user"), _ids([item], "item")
        (explanations,) = self._explanations(
            user_id, item_id[None, :], None, top, _wording(wording)
        )
        return explanations[0]

    def explain_many(
        self,
        users: object,
        items: object,
        top: int = 3,
        wording: Wording | None = None,
    ) -> tuple[tuple[Explanation, ...], ...]:
        """:meth:`explain` for a table of (user, item) pairs, vectorised.

        Parameters
        ----------
        users : sequence of ids, shape (n,)
        items : array of ids, shape (n, k)
            The items to explain for each user; "" marks no item (left out of the result).

        Returns
        -------
        tuple of tuple of Explanation
            Per user, one explanation per item that is not "".
        """
        self._check_fitted()
        check_positive_ints(top=top)
        ids = _ids(users, "users")
        table = np.asarray(items, dtype=str)
        if table.ndim != 2 or len(table) != len(ids):
            raise ValueError(f"items: expected shape ({len(ids)}, k), got {table.shape}")
        return self._explanations(ids, table, None, top, _wording(wording))

    def read_history(self, user: object) -> np.ndarray:
        """The history items (ids) the model reads to score for ``user``, which its
        explanations split over: the whole history for MF and BPR, the ``history_length``
        latest items for item-kNN, the last ``max_len`` for the transformer; none for a cold
        user or the popularity model."""
        self._check_fitted()
        user_index = self.users_.lookup(_ids([user], "user"))
        if self._cold(user_index)[0]:
            return np.zeros(0, dtype=str)
        history = self._attribute(user_index, np.zeros((1, 1), dtype=np.int64)).history[0]
        return self.items_.ids(history[history >= 0])

    def deletion_scores(self, user: object, items: object, removed: object) -> np.ndarray:
        """Scores of ``items`` for ``user`` recomputed from the history without each of the
        ``removed`` history items in turn: the deletion test of an explanation's
        faithfulness (remove what a reason rests on; the score should drop). Pure.

        Parameters
        ----------
        user : id of a user with history
        items : sequence of item ids the model knows, shape (k,)
        removed : sequence of item ids in the user's history, shape (r,)

        Returns
        -------
        scores : array of float64, shape (r + 1, k)
            Row 0 from the whole history, as the explanation splits it (for MF the exact
            fold-in, which the stored user factors approach); row ``j + 1`` without
            ``removed[j]``.

        Raises
        ------
        NotImplementedError
            For models whose score is not computed from the user's history (popularity, BPR).
        ValueError
            For an unknown or cold user, an unknown item, or a removed item not in the history.
        """
        self._check_fitted()
        user_index = self.users_.lookup(_ids([user], "user"))
        if self._cold(user_index)[0]:
            raise ValueError(f"user {str(user)!r} has no history in this model")
        item_index = self.items_.lookup(_ids(items, "items"))
        if (item_index < 0).any():
            raise ValueError(f"items: {str(_ids(items, 'items')[item_index < 0][0])!r} is unknown")
        removed_ids = _ids(removed, "removed")
        removed_index = self.items_.lookup(removed_ids)
        known = removed_index >= 0
        known[known] = self.history_.contains(
            np.full(int(known.sum()), user_index[0]), removed_index[known]
        )
        if not known.all():
            raise ValueError(
                f"removed: {str(removed_ids[~known][0])!r} is not in the history of user "
                f"{str(user)!r}"
            )
        return self._deletion_scores(int(user_index[0]), item_index, removed_index)

    def _explanations(
        self,
        users: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray | None,
        top: int,
        wording: Wording,
        index: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[tuple[Explanation, ...], ...]:
        """Explanations of a (users, k) table of item ids ("" = none), vectorised over the
        table; only the final objects are built one by one. ``index``: the users' and the
        items' indexes (-1: unknown or none) where the caller has them (a recommendation)."""
        n, k = items.shape
        if index is None:
            user_index = self.users_.lookup(users)
            item_index = self.items_.lookup(items.ravel()).reshape(n, k)
        else:
            user_index, item_index = index
        known = item_index >= 0
        if scores is None:
            scores = self._pair_scores(user_index, item_index)
        cold = self._cold(user_index)
        warm = np.flatnonzero(~cold)
        if n and len(warm) == n:  # no fallback (a request of known users): the tables as found
            attribution, reason_items, reason_weights = self._reasons(
                user_index, item_index, known, top
            )
            kinds, methods = attribution.kinds, [attribution.method] * n
            trend = np.full(n, attribution.trend)
        else:
            # The reasons' items (-2: the popularity part, -1: none, after the reasons) and
            # weights, (n, k, top).
            reason_items = np.full((n, k, top), -1, dtype=np.int64)
            reason_weights = np.zeros((n, k, top))
            kinds = np.full((n, k), "popularity", dtype=object)
            methods = ["decayed popularity"] * n
            trend = cold.copy()  # popularity parts worded as a trend (decayed counts)
            # the fallback: the score is the decayed popularity, one reason
            fallback = scores[cold].astype(np.float64)
            reason_items[cold, :, 0] = np.where(fallback > 0, -2, -1)
            reason_weights[cold, :, 0] = np.where(fallback > 0, fallback, 0.0)
            if len(warm):
                attribution, found, weights = self._reasons(
                    user_index[warm], item_index[warm], known[warm], top
                )
                reason_items[warm, :, : found.shape[2]] = found
                reason_weights[warm, :, : found.shape[2]] = weights
                kinds[warm] = attribution.kinds
                for row in warm.tolist():
                    methods[row] = attribution.method
                trend[warm] = attribution.trend
        rest = scores - reason_weights.sum(axis=2)  # weights are 0 where there is no reason
        return self._build_explanations(
            users, items, scores, rest, known, cold, methods, kinds, trend,
            reason_items, reason_weights, wording,
        )  # fmt: skip

    def _reasons(
        self, user_index: np.ndarray, item_index: np.ndarray, known: np.ndarray, top: int
    ) -> tuple[Attribution, np.ndarray, np.ndarray]:
        """Warm users' attribution, and the ``top`` reasons of each of their items: history
        items (-2: the popularity part, -1: none, after the reasons) and weights, shape
        (n, k, at most top)."""
        attribution = self._attribute(user_index, np.where(known, item_index, 0))
        popularity = attribution.popularity
        if popularity is not None:
            popularity = np.asarray(popularity, dtype=np.float64)
        return attribution, *top_reasons(attribution, top, popularity)

    def _build_explanations(
        self,
        users: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray,
        rest: np.ndarray,
        known: np.ndarray,
        cold: np.ndarray,
        methods: list[str],
        kinds: np.ndarray,
        trend: np.ndarray,
        reason_items: np.ndarray,
        reason_weights: np.ndarray,
        wording: Wording,
    ) -> tuple[tuple[Explanation, ...], ...]:
        """The objects, from the (n, k, top) tables: the one step done item by item. Every
        sentence is worded once per call (and remembered by the wording), and the tables are
        read as Python lists (indexing numpy arrays element by element costs more than
        building the objects)."""
        present = items != ""
        said, popular = self._sentences(items, present, kinds, trend, reason_items, wording)
        version = self.version
        nan = float("nan")
        rows = zip(
            users.tolist(), items.tolist(), present.tolist(), known.tolist(), kinds.tolist(),
            scores.tolist(), rest.tolist(), reason_items.tolist(), reason_weights.tolist(),
            methods, trend.tolist(), cold.tolist(), strict=True,
        )  # fmt: skip
        out = []
        for user, *row, method, trending, fallback in rows:
            explained = []
            for item, shown, named, kind, score, left, found, weights in zip(*row, strict=True):
                if not shown:
                    continue
                if not named:
                    explained.append(Explanation(user, item, nan, version, "unknown item"))
                    continue
                reasons = []
                for history_item, weight in zip(found, weights, strict=True):
                    if history_item == -1:  # the reasons come first
                        break
                    if history_item == -2:
                        reasons.append(Reason("popularity", weight, popular[item, trending]))
                    else:
                        reasons.append(Reason(kind, weight, *said[kind, history_item]))
                explained.append(
                    Explanation(user, item, score, version, method, tuple(reasons), left, fallback)
                )
            out.append(tuple(explained))
        return tuple(out)

    def _sentences(
        self,
        items: np.ndarray,
        present: np.ndarray,
        kinds: np.ndarray,
        trend: np.ndarray,
        reason_items: np.ndarray,
        wording: Wording,
    ) -> tuple[dict[tuple[str, int], tuple[str, str]], dict[tuple[str, bool], str]]:
        """The words of every reason in the (n, k, top) table: (kind, history item) -> (the
        sentence, the item's id), and (item id, trend) -> the popularity sentence."""
        shown = reason_items[present]  # (shown items, top)
        said: dict[tuple[str, int], tuple[str, str]] = {}
        named = np.unique(shown[shown >= 0]).tolist()
        if named:
            ids = self.items_.ids(named).tolist()
            # the kinds of reasons that rest on a history item: one for most models
            for kind in _HISTORY_KINDS.intersection(kinds.ravel().tolist()):
                sentences = wording.reasons(kind, ids)
                said.update(zip(((kind, item) for item in named),
                                zip(sentences, ids, strict=True), strict=True))  # fmt: skip
        popular: dict[tuple[str, bool], str] = {}
        if (shown == -2).any():
            asking = (shown == -2).any(axis=1)
            trending = np.broadcast_to(trend[:, None], present.shape)[present][asking].tolist()
            asked = sorted(set(zip(items[present][asking].tolist(), trending, strict=True)))
            half_life = self._fallback_half_life_days()
            words = wording.popularities(
                np.array([item for item, _ in asked], dtype=str),
                [half_life if trending else None for _, trending in asked],
            )
            popular.update(zip(asked, words, strict=True))
        return said, popular

    def _pair_scores(self, user_index: np.ndarray, item_index: np.ndarray) -> np.ndarray:
        """Scores of a (users, k) table of item indexes (-1: NaN), shape (n, k)."""
        known = item_index >= 0
        out = np.full(item_index.shape, np.nan)
        if not known.any():
            return out
        chosen, column = np.unique(item_index[known], return_inverse=True)
        table = self._scores(user_index, self._cold(user_index), chosen, len(chosen))
        rows = np.broadcast_to(np.arange(len(user_index))[:, None], item_index.shape)[known]
        out[known] = table[rows, column.ravel()]
        return out

    def _cold(self, user_index: np.ndarray) -> np.ndarray:
        """Users that get the fallback: unknown, or no positive history."""
        known = user_index >= 0
        cold = ~known
        cold[known] = self.history_size_[user_index[known]] == 0
        return cold

    def _scores(
        self,
        user_index: np.ndarray,
        cold: np.ndarray,
        item_index: np.ndarray | slice,
        n_candidates: int,
    ) -> np.ndarray:
        scores = np.empty((len(user_index), n_candidates), dtype=np.float32)
        if cold.any():
            scores[cold] = self.popularity_.counts[item_index]
        if (~cold).any():
            scores[~cold] = self._score(user_index[~cold], item_index)
        return scores

    def _mask_seen(
        self, scores: np.ndarray, user_index: np.ndarray, item_index: np.ndarray | slice
    ) -> None:
        known = np.flatnonzero(user_index >= 0)
        if len(known) == 0:
            return
        # Plain CSR arrays, not a scipy matrix: on one user's row (a request) scipy's checks
        # cost more than the masking (half of a 10,000-item MF recommendation, measured).
        seen = self.history_.row_block(user_index[known])
        rows = np.repeat(np.arange(len(known)), np.diff(seen.indptr))
        if isinstance(item_index, slice):  # all items, in index order
            scores[known[rows], seen.indices] = -np.inf
            return
        column = np.full(len(self.items_), -1)
        column[item_index] = np.arange(len(item_index))
        hit = column[seen.indices] >= 0
        scores[known[rows[hit]], column[seen.indices[hit]]] = -np.inf

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(
                f"{type(self).__name__} has not learned anything yet: fit or learn first"
            )

    # -------------------------------------------------------------- persistence

    def save(self, path: str | Path) -> None:
        """Write the model to the folder ``path``: manifest.json and arrays.npz (no pickle)."""
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"history.{k}": v for k, v in self.history_.state().items()}
        arrays |= {f"last_seen.{k}": v for k, v in self.last_seen_.state().items()}
        arrays |= {f"popularity.{k}": v for k, v in self.popularity_.state().items()}
        arrays |= {"history_size": self.history_size_}
        arrays |= {f"model.{k}": v for k, v in self._state().items()}
        np.savez(folder / "arrays.npz", allow_pickle=False, **arrays)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": type(self).__name__,
            "params": self.get_params(),
            "users": self.users_.to_array().tolist(),
            "items": self.items_.to_array().tolist(),
            "updates": self.updates_,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        self._save_parts(folder)

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Read a model saved by :meth:`save` (of this class, or any when called on the base)."""
        folder = Path(path)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{folder}: model format {manifest.get('format_version')!r} "
                f"is not the supported {FORMAT_VERSION}"
            )
        model_class = registered_models().get(manifest["model"])
        if model_class is None or not issubclass(model_class, cls):
            raise ValueError(f"{folder}: holds a {manifest['model']}, not a {cls.__name__}")
        model = model_class(**manifest["params"])
        with np.load(folder / "arrays.npz", allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        model._reset()
        model.users_ = IdIndex(np.array(manifest["users"], dtype=str))
        model.items_ = IdIndex(np.array(manifest["items"], dtype=str))
        part = lambda prefix: {  # noqa: E731
            k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)
        }
        model.history_ = GrowingSparse.from_state(part("history."), "sum", np.float32)
        model.last_seen_ = GrowingSparse.from_state(part("last_seen."), "max", np.float64)
        model.popularity_.set_state(part("popularity."))
        model.history_size_ = arrays["history_size"].astype(np.int64)
        model.updates_ = int(manifest.get("updates", 0))
        model._set_state(part("model."))
        model._load_parts(folder)
        return model

    # -------------------------------------------------------------- hooks

    @abstractmethod
    def _reset_model(self) -> None:
        """Forget everything model-specific."""

    @abstractmethod
    def _grow(self, n_users: int, n_items: int) -> None:
        """Make room for new users and items (indexes up to n_users - 1, n_items - 1)."""

    def _fit(self, events: IndexedEvents) -> None:
        """Train on everything in the history; by default, one incremental pass."""
        self._learn(events)

    @abstractmethod
    def _learn(self, events: IndexedEvents) -> None:
        """Update from a batch whose ids, history and popularity are already recorded."""

    @abstractmethod
    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        """Scores, shape (n_users, n_items), float32, for warm users.

        ``item_index`` is an index array, or ``slice(None)`` for all items in index order.
        """

    @abstractmethod
    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        """Split the scores of ``items`` (int64, shape (n, k)) for the warm ``users`` (shape
        (n,), may repeat) over what drives them (see :class:`Attribution`)."""

    def _deletion_scores(self, user: int, items: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """:meth:`deletion_scores` on checked indexes. Default: not history-based."""
        raise NotImplementedError(
            f"{type(self).__name__} does not compute its scores from the user's history, so "
            "there is no history item to delete"
        )

    def _save_parts(self, folder: Path) -> None:  # noqa: B027 (an optional hook: the default does nothing)
        """Write what arrays cannot hold (the models inside an ensemble) under ``folder``."""

    def _load_parts(self, folder: Path) -> None:  # noqa: B027 (an optional hook: the default does nothing)
        """Read back what :meth:`_save_parts` wrote."""

    @abstractmethod
    def _state(self) -> dict[str, np.ndarray]:
        """Model-specific arrays to save."""

    @abstractmethod
    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what :meth:`_state` saved."""


def model_names() -> list[str]:
    """The short names of every model, optional ones included, without importing them."""
    return sorted({cls.name for cls in _MODELS.values() if cls.name} | set(OPTIONAL_MODELS))


def can_share_index(model: Recommender) -> bool:
    """Whether ``model`` indexes its events through :class:`Recommender` alone, so that it
    can share an owner's index (:meth:`Recommender._share_index`)."""
    kind = type(model)
    through_base = all(
        getattr(kind, name) is getattr(Recommender, name) for name in ("fit", "learn", "_index")
    )
    # a model that bounds its memory admits and expires ids in an index of its own
    return through_base and not bounds_memory(model)


def registered_models() -> dict[str, type[Recommender]]:
    """Every concrete recommender class, by class name (optional models whose extra is
    installed included)."""
    for module, package, _ in OPTIONAL_MODELS.values():
        if importlib.util.find_spec(package) is not None:
            importlib.import_module(module)
    return dict(_MODELS)


def _ids(values: object, name: str) -> np.ndarray:
    if isinstance(values, str | bytes) or np.isscalar(values):
        raise ValueError(f"{name} must be a sequence of ids, not a single {type(values).__name__}")
    if not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of ids, not {type(values).__name__}")
    return as_ids(values, name)


def _wording(wording: object) -> Wording:
    if wording is None:
        return _PLAIN
    if not isinstance(wording, Wording):
        raise TypeError(f"wording must be a Wording, not {type(wording).__name__}")
    return wording


def _check_batch(events: object) -> None:
    if not isinstance(events, EventBatch):
        raise TypeError(f"events must be an EventBatch, not {type(events).__name__}")
