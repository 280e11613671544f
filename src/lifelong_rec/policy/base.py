"""The contract every exploration policy keeps.

A policy turns a batch of users, the candidate items they share and the model's scores into
one slate per user. Each decision carries, per shown item, its marginal propensity: the
probability that the policy would show that item at that position, given the user's context
and the candidates. Everything served can so be evaluated off-policy later (P3).

The base class does what every policy shares: input checks, the uniform-random slice of
traffic (``uniform_share``) and its exact mixture of propensities, flagging the positions that
exploration filled (``Decisions.exploring``), and processing the users in blocks so that the
(users, candidates, positions) intermediates stay small.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import as_ids
from lifelong_rec.policy.decisions import Decisions

#: float64 elements a policy may hold per block of users (32 MiB): bounds peak memory.
BLOCK_ELEMENTS = 1 << 22

_POLICIES: dict[str, type[Policy]] = {}


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True, eq=False)
class Context:
    """The checked inputs of one decision batch (what policies decide from).

    Attributes
    ----------
    users : array of str, shape (n,)
    candidates : array of str, shape (m,)
        Distinct item ids, shared by the batch.
    scores : array of float64, shape (n, m)
    user_features : array of float64, shape (n, du)
        ``du = 0`` when the caller gave none.
    item_features : array of float64, shape (m, di)
        ``di = 0`` when the caller gave none.
    """

    users: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    user_features: np.ndarray
    item_features: np.ndarray

    @classmethod
    def build(
        cls,
        users: object,
        candidates: object,
        scores: object = None,
        user_features: object = None,
        item_features: object = None,
        k: int = 1,
    ) -> Context:
        """Check and normalise raw inputs.

        Raises
        ------
        ValueError
            Naming the argument: ids that are not a sequence, repeated candidates, fewer
            candidates than ``k``, a shape that does not fit, NaN or infinite values.
        """
        users = _ids(users, "users")
        candidates = _ids(candidates, "candidates")
        n, m = len(users), len(candidates)
        if m < k:
            raise ValueError(
                f"k={k} is larger than the {m} candidates: a slate needs k distinct candidates"
            )
        unique, counts = np.unique(candidates, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"candidates must be distinct; {unique[counts > 1][0]!r} repeats")
        if scores is None:
            scores = np.zeros((n, m))
        scores = _finite(scores, "scores", (n, m), "(users, candidates)")
        user_features = (
            np.zeros((n, 0))
            if user_features is None
            else _finite(user_features, "user_features", (n, None), "(users, features)")
        )
        item_features = (
            np.zeros((m, 0))
            if item_features is None
            else _finite(item_features, "item_features", (m, None), "(candidates, features)")
        )
        return cls(users, candidates, scores, user_features, item_features)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    def rows(self, rows: slice) -> Context:
        """The same candidates for a block of the users."""
        return Context(
            self.users[rows], self.candidates, self.scores[rows], self.user_features[rows],
            self.item_features,
        )  # fmt: skip


def _ids(values: object, name: str) -> np.ndarray:
    if isinstance(values, str | bytes) or np.isscalar(values):
        raise ValueError(f"{name} must be a sequence of ids, not a single {type(values).__name__}")
    ids = as_ids(values, name)
    if np.ndim(values) > 1:
        raise ValueError(f"{name}: expected a 1-D sequence of ids, got shape {np.shape(values)}")
    return ids


def _finite(values: object, name: str, shape: tuple[int, int | None], axes: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers: {error}") from None
    rows, columns = shape
    if array.ndim != 2 or len(array) != rows or columns not in (None, array.shape[1]):
        expected = f"({rows}, {columns if columns is not None else 'd'})"
        raise ValueError(f"{name}: expected shape {expected} {axes}, got {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name} must be finite: {int(bad.sum())} NaN or infinite values")
    return array


def check_probability(name: str, value: object) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a number in [0, 1]."""
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_positive(name: str, value: object, allow_zero: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number > 0 (or >= 0)."""
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    bound = ">= 0" if allow_zero else "> 0"
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")


# ------------------------------------------------------------------------------ policies


class Policy(ABC):
    """Base class of every exploration policy. Subclasses implement ``_decide`` (and, if they
    learn, ``_update``; if their estimate of an item's value is not the model's score,
    ``_exploit_scores``).

    Parameters
    ----------
    k : int
        Slate length: positions per decision.
    uniform_share : float
        Share of decisions, drawn per decision, that show a uniform-random slate instead
        (flagged ``explored``): an unbiased slice for evaluation. Every propensity is the exact
        mixture ``uniform_share / m + (1 - uniform_share) * p_policy``.
    seed : int
        Seeds the policy's private generator: a policy is deterministic for a seed and a
        sequence of calls.

    Notes
    -----
    ``decide`` and ``marginals`` never change what the policy has learned; they do advance its
    random generator (a fresh draw per decision is what makes a policy random).
    """

    #: short name used in decisions, logs and specs ("greedy", "linucb", ...)
    name: ClassVar[str] = ""

    def __init__(self, k: int = 3, uniform_share: float = 0.0, seed: int = 0) -> None:
        check_positive_ints(k=k)
        check_probability("uniform_share", uniform_share)
        if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.k = k
        self.uniform_share = uniform_share
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not inspect.isabstract(cls) and cls.name:
            _POLICIES[cls.name] = cls

    # -------------------------------------------------------------- parameters

    def get_params(self) -> dict[str, object]:
        """The constructor arguments, read back from the attributes of the same name."""
        names = _parameter_names(type(self))
        return {
            name: value.item() if isinstance(value := getattr(self, name), np.generic) else value
            for name in names
        }

    def clone(self) -> Policy:
        """A new, untrained policy with the same parameters (and so the same seed)."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -------------------------------------------------------------- deciding

    def decide(
        self,
        users: object,
        candidates: object,
        scores: np.ndarray | None = None,
        user_features: np.ndarray | None = None,
        item_features: np.ndarray | None = None,
        model_version: str | None = None,
    ) -> Decisions:
        """One slate of ``k`` distinct candidates per user.

        Parameters
        ----------
        users : sequence of ids, shape (n,)
        candidates : sequence of distinct ids, shape (m,), m >= k
            The items the batch may be shown.
        scores : array of float, shape (n, m), optional
            Model scores (zeros when None).
        user_features : array of float, shape (n, du), optional
        item_features : array of float, shape (m, di), optional
        model_version : str, optional
            The version of the model that gave the scores, carried into the decisions.

        Returns
        -------
        Decisions

        Raises
        ------
        ValueError
            Naming the argument, for ids that are not a sequence, repeated candidates,
            ``k`` > m, a shape that does not fit, NaN or infinite values.
        """
        if model_version is not None and not isinstance(model_version, str):
            raise ValueError(f"model_version must be a str or None, got {model_version!r}")
        context = self._context(users, candidates, scores, user_features, item_features)
        n, k = len(context), self.k
        slates = np.zeros((n, k), dtype=np.int64)
        propensities = np.zeros((n, k))
        explored = np.zeros(n, dtype=bool)
        exploring = np.zeros((n, k), dtype=bool)
        features = []
        positions = np.arange(k)
        for rows in self._blocks(context):
            block = context.rows(rows)
            chosen, marginals = self._decide(block)
            if self.uniform_share > 0:
                flagged = self._rng.random(len(block)) < self.uniform_share
                chosen[flagged] = self._uniform_slates(int(flagged.sum()), block.n_candidates)
                explored[rows] = flagged
            # After the uniform slice: its slates are judged by the same rule. No random draw.
            exploring[rows] = outside_top_k(self._exploit_scores(block), chosen, k)
            marginals = self._mix(marginals)
            slates[rows] = chosen
            propensities[rows] = marginals[np.arange(len(block))[:, None], chosen, positions]
            features.append(self._features(block, chosen))
        return Decisions(
            users=context.users,
            slates=context.candidates[slates],
            propensities=propensities,
            policy=self.name,
            params=self.get_params(),
            model_version=model_version,
            explored=explored,
            features=self._stack_features(features, context),
            exploring=exploring,
        )

    def marginals(
        self,
        users: object,
        candidates: object,
        scores: np.ndarray | None = None,
        user_features: np.ndarray | None = None,
        item_features: np.ndarray | None = None,
    ) -> np.ndarray:
        """The full marginal distribution of the policy's slates (its action distribution).

        Takes the arguments of :meth:`decide`. Entry ``[u, i, j]`` is the probability that
        the policy, uniform-random slice included, shows candidate ``i`` at position ``j + 1``
        to user ``u``: each position sums to one over the candidates, and each candidate to at
        most one over the positions. Policies whose propensities are Monte-Carlo estimates
        draw fresh samples here.

        Returns
        -------
        marginals : array of float64, shape (n, m, k)
        """
        context = self._context(users, candidates, scores, user_features, item_features)
        out = np.zeros((len(context), context.n_candidates, self.k))
        for rows in self._blocks(context):
            out[rows] = self._mix(self._marginals(context.rows(rows)))
        return out

    def _context(
        self,
        users: object,
        candidates: object,
        scores: object,
        user_features: object,
        item_features: object,
    ) -> Context:
        return Context.build(users, candidates, scores, user_features, item_features, self.k)

    def _blocks(self, context: Context) -> Iterator[slice]:
        """Blocks of users small enough for the policy's intermediates."""
        size = max(1, BLOCK_ELEMENTS // max(1, self._row_elements(context)))
        for start in range(0, len(context), size):
            yield slice(start, start + size)

    def _row_elements(self, context: Context) -> int:
        """float64 elements ``_decide`` holds per user (sets the block size)."""
        return context.n_candidates * self.k

    def _mix(self, marginals: np.ndarray) -> np.ndarray:
        if self.uniform_share == 0:
            return marginals
        uniform = self.uniform_share / marginals.shape[1]
        return uniform + (1.0 - self.uniform_share) * marginals

    def _uniform_slates(self, n: int, m: int) -> np.ndarray:
        """``n`` uniform-random slates of ``k`` distinct indexes into ``m`` candidates."""
        return top_k(self._rng.random((n, m)), self.k)

    @abstractmethod
    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """The policy's own slates and its marginals, before the uniform-random slice.

        Returns
        -------
        slates : array of int64, shape (n, k)
            Indexes into ``context.candidates``, position 1 first.
        marginals : array of float64, shape (n, m, k)
        """

    def _marginals(self, context: Context) -> np.ndarray:
        """The marginals alone (default: those of ``_decide``)."""
        return self._decide(context)[1]

    def _exploit_scores(self, context: Context) -> np.ndarray:
        """The policy's estimate of each candidate's value without exploration; a shown item
        outside its top ``k`` (ties to the earlier candidate) is flagged ``exploring``.

        Must not draw from the policy's generator. Default: the model's scores.

        Returns
        -------
        estimates : array of float64, shape (n, m)
        """
        return context.scores

    def _features(self, context: Context, slates: np.ndarray) -> np.ndarray | None:
        """Features of the shown items, shape (n, k, d), for policies that learn from them."""
        return None

    def _stack_features(self, blocks: list, context: Context) -> np.ndarray | None:
        if blocks and blocks[0] is not None:
            return np.concatenate(blocks)
        if not blocks:  # no users: the feature width still follows the inputs
            return self._features(context, np.zeros((0, self.k), dtype=np.int64))
        return None

    # -------------------------------------------------------------- learning

    def update(self, decisions: Decisions, rewards: np.ndarray) -> None:
        """Learn from the rewards of decisions (the policy's own, or any with the features it
        needs).

        Parameters
        ----------
        decisions : Decisions, n >= 1 rows (an empty batch does nothing)
        rewards : array of float, shape (n, k)
            The reward of each shown item, NaN where its position was not observed.

        Raises
        ------
        ValueError
            Naming ``rewards`` if its shape does not fit or it holds infinities, or
            ``decisions`` if it lacks what the policy learns from.
        """
        if not isinstance(decisions, Decisions):
            raise TypeError(f"decisions must be Decisions, not {type(decisions).__name__}")
        try:
            rewards = np.asarray(rewards, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"rewards must be numbers: {error}") from None
        if rewards.shape != decisions.slates.shape:
            raise ValueError(
                f"rewards: expected shape {decisions.slates.shape} (decisions, positions), "
                f"got {rewards.shape}"
            )
        if np.isinf(rewards).any():
            raise ValueError("rewards must be finite, or NaN where a position was not observed")
        if len(decisions) and not np.isnan(rewards).all():
            self._update(decisions, rewards)

    def _update(self, decisions: Decisions, rewards: np.ndarray) -> None:  # noqa: B027 (an optional hook)
        """Learn from checked rewards (at least one observed). Default: nothing to learn."""


# ------------------------------------------------------------------------------ helpers


def top_k(values: np.ndarray, k: int, stable: bool = False) -> np.ndarray:
    """Indexes of the ``k`` largest values along the last axis, largest first.

    With ``stable=True`` ties go to the lower index (a full stable sort); otherwise a partial
    sort, for random draws where ties have probability zero.

    >>> top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), 2, stable=True).tolist()
    [[1, 3]]
    """
    if stable or k >= values.shape[-1]:
        return np.argsort(-values, axis=-1, kind="stable")[..., :k]
    part = np.argpartition(-values, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(values, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def outside_top_k(values: np.ndarray, chosen: np.ndarray, k: int) -> np.ndarray:
    """Whether each chosen index is outside the ``k`` largest values of its row, ties to the
    lower index: not in ``top_k(values, k, stable=True)``, found by counting the candidates
    ranked ahead of it instead of sorting.

    Parameters
    ----------
    values : array of float, shape (n, m)
    chosen : array of int, shape (n, c)
        Indexes into the rows of ``values``.
    k : int

    Returns
    -------
    outside : array of bool, shape (n, c)

    >>> outside_top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), np.array([[3, 2, 0]]), 2).tolist()
    [[False, True, True]]
    """
    own = np.take_along_axis(values, chosen, axis=1)[:, :, None]
    others = values[:, None, :]
    earlier = np.arange(values.shape[1]) < chosen[:, :, None]
    ahead = (others > own).sum(axis=2) + ((others == own) & earlier).sum(axis=2)
    return ahead >= k


def one_hot_marginals(slates: np.ndarray, m: int) -> np.ndarray:
    """The marginals of deterministic slates: 1 where an index sits at a position, else 0.

    Parameters
    ----------
    slates : array of int, shape (n, k)
    m : int

    Returns
    -------
    marginals : array of float64, shape (n, m, k)
    """
    n, k = slates.shape
    out = np.zeros((n, m, k))
    out[np.arange(n)[:, None], slates, np.arange(k)] = 1.0
    return out


def sampled_marginals(samples: np.ndarray, k: int, own: np.ndarray | None = None) -> np.ndarray:
    """Monte-Carlo marginals: how often each candidate is at each position among the top-k of
    sampled scores.

    Parameters
    ----------
    samples : array of float, shape (n, draws, m) or (draws, m)
        Sampled scores; a 2-D array is shared by every row (context-free policies).
    k : int
    own : array of int, shape (n, k), optional
        The slate each row was actually shown by its own draw; counted as one more draw, so
        a shown item never gets propensity 0.

    Returns
    -------
    marginals : array of float64, shape (n, m, k) (n = 1 for shared draws without ``own``)
    """
    shared = samples.ndim == 2
    if shared:
        samples = samples[None]
    rows, draws, m = samples.shape
    top = top_k(samples, k)  # (rows, draws, k)
    flat = (np.arange(rows)[:, None, None] * m + top) * k + np.arange(k)
    counts = np.bincount(flat.ravel(), minlength=rows * m * k).reshape(rows, m, k)
    counts = counts.astype(np.float64)
    if own is None:
        return counts / draws
    counts = np.broadcast_to(counts, (len(own), m, k)).copy() if shared else counts
    counts[np.arange(len(own))[:, None], own, np.arange(k)] += 1.0
    return counts / (draws + 1)


@functools.cache
def _parameter_names(cls: type) -> tuple[str, ...]:
    """A class's constructor parameters (``inspect.signature`` costs 8 µs: every decision)."""
    return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")


def registered_policies() -> dict[str, type[Policy]]:
    """Every concrete policy class, by its short name."""
    return dict(_POLICIES)


def policy_names() -> list[str]:
    """The short names of every policy, sorted."""
    return sorted(_POLICIES)
