"""Thompson sampling: Beta-Bernoulli per item (context-free), and linear-Gaussian per item
(contextual), with Monte-Carlo propensities."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import IdIndex, as_ids
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
from lifelong_rec.policy.slates import sampled_marginals, top_k


class BernoulliThompson(Policy):
    """Context-free Thompson sampling: a Beta posterior on each item's click rate.

    Each item starts at ``Beta(alpha, beta)``; a reward ``r`` in [0, 1] adds ``r`` to its
    successes and ``1 - r`` to its failures. A slate is the top ``k`` of one posterior draw
    per candidate, drawn afresh for every decision; scores and features are not used. A shown
    item outside the top ``k`` by posterior mean (ties to the earlier candidate, so with no
    data the first ``k`` candidates) is flagged ``exploring``.

    Propensities are Monte-Carlo estimates, as the Open Bandit Dataset's authors compute
    those of their BTS policy: the share of ``propensity_draws`` posterior draws, shared by
    the batch (the posterior does not depend on the user), plus the decision's own draw (so
    a shown item never gets propensity 0), that put the item at that position. The
    ``marginals`` method has no own draw and uses the shared draws alone.

    Parameters
    ----------
    k, uniform_share, seed
        See :class:`Policy`.
    alpha, beta : float > 0
        The prior's parameters.
    propensity_draws : int

    Attributes
    ----------
    items_ : IdIndex
        The items seen in updates.
    successes_, failures_ : array of float64, shape (items,)
        Summed rewards and summed ``1 - reward`` per item (clicks and non-clicks).
    """

    name = "thompson"

    def __init__(
        self,
        k: int = 3,
        uniform_share: float = 0.0,
        seed: int = 0,
        alpha: float = 1.0,
        beta: float = 1.0,
        propensity_draws: int = 1_000,
    ) -> None:
        super().__init__(k=k, uniform_share=uniform_share, seed=seed)
        check_positive("alpha", alpha)
        check_positive("beta", beta)
        check_positive_ints(propensity_draws=propensity_draws)
        self.alpha = alpha
        self.beta = beta
        self.propensity_draws = propensity_draws
        self.items_ = IdIndex()
        self.successes_ = np.zeros(0)
        self.failures_ = np.zeros(0)

    def posterior(self, items: Iterable[object] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Beta posterior's parameters for each item (the prior for unknown ones).

        Returns
        -------
        alpha, beta : arrays of float64, shape (m,)
        """
        index = self.items_.lookup(as_ids(items, "items"))
        known = index >= 0
        alpha = np.full(len(index), float(self.alpha))
        beta = np.full(len(index), float(self.beta))
        alpha[known] += self.successes_[index[known]]
        beta[known] += self.failures_[index[known]]
        return alpha, beta

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        alpha, beta = self.posterior(context.candidates)
        own = context.masked(self._rng.beta(alpha, beta, size=context.scores.shape))
        slates = top_k(own, context.k)
        shared = self._rng.beta(alpha, beta, size=(self.propensity_draws, len(alpha)))
        return slates, sampled_marginals(shared, context.k, own=slates, allowed=context.allowed)

    def _marginals(self, context: Context) -> np.ndarray:
        alpha, beta = self.posterior(context.candidates)
        shared = self._rng.beta(alpha, beta, size=(self.propensity_draws, len(alpha)))
        marginals = sampled_marginals(shared, context.k, allowed=context.allowed)
        return np.broadcast_to(marginals, (len(context), *marginals.shape[1:])).copy()

    def _row_elements(self, context: Context) -> int:
        if context.allowed is None:  # the draws are shared by the batch
            return super()._row_elements(context)
        # Draws masked per distinct mask: up to one (draws, m) array per user.
        return context.n_candidates * (context.k + 3 * self.propensity_draws)

    def _exploit_scores(self, context: Context) -> np.ndarray:
        """The posterior mean click rate ``alpha / (alpha + beta)``, the same for every user."""
        alpha, beta = self.posterior(context.candidates)
        return np.broadcast_to(alpha / (alpha + beta), context.scores.shape)

    def _update(self, decisions: Decisions, rewards: np.ndarray) -> None:
        seen = ~np.isnan(rewards)
        earned = rewards[seen]
        if ((earned < 0) | (earned > 1)).any():
            raise ValueError("rewards must be in [0, 1] for Beta-Bernoulli Thompson sampling")
        index = self.items_.add(decisions.slates[seen])
        size = len(self.items_)
        self.successes_ = _grown(self.successes_, size) + np.bincount(index, earned, size)
        self.failures_ = _grown(self.failures_, size) + np.bincount(index, 1.0 - earned, size)

    def _get_state(self) -> dict[str, np.ndarray]:
        return {
            "items": self.items_.to_array(),
            "successes": self.successes_,
            "failures": self.failures_,
        }

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        items = np.asarray(arrays["items"], dtype=str)
        successes = np.asarray(arrays["successes"], dtype=np.float64)
        failures = np.asarray(arrays["failures"], dtype=np.float64)
        if items.ndim != 1 or len(np.unique(items)) != len(items):
            raise ValueError("items must be distinct ids, shape (items,)")
        for name, counts in (("successes", successes), ("failures", failures)):
            if counts.shape != items.shape:
                raise ValueError(f"{name} has shape {counts.shape}, expected {items.shape}")
        self.items_ = IdIndex(items)
        self.successes_, self.failures_ = successes, failures


