"""The fast explanation paths give what the straightforward ones gave.

Each test pins a rewritten step to the algorithm it replaced, written out here as the
reference: ranking the reasons (one compiled pass with the popularity part, instead of
ranking the history reasons and merging the popularity part after), MF's split (one compiled
pass per user with a Cholesky factorisation, instead of numpy's LU), remembered sentences, and
the transformer's integrated gradients
(last block for the last position only, one vmapped backward pass for all items, the
emptied history's hidden state cached by length).
"""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.models import BPR, MatrixFactorization, Popularity, Wording
from lifelong_rec.models import explanation as explanation_module
from lifelong_rec.models.explanation import Attribution, solve_positive, top_reasons
from lifelong_rec.models.kernels import DPOSV, DSYRK, fold_in_split

torch = pytest.importorskip("torch")
from lifelong_rec.models.sequential import SequentialTransformer, _gauss_legendre  # noqa: E402


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


@pytest.mark.parametrize(
    ("n", "h", "top"), [(1, 30, 3), (3, 5, 8), (150, 12, 3), (70, 200, 5), (100, 0, 3)]
)
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
    # more users than one block, no history columns (a bug of the one-pass ranking)
    users = [*np.unique(shop.events.user)[:80].tolist(), "nobody"]
    popular = Popularity().fit(shop.events).recommend(users, k=3, explain=True)
    for explanations in popular.explanations:
        for explanation in explanations:
            assert [r.kind for r in explanation.reasons] == ["popularity"]
            assert explanation.reasons[0].weight == pytest.approx(explanation.score)


def test_bpr_similarities_are_the_products_of_history_and_item_factors(shop):
    model = BPR(epochs=2, seed=0).fit(shop.events)
    users = model.users_.lookup(np.unique(shop.events.user)[:20])
    items = np.random.default_rng(2).integers(0, len(model.items_), (len(users), 4))
    attribution = model._attribute(users, items)
    factors = model.item_factors_.astype(np.float64)
    for row, user in enumerate(users):
        read = model.history_.row_block(np.array([user])).indices
        np.testing.assert_array_equal(attribution.history[row, : len(read)], read)
        assert (attribution.history[row, len(read) :] == -1).all()
        np.testing.assert_allclose(
            attribution.weights[row, : len(read)], factors[read] @ factors[items[row]].T,
            rtol=1e-12, atol=1e-12,
        )  # fmt: skip
        assert (attribution.weights[row, len(read) :] == 0).all()


def test_popularity_sentences_are_worded_in_one_lookup_as_one_by_one():
    wording = Wording(synthetic_stream(n_users=5, n_items=30, n_events=50, seed=1).catalog)
    items = np.array([*wording.catalog.item[:12].tolist(), "not-in-the-catalogue"])
    half_lives = [7.0 if i % 2 else None for i in range(len(items))]
    assert wording.popularities(items, half_lives) == [
        wording.popularity(item, half_life)
        for item, half_life in zip(items, half_lives, strict=True)
    ]


def test_remembered_sentences_are_the_sentences_worded_one_by_one(monkeypatch):
    wording = Wording(synthetic_stream(n_users=5, n_items=30, n_events=50, seed=1).catalog)
    items = [*wording.catalog.item[:15].tolist(), "not-in-the-catalogue"]
    half_lives = [7.0 if at % 2 else None for at in range(len(items))]
    titles = wording.titles(np.array(items))
    expected = {kind: [wording.reason(kind, title) for title in titles]
                for kind in ("history", "similar_item")}  # fmt: skip
    expected["popularity"] = [
        wording.popularities(np.array([item]), [days])[0]
        for item, days in zip(items, half_lives, strict=True)
    ]
    monkeypatch.setattr(explanation_module, "_REMEMBERED", 12)  # forgets within the test
    wording = Wording(wording.catalog)
    for part in (slice(0, 8), slice(8, 16), slice(4, 12), slice(0, 8)):
        for kind, sentences in expected.items():
            if kind == "popularity":
                said = wording.popularities(np.array(items[part]), half_lives[part])
                assert len(wording._category) <= 12
            else:
                said = wording.reasons(kind, items[part])
                assert len(wording._said) <= 12
            assert said == sentences[part]


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


@pytest.mark.parametrize("half_life", [None, 3_600.0])
def test_mf_split_matches_the_lu_solve_it_replaced(shop, half_life):
    model = MatrixFactorization(
        factors=16, iterations=4, recency_half_life_seconds=half_life, seed=0
    ).fit(shop.events)
    users = model.users_.lookup(np.unique(shop.events.user)[:30])
    users = np.concatenate([users, users[:3]])  # a user may repeat
    items = np.random.default_rng(0).integers(0, len(model.items_), (len(users), 5))
    history, weights = model._split(users, items)
    expected_history, confidence, chosen = model._fold_in_parts(users)
    directions = np.linalg.solve(
        model._fold_in_systems(confidence, chosen),
        np.transpose(model.item_factors_[items], (0, 2, 1)).astype(np.float64),
    )
    np.testing.assert_array_equal(history, expected_history)
    np.testing.assert_allclose(
        weights, confidence[:, :, None] * (chosen @ directions), rtol=1e-9, atol=1e-12
    )


