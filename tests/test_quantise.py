"""Compressed factor tables for serving (issue #17 part 3): mf, session-mf and bpr with
serve_precision="fp16" or "int8" score close to float32, keep their copies in step with every
update, save and load them, report their size, and refuse a bad precision by name."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch
from lifelong_rec.models import BPR, MatrixFactorization, Recommender, parse_model
from lifelong_rec.models.bounded import footprint, memory_report, reports_memory
from lifelong_rec.models.mf import SessionMatrixFactorization
from lifelong_rec.models.quantise import BLOCK_ROWS, KERNEL_USERS, CompressedTable, quantise

FACTOR_MODELS = [
    (MatrixFactorization, {"factors": 16, "iterations": 4}),
    (SessionMatrixFactorization, {"factors": 16, "iterations": 4}),
    (BPR, {"factors": 16, "epochs": 4}),
]
IDS = ["mf", "session-mf", "bpr"]


@pytest.fixture(scope="module")
def stream() -> EventBatch:
    return synthetic_stream(n_users=150, n_items=120, n_events=4_000, seed=3).events


def _pairs(model: Recommender) -> tuple[np.ndarray, np.ndarray]:
    warm = model.users_.ids(np.flatnonzero(model.history_size_ > 0))
    return warm, model.items_.to_array()


# ------------------------------------------------------------------------------ the tables


def test_int8_rows_round_trip_within_half_a_step_and_zero_rows_stay_zero() -> None:
    rows = np.random.default_rng(0).normal(size=(50, 24)).astype(np.float32)
    rows[7] = 0.0
    values, scales = quantise(rows, "int8")
    assert values.dtype == np.int8 and scales.dtype == np.float32
    assert np.abs(values).max() == 127 and (values[7] == 0).all() and scales[7] == 0
    np.testing.assert_allclose(scales, np.abs(rows).max(axis=1) / 127, rtol=1e-6)
    error = np.abs(values * scales[:, None] - rows)
    assert (error <= scales[:, None] / 2 * (1 + 1e-5)).all()
    half, ones = quantise(np.array([[1e6, -0.5]], np.float32), "fp16")
    assert half.dtype == np.float16 and np.isfinite(half).all() and ones.tolist() == [1.0]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("users", [1, KERNEL_USERS, KERNEL_USERS + 5])  # kernels, then BLAS
def test_scores_equal_the_dequantised_product(precision: str, users: int) -> None:
    rng = np.random.default_rng(1)
    table = CompressedTable(precision, 8)
    source = rng.normal(size=(BLOCK_ROWS + 300, 8)).astype(np.float32)  # two blocks
    source[3, :4] = 1e-6  # subnormal halves
    table.refresh(source)
    queries = rng.normal(size=(users, 8)).astype(np.float32)
    dense = queries @ table.dequantise(slice(None)).T
    np.testing.assert_allclose(table.scores(queries, slice(None)), dense, rtol=1e-5, atol=1e-5)
    chosen = np.array([5, BLOCK_ROWS + 10, 2, 3])
    np.testing.assert_allclose(
        table.scores(queries, chosen), dense[:, chosen], rtol=1e-5, atol=1e-5
    )


# ------------------------------------------------------------------------------ the models


@pytest.mark.parametrize(("model_class", "params"), FACTOR_MODELS, ids=IDS)
def test_compressed_scores_stay_within_the_rounding_bound_of_float32(
    model_class: type[Recommender], params: dict, stream: EventBatch
) -> None:
    """Every score is within the bound the rounding allows: per entry half a step of the
    row's scale (int8), 2^-11 of the entry (fp16); and the top 10 barely move."""
    train = stream.take(slice(0, 3_000))
    exact = model_class(**params).fit(train)
    users, items = _pairs(exact)
    truth = exact.score(users, items)
    u = exact.user_factors_[exact.users_.lookup(users)].astype(np.float64)
    y = exact.item_factors_[exact.items_.lookup(items)].astype(np.float64)
    magnitude = np.abs(u) @ np.abs(y).T  # sum_k |u_k y_k|
    u_step, y_step = np.abs(u).max(axis=1) / 254, np.abs(y).max(axis=1) / 254
    bounds = {
        "fp16": 2 * 2.0**-11 * magnitude + 1e-5,
        "int8": np.abs(u).sum(1)[:, None] * y_step + u_step[:, None] * np.abs(y).sum(1)
        + y.shape[1] * u_step[:, None] * y_step + 1e-5,
    }  # fmt: skip
    for precision, bound in bounds.items():
        served = model_class(**params, serve_precision=precision).fit(train)
        assert np.array_equal(served.user_factors_, exact.user_factors_)  # learning is float32
        scores = served.score(users, items)
        assert (np.abs(scores - truth) <= bound).all(), precision
        top = served.recommend(users, k=10).items
        reference = exact.recommend(users, k=10).items
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, reference, strict=True)])
        assert overlap >= (0.99 if precision == "fp16" else 0.9), (precision, overlap)


