"""The simulated world of P4: users whose tastes drift, items that arrive and fade, and a
position-biased click model that an oracle knows.

How the world works
-------------------
- Topics: ``n_topics`` unit vectors in a ``dim``-dimensional latent space.
- Items: each belongs to one topic; its latent vector is the topic's plus a personal offset
  (``item_spread``), and it has a quality (``item_quality_sd``, a click-logit offset).
  ``n_items_initial`` exist at the start, with ages spread over their lifetime; new ones
  arrive at ``item_arrival_rate`` per round (Poisson). An item's attractiveness halves every
  ``item_half_life`` rounds of age, and it leaves the candidates at ``item_lifetime``.
- Users: each has a home topic and a personal offset (``user_spread``); the taste is pulled
  toward ``topic + offset`` by ``taste_reversion`` per round and takes a random-walk step of
  size ``taste_drift`` (an Ornstein-Uhlenbeck walk: without the pull a random walk would
  leave the topics behind). Each round a user switches to a random home topic with
  probability ``topic_switch_rate``, so the taste then drifts over to it. Every user drifts
  every round, whether they arrive or not.
- Arrivals: ``users_per_round`` distinct users per round, drawn with probability proportional
  to their activity (lognormal with ``activity_sd``).
- Clicks (the position-based model): position ``j`` of a slate is examined with probability
  ``position_bias[j]``, independently; an examined item is clicked with probability
  ``sigmoid(click_bias + quality + click_scale * taste . item) * 0.5 ** (age / half_life)``.
  The best slate is therefore the top ``k`` items by that attraction, in order (positions
  examined less often get the less attractive items): the oracle.
- What a recommender may see: the user features, a noisy view of the taste (fixed noise per
  user), or none; the item features, the topic one-hot, a noisy item vector, or none.

The world's randomness (drift, arrivals, items) and the clicks have separate generators, so
the world a seed makes is the same whatever the policies show.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np

from lifelong_rec.events import as_ids

USER_FEATURES = ("noisy", "none")
ITEM_FEATURES = ("topic", "vector", "none")


@dataclass(frozen=True)
class SimulatorConfig:
    """The simulated world's parameters. Rates and ages are per round.

    Attributes
    ----------
    n_users : int
    n_items_initial : int
        Items at the start (at least ``k``).
    dim : int
        Latent dimension of tastes and items.
    n_topics : int
    user_spread, item_spread : float >= 0
        Size of a user's or item's personal offset from its topic's vector.
    item_quality_sd : float >= 0
        Spread of the items' click-logit offsets.
    taste_drift : float >= 0
        Size (norm, in expectation) of each user's random-walk step per round.
    taste_reversion : float in [0, 1]
        Share of the distance to the home topic (plus offset) a taste closes per round.
    topic_switch_rate : float in [0, 1]
        Per user and round, the probability of moving to a random home topic.
    item_arrival_rate : float >= 0
        Expected new items per round (Poisson).
    item_lifetime : float > 0
        Rounds an item stays a candidate (``inf``: forever).
    item_half_life : float > 0
        Rounds after which an item's attractiveness has halved (``inf``: it never fades).
    k : int
        Slate length.
    position_bias : tuple of float, length k
        Probability that each position is examined: in (0, 1], non-increasing.
    click_bias, click_scale : float
        ``P(click | examined) = sigmoid(click_bias + quality + click_scale * taste . item)``,
        times the freshness. ``click_scale >= 0``.
    users_per_round : int
        Distinct users arriving per round (at most ``n_users``).
    activity_sd : float >= 0
        Sigma of the users' lognormal activity (0: every user alike).
    user_features : {"noisy", "none"}
        What a recommender sees of a user: the taste plus fixed Gaussian noise, or nothing.
    user_feature_noise : float >= 0
        Per-coordinate standard deviation of that noise.
    item_features : {"topic", "vector", "none"}
        What a recommender sees of an item: its topic one-hot, its latent vector plus fixed
        noise, or nothing.
    item_feature_noise : float >= 0
    """

    n_users: int = 2_000
    n_items_initial: int = 100
    dim: int = 8
    n_topics: int = 8
    user_spread: float = 0.5
    item_spread: float = 0.5
    item_quality_sd: float = 0.5
    taste_drift: float = 0.05
    taste_reversion: float = 0.01
    topic_switch_rate: float = 0.002
    item_arrival_rate: float = 0.2
    item_lifetime: float = 500.0
    item_half_life: float = 300.0
    k: int = 3
    position_bias: tuple[float, ...] = (1.0, 0.6, 0.4)
    click_bias: float = -3.0
    click_scale: float = 3.0
    users_per_round: int = 50
    activity_sd: float = 1.0
    user_features: str = "noisy"
    user_feature_noise: float = 0.5
    item_features: str = "topic"
    item_feature_noise: float = 0.5

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"SimulatorConfig.{name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("n_users", "n_items_initial", "dim", "n_topics", "k", "users_per_round"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise bad(name, "a positive integer")
        numbers = [f.name for f in fields(self) if f.type == "float"]
        for name in numbers:
            value = getattr(self, name)
            if not isinstance(value, int | float | np.integer | np.floating) or isinstance(
                value, bool
            ):
                raise bad(name, "a number")
        finite = ("user_spread", "item_spread", "item_quality_sd", "taste_drift",
                  "item_arrival_rate", "click_scale", "activity_sd", "user_feature_noise",
                  "item_feature_noise")  # fmt: skip
        for name in finite:
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "finite and >= 0")
        for name in ("taste_reversion", "topic_switch_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise bad(name, "in [0, 1]")
        for name in ("item_lifetime", "item_half_life"):
            if not getattr(self, name) > 0:  # NaN fails too
                raise bad(name, "> 0 (inf allowed)")
        if not math.isfinite(self.click_bias):
            raise bad("click_bias", "finite")
        if self.n_items_initial < self.k:
            raise bad("n_items_initial", f">= k={self.k}, so that a first slate can be filled")
        if self.users_per_round > self.n_users:
            raise bad("users_per_round", f"<= n_users={self.n_users}")
        try:
            bias = np.asarray(self.position_bias, dtype=np.float64)
        except (TypeError, ValueError):
            raise bad("position_bias", f"{self.k} (k) numbers") from None
        if (
            bias.shape != (self.k,)
            or not np.all((bias > 0) & (bias <= 1))
            or np.any(np.diff(bias) > 0)
        ):
            raise bad("position_bias", f"{self.k} (k) probabilities in (0, 1], non-increasing")
        object.__setattr__(self, "position_bias", tuple(float(b) for b in bias))
        if self.user_features not in USER_FEATURES:
            raise bad("user_features", f"one of {USER_FEATURES}")
        if self.item_features not in ITEM_FEATURES:
            raise bad("item_features", f"one of {ITEM_FEATURES}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: infinities as the string ``"inf"``."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            value = value.item() if isinstance(value, np.generic) else value
            out[f.name] = "inf" if isinstance(value, float) and math.isinf(value) else value
        out["position_bias"] = list(self.position_bias)
        return out


class Simulator:
    """The world of P4, seeded: see the module docstring for how it works.

    Users and items are dense indexes here (``0 .. n_users - 1``, ``0 .. n_items - 1``); their
    external ids are ``"u<index>"`` and ``"i<index>"`` (:meth:`user_ids`, :meth:`item_ids`).

    Parameters
    ----------
    config : SimulatorConfig
    seed : int

    Attributes
    ----------
    round_ : int
        Rounds stepped so far.
    taste_ : array of float64, shape (n_users, dim)
    item_vectors_ : array of float64, shape (n_items, dim)
        Every item so far, retired ones included.
    item_topics_ : array of int64, shape (n_items,)
    item_birth_ : array of float64, shape (n_items,)
        The round each item arrived (negative for items older than the start).

    Examples
    --------
    >>> world = Simulator(SimulatorConfig(n_users=20, users_per_round=5), seed=1)
    >>> users, items = world.arrivals(), world.live_items()
    >>> slates = world.oracle_slates(users, items)
    >>> world.clicks(users, slates).shape, bool((world.expected_reward(users, slates) > 0).all())
    ((5, 3), True)
    """

    def __init__(self, config: SimulatorConfig, seed: int = 0) -> None:
        if not isinstance(config, SimulatorConfig):
            raise TypeError(f"config must be a SimulatorConfig, not {type(config).__name__}")
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.config = config
        self.seed = int(seed)
        c = config
        setup = np.random.default_rng([self.seed, 0])
        self._world = np.random.default_rng([self.seed, 1])  # drift, arrivals, new items
        self._click_rng = np.random.default_rng([self.seed, 2])  # clicks only
        self._bias = np.asarray(c.position_bias)
        centers = setup.normal(size=(c.n_topics, c.dim))
        self.topic_vectors_ = centers / np.linalg.norm(centers, axis=1, keepdims=True)
        self.home_topic_ = setup.integers(c.n_topics, size=c.n_users)
        self._offset = c.user_spread * setup.normal(size=(c.n_users, c.dim)) / np.sqrt(c.dim)
        self.taste_ = self.topic_vectors_[self.home_topic_] + self._offset
        self._user_noise = c.user_feature_noise * setup.normal(size=(c.n_users, c.dim))
        activity = setup.lognormal(0.0, c.activity_sd, size=c.n_users)
        self._activity = activity / activity.sum()
        self.item_vectors_ = np.zeros((0, c.dim))
        self.item_topics_ = np.zeros(0, dtype=np.int64)
        self.item_quality_ = np.zeros(0)
        self.item_birth_ = np.zeros(0)
        self._item_noise = np.zeros((0, c.dim))
        oldest = c.item_lifetime if math.isfinite(c.item_lifetime) else 0.0
        self._add_items(c.n_items_initial, -setup.uniform(0.0, oldest, c.n_items_initial), setup)
        self.round_ = 0

    def __repr__(self) -> str:
        return f"Simulator(seed={self.seed}, round_={self.round_})"

    # -------------------------------------------------------------- ids

    @staticmethod
    def user_ids(users: np.ndarray) -> np.ndarray:
        """External ids ``"u<index>"`` of user indexes, same shape."""
        return np.char.add("u", np.asarray(users, dtype=np.int64).astype(str))

    @staticmethod
    def item_ids(items: np.ndarray) -> np.ndarray:
        """External ids ``"i<index>"`` of item indexes, same shape."""
        return np.char.add("i", np.asarray(items, dtype=np.int64).astype(str))

    def user_indexes(self, ids: Iterable[object] | np.ndarray) -> np.ndarray:
        """User indexes of external ids (the inverse of :meth:`user_ids`)."""
        return _indexes(ids, "u", self.config.n_users, "users")

    def item_indexes(self, ids: Iterable[object] | np.ndarray) -> np.ndarray:
        """Item indexes of external ids (the inverse of :meth:`item_ids`)."""
        return _indexes(ids, "i", len(self.item_birth_), "items")

    # -------------------------------------------------------------- one round

    @property
    def n_items(self) -> int:
        """Items so far, retired ones included."""
        return len(self.item_birth_)

    def arrivals(self) -> np.ndarray:
        """This round's users: ``users_per_round`` distinct indexes drawn by activity.

        Draws from the world's generator: call it once per round.

        Returns
        -------
        users : array of int64, shape (users_per_round,)
        """
        n, size = self.config.n_users, self.config.users_per_round
        return self._world.choice(n, size=size, replace=False, p=self._activity)

    def live_items(self) -> np.ndarray:
        """The candidates: items younger than ``item_lifetime`` (the ``k`` youngest if fewer).

        Returns
        -------
        items : array of int64, shape (m,), ascending
        """
        age = self.round_ - self.item_birth_
        live = np.flatnonzero(age < self.config.item_lifetime)
        if len(live) < self.config.k:
            live = np.sort(np.argsort(age, kind="stable")[: self.config.k])
        return live

    def user_features(self, users: np.ndarray) -> np.ndarray:
        """What a recommender sees of the users: the taste plus fixed noise, or nothing.

        Returns
        -------
        features : array of float64, shape (n, dim), or (n, 0) for ``user_features="none"``
        """
        users = np.asarray(users, dtype=np.int64)
        if self.config.user_features == "none":
            return np.zeros((len(users), 0))
        return self.taste_[users] + self._user_noise[users]

    def item_features(self, items: np.ndarray) -> np.ndarray:
        """What a recommender sees of the items.

        Returns
        -------
        features : array of float64, shape (m, n_topics) (topic one-hot), (m, dim) (the item
            vector plus fixed noise) or (m, 0) (none)
        """
        items = np.asarray(items, dtype=np.int64)
        kind = self.config.item_features
        if kind == "topic":
            return np.eye(self.config.n_topics)[self.item_topics_[items]]
        if kind == "vector":
            return self.item_vectors_[items] + self._item_noise[items]
        return np.zeros((len(items), 0))

    def attraction(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``P(click | examined)`` of every (user, item) now: the truth the oracle ranks by.

        Returns
        -------
        probabilities : array of float64, shape (n, m)
        """
        c = self.config
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        logits = (
            c.click_bias
            + self.item_quality_[items]
            + c.click_scale * (self.taste_[users] @ self.item_vectors_[items].T)
        )
        age = np.maximum(self.round_ - self.item_birth_[items], 0.0)
        return _sigmoid(logits) * 0.5 ** (age / c.item_half_life)

    def click_probabilities(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """``P(click)`` at each position: examination times attraction.

        Parameters
        ----------
        users : array of int, shape (n,)
        slates : array of int, shape (n, k)
            Item indexes by position.

        Returns
        -------
        probabilities : array of float64, shape (n, k)
        """
        users, slates = self._check_slates(users, slates)
        c = self.config
        logits = (
            c.click_bias
            + self.item_quality_[slates]
            + c.click_scale
            * np.einsum("nd,nkd->nk", self.taste_[users], self.item_vectors_[slates])
        )
        age = np.maximum(self.round_ - self.item_birth_[slates], 0.0)
        return self._bias * _sigmoid(logits) * 0.5 ** (age / c.item_half_life)

    def clicks(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Sampled clicks of the position-based model (one uniform draw per position).

        Returns
        -------
        clicks : array of float64, shape (n, k), 0.0 or 1.0
        """
        probabilities = self.click_probabilities(users, slates)
        return (self._click_rng.random(probabilities.shape) < probabilities).astype(np.float64)

    def expected_reward(self, users: np.ndarray, slates: np.ndarray) -> np.ndarray:
        """Expected clicks of each slate.

        Returns
        -------
        expected : array of float64, shape (n,)
        """
        return self.click_probabilities(users, slates).sum(axis=1)

    def oracle_slates(self, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The best slates: the top ``k`` candidates by attraction, best on position 1.

        Optimal for the position-based model, since examination does not increase with the
        position (the rearrangement inequality).

        Returns
        -------
        slates : array of int64, shape (n, k), item indexes
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        k = self.config.k
        if len(candidates) < k:
            raise ValueError(f"candidates: {len(candidates)} are fewer than k={k}")
        attraction = self.attraction(users, candidates)
        top = np.argpartition(-attraction, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(attraction, top, axis=1), axis=1, kind="stable")
        return candidates[np.take_along_axis(top, order, axis=1)]

    def step(self) -> None:
        """Advance one round: tastes drift, home topics switch, new items arrive."""
        c, rng = self.config, self._world
        switching = rng.random(c.n_users) < c.topic_switch_rate
        self.home_topic_[switching] = rng.integers(c.n_topics, size=int(switching.sum()))
        target = self.topic_vectors_[self.home_topic_] + self._offset
        steps = rng.normal(size=self.taste_.shape) * (c.taste_drift / np.sqrt(c.dim))
        self.taste_ = self.taste_ + c.taste_reversion * (target - self.taste_) + steps
        self.round_ += 1
        arriving = int(rng.poisson(c.item_arrival_rate))
        if arriving:
            self._add_items(arriving, np.full(arriving, float(self.round_)), rng)

    # -------------------------------------------------------------- internals

    def _add_items(self, n: int, birth: np.ndarray, rng: np.random.Generator) -> None:
        c = self.config
        topics = rng.integers(c.n_topics, size=n)
        offsets = c.item_spread * rng.normal(size=(n, c.dim)) / np.sqrt(c.dim)
        self.item_vectors_ = np.vstack([self.item_vectors_, self.topic_vectors_[topics] + offsets])
        self.item_topics_ = np.concatenate([self.item_topics_, topics])
        self.item_quality_ = np.concatenate(
            [self.item_quality_, c.item_quality_sd * rng.normal(size=n)]
        )
        self.item_birth_ = np.concatenate([self.item_birth_, birth])
        self._item_noise = np.vstack(
            [self._item_noise, c.item_feature_noise * rng.normal(size=(n, c.dim))]
        )

    def _check_slates(self, users: object, slates: object) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(users, dtype=np.int64)
        slates = np.asarray(slates, dtype=np.int64)
        if slates.shape != (len(users), self.config.k):
            raise ValueError(
                f"slates: expected shape ({len(users)}, {self.config.k}), got {slates.shape}"
            )
        if len(users) and not (0 <= users.min() and users.max() < self.config.n_users):
            raise ValueError("users: an index is out of range")
        if slates.size and not (0 <= slates.min() and slates.max() < self.n_items):
            raise ValueError("slates: an item index is out of range")
        return users, slates


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _indexes(ids: Iterable[object] | np.ndarray, prefix: str, n: int, name: str) -> np.ndarray:
    values = as_ids(ids, name)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    digits = np.char.lstrip(values, prefix)
    parsed = np.where(np.char.isdigit(digits) & (np.char.str_len(digits) < 19), digits, "-1")
    indexes = parsed.astype(np.int64)
    # The round trip rejects what the id scheme never makes: "uu5", "u05", another prefix.
    valid = (np.char.add(prefix, indexes.astype(str)) == values) & (indexes >= 0) & (indexes < n)
    if not valid.all():
        raise ValueError(
            f"{name}: {str(values[~valid][0])!r} is not an id of this simulation ({prefix}0 to "
            f"{prefix}{n - 1})"
        )
    return indexes
