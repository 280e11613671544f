"""Decisions with propensities: what a policy returns, what it learns from, and what is logged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from lifelong_rec.events import EventBatch, EventWeights, Kind


@dataclass(frozen=True, eq=False)
class Decision:
    """One user's decision: a row of :class:`Decisions`.

    Attributes
    ----------
    user : str
    slate : array of str, shape (k,)
        Item ids by position, position 1 first.
    propensities : array of float64, shape (k,)
        Marginal probability that the policy shows each item at its position.
    policy : str
    params : dict
    model_version : str or None
    explored : bool
        Whether the slate came from the uniform-random slice.
    features : array of float64, shape (k, d), or None
    exploring : array of bool, shape (k,)
        Whether the item at each position was placed by exploration (see
        :class:`Decisions`).
    """

    user: str
    slate: np.ndarray
    propensities: np.ndarray
    policy: str
    params: dict
    model_version: str | None
    explored: bool
    features: np.ndarray | None
    exploring: np.ndarray


@dataclass(frozen=True, eq=False)
class Decisions:
    """A batch of decisions as parallel columns, one row per user. Immutable.

    Attributes
    ----------
    users : array of str, shape (n,)
    slates : array of str, shape (n, k)
        Item ids by position, position 1 first.
    propensities : array of float64, shape (n, k)
        The marginal probability that the policy shows that item at that position, given the
        user's context and candidates (the uniform-random slice included).
    policy : str
        The policy's name, e.g. ``"linucb"``.
    params : dict
        The policy's parameters (JSON-serialisable).
    model_version : str or None
        The version of the model whose scores the policy used.
    explored : array of bool, shape (n,)
        Whether the slate came from the uniform-random slice.
    features : array of float64, shape (n, k, d), or None
        The feature vector of each shown item as the policy saw it (what ``update`` learns
        from); None for policies that use no features.
    exploring : array of bool, shape (n, k)
        Whether the item at each position was placed by exploration: it is not among the
        ``k`` candidates the policy ranks highest by its exploitation estimate (the model's
        scores for greedy, epsilon, softmax and random; the ridge or posterior mean for
        LinUCB and Thompson), ties to the earlier candidate. Uniform-slice slates are judged
        by the same rule. None (the default) means no position is exploring.
    """

    users: np.ndarray
    slates: np.ndarray
    propensities: np.ndarray
    policy: str
    params: dict
    model_version: str | None
    explored: np.ndarray
    features: np.ndarray | None = None
    exploring: np.ndarray | None = None

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise the fields once, here
        users = _frozen(np.asarray(self.users, dtype=str), "users")
        n = len(users)
        if users.ndim != 1:
            raise ValueError(f"users: expected shape (n,), got {users.shape}")
        slates = _frozen(np.asarray(self.slates, dtype=str), "slates")
        if slates.ndim != 2 or len(slates) != n:
            raise ValueError(f"slates: expected shape ({n}, k), got {slates.shape}")
        propensities = _frozen(np.asarray(self.propensities, dtype=np.float64), "propensities")
        if propensities.shape != slates.shape:
            raise ValueError(
                f"propensities: expected shape {slates.shape}, got {propensities.shape}"
            )
        explored = _frozen(np.asarray(self.explored, dtype=bool), "explored")
        if explored.shape != (n,):
            raise ValueError(f"explored: expected shape ({n},), got {explored.shape}")
        features = self.features
        if features is not None:
            features = _frozen(np.asarray(features, dtype=np.float64), "features")
            if features.ndim != 3 or features.shape[:2] != slates.shape:
                raise ValueError(
                    f"features: expected shape ({n}, {slates.shape[1]}, d), got {features.shape}"
                )
        if self.exploring is None:
            exploring = _frozen(np.zeros(slates.shape, dtype=bool), "exploring")
        else:
            exploring = _frozen(np.asarray(self.exploring, dtype=bool), "exploring")
            if exploring.shape != slates.shape:
                raise ValueError(
                    f"exploring: expected shape {slates.shape} (decisions, positions), "
                    f"got {exploring.shape}"
                )
        fix(self, "users", users)
        fix(self, "slates", slates)
        fix(self, "propensities", propensities)
        fix(self, "explored", explored)
        fix(self, "features", features)
        fix(self, "exploring", exploring)
        fix(self, "params", dict(self.params))

    def __len__(self) -> int:
        return len(self.users)

    def __repr__(self) -> str:
        return f"Decisions(policy={self.policy!r}, n={len(self)}, k={self.slates.shape[1]})"

    @property
    def _exploring(self) -> np.ndarray:
        """``exploring``, typed as what ``__post_init__`` made it: never None."""
        return cast(np.ndarray, self.exploring)

    @property
    def k(self) -> int:
        """Slate length."""
        return self.slates.shape[1]

    def __getitem__(self, row: int) -> Decision:
        if not isinstance(row, int | np.integer) or isinstance(row, bool):
            raise TypeError(f"row must be an integer, not {type(row).__name__}; use take()")
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} is out of range for {len(self)} decisions")
        return Decision(
            user=str(self.users[row]),
            slate=self.slates[row],
            propensities=self.propensities[row],
            policy=self.policy,
            params=self.params,
            model_version=self.model_version,
            explored=bool(self.explored[row]),
            features=None if self.features is None else self.features[row],
            exploring=self._exploring[row],
        )

    @classmethod
    def concat(cls, parts: Sequence[Decisions]) -> Decisions:
        """The rows of ``parts`` one after the other (slates of one length, by one policy);
        ``params`` and ``model_version`` are those of the first part, and ``features`` are
        kept only when every part has them.

        Raises
        ------
        ValueError
            For no parts, or parts whose policies or slate lengths differ.
        """
        if not parts:
            raise ValueError("parts: nothing to concatenate")
        first = parts[0]
        if {(d.policy, d.k) for d in parts} != {(first.policy, first.k)}:
            raise ValueError("parts: decisions of different policies or slate lengths")
        features = [d.features for d in parts]
        return cls(
            users=np.concatenate([d.users for d in parts]),
            slates=np.concatenate([d.slates for d in parts]),
            propensities=np.concatenate([d.propensities for d in parts]),
            policy=first.policy,
            params=first.params,
            model_version=first.model_version,
            explored=np.concatenate([d.explored for d in parts]),
            features=None if any(f is None for f in features) else np.concatenate(features),  # type: ignore[arg-type]
            exploring=np.concatenate([d._exploring for d in parts]),
        )

    def take(self, rows: np.ndarray | slice) -> Decisions:
        """The decisions selected by an index array, boolean mask or slice."""
        return Decisions(
            users=self.users[rows],
            slates=self.slates[rows],
            propensities=self.propensities[rows],
            policy=self.policy,
            params=self.params,
            model_version=self.model_version,
            explored=self.explored[rows],
            features=None if self.features is None else self.features[rows],
            exploring=self._exploring[rows],
        )

    def to_events(
        self, timestamps: float | np.ndarray, rewards: np.ndarray | None = None
    ) -> EventBatch:
        """One impression event per shown (user, item, position), decision by decision.

        Parameters
        ----------
        timestamps : float, or array of float, shape (n,) or (n, k)
            Unix seconds: one for all, one per decision, or one per shown item.
        rewards : array of float, shape (n, k), optional
            Observed rewards, NaN where a position was not observed. Rows with a reward > 0
            become kind ``click``; the reward is the event's value (NaN without rewards).

        Returns
        -------
        EventBatch
            ``n * k`` rows with the policy, model version (``""`` for None) and propensity
            columns, and context ``position`` (1 = first), ``explored`` (1.0 for the
            uniform-random slice, else 0.0) and ``exploring`` (1.0 where exploration placed
            the item, else 0.0; see :attr:`exploring`).

        Raises
        ------
        ValueError
            Naming ``timestamps`` or ``rewards``, if its shape does not fit.
        """
        n, k = self.slates.shape
        times = np.asarray(timestamps, dtype=np.float64)
        if times.ndim == 0 or times.shape == (n,):
            times = np.broadcast_to(times.reshape(-1, 1) if times.ndim else times, (n, k))
        elif times.shape != (n, k):
            raise ValueError(
                f"timestamps: expected a number or shape ({n},) or ({n}, {k}), got {times.shape}"
            )
        if rewards is None:
            values = np.full((n, k), np.nan)
        else:
            values = np.asarray(rewards, dtype=np.float64)
            if values.shape != (n, k):
                raise ValueError(f"rewards: expected shape ({n}, {k}), got {values.shape}")
        kinds = np.where(values > 0, Kind.CLICK, Kind.IMPRESSION).astype(np.uint8).ravel()
        return EventBatch(
            user=np.repeat(self.users, k),
            item=self.slates.ravel(),
            timestamp=times.ravel(),
            kind=kinds,
            value=values.ravel(),
            weight=EventWeights().weights(kinds, values.ravel()),
            context={
                "position": np.tile(np.arange(1, k + 1, dtype=np.float64), n),
                "explored": np.repeat(self.explored.astype(np.float64), k),
                "exploring": self._exploring.astype(np.float64).ravel(),
            },
            policy=np.full(n * k, self.policy),
            model_version=np.full(n * k, self.model_version or ""),
            propensity=self.propensities.ravel(),
        )


def _frozen(array: np.ndarray, name: str) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array
