"""``fresh``: new items reach their users, ranked against known items by a calibrated chance.

A collaborative model cannot rank an item nobody has interacted with: it does not know it, or
scores it 0, below everything. :class:`Fresh` wraps such a model (``inner``, a model spec) and
places the catalogue's never-seen items among the inner model's ranking where their estimated
chance of being the user's next item beats that of the known item at that rank.

Two online estimates, both learned from the stream only (test then train: every batch is
judged by the state before it, then learned), make the comparison possible:

- :class:`NewItemPrior`: the chance that the user's next item is the never-seen item ``i``,
  a log-linear rate ``p(i) = exp(a[age(i)] + c . x(i, u))`` with
  ``x = (cos(item text, the user's recent items), cos(item text, the items first picked
  lately), log(the user's recent share of first picks))``. The age bucket rates ``a`` are the
  Poisson maximum likelihood given ``c`` (decayed picks over decayed, ``c``-weighted
  exposures); ``c`` takes AdaGrad steps on the Poisson log-likelihood. Items whose release
  year (the title's "(1995)", or a ``year`` or ``release_date`` attribute) is after the
  present are never candidates.
- :class:`RankRates`: the inner model's hit rate at each rank ``r`` (of the known items the
  user has not seen), per bucket of the user's share of first picks, made non-increasing.

A never-seen item with chance ``p`` goes right above the first known item whose rate is below
``p``, so the list is ordered by estimated chance: the order that maximises the expected DCG
when the estimates are right. Its score lies between the scores of its known neighbours (the
known items keep the inner model's scores). A new item below every calibrated rank goes below
every known item. ``new_item_boost`` explores: a new item is placed as if its chance were that
many times the estimate, so that items nobody has seen yet get the exposure that gathers
evidence on them (``auto`` places with 2; 1, the default here, places by the estimate alone).
Users without a history get the fallback (decayed popularity), as with every model.

Explanations: known items are explained by the inner model; a new item's explanation says it
is new, its estimated chance and what makes it (age, similarities), and its one reason (kind
``text``) rests on the recent history item whose text is closest to it, weighted by exactly
the part of the score the similarity to the user's recent items adds (the score it would have
with that similarity at 0, subtracted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lifelong_rec.buffers import appended
from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import Catalog, EventBatch, IdIndex
from lifelong_rec.models.base import Recommender, _check_batch
from lifelong_rec.models.explanation import Attribution, Explanation, Reason, Wording
from lifelong_rec.models.kernels import prior_step, record_users
from lifelong_rec.models.text import ItemTexts
from lifelong_rec.models.text import text_encoder as make_text_encoder

#: lower ends (years) of the age buckets of a new item; one more bucket holds unknown ages
AGE_EDGES = (0, 1, 2, 3, 5, 10, 20)
#: lower ends of the buckets of a user's recent share of first picks (for the rank rates)
SHARE_EDGES = (0.0, 0.02, 0.08, 0.2, 0.5)
_AGE_EDGES = np.array(AGE_EDGES, dtype=np.float64)  # as the compiled step reads them
_YEAR_SECONDS = 365.2425 * 86_400.0
_RATE_PRIOR = (1e-5, 100.0)  # (rate, pseudo-exposure) of an age bucket before any pick
_RANK_PRIOR = (0.05, 20.0)  # (hit rate at rank 1, pseudo-events): see RankRates
_CALIBRATION_BINS = np.arange(-8.0, 0.01, 0.5)  # log10 chance: the reliability bins' edges
_CALIBRATION_PRIOR = 5.0  # pseudo-hits (and expected hits) per bin: ratio 1 without evidence
_SHARE_PRIOR = 2.0  # pseudo-events pulling a user's share of first picks to the global one
_FEATURES = ("similarity to recent items", "similarity to recent first picks", "log share")


def event_years(timestamps: np.ndarray) -> np.ndarray:
    """The calendar year (as a float, e.g. 1999.0) of Unix timestamps in seconds."""
    return np.floor(1970.0 + np.asarray(timestamps, dtype=np.float64) / _YEAR_SECONDS)


# ------------------------------------------------------------------------------ the prior


class NewItemPrior:
    """Online estimate of the chance that a user's next item is a given never-seen item.

    The host model keeps the item and user indexes; the prior holds arrays aligned with them
    and grows with :meth:`grow`. Its interface:

    - :meth:`describe` sets items' text embeddings and release years;
    - :meth:`observe` learns from a batch of events, test then train (the batch is judged by
      the state before it), and then records it (which items have been seen, the users'
      recent items, the recent first picks);
    - :meth:`chances` gives, for users at a moment, every candidate item (never seen, not
      released after that moment's year) and its chance, vectorised over users and items;
    - :meth:`state` and :meth:`set_state` save and restore it as arrays.

    See the module docstring for the model.

    Parameters
    ----------
    half_life_days : float
        Half-life of the memory of recent first picks (the ``discovery`` vector).
    rate_half_life_days : float
        Half-life of the picks and exposures that make the age bucket rates.
    user_decay : float in (0, 1)
        Per-event decay of a user's recent items and recent share of first picks.
    learning_rate : float
        AdaGrad step size of the coefficients ``c``.
    dim : int
        Size of the text embeddings.
    """

    def __init__(
        self,
        half_life_days: float = 30.0,
        rate_half_life_days: float = 365.0,
        user_decay: float = 0.9,
        learning_rate: float = 0.1,
        dim: int = 256,
    ) -> None:
        self.half_life_days = half_life_days
        self.rate_half_life_days = rate_half_life_days
        self.user_decay = user_decay
        self.learning_rate = learning_rate
        n_ages = len(AGE_EDGES) + 1
        self.embeddings_ = np.zeros((0, dim), dtype=np.float32)  # unit rows, 0 = no text
        self.release_ = np.zeros(0)  # release year, NaN = unknown
        self.seen_ = np.zeros(0, dtype=bool)  # has had a positive event
        self.profile_ = np.zeros((0, dim), dtype=np.float32)  # decayed sum of recent items
        self.newness_ = np.zeros((0, 2))  # decayed (first picks, events) per user
        self.overall_ = np.zeros(2)  # decayed (first picks, events) of everyone
        self.discovery_ = np.zeros(dim)  # decayed sum of the texts of first picks
        # every item's cosine with the discovery vector, a pass over the whole catalogue: kept
        # until the vector or the texts change (between learned batches, every request reads it)
        self._discovered: np.ndarray | None = None
        self.picks_ = np.zeros(n_ages)  # decayed first picks per age bucket
        self.exposure_ = np.zeros(n_ages)  # decayed c-weighted candidates per age bucket
        self.expected_ = np.zeros(len(_CALIBRATION_BINS) + 1)  # decayed summed chances per bin
        self.observed_ = np.zeros(len(_CALIBRATION_BINS) + 1)  # decayed first picks per bin
        self.coef_ = np.array([0.0, 0.0, 1.0])  # c, over _FEATURES
        self.squares_ = np.zeros(3)  # AdaGrad's summed squared gradients
        self.clock_ = -np.inf  # latest event time observed

    # -------------------------------------------------------------- items and users

    def grow(self, n_users: int, n_items: int) -> None:
        """Make room for users and items up to indexes ``n_users - 1``, ``n_items - 1``."""
        if n_items > len(self.seen_):
            self._discovered = None
            old = len(self.release_)
            self.embeddings_ = _grown(self.embeddings_, n_items)
            self.release_ = _grown(self.release_, n_items)
            self.release_[old:] = np.nan
            self.seen_ = _grown(self.seen_, n_items)
        if n_users > len(self.profile_):
            self.profile_ = _grown(self.profile_, n_users)
            self.newness_ = _grown(self.newness_, n_users)

    def describe(self, items: np.ndarray, embeddings: np.ndarray, release: np.ndarray) -> None:
        """Set the text embeddings (shape (n, dim), unit or zero rows) and release years
        (shape (n,), NaN = unknown) of the items at indexes ``items``."""
        self.embeddings_[items] = embeddings
        self.release_[items] = release
        self._discovered = None

    # -------------------------------------------------------------- estimates

    @property
    def age_rates(self) -> np.ndarray:
        """exp(a): the rate of each age bucket at x = 0, shape (len(AGE_EDGES) + 1,)."""
        rate, pseudo = _RATE_PRIOR
        return (self.picks_ + rate * pseudo) / (self.exposure_ + pseudo)

    def share(self, users: np.ndarray) -> np.ndarray:
        """Each user's recent share of first picks, pulled toward everyone's, shape (n,)."""
        overall = (self.overall_[0] + 0.1) / (self.overall_[1] + 1.0)
        picks, events = self.newness_[users, 0], self.newness_[users, 1]
        return (picks + _SHARE_PRIOR * overall) / (events + _SHARE_PRIOR)

    def discovered(self) -> np.ndarray:
        """Every item's cosine similarity to the items first picked lately, shape (n_items,),
        float32 (0 for an item without text)."""
        similarity = self._discovered  # read once: served snapshots are read by many threads
        if similarity is None:
            similarity = self._discovered = self.embeddings_ @ _unit(self.discovery_[None, :])[0]
        return similarity

    def candidates(self, year: float, known: int | None = None) -> np.ndarray:
        """Items that may be a first pick in ``year``: never seen, not released later, among
        the first ``known`` items (all by default), shape (C,)."""
        release = self.release_[:known]
        return np.flatnonzero(~self.seen_[:known] & ~(release > year))

    def features(
        self, users: np.ndarray, items: np.ndarray, years: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The age bucket (shape (n, C), int) and x (shape (n, C, 3)) of ``items`` for
        ``users`` at ``years`` (shape (n,))."""
        age = years[:, None] - self.release_[items][None, :]
        known = np.maximum(np.searchsorted(AGE_EDGES, age, side="right") - 1, 0)  # future: 0
        bucket = np.where(np.isnan(age), len(AGE_EDGES), known)
        x = np.empty((len(users), len(items), 3))
        x[:, :, 0] = self._similarity(users, items)
        x[:, :, 1] = self.discovered()[items][None, :]
        x[:, :, 2] = np.log(self.share(users))[:, None]
        return bucket, x

    def _similarity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Cosine of each user's recent items (their decayed text sum) with each item's text,
        shape (n, C), float32."""
        # The items' texts are gathered when they are few; when they are most of the
        # catalogue, the products with every item cost less than copying theirs first.
        texts, columns = self.embeddings_, items
        if 4 * len(items) < len(texts):
            texts, columns = texts[items], np.arange(len(items))
        return (_unit(self.profile_[users]) @ texts.T)[:, columns]

    def log_rates(self, bucket: np.ndarray, x: np.ndarray) -> np.ndarray:
        """log p for age buckets and features from :meth:`features`, capped at 0."""
        return np.minimum(np.log(self.age_rates)[bucket] + x @ self.coef_, 0.0)

    def chances(
        self, users: np.ndarray, now: float, similarity: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate item at time ``now`` and its chance of being each user's next item.

        Parameters
        ----------
        users : array of int, shape (n,)
        now : float
            A timestamp; items released after its year are left out.
        similarity : bool
            False sets the similarity to the user's recent items to 0 (for explanations).

        Returns
        -------
        items : array of int64, shape (C,)
        chances : array of float64, shape (n, C)
        """
        year = float(event_years(np.array([now]))[0]) if np.isfinite(now) else np.inf
        items = self.candidates(year)
        bucket, x = self.features(users, items, np.full(len(users), year))
        if not similarity:
            x[:, :, 0] = 0.0
        return items, self.calibrated(np.exp(self.log_rates(bucket, x)))

    def calibrated(self, chances: np.ndarray) -> np.ndarray:
        """Chances of the log-linear model rescaled by its reliability: per bin of log10
        chance, (first picks + k) / (summed chances + k) over the judged events so far, the
        log of that ratio interpolated between bin centres, capped at 1."""
        ratio = np.log(
            (self.observed_ + _CALIBRATION_PRIOR) / (self.expected_ + _CALIBRATION_PRIOR)
        )
        edges = _CALIBRATION_BINS
        centres = np.concatenate([[edges[0] - 0.25], (edges[:-1] + edges[1:]) / 2, [edges[-1]]])
        where = np.log10(np.maximum(chances, 1e-300))
        return np.minimum(chances * np.exp(np.interp(where, centres, ratio)), 1.0)

    # -------------------------------------------------------------- learning

    def observe(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        judged: np.ndarray,
        known: int,
    ) -> None:
        """Learn from a batch of positive events (time order), then record it.

        Parameters
        ----------
        users, items : array of int64, shape (n,)
        timestamps : array of float64, shape (n,)
        judged : array of bool, shape (n,)
            The events the estimate is judged on (the host's choice: e.g. a sample of the
            first events of their (user, item) pair by users with a history); the rest is
            only recorded.
        known : int
            Items with an index below it were known before the batch: only they can be
            candidates (an item that arrives with its first event could not be ranked).
        """
        if not len(users):
            return
        first = ~self.seen_[items]
        first[~_first_occurrence(items)] = False
        rows = np.flatnonzero(judged)
        if len(rows):
            self._learn(users[rows], items[rows], timestamps[rows], first[rows], known)
        self._record(users, items, timestamps, first)

    def _learn(
        self,
        users: np.ndarray,
        items: np.ndarray,
        timestamps: np.ndarray,
        first: np.ndarray,
        known: int,
    ) -> None:
        """One step on the judged events, with the state before the batch."""
        gradient, exposure, picks, expected, observed = self.step_sums(
            users, items, event_years(timestamps), first, known
        )
        # age rates: decayed picks over decayed exposures weighted by exp(c . x)
        self._decay_rates(float(timestamps.max()))
        self.exposure_ += exposure
        self.picks_ += picks
        self.expected_ += expected
        self.observed_ += observed
        self.squares_ += gradient**2
        self.coef_ = self.coef_ + self.learning_rate * gradient / (np.sqrt(self.squares_) + 1e-8)

    def step_sums(
        self,
        users: np.ndarray,
        items: np.ndarray,
        years: np.ndarray,
        first: np.ndarray,
        known: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What a step learns from events (``years``: each event's, ``first``: whether it is
        the item's first pick): over every (event, candidate) pair, with the chances
        :meth:`chances` gives (a candidate released after the event's year is none), the
        Poisson log-likelihood's gradient in the coefficients, (first picks - chances) . x,
        shape (3,); the exposures exp(c . x) and the first picks per age bucket; the summed
        chances and the first picks per calibration bin. One compiled pass
        (:func:`.kernels.prior_step`), no (events, candidates, 3) arrays."""
        candidates = self.candidates(float(years.max()), known)
        # the first picks that were candidates (sorted: flatnonzero): their column
        column = np.minimum(np.searchsorted(candidates, items), len(candidates) - 1)
        picked = first & (candidates[column] == items) if len(candidates) else first & False
        return prior_step(
            _unit(self.profile_[users]), self.embeddings_, self.discovered(),
            np.log(self.share(users)), candidates, self.release_, years,
            np.where(picked, column, -1), _AGE_EDGES, np.log(self.age_rates), self.coef_,
            _CALIBRATION_BINS,
        )  # fmt: skip

    def _decay_rates(self, latest: float) -> None:
        if np.isfinite(self.clock_) and latest > self.clock_:
            seconds = self.rate_half_life_days * 86_400.0
            factor = 2.0 ** (-(latest - self.clock_) / seconds)
            for counts in (self.picks_, self.exposure_, self.expected_, self.observed_):
                counts *= factor

    def _record(
        self, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, first: np.ndarray
    ) -> None:
        """Seen items, users' recent items and shares, recent first picks, clock."""
        record_users(self.profile_, self.newness_, self.embeddings_, users, items, first,
                     self.user_decay)  # fmt: skip
        latest = float(timestamps.max())
        seconds = self.half_life_days * 86_400.0
        if np.isfinite(self.clock_) and latest > self.clock_:
            factor = 2.0 ** (-(latest - self.clock_) / seconds)
            self.discovery_ *= factor
            self._discovered = None
            self.overall_ *= 2.0 ** (-(latest - self.clock_) / (self.rate_half_life_days * 86_400))
        if first.any():
            age = 2.0 ** (-(latest - timestamps[first]) / seconds)
            self.discovery_ += age @ self.embeddings_[items[first]]
            self._discovered = None
        self.overall_ += [first.sum(), len(first)]
        self.seen_[items] = True
        self.clock_ = max(self.clock_, latest)

    # -------------------------------------------------------------- persistence

    def state(self) -> dict[str, np.ndarray]:
        return {
            "embeddings": self.embeddings_, "release": _stored(self.release_), "seen": self.seen_,
            "profile": self.profile_, "newness": self.newness_, "overall": self.overall_,
            "discovery": self.discovery_, "picks": self.picks_, "exposure": self.exposure_,
            "expected": self.expected_, "observed": self.observed_,
            "coef": self.coef_, "squares": self.squares_, "clock": np.array([self.clock_]),
        }  # fmt: skip

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.embeddings_ = arrays["embeddings"].astype(np.float32)
        self.release_ = _restored(arrays["release"])
        self.seen_ = arrays["seen"].astype(bool)
        self.profile_ = arrays["profile"].astype(np.float32)
        for name in ("newness", "overall", "discovery", "picks", "exposure", "expected",
                     "observed", "coef", "squares"):  # fmt: skip
            setattr(self, f"{name}_", arrays[name].astype(np.float64))
        self.clock_ = float(arrays["clock"][0])
        self._discovered = None


class RankRates:
    """The rate at which a ranker's item at rank ``r`` is the user's next item, per bucket.

    Per bucket, a power law ``h(r) = a * r ** -b`` (``b`` in [0, 3]) fitted by Poisson
    maximum likelihood to the hits at each rank: few events hit any one rank, and a smooth,
    non-increasing curve estimates the rates at all ranks from all hits. The prior adds
    ``pseudo`` events hit at the rate ``h0 / r`` (``(h0, pseudo)`` = ``_RANK_PRIOR``): high
    at the top ranks, so that nothing goes above a known item there before there is evidence.

    Parameters
    ----------
    depth : int
        Ranks tracked; a new item is placed among these or below them.
    buckets : int
    """

    def __init__(self, depth: int, buckets: int) -> None:
        self.hits_ = np.zeros((buckets, depth))
        self.events_ = np.zeros(buckets)
        self._fitted: np.ndarray | None = None  # rates() until the next add

    def add(self, bucket: np.ndarray, rank: np.ndarray) -> None:
        """Judged events: their bucket and the rank of their item (inf: not ranked)."""
        self.events_ += np.bincount(bucket, minlength=len(self.events_))
        hit = rank <= self.hits_.shape[1]
        np.add.at(self.hits_, (bucket[hit], rank[hit].astype(np.int64) - 1), 1.0)
        self._fitted = None  # the counts changed

    def rates(self) -> np.ndarray:
        """Shape (buckets, depth), non-increasing along ranks."""
        if self._fitted is None:
            rate, pseudo = _RANK_PRIOR
            ranks = np.arange(1.0, self.hits_.shape[1] + 1.0)
            hits = self.hits_ + pseudo * rate / ranks
            events = (self.events_ + pseudo)[:, None]
            exponents = np.linspace(0.0, 3.0, 61)
            shape = ranks[None, :] ** -exponents[:, None]  # (grid, depth)
            total = shape.sum(axis=1)
            scale = hits.sum(axis=1, keepdims=True) / (events * total)  # (buckets, grid)
            likelihood = (hits @ np.log(shape).T + hits.sum(axis=1, keepdims=True)
                          * np.log(scale) - events * scale * total)  # fmt: skip
            best = likelihood.argmax(axis=1)
            rows = np.arange(len(best))
            self._fitted = scale[rows, best][:, None] * shape[best]
        return self._fitted


# ------------------------------------------------------------------------------ the model


class Fresh(Recommender):
    """An ``inner`` model whose never-seen catalogue items are ranked by a calibrated chance.

    The catalogue comes through :meth:`add_items` (a :class:`Catalog`, whose titles give the
    release years, or :class:`ItemTexts`, texts only). See the module docstring.

    Parameters
    ----------
    inner : str
        A model spec (``parse_model``), e.g. ``"mf"``, ``"session-mf"``, ``"pop"``.
    text_encoder : str
        A :func:`~lifelong_rec.models.text.text_encoder` spec for the catalogue's texts.
    half_life_days : float
        Half-life of the memory of recent first picks.
    rate_half_life_days : float
        Half-life of the evidence behind the age bucket rates.
    user_decay : float in (0, 1)
        Per-event decay of a user's recent items and share of first picks.
    learning_rate : float
        AdaGrad step size of the prior's coefficients.
    depth : int
        Ranks whose hit rates are tracked; a new item is placed among them or below them.
    sample : int
        Most events per learned batch judged (ranked by the inner model, scored by the prior).
    seed : int
        Seeds the sampling of judged events.
    new_item_boost : float
        Exploration for new items: a new item is placed as if its chance were this many times
        its estimate (at most 1), so that the items nobody has seen yet get the exposure that
        gathers evidence on them; 1 places them by the estimate alone.
    """

    name = "fresh"

    def __init__(
        self,
        inner: str = "mf",
        text_encoder: str = "hashing",
        half_life_days: float = 30.0,
        rate_half_life_days: float = 365.0,
        user_decay: float = 0.9,
        learning_rate: float = 0.1,
        depth: int = 100,
        sample: int = 256,
        seed: int = 0,
        new_item_boost: float = 1.0,
    ) -> None:
        from lifelong_rec.models.specs import parse_model

        if not isinstance(inner, str) or inner.partition("(")[0].strip() in (self.name, "auto"):
            raise ValueError(
                f"inner: expected a model spec other than 'fresh' or 'auto' (which places new "
                f"items itself), got {inner!r}"
            )
        try:
            _, factory = parse_model(inner)
        except ValueError as error:
            raise ValueError(f"inner: {error}") from error
        self.inner = inner
        self.learning_rate = learning_rate
        self._setup(factory, text_encoder, half_life_days, rate_half_life_days, user_decay,
                    learning_rate, depth, sample, seed, new_item_boost)  # fmt: skip

    def _setup(
        self,
        factory: Callable[[], Recommender],
        text_encoder: str,
        half_life_days: float,
        rate_half_life_days: float,
        user_decay: float,
        learning_rate: float,
        depth: int,
        sample: int,
        seed: int,
        new_item_boost: float,
    ) -> None:
        """Check and keep the placement's parameters; ``factory`` makes the inner model."""
        try:
            encoder = make_text_encoder(text_encoder)
        except (TypeError, ValueError) as error:
            raise ValueError(f"text_encoder: {error}") from error
        for name, value in (("half_life_days", half_life_days),
                            ("rate_half_life_days", rate_half_life_days),
                            ("new_item_boost", new_item_boost)):  # fmt: skip
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(user_decay, int | float) and 0 < user_decay < 1):
            raise ValueError(f"user_decay must be in (0, 1), got {user_decay!r}")
        if not (isinstance(learning_rate, int | float) and np.isfinite(learning_rate)
                and learning_rate >= 0):  # fmt: skip
            raise ValueError(f"learning_rate must be finite and >= 0, got {learning_rate!r}")
        check_positive_ints(depth=depth, sample=sample)
        self.text_encoder = encoder.spec()
        self.half_life_days = half_life_days
        self.rate_half_life_days = rate_half_life_days
        self.user_decay = user_decay
        self.prior_learning_rate = learning_rate
        self.depth = depth
        self.sample = sample
        self.seed = seed
        self.new_item_boost = new_item_boost
        self._factory = factory
        self._encoder = encoder
        self._inner_half_life = factory()._fallback_half_life_days()
        # the catalogue survives fit: it is metadata, not learning
        self._catalog = IdIndex()
        self._catalog_texts = np.zeros((0, encoder.dim), dtype=np.float32)
        self._catalog_release = np.zeros(0)

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {"inner": "mf(factors=8, iterations=3)", "text_encoder": "hashing(dim=32)",
                "depth": 20, "sample": 64}  # fmt: skip

    def _fallback_half_life_days(self) -> float | None:
        return self._inner_half_life  # the same fallback as the inner model's

    # -------------------------------------------------------------- the catalogue

    def add_items(self, items: Catalog | ItemTexts) -> Fresh:
        """Make catalogue items known before anyone has interacted with them.

        A :class:`Catalog` is encoded here; :class:`ItemTexts` must come from this model's
        encoder. Both give the release years the catalogue names (an item without one keeps
        the year an earlier call gave). A later call adds items, or replaces the texts of
        those it names again. Returns the model.
        """
        if isinstance(items, Catalog):
            items = ItemTexts.encode(items, self._encoder)
        elif not isinstance(items, ItemTexts):
            raise TypeError(f"items must be a Catalog or ItemTexts, not {type(items).__name__}")
        elif items.encoder != self.text_encoder:
            raise ValueError(
                f"items were encoded with {items.encoder!r}, this model uses {self.text_encoder!r}"
            )
        # a year the texts do not give keeps the one an earlier call gave
        release = np.array(items.release)
        held = self._catalog.lookup(items.items)
        keep = (held >= 0) & np.isnan(release)
        release[keep] = self._catalog_release[held[keep]]
        rows = self._catalog.add(items.items)
        grow = len(self._catalog) - len(self._catalog_release)
        self._catalog_texts = np.vstack(
            [self._catalog_texts, np.zeros((grow, self._encoder.dim), np.float32)]
        )
        self._catalog_release = np.concatenate([self._catalog_release, np.full(grow, np.nan)])
        self._catalog_texts[rows] = items.embeddings
        self._catalog_release[rows] = release
        if self.is_fitted:
            self._admit(items.items)
            self._describe(self.items_.lookup(items.items))
        return self

    def _admit(self, ids: np.ndarray) -> None:
        n_items = len(self.items_)
        self.items_.add(ids)
        if len(self.items_) > n_items:
            self._grow_all(len(self.users_), len(self.items_))

    def _describe(self, items: np.ndarray) -> None:
        """Copy the catalogue's texts and years of host ``items`` into the prior."""
        rows = self._catalog.lookup(self.items_.ids(items))
        found = rows >= 0
        self.prior_.describe(
            items[found], self._catalog_texts[rows[found]], self._catalog_release[rows[found]]
        )

    # -------------------------------------------------------------- learning

    def _reset(self) -> None:
        super()._reset()
        self._admit(self._catalog.to_array())

    def _reset_model(self) -> None:
        self.inner_ = self._factory()
        self.prior_ = NewItemPrior(
            self.half_life_days,
            self.rate_half_life_days,
            self.user_decay,
            self.prior_learning_rate,
            self._encoder.dim,
        )
        self.rates_ = RankRates(self.depth, len(SHARE_EDGES))
        self._maps: tuple[tuple[int, ...], np.ndarray, np.ndarray] | None = None

    def _grow(self, n_users: int, n_items: int) -> None:
        old = len(self.prior_.seen_)
        self.prior_.grow(n_users, n_items)
        self._describe(np.arange(old, n_items))

    def fit(self, events: EventBatch) -> Recommender:
        """Train the inner model from scratch on ``events``; the prior reads them in time
        order, in chunks of ``4 * sample`` events, each judged before it is recorded. The
        rank rates start from their cautious prior (they need a model that has not seen
        the events it is judged on)."""
        _check_batch(events)
        self._reset()
        self.inner_.fit(events)
        order = np.argsort(events.timestamp, kind="stable")
        size = 4 * self.sample
        for start in range(0, len(events), size):
            chunk = events.take(order[start : start + size])
            self._observe(chunk, self._judged(chunk))
        self.updates_ += 1
        return self

    def learn(self, events: EventBatch) -> None:
        """Judge the inner model's ranks and the prior on ``events`` (test then train), then
        let both learn them."""
        _check_batch(events)
        if not self.is_fitted:
            self._reset()
        if not len(events):
            return
        judged = self._judged(events)
        self._learn_inner(events, judged)
        self._observe(events, judged)
        self.updates_ += 1

    def _learn_inner(self, events: EventBatch, judged: np.ndarray) -> None:
        """Rank the judged events with the inner model as it stands, then let it learn."""
        if self.updates_ and judged.any():
            self._judge_ranks(events, judged)
        self.inner_.learn(events)

    def replay(self, events: EventBatch) -> None:
        _check_batch(events)
        if not self.is_fitted or not len(events):
            return
        self.inner_.replay(events)
        self.updates_ += 1

    def _anchor(self, strength: float) -> None:
        if self.inner_.is_fitted:
            self.inner_.anchor(strength)

    def _learn(self, events: object) -> None:  # learn() above does the work
        raise AssertionError("Fresh.learn drives its inner model itself")

    def _judged(self, events: EventBatch) -> np.ndarray:
        """A sample (``sample``) of the events a recommendation is judged on: positive, the
        first of their (user, item) pair, by a user with a history (before the batch)."""
        users = self.users_.lookup(events.user)
        items = self.items_.lookup(events.item)
        candidate = self._first_pairs(users, items, events.weight > 0, events.item)
        candidate[candidate] = self.history_size_[users[candidate]] > 0
        return self._sampled(candidate)

    def _sampled(self, candidate: np.ndarray) -> np.ndarray:
        """At most ``sample`` of the ``candidate`` events, drawn at random (seeded per
        update), as a mask."""
        rows = np.flatnonzero(candidate)
        if len(rows) > self.sample:
            rng = np.random.default_rng((self.seed, self.updates_))
            rows = np.sort(rng.choice(rows, self.sample, replace=False))
        judged = np.zeros(len(candidate), dtype=bool)
        judged[rows] = True
        return judged

    def _judge_ranks(self, events: EventBatch, judged: np.ndarray) -> None:
        """The inner model's rank of each judged event's item among the known items its user
        has not seen (inf for an item never seen: no known item was the next one)."""
        rows = np.flatnonzero(judged)
        users = self.users_.lookup(events.user[rows])
        items = self.items_.lookup(events.item[rows])
        known = items >= 0
        known[known] = self.prior_.seen_[items[known]]
        rank = np.full(len(rows), np.inf)
        if known.any():
            scores = self._known_scores(users[known])
            target = scores[np.arange(int(known.sum())), items[known]]
            rank[known] = (scores >= target[:, None]).sum(axis=1)
        self.rates_.add(self._bucket(users), rank)

    def _observe(
        self, events: EventBatch, judged: np.ndarray, new_pair: np.ndarray | None = None
    ) -> None:
        """Record the batch in the host's indexes and history (``new_pair``: see
        :meth:`_index`), then in the prior."""
        known = len(self.items_)
        indexed = self._index(events, new_pair)
        positive = indexed.positive
        self.prior_.observe(
            indexed.user[positive], indexed.item[positive], indexed.timestamp[positive],
            judged[positive], known,
        )  # fmt: skip

    def _bucket(self, users: np.ndarray) -> np.ndarray:
        share = self.prior_.share(users)
        return np.searchsorted(SHARE_EDGES, share, side="right") - 1

    # -------------------------------------------------------------- scoring

    def _inner_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """Host user and item index -> inner index (-1 unknown), cached until either model's
        indexes grow (they only ever grow at the end)."""
        sizes = (len(self.users_), len(self.items_),
                 len(self.inner_.users_), len(self.inner_.items_))  # fmt: skip
        maps = self._maps  # read once: another reader of a served snapshot may replace it
        if maps is None or maps[0] != sizes:
            users = self.inner_.users_.lookup(self.users_.to_array())
            items = self.inner_.items_.lookup(self.items_.to_array())
            maps = self._maps = (sizes, users, items)
        return maps[1], maps[2]

    def _known_scores(self, user_index: np.ndarray) -> np.ndarray:
        """The inner model's scores of the known (seen) items for warm users, -inf for the
        others and for what each user has seen, shape (n, n_items), float64."""
        user_map, item_map = self._inner_maps()
        inner_users = user_map[user_index]
        columns = np.flatnonzero((item_map >= 0) & self.prior_.seen_)
        inner = self.inner_._scores(inner_users, self.inner_._cold(inner_users),
                                    item_map[columns], len(columns))  # fmt: skip
        out = np.full((len(user_index), len(self.items_)), -np.inf)
        out[:, columns] = inner
        self._mask_seen(out, user_index, slice(None))
        return out

    def _scores(
        self,
        user_index: np.ndarray,
        cold: np.ndarray,
        item_index: np.ndarray | slice,
        n_candidates: int,
    ) -> np.ndarray:
        out = np.empty((len(user_index), len(self.items_)), dtype=np.float32)
        if cold.any():
            out[cold] = self.popularity_.counts[: len(self.items_)]
            out[np.ix_(cold, self._future())] = -np.inf
        warm = np.flatnonzero(~cold)
        if len(warm):
            out[warm] = self._placed(user_index[warm])[0]
        return out[:, item_index]

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        return self._placed(user_index)[0][:, item_index]

    def _future(self) -> np.ndarray:
        """Items released after the year of the latest event: never recommended."""
        now = self.prior_.clock_
        if not np.isfinite(now):
            return np.zeros(len(self.items_), dtype=bool)
        return self.prior_.release_ > event_years(np.array([now]))[0]

    def _placed(
        self, user_index: np.ndarray, similarity: bool = True
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores of every item for warm users, shape (n, n_items), float32: the inner
        model's for known items, new items placed by their chances; and the placement
        (``items``, ``chances``, ``rank`` (0-based insertion rank among known items) and
        ``rate`` (the rate of the known item below), each (n, C) but items (C,))."""
        n = len(user_index)
        user_map, item_map = self._inner_maps()
        inner_users = user_map[user_index]
        scores = np.full((n, len(self.items_)), -np.inf)
        known = np.flatnonzero((item_map >= 0) & self.prior_.seen_)
        scores[:, known] = self.inner_._scores(inner_users, self.inner_._cold(inner_users),
                                               item_map[known], len(known))  # fmt: skip
        lowest = scores[:, known].min(axis=1, initial=np.inf)
        unseen = scores.copy()
        self._mask_seen(unseen, user_index, slice(None))
        depth = min(self.depth, len(self.items_))
        top = -np.partition(-unseen, depth - 1, axis=1)[:, :depth] if depth else unseen[:, :0]
        top = -np.sort(-top, axis=1)  # (n, depth) best first, -inf past the known unseen
        items, chances = self.prior_.chances(user_index, self.prior_.clock_, similarity)
        placing = np.minimum(chances * self.new_item_boost, 1.0)  # with the exploration bonus
        rates = self.rates_.rates()[self._bucket(user_index), :depth]  # (n, depth)
        rank = np.empty(chances.shape, dtype=np.int64)
        for bucket_rates in np.unique(rates, axis=0):  # one searchsorted per distinct bucket
            rows = np.flatnonzero((rates == bucket_rates).all(axis=1))
            rank[rows] = np.searchsorted(-bucket_rates, -placing[rows], side="right")
        rank = np.minimum(rank, (top > -np.inf).sum(axis=1, keepdims=True))
        placed = _interpolate(top, rates, placing, rank, lowest)
        scores[:, items] = placed
        scores[:, np.flatnonzero(self._future())] = -np.inf
        below = np.take_along_axis(rates, np.minimum(rank, depth - 1), axis=1) if depth else rank
        return scores.astype(np.float32), {
            "items": items, "chances": chances, "rank": rank, "rate": below,
        }  # fmt: skip

    # -------------------------------------------------------------- explaining

    def _explanations(
        self,
        users: np.ndarray,
        items: np.ndarray,
        scores: np.ndarray | None,
        top: int,
        wording: Wording,
        index: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[tuple[Explanation, ...], ...]:
        """Known items and cold users: the inner model's explanations (the fallback's for
        cold users); new items: the placement's (see the module docstring)."""
        n, k = items.shape
        if index is None:
            user_index = self.users_.lookup(users)
            item_index = self.items_.lookup(items.ravel()).reshape(n, k)
        else:
            user_index, item_index = index
        cold = self._cold(user_index)
        new = (item_index >= 0) & ~cold[:, None]
        new[new] = ~self.prior_.seen_[item_index[new]]
        if scores is None:
            scores = self._pair_scores(user_index, item_index)
        inner = self.inner_._explanations(users, np.where(new, "", items), None, top, wording)
        fresh = self._new_explanations(user_index, item_index, new, wording)
        version = self.version
        out = []
        for row in range(n):
            delegated = iter(inner[row])
            explained = []
            for column in np.flatnonzero(items[row] != "").tolist():
                if new[row, column]:
                    explained.append(fresh[row, column])
                else:
                    found = next(delegated)
                    explained.append(dataclasses.replace(found, model_version=version))
            out.append(tuple(explained))
        return tuple(out)

    def _new_explanations(
        self, user_index: np.ndarray, item_index: np.ndarray, new: np.ndarray, wording: Wording
    ) -> dict[tuple[int, int], Explanation]:
        rows = np.flatnonzero(new.any(axis=1))
        if not len(rows):
            return {}
        scores, placement = self._placed(user_index[rows])
        without = self._placed(user_index[rows], similarity=False)[0]
        column = np.full(len(self.items_), -1)
        column[placement["items"]] = np.arange(len(placement["items"]))
        users = self.users_.ids(user_index)
        now = self.prior_.clock_
        year = event_years(np.array([now]))[0] if np.isfinite(now) else np.nan
        out = {}
        for position, row in enumerate(rows.tolist()):
            for slot in np.flatnonzero(new[row]).tolist():
                item = int(item_index[row, slot])
                score = float(scores[position, item])
                at = column[item]
                if at < 0:  # released after the present: never recommended
                    out[row, slot] = Explanation(
                        str(users[row]), str(self.items_.ids([item])[0]), score, self.version,
                        "new item, not out yet",
                    )  # fmt: skip
                    continue
                chance = float(placement["chances"][position, at])
                rank = int(placement["rank"][position, at])
                age = year - self.prior_.release_[item]
                similarity = float(_unit(self.prior_.profile_[user_index[row]][None])[0]
                                   @ self.prior_.embeddings_[item])  # fmt: skip
                boost = self.new_item_boost
                method = (
                    f"new item (no one has interacted with it yet): estimated chance {chance:.2g} "
                    f"of being the next item, from its age "
                    f"({'unknown' if np.isnan(age) else f'{age:.0f} years'}) and its text "
                    f"(similarity {similarity:.2f} to your recent items); placed"
                    f"{f' as {boost:g} times that (exploring new items)' if boost != 1 else ''}"
                    f" above the known items of rank {rank + 1} and below (their rate "
                    f"{float(placement['rate'][position, at]):.2g})"
                )
                reasons: tuple[Reason, ...] = ()
                part = score - float(without[position, item])
                closest = self._closest_history(int(user_index[row]), item)
                if part > 0 and closest is not None and np.isfinite(part):
                    title = wording.titles(np.array([closest]))[0]
                    reasons = (Reason("text", part, wording.reason("text", title), closest),)
                rest = score - sum(reason.weight for reason in reasons)
                item_id = str(self.items_.ids([item])[0])
                out[row, slot] = Explanation(
                    str(users[row]), item_id, score, self.version, method, reasons, rest
                )
        return out

    def _closest_history(self, user: int, item: int) -> str | None:
        """The history item that adds most to the user's recent-items similarity to
        ``item``: its text similarity times its recency weight (decay per later item)."""
        seen = self.last_seen_.row_block(np.array([user]))
        if not len(seen.indices):
            return None
        later = np.argsort(np.argsort(-seen.data, kind="stable"), kind="stable")
        share = self.user_decay**later * (self.prior_.embeddings_[seen.indices]
                                          @ self.prior_.embeddings_[item])  # fmt: skip
        best = int(np.argmax(share))
        return str(self.items_.ids([seen.indices[best]])[0]) if share[best] > 0 else None

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        """The inner model's split of known items' scores (new items: nothing), in host
        indexes."""
        user_map, item_map = self._inner_maps()
        own = item_map[items]
        found = self.inner_._attribute(user_map[users], np.maximum(own, 0))
        history = np.full(found.history.shape, -1, dtype=np.int64)
        present = found.history >= 0
        history[present] = self.items_.lookup(self.inner_.items_.ids(found.history[present]))
        known = (own >= 0)[:, None, :]
        popularity = None if found.popularity is None else found.popularity * (own >= 0)
        return Attribution(found.method, history, found.weights * known, found.kinds,
                           popularity, found.trend)  # fmt: skip

    def _deletion_scores(self, user: int, items: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """The inner model's deletion scores for the items it knows; a new item (placed by
        its chance, not scored from single history items) keeps its score in every row."""
        _, item_map = self._inner_maps()
        inner = item_map[items] >= 0
        scores = np.zeros((len(removed) + 1, len(items)))
        if not inner.all():  # the placement only where a new item needs it
            scores[:, ~inner] = self._placed(np.array([user]))[0][0, items[~inner]]
        if inner.any():
            ids = self.items_.ids
            scores[:, inner] = self.inner_.deletion_scores(
                self.users_.ids(np.array([user]))[0], ids(items[inner]), ids(removed)
            )
        return scores

    def _item_similarity(self, item: int) -> np.ndarray:
        """The inner model's similarities; -inf for items it does not know."""
        _, item_map = self._inner_maps()
        similarity = np.full(len(self.items_), -np.inf)
        if item_map[item] >= 0:
            scores = np.asarray(self.inner_._item_similarity(int(item_map[item])), np.float64)
            similarity[item_map >= 0] = scores[item_map[item_map >= 0]]
        return similarity

    # -------------------------------------------------------------- persistence

    def _state(self) -> dict[str, np.ndarray]:
        state = {f"prior.{key}": value for key, value in self.prior_.state().items()}
        return state | {
            "rates.hits": self.rates_.hits_, "rates.events": self.rates_.events_,
            "catalog.items": self._catalog.to_array(), "catalog.texts": self._catalog_texts,
            "catalog.release": _stored(self._catalog_release),
        }  # fmt: skip

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.prior_.set_state(
            {k.removeprefix("prior."): v for k, v in arrays.items() if k.startswith("prior.")}
        )
        self.rates_.hits_ = arrays["rates.hits"].astype(np.float64)
        self.rates_.events_ = arrays["rates.events"].astype(np.float64)
        self.rates_._fitted = None
        self._catalog = IdIndex(arrays["catalog.items"])
        self._catalog_texts = arrays["catalog.texts"].astype(np.float32)
        self._catalog_release = _restored(arrays["catalog.release"])

    def _save_parts(self, folder: Path) -> None:
        self.inner_.save(folder / "inner")

    def _load_parts(self, folder: Path) -> None:
        self.inner_ = Recommender.load(folder / "inner")
        self._maps = None


# ------------------------------------------------------------------------------ helpers


def _interpolate(
    top: np.ndarray,
    rates: np.ndarray,
    chances: np.ndarray,
    rank: np.ndarray,
    lowest: np.ndarray,
) -> np.ndarray:
    """Scores of new items inserted at ``rank`` (0-based: that many known items above) in
    each user's ``top`` known scores (n, depth, best first, -inf past the user's known items),
    ordered by chance within a gap; ``rank`` is at most the number of finite ``top`` scores.

    Between two known items the score moves from the lower to the upper one as the chance's
    log moves between their rates; above the first, it rises above it; below the last
    calibrated rank (or the last known item) it goes below every known item (``lowest``, per
    user, shape (n,)), in the order of chance.
    """
    n, depth = top.shape
    available = (top > -np.inf).sum(axis=1, keepdims=True)
    high = top[:, :1] if depth else np.full((n, 1), -np.inf)
    low = np.take_along_axis(top, np.maximum(available - 1, 0), axis=1) if depth else high
    anchor = np.where(np.isfinite(high), high, 0.0)
    floor = np.where(np.isfinite(lowest), lowest, 0.0)[:, None]
    gap = np.where(available > 0, high, 0.0) - np.where(available > 0, low, 0.0)
    spread = np.maximum(gap, 1e-3 * np.maximum(np.abs(anchor), 1.0)) / max(depth, 1)
    if depth == 0:
        return floor - spread * (2.0 - np.clip(chances, 0.0, 1.0))
    log_chance = np.log(np.maximum(chances, 1e-300))
    log_rates = np.log(rates)
    upper_at = np.clip(rank - 1, 0, depth - 1)
    lower_at = np.clip(rank, 0, depth - 1)
    upper = np.take_along_axis(top, upper_at, axis=1)
    lower = np.take_along_axis(top, lower_at, axis=1)
    log_upper = np.take_along_axis(log_rates, upper_at, axis=1)
    log_lower = np.take_along_axis(log_rates, lower_at, axis=1)
    width = np.where(log_upper > log_lower, log_upper - log_lower, 1.0)
    fraction = np.clip((log_chance - log_lower) / width, 0.02, 0.98)
    with np.errstate(invalid="ignore"):  # -inf rows are not chosen below
        between = lower + fraction * (upper - lower)
    above = high + spread * (1.0 + np.clip(log_chance - log_rates[:, :1], 0.0, 50.0))
    below = floor - spread * (2.0 - np.clip(chances / rates[:, -1:], 0.0, 1.0))
    return np.where(rank >= available, below, np.where(rank == 0, above, between))


def _first_occurrence(keys: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each key, shape (n,)."""
    if len(keys) <= 1:
        return np.ones(len(keys), dtype=bool)
    first = np.zeros(len(keys), dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    return first


def _grown(array: np.ndarray, n: int) -> np.ndarray:
    """``array`` with zero rows added up to ``n`` rows, into spare room (:func:`appended`)."""
    return appended(array, np.zeros((n - len(array), *array.shape[1:]), dtype=array.dtype))


def _stored(years: np.ndarray) -> np.ndarray:
    """Release years to save: -inf for unknown (NaN), so equal states compare equal."""
    return np.where(np.isnan(years), -np.inf, years)


def _restored(years: np.ndarray) -> np.ndarray:
    return np.where(np.isneginf(years), np.nan, years).astype(np.float64)


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros(rows.shape, dtype=np.float32), where=norms > 0)
