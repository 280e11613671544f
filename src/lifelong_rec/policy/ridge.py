"""Ridge regressions per arm, grown on first sight, for the linear bandits (LinUCB and linear
Thompson sampling), and the feature vectors they learn from."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lifelong_rec.events import IdIndex
from lifelong_rec.policy.context import Context
from lifelong_rec.policy.decisions import Decisions

#: the arrays of :meth:`RidgeArms.state`
ARM_ARRAYS = ("ids", "dimension", "design", "design_inverse", "reward_sums")


def candidate_features(context: Context) -> np.ndarray:
    """The feature vector of every (user, candidate): ``[score, user features, item features,
    1]``.

    Returns
    -------
    features : array of float64, shape (n, m, d), ``d = 2 + du + di``
    """
    n, m = context.scores.shape
    return np.concatenate(
        [
            context.scores[:, :, None],
            np.broadcast_to(
                context.user_features[:, None, :], (n, m, context.user_features.shape[1])
            ),
            np.broadcast_to(
                context.item_features[None, :, :], (n, m, context.item_features.shape[1])
            ),
            np.ones((n, m, 1)),
        ],
        axis=2,
    )


def candidate_means(arms: RidgeArms, context: Context) -> np.ndarray:
    """The estimated reward of every (user, candidate): the ``mean`` of ``arms.predict`` on
    :func:`candidate_features` (equal up to rounding), without building those (n, m, d)
    features or the variances.

    Returns
    -------
    means : array of float64, shape (n, m)
    """
    du = context.user_features.shape[1]
    d = 2 + du + context.item_features.shape[1]
    theta = arms.coefficients(context.candidates, d)
    score, user, item, bias = np.split(theta, [1, 1 + du, d - 1], axis=1)
    item_part = np.einsum("md,md->m", context.item_features, item) + bias[:, 0]
    return context.scores * score[:, 0] + context.user_features @ user.T + item_part


def shown_features(context: Context, slates: np.ndarray) -> np.ndarray:
    """The feature vectors of the shown items, shape (n, k, d) (see :func:`candidate_features`)."""
    n, k = slates.shape
    rows = np.arange(n)[:, None]
    return np.concatenate(
        [
            context.scores[rows, slates][:, :, None],
            np.broadcast_to(
                context.user_features[:, None, :], (n, k, context.user_features.shape[1])
            ),
            context.item_features[slates],
            np.ones((n, k, 1)),
        ],
        axis=2,
    )


def observed(
    decisions: Decisions, rewards: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (item, features, reward) of every observed position, in row-major order.

    Raises
    ------
    ValueError
        Naming ``decisions``, if they carry no features.
    """
    if decisions.features is None:
        raise ValueError(
            f"decisions carry no features (made by {decisions.policy!r}): a linear policy learns "
            "from the features of the shown items; pass decisions made by a linear policy"
        )
    seen = ~np.isnan(rewards)
    return decisions.slates[seen], decisions.features[seen], rewards[seen]