@pytest.mark.parametrize(("model_class", "params"), FACTOR_MODELS, ids=IDS)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_rows_requantised_after_learning_equal_quantising_from_scratch(
    model_class: type[Recommender], params: dict, precision: str, stream: EventBatch
) -> None:
    model = model_class(**params, serve_precision=precision).fit(stream.take(slice(0, 2_000)))
    for start in range(2_000, 2_400, 40):  # batches that touch some rows and add new ones
        model.learn(stream.take(slice(start, start + 40)))
    new = EventBatch.from_columns(["new-user"], ["new-item"], [float(stream.timestamp.max())])
    model.learn(new)
    for side, table in (("users", model.user_factors_), ("items", model.item_factors_)):
        values, scales = quantise(table, precision)
        assert np.array_equal(model.served_[side].values, values), side
        assert np.array_equal(model.served_[side].scales, scales), side


def test_only_the_rows_a_batch_changed_are_quantised_again(stream: EventBatch, monkeypatch) -> None:
    model = MatrixFactorization(factors=8, iterations=2, serve_precision="int8")
    model.fit(stream.take(slice(0, 2_000)))
    quantised: list[int] = []
    original = CompressedTable.refresh

    def counting(self, table, rows=None):
        quantised.append(len(table) if rows is None else len(np.union1d(rows, [])))
        original(self, table, rows)

    monkeypatch.setattr(CompressedTable, "refresh", counting)
    model.learn(stream.take(slice(2_000, 2_001)))  # one event: a user and an item
    assert quantised and sum(quantised) <= 2 < len(model.items_)


@pytest.mark.parametrize(("model_class", "params"), FACTOR_MODELS, ids=IDS)
def test_save_and_load_keep_the_float32_tables_and_rebuild_the_same_copy(
    model_class: type[Recommender], params: dict, stream: EventBatch, tmp_path
) -> None:
    model = model_class(**params, serve_precision="int8").fit(stream.take(slice(0, 2_500)))
    model.learn(stream.take(slice(2_500, 2_600)))
    model.save(tmp_path / "m")
    with np.load(tmp_path / "m" / "arrays.npz") as stored:
        assert stored["model.item_factors"].dtype == np.float32  # what learning needs
    loaded = Recommender.load(tmp_path / "m")
    assert loaded.serve_precision == "int8"
    for side in ("users", "items"):
        assert np.array_equal(loaded.served_[side].values, model.served_[side].values)
        assert np.array_equal(loaded.served_[side].scales, model.served_[side].scales)
    users, items = _pairs(model)
    assert np.array_equal(loaded.score(users, items), model.score(users, items))


def test_int8_serves_about_a_quarter_of_the_float32_bytes(stream: EventBatch) -> None:
    train = stream.take(slice(0, 2_000))
    sizes = {}
    for precision in ("fp32", "fp16", "int8"):
        model = MatrixFactorization(factors=64, iterations=2, serve_precision=precision).fit(train)
        sizes[precision] = model.served_bytes()
        report = memory_report(model)
        assert report["served_bytes"] == sizes[precision]
        assert report["model_bytes"] == footprint(model)
        assert reports_memory(model) == (precision != "fp32")
    rows = 64 * (len(model.users_) + len(model.items_))
    assert sizes["fp32"] == 4 * rows
    assert sizes["fp16"] == 2 * rows  # float16, no scales
    assert sizes["int8"] == rows + 4 * rows // 64  # a byte an entry and a scale a row
    assert sizes["fp32"] / sizes["int8"] > 3.7  # 256 / 68 bytes a 64-factor row


def test_bpr_serves_its_bias_in_float32(stream: EventBatch) -> None:
    model = BPR(factors=16, epochs=2, serve_precision="int8").fit(stream.take(slice(0, 1_000)))
    tables = sum(table.nbytes for table in model.served_.values())
    assert model.served_bytes() == tables + model.item_bias_.nbytes


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MatrixFactorization(serve_precision="int4"), "serve_precision must be one of"),
        (lambda: BPR(serve_precision="FP16"), "serve_precision must be one of"),
        (lambda: SessionMatrixFactorization(serve_precision=None), "serve_precision"),
        (lambda: parse_model("mf(serve_precision=8)"), "serve_precision must be one of"),
    ],
)
def test_a_bad_precision_is_refused_by_name(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_the_index_finds_candidates_and_the_compressed_tables_score_them(
    stream: EventBatch,
) -> None:
    pytest.importorskip("faiss")
    every_list = "ivf(min_items=0, lists=2, nprobe=2)"  # exhaustive: ranks exactly
    train = stream.take(slice(0, 3_000))
    for precision in ("fp16", "int8"):
        plain = MatrixFactorization(factors=8, iterations=3, serve_precision=precision)
        indexed = MatrixFactorization(
            factors=8, iterations=3, serve_precision=precision, retrieval=every_list
        )
        plain.fit(train)
        indexed.fit(train)
        assert indexed._retrieves()
        users = _pairs(plain)[0]
        through_index, exact = indexed.recommend(users, k=5), plain.recommend(users, k=5)
        np.testing.assert_allclose(through_index.scores, exact.scores, rtol=1e-5, atol=1e-6)
        same = np.mean(through_index.items == exact.items)  # ties aside, the same lists
        assert same > 0.98, (precision, same)
