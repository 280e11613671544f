"""Model-specific behaviour: decay, exact incremental co-occurrence, ALS solves, BPR, sparse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch
from lifelong_rec.models import BPR, GrowingSparse, ItemKNN, MatrixFactorization, Popularity

DAY = 86_400.0


@pytest.fixture(scope="module")
def stream() -> EventBatch:
    return synthetic_stream(n_users=80, n_items=60, n_events=2_500, seed=11).events


# ------------------------------------------------------------------------------ popularity


def test_popularity_halves_every_half_life():
    model = Popularity(half_life_days=1.0)
    model.learn(EventBatch.from_columns(["u1", "u2"], ["old", "new"], [0.0 + 1e9, DAY + 1e9]))
    scores = model.score(["anyone"], ["old", "new"])[0]
    assert scores[1] == pytest.approx(2 * scores[0])
    model.learn(EventBatch.from_columns(["u3"], ["old"], [DAY + 1e9]))
    assert model.recommend(["anyone"], k=1).items.tolist() == [["old"]]  # 1.5 > 1


def test_all_time_popularity_counts_weights():
    model = Popularity(half_life_days=None)
    model.learn(EventBatch.from_columns(["a", "b", "c"], ["x", "x", "y"], [1e9, 2e9, 3e9],
                                        ["view", "view", "purchase"]))  # fmt: skip
    assert model.score(["z"], ["x", "y"]).tolist() == [[2.0, 5.0]]


def test_zero_weight_events_make_items_known_but_not_seen():
    model = Popularity(half_life_days=None)
    model.learn(EventBatch.from_columns(["u", "u"], ["shown", "bought"], [1e9, 1e9],
                                        ["impression", "purchase"]))  # fmt: skip
    assert "shown" in model.items_
    assert model.recommend(["u"], k=5).items[0].tolist() == ["shown", "", "", "", ""]


# ------------------------------------------------------------------------------ item-kNN


@pytest.mark.parametrize("chunk", [1, 7, 250])
def test_itemknn_incremental_counts_equal_a_fit_from_scratch(stream, chunk):
    data = stream.take(slice(0, 600 if chunk == 1 else None))
    batch_model = ItemKNN().fit(data)
    online = ItemKNN()
    for start in range(0, len(data), chunk):
        online.learn(data.take(slice(start, start + chunk)))
    order = online.items_.lookup(batch_model.items_.to_array())
    online_counts = online.cooccurrence_.tocsr()[order][:, order]
    assert (online_counts != batch_model.cooccurrence_.tocsr()).nnz == 0
    np.testing.assert_array_equal(online.item_users_[order], batch_model.item_users_)
    users, items = np.unique(data.user), np.unique(data.item)
    np.testing.assert_allclose(online.score(users, items), batch_model.score(users, items),
                               rtol=1e-6)  # fmt: skip


def test_itemknn_explanation_adds_up_to_the_score(stream):
    model = ItemKNN(history_length=5).fit(stream)
    user = stream.user[-1]
    item = model.recommend([user], k=1).items[0][0]
    explanation = model.explain(user, item, top=100)
    assert len(explanation.reasons) <= 5
    assert {r.kind for r in explanation.reasons} == {"similar_item"}
    assert sum(r.weight for r in explanation.reasons) == pytest.approx(explanation.score, rel=1e-5)
    assert explanation.rest == pytest.approx(0, abs=1e-5)


def test_itemknn_scores_from_the_most_recent_items_only():
    t = 1e9
    events = EventBatch.from_columns(
        ["a", "a", "b", "b", "u", "u"], ["x", "p", "y", "q", "x", "y"], [t, t, t, t, t, t + 60]
    )
    model = ItemKNN(history_length=1, shrink=0.0).fit(events)
    scores = model.score(["u"], ["p", "q"])[0]
    assert scores[0] == 0 and scores[1] > 0  # only y, the latest, counts


def test_itemknn_recency_decay_weighs_the_latest_item_most():
    t = 1e9
    events = EventBatch.from_columns(
        ["a", "a", "b", "b", "u", "u", "u"],
        ["x", "p", "y", "q", "x", "z", "y"],
        [t, t, t, t, t, t + 30, t + 60],
    )
    flat = ItemKNN(shrink=0.0).fit(events)
    decayed = ItemKNN(shrink=0.0, recency_decay=0.5).fit(events)
    # y is u's latest item (weight 1), x two steps back (0.25); p rests on x, q on y
    expected = [0.25, 1.0] * flat.score(["u"], ["p", "q"])[0]
    np.testing.assert_allclose(decayed.score(["u"], ["p", "q"])[0], expected, rtol=1e-6)
    explanation = decayed.explain("u", "p", top=5)
    assert explanation.reasons[0].item == "x"
    assert explanation.reasons[0].weight == pytest.approx(explanation.score, rel=1e-5)
    deletion = decayed.deletion_scores("u", ["p"], ["y"])
    # without y, x moves one step up: weight 0.5
    assert deletion[1, 0] == pytest.approx(2 * deletion[0, 0], rel=1e-5)
    with pytest.raises(ValueError, match="recency_decay"):
        ItemKNN(recency_decay=0.0)


# ------------------------------------------------------------------------------ ALS


@pytest.mark.parametrize("n_rows", [20, 300])  # a batch's rows (compiled), a fit's (numpy)
def test_cg_solve_reaches_the_exact_least_squares_solution(n_rows):
    rng = np.random.default_rng(0)
    model = MatrixFactorization(factors=6, regularization=0.3, alpha=4.0)
    model._reset_model()
    import scipy.sparse as sp

    interactions = sp.random(
        n_rows, 40, density=0.2, random_state=1, format="csr", dtype=np.float32
    )
    other = rng.normal(size=(40, 6)).astype(np.float32)
    confidence = model._confidence(interactions)
    gram = model._gram(other)
    start = np.zeros((n_rows, 6), np.float32)
    # an anchor pulls each row toward a vector with its own strength (0 for every other row)
    anchor = rng.normal(size=(n_rows, 6)).astype(np.float32)
    pull = np.where(np.arange(n_rows) % 2 == 0, 0.0, 2.0).astype(np.float32)
    solved = model._solve(confidence, other, gram, start, steps=30)
    anchored = model._solve(confidence, other, gram, start, steps=30, anchor=(anchor, pull))
    for row in range(n_rows):
        begin, end = confidence.indptr[row], confidence.indptr[row + 1]
        columns, extra = confidence.indices[begin:end], confidence.data[begin:end]
        chosen = other[columns].astype(np.float64)
        system = gram + chosen.T @ (extra[:, None] * chosen) + 0.3 * np.eye(6)
        exact = np.linalg.solve(system, chosen.T @ (1.0 + extra))
        np.testing.assert_allclose(solved[row], exact, rtol=1e-3, atol=1e-4)
        exact = np.linalg.solve(
            system + pull[row] * np.eye(6), chosen.T @ (1.0 + extra) + pull[row] * anchor[row]
        )
        np.testing.assert_allclose(anchored[row], exact, rtol=1e-3, atol=1e-4)


def test_mf_fold_in_follows_the_new_events(stream):
    model = MatrixFactorization(factors=16).fit(stream)
    liked = model.recommend([stream.user[0]], k=1).items[0][0]
    target = model.items_.ids(
        [int(np.argmin(model.score([stream.user[0]], model.items_.to_array())[0]))]
    )[0]
    before = model.score([stream.user[0]], [target])[0, 0]
    t = float(stream.timestamp.max())
    model.learn(EventBatch.from_columns([stream.user[0]] * 3, [target] * 3, [t, t + 1, t + 2],
                                        "purchase"))  # fmt: skip
    assert model.score([stream.user[0]], [target])[0, 0] > before + 0.3
    assert liked  # the user still has recommendations


def test_mf_explanation_is_the_exact_fold_in_split(stream):
    model = MatrixFactorization(factors=16, iterations=10, cg_steps=8, learn_cg_steps=8)
    model.fit(stream)
    user = stream.user[3]
    item = model.recommend([user], k=1).items[0][0]
    explanation = model.explain(user, item, top=10_000)
    assert all(r.kind == "history" and r.weight > 0 for r in explanation.reasons)
    split = model._attribute(model.users_.lookup([user]), model.items_.lookup([item])[None, :])
    total = split.weights.sum()  # every history item, those that lower the score included
    assert total == pytest.approx(explanation.score, rel=0.05)  # CG solve vs exact fold-in
    assert total == pytest.approx(model.deletion_scores(user, [item], [])[0, 0], rel=1e-9)


def test_mf_recency_weighting_halves_per_half_life():
    t = 1.7e9
    events = EventBatch.from_columns(
        ["u"] * 3 + ["v"], ["old", "mid", "new", "old"], [t, t + 86_400, t + 2 * 86_400, t]
    )
    model = MatrixFactorization(factors=4, recency_half_life_seconds=86_400.0).fit(events)
    rows = model._user_rows(model.users_.lookup(["u"]))
    weights = dict(zip(model.items_.ids(rows.indices), rows.data, strict=True))
    assert weights == pytest.approx({"old": 0.25, "mid": 0.5, "new": 1.0})
    plain = MatrixFactorization(factors=4).fit(events)
    assert plain._user_rows(plain.users_.lookup(["u"])).data.tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------ BPR


def _auc(model: BPR) -> float:
    """Share of (observed, unobserved) item pairs, per user, ranked the right way round."""
    observed = model.history_.tocsr().toarray() > 0
    scores = model._score(np.arange(len(model.users_)), np.arange(len(model.items_)))
    right = [
        (scores[u][observed[u]][:, None] > scores[u][~observed[u]][None, :]).mean()
        for u in range(len(observed))
        if observed[u].any() and not observed[u].all()
    ]
    return float(np.mean(right))


@pytest.mark.parametrize(("optimizer", "rate"), [("adam", 0.01), ("sgd", 0.05)])
def test_bpr_learns_to_rank_observed_items_first(stream, optimizer, rate):
    untrained = BPR(factors=16, optimizer=optimizer, epochs=1, learning_rate=1e-6).fit(stream)
    model = BPR(factors=16, optimizer=optimizer, epochs=15, learning_rate=rate).fit(stream)
    assert _auc(untrained) < 0.6
    assert _auc(model) > 0.8


# ------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("model_class", "arguments", "message"),
    [
        (Popularity, {"half_life_days": 0.0}, "half_life_days must be > 0"),
        (ItemKNN, {"neighbours": 0}, "neighbours must be a positive integer"),
        (ItemKNN, {"history_length": 0}, "history_length must be a positive integer"),
        (ItemKNN, {"shrink": -1.0}, "shrink must be >= 0"),
        (MatrixFactorization, {"factors": 0}, "factors must be a positive integer"),
        (MatrixFactorization, {"iterations": 1.5}, "iterations must be a positive integer"),
        (MatrixFactorization, {"alpha": float("nan")}, "alpha must be finite"),
        (MatrixFactorization, {"regularization": -0.1}, "regularization must be finite and >= 0"),
        (MatrixFactorization, {"recency_half_life_seconds": 0.0}, "recency_half_life_seconds"),
        (MatrixFactorization, {"refresh_share": -1.0}, "refresh_share must be >= 0"),
        (BPR, {"optimizer": "rmsprop"}, "optimizer must be one of"),
        (BPR, {"learning_rate": 0.0}, "learning_rate must be > 0"),
        (BPR, {"batch_size": 0}, "batch_size must be a positive integer"),
    ],
)
def test_bad_hyperparameters(model_class, arguments, message):
    with pytest.raises(ValueError, match=message):
        model_class(**arguments)


# ------------------------------------------------------------------------------ sparse


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 9), st.floats(0.5, 5.0)),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from(["sum", "max"]),
    st.integers(1, 10),
)
def test_growing_sparse_matches_a_dense_reference(entries, aggregate, every):
    matrix = GrowingSparse((0, 0), aggregate, np.float64)
    dense = np.zeros((10, 10))
    present = np.zeros((10, 10), dtype=bool)
    for start in range(0, len(entries), every):
        chunk = entries[start : start + every]
        rows = np.array([r for r, _, _ in chunk])
        cols = np.array([c for _, c, _ in chunk])
        values = np.array([v for _, _, v in chunk])
        matrix.grow(int(rows.max()) + 1, int(cols.max()) + 1)
        matrix.add(rows, cols, values)
        for r, c, v in chunk:
            dense[r, c] = dense[r, c] + v if aggregate == "sum" else max(dense[r, c], v)
            present[r, c] = True
        asked = np.concatenate([np.unique(rows)[::-1], rows])  # a row may be asked twice
        block = matrix.row_block(asked)
        for row in range(len(asked)):  # each row's columns sorted, each once
            columns = block.indices[block.indptr[row] : block.indptr[row + 1]]
            assert np.all(np.diff(columns) > 0)
        got = block.tocsr().toarray()
        np.testing.assert_allclose(got, dense[asked][:, : matrix.shape[1]])
        every_cell = np.indices(matrix.shape).reshape(2, -1)
        assert np.array_equal(
            matrix.contains(every_cell[0], every_cell[1]),
            present[: matrix.shape[0], : matrix.shape[1]].ravel(),
        )
    n_rows, n_cols = matrix.shape
    np.testing.assert_allclose(matrix.tocsr().toarray(), dense[:n_rows, :n_cols])
    assert matrix.nnz == present.sum()


def test_models_from_specs():
    from lifelong_rec.models import parse_model, split_specs

    assert split_specs("pop, mf(factors=8,alpha=2.5) ,bpr(optimizer=adam)") == [
        "pop", "mf(factors=8,alpha=2.5)", "bpr(optimizer=adam)",
    ]  # fmt: skip
    label, factory = parse_model("mf(factors=8, alpha=2.5)")
    model = factory()
    assert label == "mf(factors=8, alpha=2.5)"
    assert (model.factors, model.alpha, model.regularization) == (8, 2.5, 1.0)
    assert parse_model("bpr(optimizer=adam)")[1]().optimizer == "adam"
    with pytest.raises(ValueError, match="unknown model 'svd'"):
        parse_model("svd")
    for unclosed in ("mf(factors=8", "mf("):  # "mf(" used to pass as plain "mf"
        with pytest.raises(ValueError, match="parameters go in parentheses"):
            parse_model(unclosed)


def test_a_deep_copy_is_consolidated_so_reading_it_never_writes():
    # Serving reads a published deep copy from many threads at once; reading pending
    # increments joins or folds them in place, which two threads once did together.
    import copy
    from concurrent.futures import ThreadPoolExecutor

    events = synthetic_stream(n_users=80, n_items=60, n_events=3_000, seed=5).events
    model = ItemKNN(neighbours=10).fit(events.take(slice(0, 2_000)))
    for start in range(2_000, 2_100):
        model.learn(events.take(slice(start, start + 1)))
    assert model.cooccurrence_._pending_count > 0  # what the learner holds: pending rows
    served = copy.deepcopy(model)
    assert served.cooccurrence_._pending_count == served.history_._pending_count == 0
    users = np.unique(events.user)[:40]
    with ThreadPoolExecutor(8) as pool:
        scores = list(pool.map(lambda user: served.score_all([user]), users))
    np.testing.assert_allclose(np.vstack(scores), model.score_all(users), rtol=1e-5)
