"""The demo's P1 table (gains against frozen and retraining, a line per column), its closing
"what next" lines, and the session-aware MF it shows under its own name, ``session-mf``."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.demo import P1_LEGEND, P1_TABLE, render, run_demo
from lifelong_rec.models import MatrixFactorization, model_names, parse_model
from lifelong_rec.models.mf import SessionMatrixFactorization


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    db = tmp_path_factory.mktemp("demo") / "events.db"
    return run_demo(db, n_users=100, n_events=3_000, blocks=10, workers=0, progress=False)


def test_session_mf_is_mf_with_the_session_aware_fold_in_under_its_own_name():
    assert "session-mf" in model_names() and "mf" in model_names()
    label, factory = parse_model("session-mf")
    model = factory()
    assert label == "session-mf"
    assert isinstance(model, MatrixFactorization) and model.recency_half_life_seconds == 60.0
    assert repr(model).startswith("SessionMatrixFactorization(")
    assert parse_model("mf")[1]().recency_half_life_seconds is None  # mf keeps its default
    label, factory = parse_model("session-mf(factors=8, recency_half_life_seconds=30)")
    assert label == "session-mf(factors=8, recency_half_life_seconds=30)"
    assert (factory().factors, factory().recency_half_life_seconds) == (8, 30)


def test_session_mf_takes_every_parameter_of_mf_with_the_same_defaults_but_the_half_life():
    # Its __init__ is written out (no **kwargs): a parameter added to MF must be added here too.
    mf = inspect.signature(MatrixFactorization.__init__).parameters
    session = inspect.signature(SessionMatrixFactorization.__init__).parameters
    assert list(session) == list(mf)
    differ = [name for name in mf if mf[name].default != session[name].default]
    assert differ == ["recency_half_life_seconds"]


def test_session_mf_learns_exactly_as_mf_with_a_60_second_half_life():
    events = synthetic_stream(n_users=60, n_items=40, n_events=1_500, seed=3).events
    cut = 1_000
    models = [
        SessionMatrixFactorization(factors=8, iterations=3),
        MatrixFactorization(factors=8, iterations=3, recency_half_life_seconds=60),
    ]
    for model in models:
        model.fit(events.take(slice(0, cut)))
        for start in range(cut, len(events), 100):
            model.learn(events.take(slice(start, start + 100)))
    users = np.unique(events.user)[:10]
    np.testing.assert_array_equal(models[0].score_all(users), models[1].score_all(users))


def test_demo_p1_rows_are_the_table_with_gains_against_frozen_and_retraining(demo):
    rows = demo["p1_rows"]
    assert [(row["model"], row["strategy"]) for row in rows] == list(P1_TABLE)
    frozen, retrain = rows[0], rows[1]
    assert frozen["forgetting"] == 0.0  # frozen never changes, so it cannot forget
    for row in rows:
        for ratio, value, reference in (
            ("ndcg_vs_frozen", row["ndcg"], frozen["ndcg"]),
            ("ndcg_vs_retrain", row["ndcg"], retrain["ndcg"]),
            (
                "update_cpu_seconds_vs_retrain",
                row["update_cpu_seconds"],
                retrain["update_cpu_seconds"],
            ),
        ):
            expected = value / reference if reference > 0 else None
            assert row[ratio] == pytest.approx(expected)
    json.loads(json.dumps(demo["p1_rows"], allow_nan=False))  # plain JSON: no NaN


def test_demo_prints_the_table_a_line_per_column_and_what_to_do_next(demo):
    text = render(demo)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("model ") and "strategy" in line)
    assert "NDCG@10 vs" in lines[lines.index(header) - 1]  # the group over the two ratios
    for name, _ in P1_LEGEND:  # each column's meaning, on a line of its own
        assert any(line.startswith(f"{name} ") for line in lines), name
        assert name.split(" vs")[0] in text
    assert "session-mf  incremental@row" in text
    assert any("×" in line for line in lines if line.startswith("session-mf"))
    forgetting = text[text.index("\nforgetting ") :]
    assert "below 0 the model has forgotten" in " ".join(forgetting.split())
    assert "ceiling: " in text and "best incremental: " in text
    next_steps = text[text.index("what next") :]
    serve = f"lifelong-rec serve --db {demo['db']}"
    for step in (". .venv/bin/activate", serve, "make serve", "/docs", "lifelong-rec ingest ",
                 "lifelong-rec evaluate --protocol p1"):  # fmt: skip
        assert step in next_steps, step
