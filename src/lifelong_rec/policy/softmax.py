"""Softmax exploration: Plackett-Luce slates from the model's scores, with exact propensities
for the first three positions."""

from __future__ import annotations

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.policy.base import Policy
from lifelong_rec.policy.context import Context, check_positive
from lifelong_rec.policy.slates import allowed_columns, top_k

#: positions whose marginals have a closed form here (position 3 costs O(m^2) per user)
EXACT_POSITIONS = 3


class Softmax(Policy):
    """A slate drawn without replacement from ``softmax(scores / temperature)``.

    The slate is a Plackett-Luce sample, drawn as the top ``k`` of the scaled scores plus
    independent Gumbel noise (Gumbel-top-k). Its marginal propensities are:

    - position 1: exact, the softmax itself;
    - position 2: exact, in closed form, O(m) per user;
    - position 3: exact, in closed form, O(m^2) per user, when ``m <= exact_max_candidates``;
    - beyond (positions 4 and up, or position 3 with more candidates): Monte-Carlo,
      Rao-Blackwellised. Over ``propensity_draws`` Gumbel-top-k draws, plus the decision's own
      draw, it averages the exact probability that the item comes at that position given the
      items the draw put before it: each position still sums to one over the candidates, the
      error is lower than that of counting (about half, for position 3), and a shown item
      never gets propensity 0. The ``marginals`` method has no own draw and uses the
      ``propensity_draws`` draws alone.

    The closed forms are computed on the scores sorted per user, with each conditional
    normaliser shifted by the largest remaining score, so that they stay exact when a low
    temperature puts nearly all the mass on a few items (no cancellation, no underflow).

    Parameters
    ----------
    k, uniform_share, seed
        See :class:`Policy`.
    temperature : float > 0
        Lower is greedier.
    propensity_draws : int
        Monte-Carlo draws per user for the positions without an exact form.
    exact_max_candidates : int
        The largest candidate count with exact position-3 marginals.
    """

    name = "softmax"

    def __init__(
        self,
        k: int = 3,
        uniform_share: float = 0.0,
        seed: int = 0,
        temperature: float = 1.0,
        propensity_draws: int = 1_000,
        exact_max_candidates: int = 200,
    ) -> None:
        super().__init__(k=k, uniform_share=uniform_share, seed=seed)
        check_positive("temperature", temperature)
        check_positive_ints(
            propensity_draws=propensity_draws, exact_max_candidates=exact_max_candidates
        )
        self.temperature = temperature
        self.propensity_draws = propensity_draws
        self.exact_max_candidates = exact_max_candidates

    def exact_positions(self, m: int, k: int | None = None) -> int:
        """How many leading positions have exact propensities among ``m`` candidates, for
        slates of ``k`` (the constructor's when None)."""
        closed = EXACT_POSITIONS if m <= self.exact_max_candidates else EXACT_POSITIONS - 1
        return min(self.k if k is None else k, closed)

    def _row_elements(self, context: Context) -> int:
        m, k = context.n_candidates, context.k  # with a mask, at most that (see _decide_allowed)
        exact = self.exact_positions(m, k)
        return m * (k + (3 * m if exact >= 3 else 0)) + (
            4 * m * self.propensity_draws if exact < k else 0
        )

    def _decide(self, context: Context) -> tuple[np.ndarray, np.ndarray]:
        if context.allowed is not None:
            return self._decide_allowed(context, marginals_only=False)
        logits = context.scores / self.temperature
        slates = top_k(logits + self._rng.gumbel(size=logits.shape), context.k)
        return slates, self._plackett_luce(logits, context.k, own=slates)

    def _marginals(self, context: Context) -> np.ndarray:
        if context.allowed is not None:
            return self._decide_allowed(context, marginals_only=True)[1]
        return self._plackett_luce(context.scores / self.temperature, context.k, own=None)

    def _decide_allowed(
        self, context: Context, marginals_only: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decide on each user's allowed candidates alone, gathered into (n, width) arrays
        (width: the most any user may be shown), so that the cost follows the users' own
        candidate counts, not ``m``; the padding has logit -inf (never drawn, probability 0).
        """
        assert context.allowed is not None
        n, m, k = len(context), context.n_candidates, context.k
        columns, valid = allowed_columns(context.allowed)
        scores = np.take_along_axis(context.scores, columns, axis=1)
        logits = np.where(valid, scores / self.temperature, -np.inf)
        slates = None
        if not marginals_only:
            slates = top_k(logits + self._rng.gumbel(size=logits.shape), k)
        gathered = self._plackett_luce(logits, k, own=slates)
        marginals = np.zeros((n, m, k))
        marginals[np.arange(n)[:, None], columns] = gathered
        chosen = (
            np.zeros((n, k), np.int64) if slates is None else columns[np.arange(n)[:, None], slates]
        )
        return chosen, marginals

    def _plackett_luce(self, logits: np.ndarray, k: int, own: np.ndarray | None) -> np.ndarray:
        n, m = logits.shape
        exact = self.exact_positions(m, k)
        out = np.empty((n, m, k))
        out[:, :, :exact] = plackett_luce_marginals(logits, exact)
        if exact < k:
            out[:, :, exact:] = self._sampled_positions(logits, exact, k, own)
        return out

    def _sampled_positions(
        self, logits: np.ndarray, first: int, k: int, own: np.ndarray | None
    ) -> np.ndarray:
        """Rao-Blackwellised Monte-Carlo marginals of positions ``first + 1`` to ``k``."""
        n, m = logits.shape
        draws = logits[:, None, :] + self._rng.gumbel(size=(n, self.propensity_draws, m))
        prefixes = top_k(draws, k - 1)  # (n, draws, k - 1): the items before each position
        if own is not None:
            prefixes = np.concatenate([prefixes, own[:, None, : k - 1]], axis=1)
        remaining = np.broadcast_to(logits[:, None, :], (n, prefixes.shape[1], m)).copy()
        rows, samples = np.ogrid[:n, : prefixes.shape[1]]
        out = np.empty((n, m, k - first))
        for position in range(k):
            if position >= first:
                shifted = np.exp(remaining - remaining.max(axis=2, keepdims=True))
                next_item = shifted / shifted.sum(axis=2, keepdims=True)
                out[:, :, position - first] = next_item.mean(axis=1)
            if position < k - 1:
                remaining[rows, samples, prefixes[:, :, position]] = -np.inf
        return out


def plackett_luce_marginals(logits: np.ndarray, positions: int) -> np.ndarray:
    """Exact marginals of the first positions of a Plackett-Luce slate.

    Item ``i`` is drawn first with probability ``exp(l_i) / sum_j exp(l_j)``, and each later
    position draws from the items left, in the same way.

    Parameters
    ----------
    logits : array of float, shape (n, m)
        ``-inf`` for an item that may not be drawn (each row keeps at least ``positions``
        finite logits).
    positions : int, 1 to 3, at most m

    Returns
    -------
    marginals : array of float64, shape (n, m, positions)
        ``[u, i, j]``: the probability that item ``i`` is at position ``j + 1``.

    Examples
    --------
    >>> p = plackett_luce_marginals(np.log([[2.0, 1.0, 1.0]]), 3)
    >>> np.round(p[0] * 12, 6).tolist()  # in twelfths
    [[6.0, 4.0, 2.0], [3.0, 4.0, 5.0], [3.0, 4.0, 5.0]]
    """
    m = logits.shape[1]
    if not 1 <= positions <= min(EXACT_POSITIONS, m):
        raise ValueError(f"positions must be in 1..{min(EXACT_POSITIONS, m)}, got {positions}")
    # Sorted, largest first: every normaliser below is shifted by the largest logit it holds.
    order = np.argsort(-logits, axis=1, kind="stable")
    ordered = np.take_along_axis(logits, order, axis=1)
    e0 = np.exp(ordered - ordered[:, :1])  # shifted by the largest: e0[:, 0] = 1
    s0 = e0.sum(axis=1, keepdims=True)
    first = e0 / s0
    out = [first]
    if positions >= 2:
        # Given item a >= 1 first, the rest sums to (s0 - e0[a]) >= 1 in units of exp(l_0);
        # given item 0 first, to s1 in units of exp(l_1) (e1: shifted by the second largest).
        e1 = _shifted(ordered, 1)
        s1 = e1.sum(axis=1, keepdims=True)
        after = np.zeros_like(first)  # P(a first) / (rest after a), for a >= 1
        after[:, 1:] = first[:, 1:] / (s0 - e0[:, 1:])
        total = after.sum(axis=1, keepdims=True)
        second = e0 * np.maximum(total - after, 0.0) + first[:, :1] * e1 / s1
        out.append(second)
    if positions >= 3:
        e2 = _shifted(ordered, 2)
        s2 = e2.sum(axis=1, keepdims=True)
        # First two (a, b), both >= 1: P(a, b) = after[a] * e0[b]; the rest then sums to
        # s0 - e0[a] - e0[b] >= 1. Sum over pairs without c: the total, minus c's row and column.
        rest = s0[:, :, None] - e0[:, :, None] - e0[:, None, :]
        valid = np.ones((m, m), dtype=bool)
        valid[0, :] = valid[:, 0] = False
        np.fill_diagonal(valid, False)
        pairs = np.where(valid, after[:, :, None] * e0[:, None, :] / np.where(valid, rest, 1.0), 0)
        without = pairs.sum(axis=(1, 2))[:, None] - pairs.sum(axis=2) - pairs.sum(axis=1)
        third = e0 * np.maximum(without, 0.0)
        # Item 0 and an x >= 2 first, in either order: P = first[0] e1[x] / s1 + after[x];
        # the rest sums to s1 - e1[x] >= 1 in units of exp(l_1).
        with_top = np.zeros_like(first)
        with_top[:, 2:] = (first[:, :1] * e1[:, 2:] / s1 + after[:, 2:]) / (s1 - e1[:, 2:])
        third += e1 * (with_top.sum(axis=1, keepdims=True) - with_top)
        # Items 0 and 1 first, in either order; the rest sums to s2 in units of exp(l_2).
        third += (first[:, :1] / s1 + after[:, 1:2]) / s2 * e2
        out.append(third)
    ordered_marginals = np.stack(out, axis=2)
    inverse = np.argsort(order, axis=1)
    return np.take_along_axis(ordered_marginals, inverse[:, :, None], axis=1)


def _shifted(ordered: np.ndarray, top: int) -> np.ndarray:
    """exp(l - l_top) for the items from rank ``top`` on (each <= 1), 0 for those above."""
    shifted = np.exp(np.minimum(ordered - ordered[:, top : top + 1], 0.0))
    shifted[:, :top] = 0.0
    return shifted
