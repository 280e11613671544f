"""``auto``: an online ensemble that follows the best of its candidate models per situation.

Which model wins changes with the data set, and within one stream with the user: a bestseller
list for someone who just arrived, item-kNN or a session-aware MF for someone with a few
recent events, a classic MF for a long history. :class:`Auto` runs its candidates side by side
on the same events and learns, online, how much to trust each one in each situation.

Situations are buckets of the length of the user's history as the ensemble has learned it:
:data:`SITUATIONS` (no history, 1-4 items, 5-19, 20 and more).

Test then train: before the candidates learn a batch, a sample (``sample``) of its positive
events that are first sightings of their (user, item) pair, for items some candidate knows,
is ranked by every candidate as it stands; an event's loss for a candidate is ``1 - gain``,
the gain being ``1 / log2(rank + 1)`` when the item is in the candidate's top ``k`` for the
user (seen items excluded), 0 otherwise. Each situation's weights then take a Hedge step with
fixed share::

    w[s, c] <- w[s, c] * exp(-learning_rate * L[s, c])      # L: the summed losses in s
    w[s, :] <- (1 - share) * w[s, :] / sum(w[s, :]) + share / n_candidates

Fixed share keeps every candidate's weight above ``share / n_candidates``, so the ensemble can
follow a switch of the best candidate within a bounded number of events.

Serving blends the candidates' standardised scores: for a user in situation ``s``,
``score(i) = sum_c w[s, c] * (s_c(i) - mean_c) / std_c``, the mean and standard deviation
over every item (so a score never depends on which other items are scored). Users without a
history get the fallback (decayed popularity), as with every model.

Explanations are faithful to the blend's leading part: the reasons of the candidate with the
largest weight in the user's situation, each scaled by that weight over the candidate's
standard deviation (exactly its share of the score), the other candidates' parts in ``rest``;
the method names the candidate and its weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import EventBatch
from lifelong_rec.models.base import Recommender, _check_batch
from lifelong_rec.models.explanation import Attribution

#: the lower ends of the history-length buckets that make the situations
SITUATIONS = (0, 1, 5, 20)
DEFAULT_CANDIDATES = ("pop", "itemknn", "session-mf", "mf")


class Auto(Recommender):
    """An online ensemble of ``candidates`` (model specs), weighted per situation by Hedge.

    Parameters
    ----------
    candidates : sequence of str
        Model specs (``parse_model``), e.g. ``("pop", "itemknn", "session-mf", "mf")``.
    learning_rate : float
        Hedge's step size (per unit of summed loss).
    share : float
        The fixed share in [0, 1): each step mixes this much of the uniform weights back in.
    sample : int
        Most events per learned batch ranked by every candidate.
    k : int
        The list length the candidates are judged on.
    seed : int
        Seeds the sampling of judged events.
    fallback_half_life_days : float or None
        Half-life of the popularity that users without a history get.
    """

    name = "auto"

    def __init__(
        self,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        learning_rate: float = 0.5,
        share: float = 0.02,
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
            if spec.partition("(")[0].strip() == self.name:
                raise ValueError(f"candidates: {spec!r} would nest an ensemble in itself")
            parse_model(spec)  # fails now, naming the spec, not at the first learn
        check_positive_ints(sample=sample, k=k)
        if not np.isfinite(learning_rate) or learning_rate < 0:
            raise ValueError(f"learning_rate must be finite and >= 0, got {learning_rate!r}")
        if not 0 <= share < 1:
            raise ValueError(f"share must be in [0, 1), got {share!r}")
        self.candidates = candidates
        self.learning_rate = learning_rate
        self.share = share
        self.sample = sample
        self.k = k
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {"candidates": ("pop", "itemknn(neighbours=20)", "mf(factors=8, iterations=3)")}

    # -------------------------------------------------------------- learning

    def _reset_model(self) -> None:
        from lifelong_rec.models.specs import parse_model

        self.models_ = [parse_model(spec)[1]() for spec in self.candidates]
        n = len(self.candidates)
        self.weights_ = np.full((len(SITUATIONS), n), 1.0 / n)
        self.judged_ = np.zeros(len(SITUATIONS), dtype=np.int64)  # events judged per situation

    def _grow(self, n_users: int, n_items: int) -> None:
        """The candidates grow as they learn: nothing of the ensemble's own grows."""

    def fit(self, events: EventBatch) -> Recommender:
        """Train every candidate from scratch on ``events``; the weights start uniform."""
        _check_batch(events)
        self._reset()
        for model in self.models_:
            model.fit(events)
        self._index(events)
        self.updates_ += 1
        return self

    def learn(self, events: EventBatch) -> None:
        """Judge the candidates on ``events`` (test then train), then let every one learn."""
        _check_batch(events)
        if not self.is_fitted:
            self._reset()
        if not len(events):
            return
        if self.updates_:
            self.weigh(events)
        for model in self.models_:
            model.learn(events)
        self._index(events)
        self.updates_ += 1

    def replay(self, events: EventBatch) -> None:
        _check_batch(events)
        if not self.is_fitted or not len(events):
            return
        for model in self.models_:
            model.replay(events)
        self.updates_ += 1

    def _anchor(self, strength: float) -> None:
        for model in self.models_:
            if model.is_fitted:
                model.anchor(strength)

    def _learn(self, events: object) -> None:  # learn() above does the work
        raise AssertionError("Auto.learn drives its candidates itself")

    def weigh(self, events: EventBatch) -> np.ndarray:
        """One Hedge step per situation from the candidates' losses on ``events`` (judged as
        they stand: call before they learn them); returns the losses, shape (n_judged,
        n_candidates). See the module docstring."""
        users, items = np.asarray(events.user), np.asarray(events.item)
        user_index, item_index = self.users_.lookup(users), self.items_.lookup(items)
        first = np.zeros(len(events), dtype=bool)
        keys = np.char.add(np.char.add(users.astype(str), "\x1f"), items.astype(str))
        first[np.unique(keys, return_index=True)[1]] = True
        seen = np.zeros(len(events), dtype=bool)
        both = np.flatnonzero((user_index >= 0) & (item_index >= 0))
        seen[both] = self.history_.contains(user_index[both], item_index[both])
        rows = np.flatnonzero((events.weight > 0) & first & ~seen & (item_index >= 0))
        rng = np.random.default_rng((self.seed, self.updates_))
        if len(rows) > self.sample:
            rows = np.sort(rng.choice(rows, self.sample, replace=False))
        if not len(rows):
            return np.zeros((0, len(self.models_)))
        distinct, row = np.unique(users[rows], return_inverse=True)
        losses = np.empty((len(rows), len(self.models_)))
        for c, model in enumerate(self.models_):
            top = model.recommend(distinct, k=self.k).items[row]
            match = top == items[rows, None].astype(str)
            rank = np.where(match.any(axis=1), match.argmax(axis=1) + 1.0, np.inf)
            losses[:, c] = 1.0 - np.where(np.isfinite(rank), 1.0 / np.log2(rank + 1.0), 0.0)
        situation = self._situation(user_index[rows])
        summed = np.zeros_like(self.weights_)
        np.add.at(summed, situation, losses)
        weights = self.weights_ * np.exp(-self.learning_rate * summed)
        weights /= weights.sum(axis=1, keepdims=True)
        self.weights_ = (1.0 - self.share) * weights + self.share / len(self.models_)
        self.judged_ += np.bincount(situation, minlength=len(SITUATIONS))
        return losses

    def _situation(self, user_index: np.ndarray) -> np.ndarray:
        """Each user's situation: the bucket of its history length (unknown users: 0)."""
        sizes = np.zeros(len(user_index), dtype=np.int64)
        known = user_index >= 0
        sizes[known] = self.history_size_[user_index[known]]
        return np.searchsorted(np.asarray(SITUATIONS), sizes, side="right") - 1

    # -------------------------------------------------------------- scoring

    def _standardised(
        self, user_index: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per candidate: its scores of every item of the ensemble (NaN where it does not know
        one) for ``user_index``, and their means and standard deviations per user."""
        users = self.users_.ids(user_index)
        items = self.items_.ids(np.arange(len(self.items_)))
        out = []
        for model in self.models_:
            scores = model.score(users, items).astype(np.float64)
            mean = np.nanmean(scores, axis=1, keepdims=True) if scores.size else scores[:, :1]
            std = np.nanstd(scores, axis=1, keepdims=True) if scores.size else scores[:, :1]
            out.append((scores, np.nan_to_num(mean), np.where(std > 0, std, 1.0)))
        return out

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        weights = self.weights_[self._situation(user_index)]
        total = np.zeros((len(user_index), len(self.items_)))
        for c, (scores, mean, std) in enumerate(self._standardised(user_index)):
            part = (scores - mean) / std
            floor = np.nanmin(part, axis=1, keepdims=True, initial=0.0)
            total += weights[:, c : c + 1] * np.where(np.isnan(part), floor, part)
        return total[:, item_index].astype(np.float32)

    # -------------------------------------------------------------- explaining

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        n, k = items.shape
        weights = self.weights_[self._situation(users)]
        lead = weights.argmax(axis=1)
        standardised = self._standardised(users)
        user_ids = self.users_.ids(users)
        item_ids = self.items_.ids(items.ravel())
        parts: list[tuple[np.ndarray, Attribution, int]] = []
        for c in np.unique(lead).tolist():
            rows = np.flatnonzero(lead == c)
            model = self.models_[c]
            own_items = model.items_.lookup(item_ids).reshape(n, k)[rows]
            found = model._attribute(model.users_.lookup(user_ids[rows]), np.maximum(own_items, 0))
            scale = weights[rows, c] / standardised[c][2][rows, 0]  # its share of the score
            known = own_items >= 0
            history = np.full(found.history.shape, -1, dtype=np.int64)
            present = found.history >= 0
            history[present] = self.items_.lookup(model.items_.ids(found.history[present]))
            contribution = found.weights * scale[:, None, None] * known[:, None, :]
            popularity = None
            if found.popularity is not None:
                popularity = found.popularity * scale[:, None] * known
            scaled = Attribution(
                found.method, history, contribution, found.kinds, popularity, found.trend
            )
            parts.append((rows, scaled, c))
        width = max(part.history.shape[1] for _, part, _ in parts)
        history = np.full((n, width), -1, dtype=np.int64)
        contribution = np.zeros((n, width, k))
        kinds = np.full((n, k), "history", dtype=object)
        popularity = np.zeros((n, k))
        methods = []
        for rows, part, leader in parts:
            h = part.history.shape[1]
            history[rows, :h] = part.history
            contribution[rows, :h] = part.weights
            kinds[rows] = part.kinds
            if part.popularity is not None:
                popularity[rows] = part.popularity
            share = float(weights[rows, leader].mean())
            methods.append(f"{self.candidates[leader]}, {share:.0%} of the blend: {part.method}")
        trend = any(part.trend for _, part, _ in parts)
        return Attribution(f"auto ({'; '.join(methods)})", history, contribution, kinds,
                           popularity, trend)  # fmt: skip

    def _item_similarity(self, item: int) -> np.ndarray:
        """The leading candidate's similarities (of returning users' situation)."""
        model = self.models_[int(self.weights_[-1].argmax())]
        own = model.items_.lookup(self.items_.ids(np.arange(len(self.items_))))
        index = int(model.items_.lookup(self.items_.ids([item]))[0])
        similarity = np.full(len(self.items_), -np.inf)
        if index >= 0:
            scores = np.asarray(model._item_similarity(index), dtype=np.float64)
            similarity[own >= 0] = scores[own[own >= 0]]
        return similarity

    # -------------------------------------------------------------- persistence

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_, "judged": self.judged_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = arrays["weights"].astype(np.float64)
        self.judged_ = arrays["judged"].astype(np.int64)

    def _save_parts(self, folder: Path) -> None:
        for number, model in enumerate(self.models_):
            model.save(folder / "candidates" / str(number))

    def _load_parts(self, folder: Path) -> None:
        self.models_ = [
            Recommender.load(folder / "candidates" / str(number))
            for number in range(len(self.candidates))
        ]
