"""``auto`` and ``ensemble``: an online ensemble that follows the best of its candidate models per
situation; ``auto``, the default model, also ranks the catalogue's never-seen items.

Which model wins changes with the data set, and within one stream with the user and the item:
a bestseller list for someone who just arrived or for an item that appeared an hour ago,
item-kNN or a session-aware MF for someone with a few recent events, a classic MF for a long
history. :class:`Ensemble` runs its candidates side by side on the same events and learns, online,
how much to trust each one in each situation.

A situation is a pair of buckets: the length of the user's history as the ensemble has learned
it (:data:`HISTORY_BUCKETS`: none, 1-4 items, 5-19, 20 and more) and the item's age, the time
since its first event as the ensemble saw it (:data:`AGE_BUCKETS`: never seen, under an hour,
under a day, under 30 days, older).

Test then train: before the candidates learn a batch, its positive events that are first
sightings of their (user, item) pair, by users with a history, are judged, each with
probability ``judge_share`` and at most ``sample`` per batch: every candidate ranks the item
for the user as it stands, from one pass of its scores over every item; the loss is
``1 - gain``, the gain ``1 / log2(rank + 1)`` when the item is in the candidate's top ``k`` for
the user (seen items and the user's other items of the batch excluded, ties counted against
the item), 0 otherwise. Each situation's weights then take a Hedge step with fixed share::

    w[s, c] <- w[s, c] * exp(-learning_rate * L[s, c])      # L: the summed losses in s
    w[s, :] <- (1 - share) * w[s, :] / sum(w[s, :]) + share / n_candidates

Fixed share keeps every candidate's weight above ``share / n_candidates``, so the ensemble can
follow a switch of the best candidate within a bounded number of events.

Judging reuses what serving computed: the candidates' scores of the latest users scored (the
latest block of them) are kept until the next change to a candidate, so an event by a user who
was just served is judged on exactly the scores that served it, with no scoring of its own (in
P1's test-then-train, every judged event). Other events cost every candidate a scoring of every
item, which is why only a share of them is judged.

One index for all: the candidates share the ensemble's ids and histories (every model's
bookkeeping of who has seen what), so each batch is indexed once rather than once per
candidate, after it is judged; each candidate keeps only its history sizes and fallback
popularity of its own. (A candidate that indexes its events its own way keeps its own index.)
On 60,000 rows of ML-100K (85 % warm-up) learning per row, the ensemble of the five default
candidates spends 15.7 CPU seconds on updates against their 16.3 alone. ``auto`` takes the
events to judge and the batch's first pairs from the ensemble, so its new-item placement adds
only its own index of the catalogue, its prior's step and its judging, each a compiled pass
(P1, 500 blocks, per row, update CPU seconds against its candidates': 1.25x on ML-100K,
1.43x on ML latest-small, 0.94x on YOOCHOOSE).

Serving blends the candidates' standardised scores: for a user in history bucket ``h`` and an
item in age bucket ``a``, ``score(i) = sum_c w[h, a, c] * (s_c(i) - mean_c) / std_c``, the mean
and standard deviation over every item (so a score never depends on which other items are
scored). Users without a history get the fallback (decayed popularity), as with every model.

Explanations are faithful to the blend's leading part: an item is explained by the reasons of
the candidate whose weighted part lifts its score most, each scaled by the item's weight over
that candidate's standard deviation (exactly its share of the score), the other candidates'
parts in ``rest``; the method names the leading candidates and their weights.

:class:`Auto` is the ensemble inside :class:`~lifelong_rec.models.fresh.Fresh`: a catalogue
item nobody has interacted with yet is placed among the blend's ranking where its calibrated
chance of being the user's next item beats the hit rate of the blend at that rank. The hit
rates per rank come from the ensemble's own judging: each judged event is also ranked by the
blend as it was served (weights before the step), so the placement costs no scoring of its
own. Without a catalogue, ``auto`` ranks exactly as ``ensemble`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import EventBatch, IdIndex
from lifelong_rec.models.base import (
    DecayedCounts,
    IndexedEvents,
    Recommender,
    _check_batch,
    can_share_index,
)
from lifelong_rec.models.explanation import Attribution, Explanation, Wording
from lifelong_rec.models.fresh import Fresh
from lifelong_rec.models.kernels import judged_ranks

#: the lower ends of the history-length buckets (distinct positive items of the user)
HISTORY_BUCKETS = (0, 1, 5, 20)
#: the lower ends of the item-age buckets in seconds, after the bucket of never-seen items
AGE_BUCKETS = (0.0, 3_600.0, 86_400.0, 30 * 86_400.0)
DEFAULT_CANDIDATES = ("pop", "session-itemknn", "sequential-rules", "session-mf", "mf")
#: the half-lives (days) of the decayed popularities :class:`Auto` chooses its fallback from:
#: an hour, a day, a week, a month
FALLBACK_HALF_LIVES = (1.0 / 24.0, 1.0, 7.0, 30.0)
_JUDGE_BLOCK = 8_000_000  # most candidate scores held at once (64 MB of float64)


class Eligible(NamedTuple):
    """A batch before it is indexed, as :meth:`Ensemble._eligible` finds it."""

    users: np.ndarray  # user indexes, -1: unknown
    items: np.ndarray  # item indexes, -1: unknown
    sizes: np.ndarray  # the users' history sizes
    eligible: np.ndarray  # which events can be judged


class Ensemble(Recommender):
    """An online ensemble of ``candidates`` (model specs), weighted per situation by Hedge.

    Parameters
    ----------
    candidates : sequence of str
        Model specs (``parse_model``), by default :data:`DEFAULT_CANDIDATES`; where PyTorch
        is installed the transformer can join, e.g. ``"transformer(update_steps=0)"``
        (sequence updates only), at the cost of its scoring on every judged event.
    learning_rate : float
        Hedge's step size (per unit of summed loss).
    share : float
        The fixed share in [0, 1): each step mixes this much of the uniform weights back in.
    judge_share : float
        The chance, in (0, 1], that an eligible event is judged.
    sample : int
        Most events judged per learned batch (fewer where the catalogue is so large that
        their scores would take more than 64 MB).
    k : int
        The list length the candidates are judged on.
    seed : int
        Seeds the sampling of judged events.
    fallback_half_life_days : float or None
        Half-life of the popularity that users without a history get.
    """

    name = "ensemble"

    def __init__(
        self,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        learning_rate: float = 0.5,
        share: float = 0.02,
        judge_share: float = 0.25,
        sample: int = 256,
        k: int = 10,
        seed: int = 0,
        fallback_half_life_days: float | None = 7.0,
    ) -> None:
        from lifelong_rec.models.specs import parse_model

        candidates = tuple(str(spec) for spec in candidates)
        if not candidates:
            raise ValueError("candidates: name at least one model spec")
        for spec in candidates:
            if spec.partition("(")[0].strip() in ("ensemble", "auto"):
                raise ValueError(f"candidates: {spec!r} would nest an ensemble in itself")
            parse_model(spec)  # fails now, naming the spec, not at the first learn
        check_positive_ints(sample=sample, k=k)
        if not np.isfinite(learning_rate) or learning_rate < 0:
            raise ValueError(f"learning_rate must be finite and >= 0, got {learning_rate!r}")
        if not 0 <= share < 1:
            raise ValueError(f"share must be in [0, 1), got {share!r}")
        if not 0 < judge_share <= 1:
            raise ValueError(f"judge_share must be in (0, 1], got {judge_share!r}")
        self.candidates = candidates
        self.learning_rate = learning_rate
        self.share = share
        self.judge_share = judge_share
        self.sample = sample
        self.k = k
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {
            "candidates": ("pop", "itemknn(neighbours=20)", "mf(factors=8, iterations=3)"),
            "judge_share": 1.0,
        }

    # -------------------------------------------------------------- learning

    def _reset_model(self) -> None:
        from lifelong_rec.models.specs import parse_model

        self.models_ = [parse_model(spec)[1]() for spec in self.candidates]
        for model in self.models_:
            if can_share_index(model):  # one index for all: each batch is indexed once
                model._share_index(self)
        n = len(self.candidates)
        situations = (len(HISTORY_BUCKETS), len(AGE_BUCKETS) + 1)
        self.weights_ = np.full((*situations, n), 1.0 / n)
        self.judged_ = np.zeros(situations, dtype=np.int64)  # events judged per situation
        # the latest learned batch's judged rows and the blend's ranks of their items (inf:
        # an item never seen before): what a wrapper calibrates the blend's hit rates with
        self.last_judged_ = (np.zeros(0, dtype=np.int64), np.zeros(0))
        # the latest learned batch's first (user, item) pairs (IndexedEvents.new_pair)
        self.last_new_pair_ = np.zeros(0, dtype=bool)
        self.first_seen_ = np.zeros(0)  # each item's first positive event (inf: none yet)
        self.clock_ = -np.inf  # the latest event time learned
        self._forget_derived()

    def _forget_derived(self) -> None:
        """Drop what is derived from the candidates' state and indexes: their item maps and
        the latest served parts (see :meth:`_served_parts`)."""
        self._maps: list[tuple[int, np.ndarray]] = []
        self._served: tuple[np.ndarray, np.ndarray] | None = None
        # every item's age bucket (see _item_ages): (items, clock until which it holds, ages)
        self._ages: tuple[int, float, np.ndarray] | None = None

    def _grow(self, n_users: int, n_items: int) -> None:
        extra = n_items - len(self.first_seen_)
        self.first_seen_ = np.concatenate([self.first_seen_, np.full(extra, np.inf)])

    def _fit(self, events: IndexedEvents) -> None:
        """Every candidate trains from scratch; the weights start uniform."""
        for model in self.models_:
            if self._shares_index(model):  # reset with the ensemble
                model._learn_indexed(events, fit=True)
            else:
                model.fit(_source(events))
        self._note_times(events)

    def learn(self, events: EventBatch, eligible: Eligible | None = None) -> None:
        """Judge the candidates on the batch as they stand (test then train), then index it
        once for them all and let every one learn it. ``eligible``: what :meth:`_eligible`
        gives for this batch, where a wrapper has it already."""
        _check_batch(events)
        self.last_judged_ = (np.zeros(0, dtype=np.int64), np.zeros(0))
        if self.is_fitted and self.updates_ and len(events):
            self._weigh(events, self._eligible(events) if eligible is None else eligible)
        super().learn(events)

    def _learn(self, events: IndexedEvents) -> None:
        self._served = None
        self.last_new_pair_ = events.new_pair
        for model in self.models_:
            if self._shares_index(model):
                model._learn_indexed(events)
            else:
                model.learn(_source(events))
        self._note_times(events)

    def _shares_index(self, model: Recommender) -> bool:
        return getattr(model, "users_", None) is self.users_  # an unfitted one has none yet

    def replay(self, events: EventBatch) -> None:
        _check_batch(events)
        if not self.is_fitted or not len(events):
            return
        self._served = None
        for model in self.models_:
            model.replay(events)
        self.updates_ += 1

    def _anchor(self, strength: float) -> None:
        self._served = None
        for model in self.models_:
            if model.is_fitted:
                model.anchor(strength)

    def _note_times(self, events: IndexedEvents) -> None:
        positive = events.positive
        items, times = events.item[positive], events.timestamp[positive]
        if (times < self.first_seen_[items]).any():  # an item seen earlier than it was: its age
            np.minimum.at(self.first_seen_, items, times)
            self._ages = None
        if len(events.timestamp):
            self.clock_ = max(self.clock_, float(events.timestamp.max()))

    def weigh(self, events: EventBatch) -> np.ndarray:
        """One step of the weights from the candidates' losses on ``events``, judged as they
        stand (before they learn them), every eligible event judged; returns the losses, shape
        (n_judged, n_candidates). See the module docstring."""
        _check_batch(events)
        self._check_fitted()
        users, items, sizes, eligible = self._eligible(events)
        rows = np.flatnonzero(eligible)
        return self._judge(users[rows], items[rows], events.timestamp[rows], sizes[rows],
                           _batch_pairs(events, users, items))[0]  # fmt: skip

    def _eligible(self, events: EventBatch) -> Eligible:
        """The batch's user and item indexes (-1: unknown), its users' history sizes, and
        which events can be judged: positive, the first of their (user, item) pair (in the
        batch and in the history), by a user with a history (the others get the fallback)."""
        users, items = self.users_.lookup(events.user), self.items_.lookup(events.item)
        sizes = np.zeros(len(events), dtype=np.int64)
        sizes[users >= 0] = self.history_size_[users[users >= 0]]
        eligible = self._first_pairs(users, items, events.weight > 0, events.item) & (sizes > 0)
        return Eligible(users, items, sizes, eligible)

    def _weigh(self, events: EventBatch, eligible_events: Eligible) -> None:
        """:meth:`weigh` inside learning, before the batch is indexed, on a share of the
        eligible events (:meth:`_eligible`)."""
        users, items, sizes, eligible = eligible_events
        rng = np.random.default_rng((self.seed, self.updates_))
        rows = np.flatnonzero(eligible & (rng.random(len(events)) < self.judge_share))
        most = min(self.sample, max(1, _JUDGE_BLOCK // (len(self.models_) * len(self.items_))))
        if len(rows) > most:
            rows = np.sort(rng.choice(rows, most, replace=False))
        ranks = self._judge(users[rows], items[rows], events.timestamp[rows], sizes[rows],
                            _batch_pairs(events, users, items))[1]  # fmt: skip
        self.last_judged_ = (rows, ranks)

    def _judge(
        self,
        user_index: np.ndarray,
        item_index: np.ndarray,
        times: np.ndarray,
        sizes: np.ndarray,
        batch: tuple[np.ndarray, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rank each (user, item) under every candidate, take a step of the weights; returns
        the losses, shape (n, n_candidates), and the item's rank under the blend as served
        before the step, shape (n,) (inf for an item never seen: index -1 for one the
        ensemble does not know, which every candidate misses).

        ``batch`` holds the batch's known positive (user, item) pairs: a user's other items
        of the batch are left out of the ranking as seen ones are, so that a large batch does
        not make the items a user picked alongside the judged one compete with it (which
        would count against the candidates that foresee them best)."""
        n, n_candidates = len(user_index), len(self.models_)
        if not n:
            return np.zeros((0, n_candidates)), np.zeros(0)
        parts = self._served_parts(user_index)  # (candidates, n, items)
        known = item_index >= 0
        item = np.where(known, item_index, 0)
        excluded = np.zeros((n, len(self.items_)), dtype=bool)  # what each user has seen
        seen = self.history_.row_block(user_index)  # judged users have a history
        excluded[np.repeat(np.arange(n), np.diff(seen.indptr)), seen.indices] = True
        excluded[_same_user(user_index, *batch)] = True
        history = _bucket(HISTORY_BUCKETS, sizes)
        item_ages = self._item_ages()
        rank, ranks = judged_ranks(parts, excluded, item_index, self.weights_, history,
                                   item_ages)  # fmt: skip
        losses = _ndcg_losses(rank, self.k)
        ages = np.where(known, self._age(item, times), 0)
        ranks = np.where(ages > 0, ranks, np.inf)
        summed = np.zeros_like(self.weights_)
        np.add.at(summed, (history, ages), losses)
        self.weights_ = _hedge(self.weights_, summed, self.learning_rate, self.share)
        np.add.at(self.judged_, (history, ages), 1)
        return losses, ranks

    def _blend(self, parts: np.ndarray, history: np.ndarray, ages: np.ndarray) -> np.ndarray:
        """sum_c w[h, a, c] * part_c per user (history bucket h) and item (age bucket a):
        parts (candidates, n, items), ages (items,)."""
        total = np.zeros(parts.shape[1:])
        for c in range(parts.shape[0]):
            total += self.weights_[history, :, c][:, ages] * parts[c]
        return total

    def _age(self, item_index: np.ndarray, now: np.ndarray | float) -> np.ndarray:
        """Each item's age bucket at ``now``: 0 if never seen, else 1 + its bucket."""
        first = self.first_seen_[item_index]
        seen = np.isfinite(first)
        age = np.where(seen, np.asarray(now) - np.where(seen, first, 0.0), 0.0)
        return np.where(seen, 1 + _bucket(AGE_BUCKETS, np.maximum(age, 0.0)), 0)

    def _item_ages(self) -> np.ndarray:
        """:meth:`_age` of every item at ``clock_``, computed again only when it can have
        changed: an item seen for the first time (or earlier than it was), or the clock past
        the time the first item enters its next bucket (an hour after its first event, a
        day, 30 days). Judging and serving read it for every event and request."""
        cached = self._ages  # read once: another reader of a served snapshot may replace it
        if cached is not None and cached[0] == len(self.items_) and self.clock_ < cached[1]:
            return cached[2]
        first = self.first_seen_[: len(self.items_)]
        ages = self._age(np.arange(len(self.items_)), self.clock_)
        edges = np.append(np.asarray(AGE_BUCKETS), np.inf)
        seen = ages > 0
        # the next edge of a seen item of bucket b (1 + index of its lower end) is edges[b]
        until = float((first[seen] + edges[ages[seen]]).min(initial=np.inf))
        self._ages = (len(self.items_), until, ages)
        return ages

    def _situation(self, user_index: np.ndarray) -> np.ndarray:
        """Each user's history bucket (unknown users: 0)."""
        sizes = np.zeros(len(user_index), dtype=np.int64)
        known = user_index >= 0
        sizes[known] = self.history_size_[user_index[known]]
        return _bucket(HISTORY_BUCKETS, sizes)

    # -------------------------------------------------------------- scoring

    def _item_maps(self) -> list[tuple[int, np.ndarray]]:
        """Per candidate: its number of items when the map was made, and each ensemble item's
        index in the candidate (-1: unknown to it). Indexes only grow at their end, so a map
        is extended, looking up only the items it does not map yet, when either index grew.

        A served snapshot is read by several threads at once: the maps are built aside and
        swapped in whole, never appended to where another reader may be iterating."""
        n = len(self.items_)
        old = self._maps or [(-1, np.zeros(0, dtype=np.int64))] * len(self.models_)
        maps = []
        for model, (size, mapped) in zip(self.models_, old, strict=True):
            if size != len(model.items_) or len(mapped) != n:
                mapped = np.concatenate([mapped, np.full(n - len(mapped), -1, dtype=np.int64)])
                missing = np.flatnonzero(mapped < 0)
                mapped[missing] = model.items_.lookup(self.items_.ids(missing))
            maps.append((len(model.items_), mapped))
        self._maps = maps
        return maps

    def _standardised(
        self, user_index: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per candidate: its scores of every item of the ensemble (NaN where it does not know
        one) for ``user_index``, and their means and standard deviations per user."""
        users = self.users_.ids(user_index)
        out = []
        for model, (_, mapped) in zip(self.models_, self._item_maps(), strict=True):
            own = model.users_.lookup(users)
            known = np.flatnonzero(mapped >= 0)
            scores = np.full((len(user_index), len(self.items_)), np.nan)
            if len(known) and len(own):
                scores[:, known] = model._scores(own, model._cold(own), mapped[known], len(known))
            mean = np.nanmean(scores, axis=1, keepdims=True) if scores.size else scores[:, :1]
            std = np.nanstd(scores, axis=1, keepdims=True) if scores.size else scores[:, :1]
            out.append((scores, np.nan_to_num(mean), np.where(std > 0, std, 1.0)))
        return out

    def _parts(self, user_index: np.ndarray) -> np.ndarray:
        """(candidates, users, items): each candidate's standardised scores, an item it does
        not know at the user's lowest."""
        parts = np.empty((len(self.models_), len(user_index), len(self.items_)))
        for c, (scores, mean, std) in enumerate(self._standardised(user_index)):
            part = (scores - mean) / std
            floor = np.nanmin(part, axis=1, keepdims=True, initial=0.0)
            parts[c] = np.where(np.isnan(part), floor, part)
        return parts

    def _served_parts(self, user_index: np.ndarray) -> np.ndarray:
        """:meth:`_parts` for ``user_index``, taken from the latest scoring for the users it
        covered (nothing has changed the candidates since: every change drops it), so that a
        served list is judged on the scores that served it. Items indexed since are unknown
        to every candidate, so they get each row's floor, as :meth:`_parts` gives them."""
        parts = np.empty((len(self.models_), len(user_index), len(self.items_)))
        hit = np.full(len(user_index), -1)
        if self._served is not None:
            served_users, served = self._served
            order = np.argsort(served_users, kind="stable")
            at = np.minimum(np.searchsorted(served_users[order], user_index), len(order) - 1)
            hit = np.where(served_users[order[at]] == user_index, order[at], -1)
            rows = np.flatnonzero(hit >= 0)
            taken = served[:, hit[rows]]
            parts[:, rows, : taken.shape[2]] = taken
            floor = np.minimum(taken.min(axis=2, initial=np.inf), 0.0)
            parts[:, rows, taken.shape[2] :] = floor[:, :, None]
        missed = np.flatnonzero(hit < 0)
        if len(missed):
            parts[:, missed] = self._parts(user_index[missed])
        return parts

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        ages = self._item_ages()
        history = self._situation(user_index)
        out = [np.zeros((0, len(self.items_)), dtype=np.float32)[:, item_index]]
        block = max(1, _JUDGE_BLOCK // (len(self.models_) * max(len(self.items_), 1)))
        for start in range(0, len(user_index), block):  # the parts of a block of users at once
            rows = slice(start, start + block)
            parts = self._parts(user_index[rows])
            self._served = (user_index[rows], parts)  # the latest block, for judging
            total = self._blend(parts, history[rows], ages)
            out.append(total[:, item_index].astype(np.float32))
        return np.concatenate(out)

    # -------------------------------------------------------------- explaining

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        n, k = items.shape
        # (users, k, candidates): each explained item's weights, from its user's and its age
        item_weights = self.weights_[self._situation(users)[:, None], self._age(items, self.clock_)]
        standardised = self._standardised(users)
        # each item's lead: the candidate whose weighted part lifts its score most
        lifts = np.stack([
            item_weights[:, :, c] * (np.take_along_axis(scores, items, axis=1) - mean) / std
            for c, (scores, mean, std) in enumerate(standardised)
        ], axis=2)  # fmt: skip
        lead = np.nan_to_num(lifts, nan=-np.inf).argmax(axis=2)  # (users, k)
        user_ids = self.users_.ids(users)
        item_ids = self.items_.ids(items.ravel())
        histories, contributions, methods = [], [], []
        kinds = np.full((n, k), "history", dtype=object)
        popularity = np.zeros((n, k))
        trend = False
        for c in np.unique(lead).tolist():
            model = self.models_[c]
            own_items = model.items_.lookup(item_ids).reshape(n, k)
            found = model._attribute(model.users_.lookup(user_ids), np.maximum(own_items, 0))
            # its share of each item it leads: the weight of the item's situation over its std
            led = (lead == c) & (own_items >= 0)
            scale = np.where(led, item_weights[:, :, c] / standardised[c][2], 0.0)
            history = np.full(found.history.shape, -1, dtype=np.int64)
            present = found.history >= 0
            history[present] = self.items_.lookup(model.items_.ids(found.history[present]))
            histories.append(history)
            contributions.append(found.weights * scale[:, None, :])
            kinds[led] = found.kinds[led]
            if found.popularity is not None:
                popularity += found.popularity * scale
            trend = trend or found.trend
            share = float(item_weights[:, :, c][lead == c].mean())
            methods.append(f"{self.candidates[c]}, {share:.0%} of the blend: {found.method}")
        return Attribution(f"{self.name} ({'; '.join(methods)})", np.concatenate(histories, axis=1),
                           np.concatenate(contributions, axis=1), kinds, popularity,
                           trend)  # fmt: skip

    def _deletion_scores(self, user: int, items: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """The blend of the candidates' deletion scores, each standardised by the mean and
        standard deviation of its scores with the whole history (a candidate whose score does
        not come from the history, popularity, keeps its score in every row)."""
        user_id = self.users_.ids(np.array([user]))
        item_ids, removed_ids = self.items_.ids(items), self.items_.ids(removed)
        history = self._situation(np.array([user]))
        ages = self._age(items, self.clock_)
        total = np.zeros((len(removed) + 1, len(items)))
        for c, (scores, mean, std) in enumerate(self._standardised(np.array([user]))):
            model = self.models_[c]
            try:
                own = model.deletion_scores(user_id[0], item_ids, removed_ids)
            except NotImplementedError:
                own = np.tile(scores[0, items], (len(removed) + 1, 1))
            total += self.weights_[history[0], ages, c] * (own - mean[0, 0]) / std[0, 0]
        return total

    def _item_similarity(self, item: int) -> np.ndarray:
        """The leading candidate's similarities (for the longest histories, the most judged
        item age)."""
        weights = self.weights_[-1, self.judged_[-1].argmax()]
        model = self.models_[int(weights.argmax())]
        own = model.items_.lookup(self.items_.ids(np.arange(len(self.items_))))
        index = int(model.items_.lookup(self.items_.ids([item]))[0])
        similarity = np.full(len(self.items_), -np.inf)
        if index >= 0:
            scores = np.asarray(model._item_similarity(index), dtype=np.float64)
            similarity[own >= 0] = scores[own[own >= 0]]
        return similarity

    # -------------------------------------------------------------- persistence

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "weights": self.weights_,
            "judged": self.judged_,
            "first_seen": self.first_seen_,
            "clock": np.array([self.clock_]),
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = arrays["weights"].astype(np.float64)
        self.judged_ = arrays["judged"].astype(np.int64)
        self.first_seen_ = arrays["first_seen"].astype(np.float64)
        self.clock_ = float(arrays["clock"][0])
        self._forget_derived()

    def _save_parts(self, folder: Path) -> None:
        for number, model in enumerate(self.models_):
            model.save(folder / "candidates" / str(number))

    def _load_parts(self, folder: Path) -> None:
        self.models_ = [
            Recommender.load(folder / "candidates" / str(number))
            for number in range(len(self.candidates))
        ]
        for model in self.models_:  # saved with copies of the ensemble's index: share it again
            if can_share_index(model):
                if not (_same_ids(model.users_, self.users_)
                        and _same_ids(model.items_, self.items_)):  # fmt: skip
                    raise ValueError(f"{folder}: a candidate's ids differ from the ensemble's")
                model._adopt_index(self)
        self._forget_derived()


class Auto(Fresh):
    """The default model: an :class:`Ensemble` of ``candidates`` whose never-seen catalogue
    items are ranked by a calibrated chance, as in :class:`~lifelong_rec.models.fresh.Fresh`
    (see the module docstrings). The catalogue comes through :meth:`add_items`.

    Parameters
    ----------
    candidates, learning_rate, share, judge_share, sample, k, seed, fallback_half_life_days
        The ensemble's (:class:`Ensemble`); ``sample`` and ``seed`` also bound and seed the
        events the new-item prior is judged on. ``judge_share`` is twice the ensemble's
        default: the judged events also calibrate the placement (on ML latest-small, 500
        blocks, a quarter reached 4.8x random first-interaction HR@10, a half 5.7x:
        bench/results/newitems-auto*.json).
    fallback_half_lives : sequence of float
        What users auto knows nothing about get: decayed popularity at the one of these
        half-lives (days) whose ranks of such users' events have been best, followed by Hedge
        steps (``learning_rate``, ``share``) on each batch before it is learned, as the
        ensemble's weights. On YOOCHOOSE, where 34 % of the scored events open a session, a
        day's fixed half-life took NDCG@10 over all rows from a week's 0.2187 to 0.2233, and
        the choice to 0.2227 (P1, 500 blocks, bench/results/p1-yoochoose-100k-*fallback.json);
        the MovieLens sets, with few new users, did not move. The candidates keep
        ``fallback_half_life_days``.
    text_encoder : str
        A :func:`~lifelong_rec.models.text.text_encoder` spec for the catalogue's texts.
    new_item_boost : float
        Exploration for never-seen items, as in :class:`~lifelong_rec.models.fresh.Fresh`:
        a new item is placed as if its chance were twice the estimate. On ML latest-small
        (P1, 500 blocks, per row) that took first-interaction HR@10 from 4.1x to 9.3x random
        with NDCG@10 over all rows 0.0542 against 0.0541 without it: the calibrated estimate
        alone left new items below known items whose rate it barely beat.
    """

    name = "auto"

    def __init__(
        self,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        learning_rate: float = 0.5,
        share: float = 0.02,
        judge_share: float = 0.5,
        sample: int = 256,
        k: int = 10,
        seed: int = 0,
        fallback_half_life_days: float | None = 7.0,
        fallback_half_lives: Sequence[float] = FALLBACK_HALF_LIVES,
        text_encoder: str = "hashing",
        new_item_boost: float = 2.0,
    ) -> None:
        candidates = tuple(str(spec) for spec in candidates)
        half_lives = tuple(fallback_half_lives)
        if not half_lives or not all(
            isinstance(days, int | float) and np.isfinite(days) and days > 0 for days in half_lives
        ):
            raise ValueError(
                f"fallback_half_lives must be positive numbers of days, got {fallback_half_lives!r}"
            )
        self.fallback_half_lives = tuple(float(days) for days in half_lives)
        factory = partial(Ensemble, candidates, learning_rate, share, judge_share, sample, k,
                          seed, fallback_half_life_days)  # fmt: skip
        self.candidates = candidates
        self.learning_rate = learning_rate
        self.share = share
        self.judge_share = judge_share
        self.k = k
        self.fallback_half_life_days = fallback_half_life_days
        self.inner = "ensemble"
        # _setup makes one ensemble (for its fallback): that checks the ensemble's parameters
        self._setup(factory, text_encoder, half_life_days=30.0, rate_half_life_days=365.0,
                    user_decay=0.9, learning_rate=0.1, depth=100, sample=sample,
                    seed=seed, new_item_boost=new_item_boost)  # fmt: skip
        self._batch: Eligible | None = None  # the batch being learned, as _eligible finds it

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return Ensemble._unit_test_params() | {"text_encoder": "hashing(dim=32)"}

    def learn(self, events: EventBatch) -> None:
        """As :meth:`Fresh.learn`, with the events to judge found once, by the ensemble, for
        the ensemble's judging and the prior's."""
        _check_batch(events)
        ensemble = self.inner_ if self.is_fitted else None
        assert ensemble is None or isinstance(ensemble, Ensemble)
        if ensemble is not None and ensemble.is_fitted and len(events):
            self._batch = ensemble._eligible(events)
        try:
            super().learn(events)
        finally:
            self._batch = None

    # -------------------------------------------------------------- the fallback

    def _reset_model(self) -> None:
        super()._reset_model()
        self.fallbacks_ = [DecayedCounts(days) for days in self.fallback_half_lives]
        count = len(self.fallbacks_)
        self.fallback_weights_ = np.full(count, 1.0 / count)
        self.popularity_ = self.fallbacks_[self._lead()]  # what the base class serves and keeps

    def _lead(self) -> int:
        """The fallback served: the half-life of the largest weight."""
        weights = getattr(self, "fallback_weights_", None)
        return 0 if weights is None else int(np.argmax(weights))

    def _fallback_half_life_days(self) -> float | None:
        return self.fallback_half_lives[self._lead()]

    def _grow(self, n_users: int, n_items: int) -> None:
        super()._grow(n_users, n_items)
        for counts in self.fallbacks_:
            counts.grow(n_items)

    def _index(self, events: EventBatch, new_pair: np.ndarray | None = None) -> IndexedEvents:
        indexed = super()._index(events, new_pair)  # counts the events in popularity_
        weights = indexed.weight.astype(np.float64)
        for counts in self.fallbacks_:
            if counts is not self.popularity_:
                counts.add(indexed.item, weights, indexed.timestamp)
        return indexed

    def _observe(
        self, events: EventBatch, judged: np.ndarray, new_pair: np.ndarray | None = None
    ) -> None:
        self._judge_fallbacks(events)  # as they stand, before they count the batch
        # learning, the ensemble's index has just found the batch's first pairs: so has ours
        if self._batch is not None:
            assert isinstance(self.inner_, Ensemble)
            new_pair = self.inner_.last_new_pair_
        super()._observe(events, judged, new_pair)

    def _judge_fallbacks(self, events: EventBatch) -> None:
        """One Hedge step of the fallbacks' weights from their ranks of the positive events
        of users auto knows nothing about (at most ``sample`` of them, the first): the loss
        is one minus the NDCG@k of the item's rank among all items (ties count against it);
        then the largest weight's counts serve."""
        n_items = len(self.items_)
        users, items = self.users_.lookup(events.user), self.items_.lookup(events.item)
        cold = users < 0
        cold[~cold] = self.history_size_[users[~cold]] == 0
        rows = np.flatnonzero(cold & (events.weight > 0) & (items >= 0))[: self.sample]
        if not len(rows) or not n_items:
            return
        counts = np.stack([fallback.counts[:n_items] for fallback in self.fallbacks_])
        chosen = counts[:, items[rows]]  # (fallbacks, events)
        ranks = np.empty(chosen.shape)
        block = max(1, _JUDGE_BLOCK // (len(counts) * n_items))
        for start in range(0, len(rows), block):
            part = chosen[:, start : start + block]
            ranks[:, start : start + block] = (counts[:, None, :] >= part[:, :, None]).sum(axis=2)
        losses = _ndcg_losses(ranks, self.k).sum(axis=1)
        self.fallback_weights_ = _hedge(
            self.fallback_weights_, losses, self.learning_rate, self.share
        )
        self.popularity_ = self.fallbacks_[self._lead()]

    def _explanations(
        self,
        users: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray | None,
        top: int,
        wording: Wording,
        index: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[tuple[Explanation, ...], ...]:
        """As :class:`Fresh`'s, except that users auto knows nothing about are explained by
        the fallback that serves them (the ensemble's own has another half-life)."""
        user_index = self.users_.lookup(users) if index is None else index[0]
        cold = self._cold(user_index)
        if not cold.any():
            return super()._explanations(users, items, scores, top, wording, index)
        out: list[tuple[Explanation, ...]] = [()] * len(users)
        for rows, explain in (
            (np.flatnonzero(~cold), super()._explanations),
            (np.flatnonzero(cold), partial(Recommender._explanations, self)),
        ):
            if len(rows):
                part = explain(
                    users[rows], items[rows], None if scores is None else scores[rows], top,
                    wording, None if index is None else (index[0][rows], index[1][rows]),
                )  # fmt: skip
                for row, explained in zip(rows.tolist(), part, strict=True):
                    out[row] = explained
        return tuple(out)

    def _state(self) -> dict[str, np.ndarray]:
        fallbacks = {
            f"fallback.{number}.{key}": value
            for number, counts in enumerate(self.fallbacks_)
            for key, value in counts.state().items()
        }
        return super()._state() | fallbacks | {"fallback.weights": self.fallback_weights_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        super()._set_state(arrays)
        if "fallback.weights" not in arrays:  # saved before auto chose its fallback
            self._adopt_saved_fallback()
            return
        for number, counts in enumerate(self.fallbacks_):
            prefix = f"fallback.{number}."
            counts.set_state(
                {key.removeprefix(prefix): v for key, v in arrays.items() if key.startswith(prefix)}
            )
        self.fallback_weights_ = arrays["fallback.weights"].astype(np.float64)
        self.popularity_ = self.fallbacks_[self._lead()]

    def _adopt_saved_fallback(self) -> None:
        """A model saved with one fallback (``fallback_half_life_days``, which the loader has
        just read into ``popularity_``) serves it on: it leads; the others start counting
        now."""
        loaded, days = self.popularity_, self.fallback_half_life_days
        self.fallbacks_ = [DecayedCounts(half_life) for half_life in self.fallback_half_lives]
        for counts in self.fallbacks_:
            counts.grow(len(loaded.counts))
        if days in self.fallback_half_lives:
            at = self.fallback_half_lives.index(days)
            self.fallbacks_[at] = loaded
            self.fallback_weights_ = np.full(
                len(self.fallbacks_), self.share / len(self.fallbacks_)
            )
            self.fallback_weights_[at] += 1.0 - self.share
        self.popularity_ = self.fallbacks_[self._lead()]

    # -------------------------------------------------------------- learning

    def _judged(self, events: EventBatch) -> np.ndarray:
        # the ensemble's eligible events are the host's: the same events, in the same order
        if self._batch is None:
            return super()._judged(events)
        return self._sampled(self._batch.eligible)

    def _learn_inner(self, events: EventBatch, judged: np.ndarray) -> None:
        """Let the ensemble judge and learn the batch, then take the blend's ranks of the
        events it judged into the hit rates per rank (no scoring of its own)."""
        ensemble = self.inner_
        assert isinstance(ensemble, Ensemble)
        ensemble.learn(events, self._batch)
        rows, ranks = ensemble.last_judged_  # users with a history before the batch: known
        if self.updates_ and len(rows):
            # their buckets as before the batch: only _observe, next, records it here
            self.rates_.add(self._bucket(self.users_.lookup(events.user[rows])), ranks)


def _ndcg_losses(ranks: np.ndarray, k: int) -> np.ndarray:
    """One minus the NDCG@k of each rank (1 = first; inf = never ranked)."""
    return 1.0 - np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def _hedge(
    weights: np.ndarray, losses: np.ndarray, learning_rate: float, share: float
) -> np.ndarray:
    """One Hedge step over the last axis (the experts): the weights times exp(-learning_rate
    * their summed losses), normalised, then mixed with the uniform ``share``."""
    stepped = weights * np.exp(-learning_rate * losses)
    stepped /= stepped.sum(axis=-1, keepdims=True)
    return (1.0 - share) * stepped + share / weights.shape[-1]


def _bucket(lower_ends: tuple[float, ...], values: np.ndarray) -> np.ndarray:
    """The bucket of each value, buckets given by their lower ends (the first one 0)."""
    return np.searchsorted(np.asarray(lower_ends), values, side="right") - 1


def _source(events: IndexedEvents) -> EventBatch:
    assert events.source is not None, "indexed by Recommender._index, which keeps its batch"
    return events.source


def _same_ids(a: IdIndex, b: IdIndex) -> bool:
    return np.array_equal(a.to_array(), b.to_array())


def _batch_pairs(
    events: EventBatch, users: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The batch's positive (user, item) pairs whose user and item are known, sorted by user."""
    keep = (events.weight > 0) & (users >= 0) & (items >= 0)
    order = np.argsort(users[keep], kind="stable")
    return users[keep][order], items[keep][order]


def _same_user(
    user_index: np.ndarray, batch_users: np.ndarray, batch_items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) for every batch pair (sorted by user) of each row's user."""
    start = np.searchsorted(batch_users, user_index, side="left")
    counts = np.searchsorted(batch_users, user_index, side="right") - start
    rows = np.repeat(np.arange(len(user_index)), counts)
    offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, batch_items[np.repeat(start, counts) + offsets]
