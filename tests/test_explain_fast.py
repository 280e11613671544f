"""The fast explanation paths give what the straightforward ones gave.

Each test pins a rewritten step to the algorithm it replaced, written out here as the
reference: ranking the reasons (one pass with the popularity part, instead of ranking the
history reasons and merging the popularity part after) and MF's solves (one Cholesky
factorisation per user instead of numpy's LU).
"""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.models import BPR, MatrixFactorization, Popularity, Wording
from lifelong_rec.models.explanation import Attribution, solve_positive, top_reasons


@pytest.fixture(scope="module")
def shop():
    return synthetic_stream(n_users=120, n_items=100, n_events=6_000, seed=5)


# ------------------------------------------------------------------------------ ranking


def _reference_reasons(attribution: Attribution, popularity: np.ndarray, top: int):
    """The ranking as Recommender._explanations did it before: the top history reasons of
    each item (argpartition, then a stable sort), then the popularity part merged in and
    everything sorted again."""
    history, weights = attribution.history, attribution.weights
    width = min(top, history.shape[1])
    strength = np.where((history >= 0)[:, :, None], weights, -np.inf)
    best = np.argpartition(-strength, width - 1, axis=1)[:, :width]
    chosen = np.take_along_axis(strength, best, axis=1)
    ranked = np.argsort(-chosen, axis=1, kind="stable")
    best = np.take_along_axis(best, ranked, axis=1)
    chosen = np.take_along_axis(chosen, ranked, axis=1)
    found = np.take_along_axis(history[:, :, None], best, axis=1)
    none = ~(chosen > 0)
    items = np.where(none, -1, found).transpose(0, 2, 1)
    values = np.where(none, 0.0, chosen).transpose(0, 2, 1)
    items = np.concatenate([items, np.where(popularity > 0, -2, -1)[:, :, None]], axis=2)
    values = np.concatenate([values, popularity[:, :, None]], axis=2)
    order = np.argsort(-np.where(items == -1, -np.inf, values), axis=2, kind="stable")[:, :, :top]
    items = np.take_along_axis(items, order, axis=2)
    values = np.where(items == -1, 0.0, np.take_along_axis(values, order, axis=2))
    return items, values


@pytest.mark.parametrize(("n", "h", "top"), [(1, 30, 3), (3, 5, 8), (150, 12, 3), (70, 200, 5)])
def test_one_pass_ranking_matches_ranking_then_merging(n, h, top):
    rng = np.random.default_rng(n + h)
    k = 6
    lengths = rng.integers(0, h + 1, n)
    history = np.where(np.arange(h) < lengths[:, None], rng.integers(0, 500, (n, h)), -1)
    weights = rng.standard_normal((n, h, k)) * (history >= 0)[:, :, None]
    popularity = np.where(rng.random((n, k)) < 0.3, 0.0, rng.standard_normal((n, k)))
    attribution = Attribution("test", history, weights, np.full((n, k), "history", dtype=object))
    expected_items, expected_weights = _reference_reasons(attribution, popularity, top)
    items, chosen = top_reasons(attribution, top, popularity)
    width = items.shape[2]
    assert (expected_items[:, :, width:] == -1).all()  # nothing is lost past the width
    np.testing.assert_array_equal(items, expected_items[:, :, :width])
    np.testing.assert_array_equal(chosen, expected_weights[:, :, :width])


def test_the_popularity_part_ranks_among_the_history_reasons(shop):
    model = BPR(epochs=3, seed=0).fit(shop.events)
    user = shop.events.user[0]
    for explanation in model.recommend([user], k=10, explain=True).explanations[0]:
        weights = [reason.weight for reason in explanation.reasons]
        assert weights == sorted(weights, reverse=True) and min(weights) > 0
        assert explanation.score == pytest.approx(sum(weights) + explanation.rest, abs=1e-6)
    cold = Popularity().fit(shop.events).recommend(["nobody"], k=3, explain=True)
    for explanation in cold.explanations[0]:
        assert [r.kind for r in explanation.reasons] == ["popularity"]
        assert explanation.reasons[0].weight == pytest.approx(explanation.score)


def test_popularity_sentences_are_worded_in_one_lookup_as_one_by_one():
    wording = Wording(synthetic_stream(n_users=5, n_items=30, n_events=50, seed=1).catalog)
    items = np.array([*wording.catalog.item[:12].tolist(), "not-in-the-catalogue"])
    half_lives = [7.0 if i % 2 else None for i in range(len(items))]
    assert wording.popularities(items, half_lives) == [
        wording.popularity(item, half_life)
        for item, half_life in zip(items, half_lives, strict=True)
    ]


# ------------------------------------------------------------------------------ MF


def test_cholesky_solves_match_numpy_and_fall_back_on_an_indefinite_system():
    rng = np.random.default_rng(0)
    factors = rng.standard_normal((5, 8, 8))
    systems = factors @ factors.transpose(0, 2, 1) + np.eye(8)
    systems[3] = np.diag([1.0, -2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # not positive definite
    right = rng.standard_normal((5, 8, 4))
    np.testing.assert_allclose(
        solve_positive(systems, right), np.linalg.solve(systems, right), rtol=1e-10, atol=1e-12
    )


def test_mf_split_matches_the_lu_solve_it_replaced(shop):
    model = MatrixFactorization(factors=16, iterations=4, seed=0).fit(shop.events)
    users = model.users_.lookup(np.unique(shop.events.user)[:30])
    items = np.random.default_rng(0).integers(0, len(model.items_), (len(users), 5))
    _, weights = model._split(users, items)
    _, confidence, chosen = model._fold_in_parts(users)
    directions = np.linalg.solve(
        model._fold_in_systems(confidence, chosen),
        np.transpose(model.item_factors_[items], (0, 2, 1)).astype(np.float64),
    )
    np.testing.assert_allclose(
        weights, confidence[:, :, None] * (chosen @ directions), rtol=1e-9, atol=1e-12
    )
