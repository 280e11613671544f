"""The checked inputs of a decision batch (:class:`Context`) and the checks of policy
parameters, shared by every policy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import ArrayLike

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import as_ids


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
    k : int
        The slate length of this call (1 <= k <= m): policies read it here, never from
        ``self.k``, which is only the default.
    allowed : array of bool, shape (n, m), or None
        Which candidates each user may be shown, at least ``k`` per user; None when every
        user may be shown every candidate (a mask that allows everything is stored as None,
        so that it decides exactly as no mask does). A policy decides for each user as it
        would over that user's allowed candidates alone.
    """

    users: np.ndarray
    candidates: np.ndarray
    scores: np.ndarray
    user_features: np.ndarray
    item_features: np.ndarray
    k: int
    allowed: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        users: object,
        candidates: object,
        scores: object = None,
        user_features: object = None,
        item_features: object = None,
        k: int = 1,
        allowed: object = None,
    ) -> Context:
        """Check and normalise raw inputs.

        Raises
        ------
        ValueError
            Naming the argument: ``k`` that is not a positive integer, ids that are not a
            sequence, repeated candidates, fewer candidates than ``k``, a shape that does not
            fit, NaN or infinite values, an ``allowed`` mask that is not boolean or leaves a
            user fewer than ``k`` candidates.
        """
        check_positive_ints(k=k)
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
        mask = None if allowed is None else _allowed(allowed, (n, m), int(k))
        return cls(users, candidates, scores, user_features, item_features, int(k), mask)

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_candidates(self) -> int:
        return len(self.candidates)

    def rows(self, rows: slice) -> Context:
        """The same candidates for a block of the users."""
        allowed = None if self.allowed is None else _or_none(self.allowed[rows])
        return Context(
            self.users[rows], self.candidates, self.scores[rows], self.user_features[rows],
            self.item_features, self.k, allowed,
        )  # fmt: skip

    def allowed_counts(self) -> np.ndarray | int:
        """How many candidates each user may be shown: shape (n, 1), or ``m`` for everyone
        when there is no mask (so that ``1 / allowed_counts()`` broadcasts either way)."""
        if self.allowed is None:
            return self.n_candidates
        return self.allowed.sum(axis=1, keepdims=True)

    def masked(self, values: np.ndarray) -> np.ndarray:
        """``values`` (shape (n, m)) with the candidates a user may not be shown at -inf, so
        that a top-k or a softmax never picks them; ``values`` itself without a mask."""
        if self.allowed is None:
            return values
        return np.where(self.allowed, values, -np.inf)


def _allowed(values: object, shape: tuple[int, int], k: int) -> np.ndarray | None:
    """The checked mask, or None when it allows every candidate to every user."""
    array = np.asarray(values)
    if array.dtype != np.bool_:
        raise ValueError(f"allowed must be an array of bool, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"allowed: expected shape {shape} (users, candidates), got {array.shape}")
    counts = array.sum(axis=1)
    if len(counts) and counts.min() < k:
        row = int(np.argmin(counts))
        raise ValueError(
            f"allowed leaves user {row} {int(counts[row])} candidates, fewer than k={k}"
        )
    return _or_none(array)


def _or_none(allowed: np.ndarray) -> np.ndarray | None:
    return None if allowed.all() else allowed


def _ids(values: object, name: str) -> np.ndarray:
    if isinstance(values, str | bytes) or np.isscalar(values):
        raise ValueError(f"{name} must be a sequence of ids, not a single {type(values).__name__}")
    ids = as_ids(cast(Iterable[object], values), name)  # as_ids names what it cannot read
    shape = np.shape(cast(ArrayLike, values))
    if len(shape) > 1:
        raise ValueError(f"{name}: expected a 1-D sequence of ids, got shape {shape}")
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
