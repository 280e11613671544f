"""The contract every exploration policy keeps.

A policy turns a batch of users, the candidate items they share and the model's scores into
one slate per user. Each decision carries, per shown item, its marginal propensity: the
probability that the policy would show that item at that position, given the user's context
and the candidates. Everything served can so be evaluated off-policy later (P3).

The base class does what every policy shares: input checks, the uniform-random slice of
traffic (``uniform_share``) and its exact mixture of propensities, flagging the positions that
exploration filled (``Decisions.exploring``), processing the users in blocks so that the
(users, candidates, positions) intermediates stay small, and saving, loading and copying the
learned state (subclasses give their arrays through ``_get_state`` and ``_set_state``).

The slate length ``k`` is the constructor's default; ``decide`` and ``marginals`` take a
per-call ``k`` that travels in the :class:`Context`, so one policy object can serve requests
of different lengths at once without any of them changing ``policy.k``.

Likewise an optional ``allowed`` mask lets one call serve users whose candidates differ (each
user's own pool, as :func:`~lifelong_rec.policy.serve` builds them): every user is decided for
as if alone over their allowed candidates, and a candidate they may not be shown has
propensity 0 everywhere. Without a mask, nothing changes, random draws included.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.policy.context import Context, check_probability
from lifelong_rec.policy.decisions import Decisions
from lifelong_rec.policy.persistence import SavedPolicy, read_policy, write_policy
from lifelong_rec.policy.slates import outside_top_k, top_k, uniform_probabilities

#: float64 elements a policy may hold per block of users (32 MiB): bounds peak memory.
BLOCK_ELEMENTS = 1 << 22

_POLICIES: dict[str, type[Policy]] = {}


# ------------------------------------------------------------------------------ policies


class Policy(ABC):
    """Base class of every exploration policy. Subclasses implement ``_decide`` (and, if they
    learn, ``_update``, ``_get_state`` and ``_set_state``; if their estimate of an item's value
    is not the model's score, ``_exploit_scores``).

    Parameters
    ----------
    k : int
        Default slate length: positions per decision, when a call gives no ``k``.
    uniform_share : float
        Share of decisions, drawn per decision, that show a uniform-random slate instead
        (flagged ``explored``): an unbiased slice for evaluation. Every propensity is the exact
        mixture ``uniform_share / m + (1 - uniform_share) * p_policy`` (``m``: the user's
        allowed candidates).
    seed : int
        Seeds the policy's private generator: a policy is deterministic for a seed and a
        sequence of calls.

    Notes
    -----
    ``decide`` and ``marginals`` never change what the policy has learned, nor ``k``; they do
    advance its random generator (a fresh draw per decision is what makes a policy random).
    A policy is not thread-safe: callers that share one hold a lock around ``decide``,
    ``update`` and :meth:`copy`, and may save the copy outside the lock.
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

    def __init_subclass__(cls, register: bool = True, **kwargs: object) -> None:
        """Registers a concrete policy under its ``name`` for ``parse_policy``, unless
        ``register=False`` (a policy that cannot be built from a spec alone)."""
        super().__init_subclass__(**kwargs)
        if register and not inspect.isabstract(cls) and cls.name:
            _POLICIES[cls.name] = cls

    # -------------------------------------------------------------- parameters

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, read back from the attributes of the same name."""
        names = _parameter_names(type(self))
        return {
            name: value.item() if isinstance(value := getattr(self, name), np.generic) else value
            for name in names
        }

    def clone(self) -> Self:
        """A new, untrained policy with the same parameters (and so the same seed)."""
        return type(self)(**self.get_params())

    def copy(self) -> Self:
        """An independent policy in the same state: parameters, learned arrays and random
        generator, so that it decides exactly as this one would from here on.

        ``copy.deepcopy`` gives the same. Learned arrays are copied; parameters are passed
        to the constructor as they are (an object parameter, such as a simulator, is shared).
        To save a shared policy without holding its lock while writing: copy it under the
        lock, then save the copy.
        """
        twin = self.clone()
        twin._set_state({name: np.array(array) for name, array in self._get_state().items()})
        twin._rng.bit_generator.state = self._rng.bit_generator.state
        return twin

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self.copy()  # one path for both: what save and load keep, nothing else

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    # -------------------------------------------------------------- saving

    def save(self, path: str | Path) -> None:
        """Write the policy to the folder ``path``: ``policy.json`` (format version, name,
        parameters and the random generator's state) and ``arrays.npz`` (learned state),
        without pickle. :meth:`load` gives back a policy that decides as this one would.

        Raises
        ------
        ValueError
            If the class is not registered under its ``name`` (it could not be loaded), or a
            parameter is not a JSON value.
        """
        if registered_policies().get(self.name) is not type(self):
            raise ValueError(
                f"{type(self).__name__} is not a registered policy (name {self.name!r}): "
                "it could not be loaded, so it is not saved"
            )
        saved = SavedPolicy(
            name=self.name,
            params=self.get_params(),
            rng_state=dict(self._rng.bit_generator.state),
            arrays=self._get_state(),
        )
        write_policy(path, saved)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a policy written by :meth:`save`: of any registered class when called on
        ``Policy``, of this class (or a subclass) when called on one.

        Raises
        ------
        ValueError
            Naming the file and the problem: a missing file, an unsupported format version,
            an unknown policy name or one of another class, parameters the policy rejects,
            missing, extra or inconsistent arrays, a random state that does not fit.
        """
        saved = read_policy(path)
        state_file = Path(path) / "policy.json"
        policy_class = registered_policies().get(saved.name)
        if policy_class is None:
            raise ValueError(
                f"{state_file}: unknown policy {saved.name!r}; known: {', '.join(policy_names())}"
            )
        if not issubclass(policy_class, cls):
            raise ValueError(
                f"{state_file}: holds a {saved.name!r} policy ({policy_class.__name__}), "
                f"not a {cls.__name__}"
            )
        try:
            policy = policy_class(**saved.params)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{state_file}: params: {error}") from None
        arrays_file = Path(path) / "arrays.npz"
        try:
            policy._set_state(dict(saved.arrays))
        except KeyError as error:
            raise ValueError(f"{arrays_file}: array {error} is missing") from None
        except ValueError as error:
            raise ValueError(f"{arrays_file}: {error}") from None
        extra = set(saved.arrays) - set(policy._get_state())
        if extra:
            raise ValueError(f"{arrays_file}: unexpected arrays {sorted(extra)}")
        try:
            policy._rng.bit_generator.state = saved.rng_state
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(
                f"{state_file}: rng_state does not fit the generator: {error}"
            ) from None
        return policy

    def _get_state(self) -> dict[str, np.ndarray]:
        """The learned state as named arrays (no object arrays); may share memory with the
        policy (callers copy). Default: nothing learned."""
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027 (an optional hook)
        """Take the learned state from ``_get_state``'s arrays of an equal policy.

        Raises
        ------
        KeyError
            Naming a missing array.
        ValueError
            If the arrays do not fit together.
        """

    # -------------------------------------------------------------- deciding

    def decide(
        self,
        users: object,
        candidates: object,
        scores: np.ndarray | None = None,
        user_features: np.ndarray | None = None,
        item_features: np.ndarray | None = None,
        model_version: str | None = None,
        *,
        k: int | None = None,
        allowed: np.ndarray | None = None,
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
        k : int, optional
            The slate length of this call; None for the constructor's ``k``. ``self.k`` is
            left as it is, and the decisions' ``params["k"]`` is this call's.
        allowed : array of bool, shape (n, m), optional
            Which candidates each user may be shown (at least ``k`` each); None for all.
            Each user's slate and propensities are then those of a call for that user alone
            over their allowed candidates; the others get propensity 0.

        Returns
        -------
        Decisions

        Raises
        ------
        ValueError
            Naming the argument, for ids that are not a sequence, repeated candidates, ``k``
            that is not a positive integer or is > m, a shape that does not fit, NaN or
            infinite values, an ``allowed`` mask that is not boolean or allows a user fewer
            than ``k`` candidates.
        """
        if model_version is not None and not isinstance(model_version, str):
            raise ValueError(f"model_version must be a str or None, got {model_version!r}")
        context = self._context(users, candidates, scores, user_features, item_features, k, allowed)
        n, k = len(context), context.k
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
                chosen[flagged] = self._uniform_slates(
                    int(flagged.sum()),
                    block.n_candidates,
                    k,
                    None if block.allowed is None else block.allowed[flagged],
                )
                explored[rows] = flagged
            if block.allowed is not None and not np.take_along_axis(block.allowed, chosen, 1).all():
                raise RuntimeError(f"{type(self).__name__} showed a candidate outside allowed")
            # After the uniform slice: its slates are judged by the same rule. No random draw.
            exploring[rows] = outside_top_k(self._exploit_scores(block), chosen, k, block.allowed)
            marginals = self._mix(marginals, block.allowed)
            slates[rows] = chosen
            propensities[rows] = marginals[np.arange(len(block))[:, None], chosen, positions]
            features.append(self._features(block, chosen))
        return Decisions(
            users=context.users,
            slates=context.candidates[slates],
            propensities=propensities,
            policy=self.name,
            params=self.get_params() | {"k": k},
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
        *,
        k: int | None = None,
        allowed: np.ndarray | None = None,
    ) -> np.ndarray:
        """The full marginal distribution of the policy's slates (its action distribution).

        Takes the arguments of :meth:`decide`. Entry ``[u, i, j]`` is the probability that
        the policy, uniform-random slice included, shows candidate ``i`` at position ``j + 1``
        to user ``u``: each position sums to one over the candidates, and each candidate to at
        most one over the positions; a candidate outside ``allowed`` gets 0. Policies whose
        propensities are Monte-Carlo estimates draw fresh samples here.

        Returns
        -------
        marginals : array of float64, shape (n, m, k)
            ``k`` of this call (the constructor's when None).
        """
        context = self._context(users, candidates, scores, user_features, item_features, k, allowed)
        out = np.zeros((len(context), context.n_candidates, context.k))
        for rows in self._blocks(context):
            block = context.rows(rows)
            out[rows] = self._mix(self._marginals(block), block.allowed)
        return out

    def _context(
        self,
        users: object,
        candidates: object,
        scores: object,
        user_features: object,
        item_features: object,
        k: int | None = None,
        allowed: object = None,
    ) -> Context:
        k = self.k if k is None else k
        return Context.build(users, candidates, scores, user_features, item_features, k, allowed)

    def _blocks(self, context: Context) -> Iterator[slice]:
        """Blocks of users small enough for the policy's intermediates."""
        size = max(1, BLOCK_ELEMENTS // max(1, self._row_elements(context)))
        for start in range(0, len(context), size):
            yield slice(start, start + size)

    def _row_elements(self, context: Context) -> int:
        """float64 elements ``_decide`` holds per user (sets the block size)."""
        return context.n_candidates * context.k

    def _mix(self, marginals: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """The policy's marginals mixed with the uniform slice's, uniform over each user's
        allowed candidates (all ``m`` when ``allowed`` is None)."""
        if self.uniform_share == 0:
            return marginals
        if allowed is None:
            uniform = self.uniform_share / marginals.shape[1]
            return uniform + (1.0 - self.uniform_share) * marginals
        share = self.uniform_share * uniform_probabilities(allowed)[:, :, None]
        return share + (1.0 - self.uniform_share) * marginals

    def _uniform_slates(
        self, n: int, m: int, k: int, allowed: np.ndarray | None = None
    ) -> np.ndarray:
        """``n`` uniform-random slates of ``k`` distinct indexes into ``m`` candidates, among
        each row's ``allowed`` ones (shape (n, m)) when given; the same draws either way."""
        draws = self._rng.random((n, m))
        return top_k(draws if allowed is None else np.where(allowed, draws, -np.inf), k)

    @abstractmethod
    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """The policy's own slates and its marginals, before the uniform-random slice.

        Returns
        -------
        slates : array of int64, shape (n, context.k)
            Indexes into ``context.candidates``, position 1 first.
        marginals : array of float64, shape (n, m, context.k)
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

    def _stack_features(
        self, blocks: list[np.ndarray | None], context: Context
    ) -> np.ndarray | None:
        if blocks and blocks[0] is not None:
            return np.concatenate(cast(list[np.ndarray], blocks))
        if not blocks:  # no users: the feature width still follows the inputs
            return self._features(context, np.zeros((0, context.k), dtype=np.int64))
        return None

    # -------------------------------------------------------------- learning

    def update(self, decisions: Decisions, rewards: np.ndarray) -> None:
        """Learn from the rewards of decisions (the policy's own, or any with the features it
        needs), of any slate length.

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


@functools.cache
def _parameter_names(cls: type) -> tuple[str, ...]:
    """A class's constructor parameters (``inspect.signature`` costs 8 µs: every decision)."""
    return tuple(inspect.signature(cls).parameters)


def registered_policies() -> dict[str, type[Policy]]:
    """Every concrete policy class, by its short name."""
    return dict(_POLICIES)


def policy_names() -> list[str]:
    """The short names of every policy, sorted."""
    return sorted(_POLICIES)