def test_the_compiled_split_solves_a_system_cholesky_cannot():
    rng = np.random.default_rng(3)
    factors = rng.standard_normal((40, 6)).astype(np.float32)
    indptr, indices = np.array([0, 4, 9]), np.array([1, 5, 7, 9, 0, 2, 3, 4, 30])
    data = rng.random(9).astype(np.float32) + 0.5
    items = np.array([[11, 12, 13], [20, 21, 22]])
    gram = np.eye(6)
    for regularization in (0.5, -1.5):  # the second makes every system indefinite
        history, weights = fold_in_split(
            indptr, indices, data, 2.0, factors, gram, regularization, items, DSYRK, DPOSV
        )
        for row in range(2):
            read = indices[indptr[row] : indptr[row + 1]]
            chosen = factors[read].astype(np.float64)
            extra = 2.0 * data[indptr[row] : indptr[row + 1]].astype(np.float64)
            system = gram + regularization * np.eye(6) + chosen.T @ (extra[:, None] * chosen)
            direction = np.linalg.solve(system, factors[items[row]].T.astype(np.float64))
            np.testing.assert_array_equal(history[row, : len(read)], read)
            assert (history[row, len(read) :] == -1).all()
            np.testing.assert_allclose(
                weights[row, : len(read)], (1.0 + extra)[:, None] * (chosen @ direction),
                rtol=1e-9, atol=1e-12,
            )  # fmt: skip
            assert (weights[row, len(read) :] == 0).all()


# ------------------------------------------------------------------------------ transformer


@pytest.fixture(scope="module")
def transformer(shop, torch_one_thread):
    model = SequentialTransformer(
        max_len=12, dim=16, layers=2, heads=2, epochs=3, text_encoder=None, explain_steps=4,
        device="cpu", seed=0,
    )  # fmt: skip
    return model.fit(shop.events)


def _reference_gradients(model: SequentialTransformer, users: np.ndarray, items: np.ndarray):
    """Integrated gradients as computed before: the full encoder, one backward pass per
    item, the emptied history encoded for every request (same quadrature nodes)."""
    net = model.net_
    sequences = torch.as_tensor(model.sequences_[users, 1:])
    present = sequences > 0
    net.eval()
    with torch.no_grad():
        vectors = net.items()
        inputs = vectors[sequences]
        targets = vectors[torch.as_tensor(items + 1)]
    alphas, quadrature = _gauss_legendre(model.explain_steps, inputs)
    steps = len(alphas)
    scaled = (alphas[None, :, None, None] * inputs[:, None]).flatten(0, 1).requires_grad_(True)
    hidden = net.encode_embedded(scaled, present.repeat_interleave(steps, dim=0))
    gradients = torch.stack([
        torch.autograd.grad(hidden[:, -1], scaled, grad_outputs=cotangent, retain_graph=True)[0]
        for cotangent in targets.transpose(0, 1).repeat_interleave(steps, dim=1)
    ])  # fmt: skip
    integral = (gradients.unflatten(1, (len(users), steps)) * quadrature[:, None, None]).sum(2)
    weights = (inputs[None] * integral).sum(-1).permute(1, 2, 0).detach().double().numpy()
    with torch.no_grad():
        empty = net.encode_embedded(torch.zeros_like(inputs), present)[:, -1]
        baseline = (targets @ empty[:, :, None])[:, :, 0].double().numpy()
    return weights * (sequences.numpy() > 0)[:, :, None], baseline


def test_integrated_gradients_match_the_full_encoder_and_per_item_passes(transformer):
    users = np.arange(6)
    items = np.random.default_rng(1).integers(0, len(transformer.items_), (6, 4))
    history, weights, baseline = transformer._integrated_gradients(users, items)
    expected_weights, expected_baseline = _reference_gradients(transformer, users, items)
    np.testing.assert_array_equal(history, transformer.sequences_[users, 1:] - 1)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(baseline, expected_baseline, rtol=1e-4, atol=1e-6)


def test_the_last_position_encoder_matches_the_full_one(transformer):
    net = transformer.net_
    net.eval()
    sequences = torch.as_tensor(transformer.sequences_[:20, 1:])
    with torch.no_grad():
        embedded = net.items(sequences)
        full = net.encode_embedded(embedded, sequences > 0)[:, -1]
        np.testing.assert_allclose(
            net.encode_last(embedded, sequences > 0).numpy(), full.numpy(), rtol=1e-5, atol=1e-6
        )


def test_the_emptied_history_cache_follows_learning(shop, transformer):
    model = transformer.clone().fit(shop.events.take(slice(0, 4_000)))
    users, items = np.arange(3), np.zeros((3, 2), dtype=np.int64)
    before = model._integrated_gradients(users, items)[2]
    model.learn(shop.events.take(slice(4_000, 6_000)))
    _, expected = _reference_gradients(model, users, items)
    after = model._integrated_gradients(users, items)[2]
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-6)
    assert not np.allclose(after, before)
