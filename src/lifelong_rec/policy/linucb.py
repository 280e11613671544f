"""LinUCB: optimism under uncertainty with a ridge regression per item (Li et al., WWW 2010)."""

from __future__ import annotations

import numpy as np

from lifelong_rec.policy.base import Policy
from lifelong_rec.policy.context import Context, check_positive
from lifelong_rec.policy.decisions import Decisions
from lifelong_rec.policy.ridge import (
    ARM_ARRAYS,
    RidgeArms,
    candidate_features,
    candidate_means,
    observed,
    shown_features,
)
from lifelong_rec.policy.slates import one_hot_marginals, top_k

VARIANTS = ("disjoint", "hybrid")


class LinUCB(Policy):
    """The top ``k`` candidates by upper confidence bound ``x . theta + alpha * sqrt(s)``.

    The features of a (user, candidate) are ``x = [model score, user features, item features,
    1]``. ``variant="disjoint"`` keeps one ridge model per item arm (``s = x^T A_a^-1 x``);
    ``"hybrid"`` adds a model shared by every arm, so what one item teaches carries over to
    the others and to new ones (see :class:`~lifelong_rec.policy.ridge.RidgeArms`). Arms grow
    on first sight in ``update``; ``A^-1`` is kept by Sherman-Morrison updates, vectorised over
    the arms of a batch.

    Deterministic (ties to the earlier candidate): propensity 1 for the shown items, 0 for the
    others (before any ``uniform_share``). A shown item outside the top ``k`` by the ridge
    estimate ``x . theta`` alone, shown for its bonus, is flagged ``exploring``.

    Parameters
    ----------
    k, uniform_share, seed
        See :class:`Policy`.
    alpha : float >= 0
        Width of the confidence bound; 0 is greedy on the ridge estimate.
    regularization : float > 0
        Ridge strength: every arm's design starts at ``regularization * I``.
    variant : {"disjoint", "hybrid"}

    Attributes
    ----------
    arms_ : RidgeArms
        The learned per-arm (and shared) ridge models.
    """

    name = "linucb"

    def __init__(
        self,
        k: int = 3,
        uniform_share: float = 0.0,
        seed: int = 0,
        alpha: float = 1.0,
        regularization: float = 1.0,
        variant: str = "disjoint",
    ) -> None:
        super().__init__(k=k, uniform_share=uniform_share, seed=seed)
        check_positive("alpha", alpha, allow_zero=True)
        check_positive("regularization", regularization)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.alpha = alpha
        self.regularization = regularization
        self.variant = variant
        self.arms_ = RidgeArms(regularization, hybrid=variant == "hybrid")

    def upper_bounds(
        self,
        users: object,
        candidates: object,
        scores: np.ndarray | None = None,
        user_features: np.ndarray | None = None,
        item_features: np.ndarray | None = None,
    ) -> np.ndarray:
        """The upper confidence bound of every (user, candidate), shape (n, m). Pure.

        Takes the arguments of :meth:`decide`.
        """
        context = self._context(users, candidates, scores, user_features, item_features)
        out = np.zeros((len(context), context.n_candidates))
        for rows in self._blocks(context):
            out[rows] = self._upper_bounds(context.rows(rows))
        return out

    def _upper_bounds(self, context: Context) -> np.ndarray:
        mean, variance = self.arms_.predict(context.candidates, candidate_features(context))
        return mean + self.alpha * np.sqrt(variance)

    def _row_elements(self, context: Context) -> int:
        d = 2 + context.user_features.shape[1] + context.item_features.shape[1]
        return context.n_candidates * (context.k + 4 * d)

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        slates = top_k(context.masked(self._upper_bounds(context)), context.k, stable=True)
        return slates, one_hot_marginals(slates, context.n_candidates)

    def _exploit_scores(self, context: Context) -> np.ndarray:
        """The ridge estimate alone, without the confidence bonus."""
        return candidate_means(self.arms_, context)

    def _features(self, context: Context, slates: np.ndarray) -> np.ndarray:
        return shown_features(context, slates)

    def _update(self, decisions: Decisions, rewards: np.ndarray) -> None:
        self.arms_.update(*observed(decisions, rewards))

    def _get_state(self) -> dict[str, np.ndarray]:
        return {f"arms.{name}": array for name, array in self.arms_.state().items()}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.arms_.set_state({name: arrays[f"arms.{name}"] for name in ARM_ARRAYS})
