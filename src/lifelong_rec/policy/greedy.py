"""Greedy, uniform-random and epsilon-greedy slates: the reference policies, which learn
nothing themselves and follow the model's scores."""

from __future__ import annotations

import numpy as np

from lifelong_rec.policy.base import Policy
from lifelong_rec.policy.context import Context, check_probability
from lifelong_rec.policy.slates import one_hot_marginals, top_k, uniform_probabilities


class Greedy(Policy):
    """The top ``k`` candidates by model score, ties to the earlier candidate.

    Deterministic: the shown items have propensity 1, all others 0 (before any
    ``uniform_share``).

    Examples
    --------
    >>> import numpy as np
    >>> decisions = Greedy(k=2).decide(["u1"], ["a", "b", "c"], np.array([[0.1, 0.9, 0.5]]))
    >>> decisions.slates.tolist(), decisions.propensities.tolist()
    ([['b', 'c']], [[1.0, 1.0]])
    """

    name = "greedy"

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        slates = top_k(context.masked(context.scores), context.k, stable=True)
        return slates, one_hot_marginals(slates, context.n_candidates)


class UniformRandom(Policy):
    """A uniform-random slate of ``k`` distinct candidates: propensity ``1/m`` everywhere
    (``m``: the user's allowed candidates; 0 for the others).

    The behaviour policy of a randomised log (OBD's "random" campaign logs).
    """

    name = "random"

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        n, m, k = len(context), context.n_candidates, context.k
        slates = self._uniform_slates(n, m, k, context.allowed)
        if context.allowed is None:
            return slates, np.full((n, m, k), 1.0 / m)
        marginals = np.repeat(uniform_probabilities(context.allowed)[:, :, None], k, axis=2)
        return slates, marginals


class EpsilonGreedy(Policy):
    """Per decision, with probability ``epsilon`` a uniform-random slate, else the greedy one.

    The exact marginal propensity is ``(1 - epsilon) * [greedy shows the item there] +
    epsilon / m`` (``m``: the user's allowed candidates; 0 for the others). Exploration
    slates from ``epsilon`` are part of the policy and are not flagged ``explored`` (only
    ``uniform_share`` slates are).

    Parameters
    ----------
    k, uniform_share, seed
        See :class:`Policy`.
    epsilon : float in [0, 1]
    """

    name = "epsilon"

    def __init__(
        self, k: int = 3, uniform_share: float = 0.0, seed: int = 0, epsilon: float = 0.1
    ) -> None:
        super().__init__(k=k, uniform_share=uniform_share, seed=seed)
        check_probability("epsilon", epsilon)
        self.epsilon = epsilon

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        n, m, k = len(context), context.n_candidates, context.k
        allowed = context.allowed
        greedy = top_k(context.masked(context.scores), k, stable=True)
        uniform = 1.0 / m if allowed is None else uniform_probabilities(allowed)[:, :, None]
        marginals = (1.0 - self.epsilon) * one_hot_marginals(greedy, m) + self.epsilon * uniform
        if self.epsilon == 0:  # no draw: epsilon=0 is Greedy, random stream included
            return greedy, marginals
        slates = greedy.copy()
        exploring = self._rng.random(n) < self.epsilon
        slates[exploring] = self._uniform_slates(
            int(exploring.sum()), m, k, None if allowed is None else allowed[exploring]
        )
        return slates, marginals