class LinearThompson(Policy):
    """Contextual Thompson sampling with one linear-Gaussian posterior per item arm.

    Arms and features are those of disjoint :class:`~lifelong_rec.policy.linucb.LinUCB`:
    ``x = [model score, user features, item features, 1]``, a ridge model per arm with design
    ``A_a`` and reward sums ``b_a``. Each decision draws ``theta_a ~ N(A_a^-1 b_a,
    v^2 A_a^-1)`` per candidate arm (``v = posterior_scale``) and shows the top ``k`` of
    ``x . theta_a``. Since the arms' draws are independent, ``x . theta_a`` is drawn directly
    from its exact law ``N(x . A_a^-1 b_a, v^2 x^T A_a^-1 x)``: the same slates in
    distribution, without sampling ``d``-dimensional vectors. A shown item outside the top
    ``k`` by posterior mean ``x . A_a^-1 b_a`` is flagged ``exploring``.

    Propensities are Monte-Carlo estimates per user: the share of ``propensity_draws``
    posterior draws, plus the decision's own draw (so a shown item never gets propensity 0),
    that put the item at that position. The ``marginals`` method has no own draw.

    Parameters
    ----------
    k, uniform_share, seed
        See :class:`Policy`.
    posterior_scale : float > 0
        ``v``: scales the posterior's spread (more exploration when larger).
    regularization : float > 0
        Ridge strength (the prior precision).
    propensity_draws : int

    Attributes
    ----------
    arms_ : RidgeArms
    """

    name = "lin-thompson"

    def __init__(
        self,
        k: int = 3,
        uniform_share: float = 0.0,
        seed: int = 0,
        posterior_scale: float = 1.0,
        regularization: float = 1.0,
        propensity_draws: int = 200,
    ) -> None:
        super().__init__(k=k, uniform_share=uniform_share, seed=seed)
        check_positive("posterior_scale", posterior_scale)
        check_positive("regularization", regularization)
        check_positive_ints(propensity_draws=propensity_draws)
        self.posterior_scale = posterior_scale
        self.regularization = regularization
        self.propensity_draws = propensity_draws
        self.arms_ = RidgeArms(regularization, hybrid=False)

    def _row_elements(self, context: Context) -> int:
        d = 2 + context.user_features.shape[1] + context.item_features.shape[1]
        return context.n_candidates * (context.k + 4 * d + 3 * self.propensity_draws)

    def _posterior(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of ``x . theta_a``, each (n, m)."""
        mean, variance = self.arms_.predict(context.candidates, candidate_features(context))
        return mean, self.posterior_scale * np.sqrt(variance)

    def _draws(self, mean: np.ndarray, spread: np.ndarray) -> np.ndarray:
        noise = self._rng.standard_normal((len(mean), self.propensity_draws, mean.shape[1]))
        return mean[:, None, :] + spread[:, None, :] * noise

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        mean, spread = self._posterior(context)
        own = context.masked(mean + spread * self._rng.standard_normal(mean.shape))
        slates = top_k(own, context.k)
        draws = self._draws(mean, spread)
        return slates, sampled_marginals(draws, context.k, own=slates, allowed=context.allowed)

    def _marginals(self, context: Context) -> np.ndarray:
        draws = self._draws(*self._posterior(context))
        return sampled_marginals(draws, context.k, allowed=context.allowed)

    def _exploit_scores(self, context: Context) -> np.ndarray:
        """The posterior mean ``x . A_a^-1 b_a``, without sampled noise."""
        return candidate_means(self.arms_, context)

    def _features(self, context: Context, slates: np.ndarray) -> np.ndarray:
        return shown_features(context, slates)

    def _update(self, decisions: Decisions, rewards: np.ndarray) -> None:
        self.arms_.update(*observed(decisions, rewards))

    def _get_state(self) -> dict[str, np.ndarray]:
        return {f"arms.{name}": array for name, array in self.arms_.state().items()}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.arms_.set_state({name: arrays[f"arms.{name}"] for name in ARM_ARRAYS})


def _grown(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` padded with zeros to ``size`` entries (new items start at nothing seen)."""
    return np.concatenate([values, np.zeros(size - len(values))])
