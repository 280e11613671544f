"""The benchmark peers of bench/peers.py: implicit's item-item recommender (issue #15).

bench/peers.py is imported inside the tests, not at collection: its adapters register as
models, and the conformance suite, which they do not pass (they neither save nor explain),
parametrises over the registered models when it is collected.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch

pytest.importorskip("implicit")
BENCH = str(Path(__file__).resolve().parents[1] / "bench")


@pytest.fixture(scope="module")
def peers():
    sys.path.insert(0, BENCH)
    try:
        yield importlib.import_module("peers")
    finally:
        sys.path.remove(BENCH)


@pytest.fixture(scope="module")
def stream() -> EventBatch:
    return synthetic_stream(n_users=60, n_items=40, n_events=1_500, seed=3).events


@pytest.mark.parametrize("similarity", ["cosine", "bm25", "tfidf"])
def test_itemknn_scores_as_implicit_recommends(peers, stream, similarity):
    model = peers.ImplicitItemKNN(similarity=similarity, neighbours=10).fit(stream)
    users = model.users_.ids(np.arange(5))
    scores = model.score_all(users)
    history = model.history_.tocsr().astype(np.float32)
    for row, user in enumerate(range(5)):
        ids, expected = model.knn_.recommend(
            user, history[user], N=len(model.items_), filter_already_liked_items=False
        )
        keep = expected != 0  # implicit pads its list with zero scores in no fixed order
        np.testing.assert_allclose(scores[row, ids[keep]], expected[keep], rtol=1e-5)


def test_itemknn_refits_every_refit_every_positive_events(peers, stream):
    model = peers.ImplicitItemKNN(neighbours=10, refit_every=3).fit(stream)
    user, item = model.users_.ids(np.array([0]))[0], model.items_.ids(np.array([0]))[0]
    first = EventBatch.from_columns([user, "new-user"], ["new-item", item], [2e9, 2e9 + 1])
    model.learn(first)
    similarity = model.similarity_
    assert similarity.shape == (len(model.items_),) * 2  # the new item: an empty row
    scores = model.score_all([user, "new-user"])
    assert scores.shape == (2, len(model.items_))
    assert scores[0, -1] == 0  # no neighbours before the refit
    # the new user's history is current at once, scored with the old similarities
    new_user = model.users_.lookup(np.array(["new-user"]))[0]
    expected = similarity[0].toarray()[0] * model.history_.rows(np.array([new_user]))[0, 0]
    np.testing.assert_allclose(scores[1], expected, rtol=1e-6)
    model.learn(EventBatch.from_columns(["new-user"], ["new-item"], [2e9 + 2]))
    assert model.similarity_ is not similarity  # third positive event: refitted
    assert model.similarity_[-1].nnz > 0


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"similarity": "jaccard"}, "similarity must be one of"),
        ({"neighbours": 0}, "neighbours must be a positive integer"),
        ({"refit_every": 1.5}, "refit_every must be a positive integer"),
    ],
)
def test_itemknn_rejects_bad_parameters(peers, params, pattern):
    with pytest.raises(ValueError, match=pattern):
        peers.ImplicitItemKNN(**params)