class RidgeArms:
    """One ridge regression of reward on features per arm, and optionally a shared one.

    For arm ``a`` after observations ``(x, r)``: ``A_a = regularization * I + sum x x^T``
    (``design``), its inverse (``design_inverse``, kept by Sherman-Morrison updates) and
    ``b_a = sum r x`` (``reward_sums``); the estimate is ``theta_a = A_a^-1 b_a``.

    Hybrid (Li et al., WWW 2010, algorithm 2): the reward is ``x . (beta + theta_a)``, a
    shared ``beta`` for every arm plus a per-arm deviation, both ridge-penalised with the same
    strength. Here the shared features ``z`` are the arm features ``x`` themselves, so the
    paper's ``B_a = sum x z^T`` is ``A_a - regularization * I`` and the shared design reduces to
    ``A_0 = l I + sum_a (l I - l^2 A_a^-1)`` and ``b_0 = l sum_a A_a^-1 b_a`` (``l`` the
    regularization): exact, and computed from the per-arm state, with no large terms that
    cancel. Arms never observed contribute nothing.

    Arms are external item ids; unknown ones have the prior (``A = l I``, ``b = 0``).

    Parameters
    ----------
    regularization : float > 0
    hybrid : bool
    """

    def __init__(self, regularization: float = 1.0, hybrid: bool = False) -> None:
        self.regularization = regularization
        self.hybrid = hybrid
        self.ids = IdIndex()
        self.dimension: int | None = None  # set by the first update
        self.design = np.zeros((0, 0, 0))
        self.design_inverse = np.zeros((0, 0, 0))
        self.reward_sums = np.zeros((0, 0))
        self._shared: tuple[np.ndarray, np.ndarray] | None = None  # (A_0^-1, beta) cache

    def __len__(self) -> int:
        return len(self.ids)

    def state(self) -> dict[str, np.ndarray]:
        """The learned state as named arrays (shared with the arms: copy before changing).

        ``ids`` (a), ``dimension`` (0-d; -1 before the first update), ``design`` and
        ``design_inverse`` (a, d, d), ``reward_sums`` (a, d). The hybrid model's cache is left
        out: it is recomputed from these, to the same bits.
        """
        return {
            "ids": self.ids.to_array(),
            "dimension": np.array(-1 if self.dimension is None else self.dimension),
            "design": self.design,
            "design_inverse": self.design_inverse,
            "reward_sums": self.reward_sums,
        }

    def set_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Take the state of :meth:`state` (the arrays are kept, not copied).

        Raises
        ------
        KeyError
            Naming a missing array.
        ValueError
            If the arrays' shapes do not fit together.
        """
        ids = np.asarray(arrays["ids"], dtype=str)
        dimension = int(arrays["dimension"])
        design = np.asarray(arrays["design"], dtype=np.float64)
        design_inverse = np.asarray(arrays["design_inverse"], dtype=np.float64)
        reward_sums = np.asarray(arrays["reward_sums"], dtype=np.float64)
        a = len(ids)
        d = max(dimension, 0)
        if ids.ndim != 1 or len(np.unique(ids)) != a:
            raise ValueError("ridge arms: ids must be distinct, shape (a,)")
        if dimension < 0 and a:
            raise ValueError(f"ridge arms: {a} arms but no dimension")
        for name, array, shape in (
            ("design", design, (a, d, d)),
            ("design_inverse", design_inverse, (a, d, d)),
            ("reward_sums", reward_sums, (a, d)),
        ):
            if array.shape != shape:
                raise ValueError(f"ridge arms: {name} has shape {array.shape}, expected {shape}")
        self.ids = IdIndex(ids)
        self.dimension = None if dimension < 0 else dimension
        self.design, self.design_inverse, self.reward_sums = design, design_inverse, reward_sums
        self._shared = None  # computed from the arms just replaced: stale

    def check_dimension(self, d: int) -> None:
        """Raise ValueError unless ``d`` features fit what the arms learned from."""
        if self.dimension is not None and d != self.dimension:
            raise ValueError(
                f"user_features and item_features: the policy learned from {self.dimension} "
                f"features ([score, user features, item features, 1]), these give {d}"
            )

    # -------------------------------------------------------------- estimates

    def predict(self, items: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Estimated reward and its variance factor for each (user, candidate).

        Parameters
        ----------
        items : array of str, shape (m,)
        features : array of float64, shape (n, m, d)

        Returns
        -------
        mean : array of float64, shape (n, m)
            ``x . theta_a`` (hybrid: ``x . (beta + theta_a)``).
        variance : array of float64, shape (n, m)
            ``x^T A_a^-1 x`` (hybrid: Li et al.'s ``s_{t,a}``); the estimate's variance is
            this times the noise variance.
        """
        d = features.shape[2]
        inverse, sums = self._arm_state(items, d)
        by_arm = features.transpose(1, 0, 2)  # (m, n, d)
        solved = np.matmul(by_arm, inverse)  # rows of x^T A^-1 = (A^-1 x)^T, A symmetric
        variance = np.einsum("mnd,mnd->nm", solved, by_arm)
        if not self.hybrid:
            return np.einsum("mnd,md->nm", solved, sums), np.maximum(variance, 0.0)
        shared_inverse, beta = self._shared_model(d)
        l = self.regularization  # noqa: E741 (the paper's lambda)
        mean = np.einsum("mnd,md->nm", solved, sums + l * beta)
        variance += l**2 * np.einsum("mnd,mnd->nm", solved @ shared_inverse, solved)
        return mean, np.maximum(variance, 0.0)

    def coefficients(self, items: np.ndarray, d: int) -> np.ndarray:
        """Each item's ``theta_a = A_a^-1 b_a`` (hybrid: ``A_a^-1 (b_a + l beta)``), so that
        the ``mean`` of :meth:`predict` is ``x . theta_a``: each arm solved once.

        Returns
        -------
        coefficients : array of float64, shape (m, d)
        """
        inverse, sums = self._arm_state(items, d)
        if self.hybrid:
            sums = sums + self.regularization * self._shared_model(d)[1]
        return np.einsum("mde,me->md", inverse, sums)

    def _arm_state(self, items: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
        """``A_a^-1`` and ``b_a`` of each item's arm (the prior for unknown items), (m, d, d)
        and (m, d)."""
        self.check_dimension(d)
        m = len(items)
        inverse = np.broadcast_to(np.eye(d) / self.regularization, (m, d, d)).copy()
        sums = np.zeros((m, d))
        arms = self.ids.lookup(items)
        known = arms >= 0
        if known.any():
            inverse[known] = self.design_inverse[arms[known]]
            sums[known] = self.reward_sums[arms[known]]
        return inverse, sums

    def _shared_model(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(A_0^-1, beta) of the hybrid model; cached until the next update."""
        if self._shared is None or len(self._shared[1]) != d:  # (d varies before any update)
            l = self.regularization  # noqa: E741
            shared_design = l * np.eye(d)
            shared_sums = np.zeros(d)
            if len(self.ids):
                shared_design += l * len(self.ids) * np.eye(d) - l**2 * self.design_inverse.sum(0)
                shared_sums = l * np.einsum("ade,ae->d", self.design_inverse, self.reward_sums)
            shared_inverse = np.linalg.inv(shared_design)
            self._shared = (shared_inverse, shared_inverse @ shared_sums)
        return self._shared

    # -------------------------------------------------------------- learning

    def update(self, items: np.ndarray, features: np.ndarray, rewards: np.ndarray) -> None:
        """Add observations: for each row, arm ``items[i]`` saw ``features[i]`` and earned
        ``rewards[i]``. Vectorised over the arms; an arm seen more than ``d`` times in the
        batch has its inverse recomputed directly instead of by ``d`` rank-one updates.

        Parameters
        ----------
        items : array of str, shape (c,)
        features : array of float64, shape (c, d)
        rewards : array of float64, shape (c,)
        """
        c, d = features.shape
        if c == 0:
            return
        self.check_dimension(d)
        if self.dimension is None:
            self.dimension = d
            self.design = np.zeros((0, d, d))
            self.design_inverse = np.zeros((0, d, d))
            self.reward_sums = np.zeros((0, d))
        arms = self.ids.add(items)
        self._grow(len(self.ids))
        self._shared = None  # the shared model depends on every arm's state: stale now
        touched, outer = _grouped(arms, features[:, :, None] * features[:, None, :])
        self.design[touched] += outer
        self.reward_sums[touched] += _grouped(arms, rewards[:, None] * features)[1]
        _update_inverses(self.design_inverse, self.design, arms, features)

    def _grow(self, n: int) -> None:
        extra = n - len(self.design)
        if extra <= 0:
            return
        d, l = self.design.shape[1], self.regularization  # noqa: E741 (design: (arms, d, d))
        self.design = np.concatenate([self.design, np.broadcast_to(l * np.eye(d), (extra, d, d))])
        self.design_inverse = np.concatenate(
            [self.design_inverse, np.broadcast_to(np.eye(d) / l, (extra, d, d))]
        )
        self.reward_sums = np.concatenate([self.reward_sums, np.zeros((extra, d))])


def _grouped(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys, sorted, and the sum of ``values`` rows for each."""
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(values[order], starts, axis=0)


def _update_inverses(
    inverse: np.ndarray, design: np.ndarray, arms: np.ndarray, features: np.ndarray
) -> None:
    """Bring ``inverse[a]`` to ``design[a]^-1`` after the rows ``features`` were added to the
    designs of ``arms``, in place.

    Sherman-Morrison, ``(A + x x^T)^-1 = A^-1 - (A^-1 x)(A^-1 x)^T / (1 + x^T A^-1 x)``, one
    round per repeat: round ``r`` applies the ``r``-th new row of every arm at once (distinct
    arms, so no conflicts). Arms with more than ``d`` new rows are inverted directly.
    """
    d = features.shape[1]
    order = np.argsort(arms, kind="stable")
    arms, features = arms[order], features[order]
    starts = np.flatnonzero(np.concatenate([[True], arms[1:] != arms[:-1]]))
    counts = np.diff(np.append(starts, len(arms)))
    repeat = np.arange(len(arms)) - np.repeat(starts, counts)  # the row's rank within its arm
    heavy = counts > d
    if heavy.any():
        inverse[arms[starts][heavy]] = np.linalg.inv(design[arms[starts][heavy]])
    light = ~np.repeat(heavy, counts)
    for rank in range(int(counts[~heavy].max(initial=0))):
        chosen = light & (repeat == rank)
        a, x = arms[chosen], features[chosen]
        current = inverse[a]
        solved = np.einsum("sij,sj->si", current, x)
        scale = 1.0 / (1.0 + np.einsum("si,si->s", solved, x))
        inverse[a] = current - scale[:, None, None] * solved[:, :, None] * solved[:, None, :]
    touched = arms[starts]
    inverse[touched] = 0.5 * (inverse[touched] + inverse[touched].transpose(0, 2, 1))
