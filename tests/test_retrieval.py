"""The approximate top-k index (issue #17): faiss IVF kept in step with a changing table, and
MF ranking through it as it ranks exactly when every cluster is scanned."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_service import stream_rows, wait_until

from lifelong_rec.data import synthetic_stream
from lifelong_rec.models import BPR, MatrixFactorization, Recommender, parse_model
from lifelong_rec.models.mf import SessionMatrixFactorization
from lifelong_rec.models.retrieval import IVFIndex, make_retrieval
from lifelong_rec.service import Settings, create_app

pytest.importorskip("faiss", reason="the index needs faiss: pip install 'lifelong-rec[ann]'")

EVERY_LIST = "ivf(min_items=0, lists=6, nprobe=6, check_share=1.0)"  # exhaustive: exact


def exact_top(table: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ table.T), axis=1, kind="stable")[:, :k]


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def test_scanning_every_cluster_is_exact_and_follows_moved_and_new_rows() -> None:
    table, queries = vectors(600, 0), vectors(40, 1)
    index = IVFIndex(min_items=0, lists=8, nprobe=8)
    index.sync(table)
    rows, scores = index.search(queries, 5)
    assert np.array_equal(rows, exact_top(table, queries, 5))
    np.testing.assert_allclose(scores, np.sort(queries @ table.T, axis=1)[:, ::-1][:, :5], 1e-5)
    moved = np.array([3, 70, 599])
    table[moved] = 10 * queries[:3]  # now each the best item of a query
    table = np.vstack([table, 10 * queries[3:4]])  # a new item, near query 3
    index.sync(table, np.append(moved, 600))
    rows, _ = index.search(queries, 5)
    assert np.array_equal(rows, exact_top(table, queries, 5))
    assert all(item in found for item, found in zip((3, 70, 599, 600), rows, strict=False))


def test_the_recall_check_is_the_share_of_the_exact_top_k_found() -> None:
    table, queries = vectors(2_000, 2), vectors(60, 3)
    index = IVFIndex(min_items=0, lists=40, nprobe=1, check_share=1.0)
    index.sync(table)
    assert index.check_recall(table) is None  # nothing searched yet
    rows, _ = index.search(queries, 10)
    truth = exact_top(table, queries, 10)
    by_hand = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(rows, truth, strict=True)])
    assert 0 < by_hand < 0.9  # one cluster of forty: an approximation, visibly
    assert index.check_recall(table) == pytest.approx(by_hand)
    index.nprobe, index._index.nprobe = 40, 40
    index.search(queries, 10)
    weight = 0.99**60  # the older checks decay
    expected = (by_hand * 60 * weight + 60) / (60 * weight + 60)
    assert index.check_recall(table) == pytest.approx(expected)


def test_below_min_items_there_is_no_index_and_models_rank_exactly() -> None:
    index = IVFIndex(min_items=1_000)
    index.sync(vectors(999, 4))
    assert not index.ready
    index.sync(vectors(1_000, 4))
    assert index.ready


@pytest.mark.parametrize(
    ("model_class", "params"),
    [
        (MatrixFactorization, {"factors": 8, "iterations": 4}),
        (SessionMatrixFactorization, {"factors": 8, "iterations": 4}),
        (BPR, {"factors": 8, "epochs": 3}),  # the bias searched as one more dimension
        # the transformer: its last hidden state searches its item representations, which
        # every fine-tuning step moves (all put back) or only new and first-time items move
        ("transformer", {"max_len": 8, "dim": 16, "layers": 1, "epochs": 2, "device": "cpu"}),
        ("transformer", {"max_len": 8, "dim": 16, "layers": 1, "epochs": 2, "device": "cpu",
                         "update_steps": 0}),
    ],
    ids=["mf", "session-mf", "bpr", "transformer", "transformer-sequences-only"],
)  # fmt: skip
def test_factor_models_rank_through_the_index_as_they_rank_exactly(
    model_class, params, tmp_path: Path
) -> None:
    data = synthetic_stream(n_users=120, n_items=300, n_events=5_000, seed=7)
    stream = data.events
    if model_class == "transformer":  # it also knows the catalogue: items before their events
        pytest.importorskip("torch", reason="the transformer needs PyTorch")
        from lifelong_rec.models import SequentialTransformer as model_class

        exact = model_class(**params).add_items(data.catalog).fit(stream.take(slice(0, 3_000)))
        indexed = model_class(**params, retrieval=EVERY_LIST).add_items(data.catalog)
        indexed.fit(stream.take(slice(0, 3_000)))
    else:
        exact = model_class(**params).fit(stream.take(slice(0, 3_000)))
        indexed = model_class(**params, retrieval=EVERY_LIST).fit(stream.take(slice(0, 3_000)))
    users = np.append(np.unique(stream.user), "nobody")
    for start in range(3_000, 5_000, 400):  # new users and items arrive on the way
        batch = stream.take(slice(start, start + 400))
        exact.learn(batch)
        indexed.learn(batch)
        assert indexed.index_._index.ntotal == len(indexed.items_)
        for exclude_seen in (True, False):
            want = exact.recommend(users, k=8, exclude_seen=exclude_seen)
            got = indexed.recommend(users, k=8, exclude_seen=exclude_seen)
            assert np.array_equal(got.items, want.items)
            np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    assert indexed.check_recall() == pytest.approx(1.0)
    pool = np.unique(stream.item)[:40]  # a candidate list is ranked exactly
    assert np.array_equal(
        indexed.recommend(users, k=5, candidates=pool).items,
        exact.recommend(users, k=5, candidates=pool).items,
    )
    served = copy.deepcopy(indexed)  # as the service publishes a snapshot
    indexed.save(tmp_path / "model")
    loaded = Recommender.load(tmp_path / "model")
    assert loaded.index_.ready and loaded.get_params() == indexed.get_params()
    for twin in (served, loaded):
        assert np.array_equal(twin.recommend(users, k=8).items, exact.recommend(users, k=8).items)


def test_a_sparse_probe_still_fills_every_list() -> None:
    # One cluster of many: the index finds fewer unseen items than asked for some users,
    # who are then ranked exactly. Every list is full, ordered and free of seen items.
    stream = synthetic_stream(n_users=80, n_items=400, n_events=4_000, seed=8).events
    model = MatrixFactorization(
        factors=8, iterations=3, retrieval="ivf(min_items=0, lists=9, nprobe=1)"
    ).fit(stream)
    users = np.unique(stream.user)
    ranked = model.recommend(users, k=30)
    assert (ranked.items != "").all()
    assert (np.diff(ranked.scores, axis=1) <= 0).all()
    for row, user in enumerate(users):
        seen = set(stream.item[(stream.user == user) & (stream.weight > 0)])
        assert not seen & set(ranked.items[row])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mf(retrieval='ivf(nprobe=0)')", "nprobe"),
        ("mf(retrieval='hnsw')", "retrieval.*unknown retrieval 'hnsw'"),
        ("mf(retrieval='ivf(check_share=2)')", "check_share"),
    ],
)
def test_a_bad_retrieval_spec_is_refused_naming_it(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_model(spec)[1]()


def test_exact_is_the_default() -> None:
    assert make_retrieval(None) is None and make_retrieval("exact") is None
    assert MatrixFactorization().retrieval is None


def test_the_service_exports_the_live_recall_of_its_index(tmp_path: Path) -> None:
    index = "ivf(min_items=0, lists=4, nprobe=1, check_share=1.0)"
    spec = f"mf(factors=8, iterations=3, retrieval='{index}')"
    settings = Settings(db=tmp_path / "events.db", publish_seconds=0.05, model=spec)
    with TestClient(create_app(settings)) as client:
        assert client.post("/events", json={"events": stream_rows(2_000)}).status_code == 200
        wait_until(lambda: client.get("/models").json()["serving_version"], 30)
        assert "lifelong_rec_retrieval_recall{" not in client.get("/metrics").text
        for user in range(0, 40):
            served = client.get(f"/users/u{user:05d}/recommendations", params={"k": 10})
            assert served.status_code == 200, served.text
        lines = [line for line in client.get("/metrics").text.splitlines()
                 if line.startswith("lifelong_rec_retrieval_recall{")]  # fmt: skip
    assert len(lines) == 1 and 'model="mf(' in lines[0]
    recall = float(lines[0].rsplit(" ", 1)[1])
    assert 0 < recall < 1  # one cluster of four scanned: approximate, and measured so
