"""Protocol P2: the chronological leave-one-out split, the full-ranking ranks, the report."""

from __future__ import annotations

from functools import partial
from importlib import import_module

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.evaluate import leave_one_out, leave_one_out_split
from lifelong_rec.events import EventBatch
from lifelong_rec.models import MatrixFactorization, Popularity, parse_model

T = 1.7e9
POPULARITY = {"pop": partial(Popularity, half_life_days=None)}  # plain counts: ranks by hand


def _events(rows: list[tuple[str, str, float]], kinds: list[str] | None = None) -> EventBatch:
    users, items, times = zip(*rows, strict=True)
    return EventBatch.from_columns(users, items, T + np.array(times), kinds or "purchase")


def _rows(batch: EventBatch) -> list[tuple[str, str, float]]:
    times = (batch.timestamp - T).tolist()
    return list(zip(batch.user.tolist(), batch.item.tolist(), times, strict=True))


@pytest.fixture(scope="module")
def shop() -> EventBatch:
    return synthetic_stream(n_users=80, n_items=60, n_events=2_000, seed=7).events


# ------------------------------------------------------------------------------ the split


def test_split_by_hand():
    rows = [
        ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 3),  # c, d tie at t=3: d came later
        ("u1", "a", 1), ("u1", "s", 2.5), ("u1", "s", 9),  # skips: before and after validation
        ("u2", "x", 1), ("u2", "y", 2), ("u2", "s", 3),  # 2 interactions: left out
        ("u3", "p", 5), ("u3", "q", 5), ("u3", "r", 5), ("u3", "s", 4),  # all tied
        ("u4", "m", 1), ("u4", "m", 1), ("u4", "m", 1),  # exact duplicates stay
    ]  # fmt: skip
    kinds = ["purchase" if item != "s" else "skip" for _, item, _ in rows]
    split = leave_one_out_split(_events(rows, kinds))
    assert _rows(split.validation) == [("u4", "m", 1), ("u1", "c", 3), ("u3", "q", 5)]
    assert _rows(split.test) == [("u4", "m", 1), ("u1", "d", 3), ("u3", "r", 5)]
    assert sorted(_rows(split.train)) == sorted([
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "s", 2.5),
        ("u2", "x", 1), ("u2", "y", 2), ("u2", "s", 3),
        ("u3", "p", 5), ("u3", "s", 4), ("u4", "m", 1),
    ])  # fmt: skip
    assert np.all(np.diff(split.train.timestamp) >= 0)  # every part is in time order
    assert split.users_left_out == 1 and split.evaluated_users == 3
    assert split.rows_dropped == 1  # u1's skip at t=9 would tell of the held-out moments


def test_split_min_interactions_counts_positive_rows_only():
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "d", 4)]
    kinds = ["purchase", "impression", "purchase", "purchase"]
    assert leave_one_out_split(_events(rows, kinds), min_interactions=3).evaluated_users == 1
    split = leave_one_out_split(_events(rows, kinds), min_interactions=4)
    assert split.evaluated_users == 0 and split.users_left_out == 1 and len(split.train) == 4


def test_split_is_a_partition(shop):
    split = leave_one_out_split(shop, min_interactions=5)
    parts = (split.train, split.validation, split.test)
    assert sum(len(part) for part in parts) + split.rows_dropped == len(shop)
    assert len(np.unique(split.test.user)) == len(split.test) == len(split.validation)
    # per user: validation not after test, and no positive training row after validation
    validation = dict(zip(split.validation.user, split.validation.timestamp, strict=True))
    test = dict(zip(split.test.user, split.test.timestamp, strict=True))
    assert all(validation[user] <= test[user] for user in test)
    positive = split.train.take(np.isin(split.train.user, split.test.user))
    assert all(t <= validation[u] for u, t in zip(positive.user, positive.timestamp, strict=True))


# ------------------------------------------------------------------------------ ranks


def test_popularity_knows_the_answer():
    # Left-out users make "hot1" (10) then "hot2" (9) the most popular items; every evaluated
    # user's validation item is hot1 and test item hot2, after items only they had.
    rows = [(f"f{i}", "hot1", 1) for i in range(10)] + [(f"f{i}", "hot2", 2) for i in range(9)]
    for u in range(5):
        rows += [(f"u{u}", f"t{u}a", 10), (f"u{u}", f"t{u}b", 11)]
        rows += [(f"u{u}", "hot1", 20), (f"u{u}", "hot2", 21)]
    report = leave_one_out(_events(rows), POPULARITY, k=1)
    result = report.result("pop")
    assert (result.hr, result.ndcg, result.mrr) == (1.0, 1.0, 1.0)
    assert (result.valid_hr, result.valid_ndcg, result.valid_mrr) == (1.0, 1.0, 1.0)
    assert report.data["evaluated_users"] == 5 and report.data["users_left_out"] == 10


def test_unknown_items_are_misses():
    rows = [(u, item, t) for u in ("u1", "u2") for t, item in enumerate(["a", "b", "c"])]
    rows += [("u1", "new1", 5), ("u2", "new2", 5)]  # test items nobody had before
    rows += [("v", "c", 0)]  # a left-out user makes the validation item known to the fit
    result = leave_one_out(_events(rows), POPULARITY, k=10).results[0]
    assert (result.hr, result.ndcg, result.mrr) == (0.0, 0.0, 0.0)
    assert result.unknown_test_items == 2
    assert result.valid_hr == 1.0  # "c", the validation item, was known: the top item


def test_exclusions_by_hand_with_popularity():
    # u trains on a, b; validates on c; is tested on d. Left-out users set the counts after
    # the fit: a 5, b 4, e 3, d 2, f 2, c 1.
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("u", "d", 4)]
    others = [("a", "b")] * 3 + [("a", "e"), ("e", "d"), ("e", "f"), ("d", "f"), ("c",)]
    for w, items in enumerate(others):
        rows += [(f"w{w}", item, 0) for item in items]
    result = leave_one_out(_events(rows), POPULARITY, k=10).results[0]
    # validation: a, b excluded; c (1) ranks below e (3), d (2), f (2): rank 4
    assert result.valid_mrr == pytest.approx(1 / 4)
    assert result.valid_ndcg == pytest.approx(1 / np.log2(5))
    # test: a, b and c (now 2) excluded; d (2) below e (3) and tied with f: ties count
    # against, rank 3 (it would be 5 without the exclusions)
    assert result.mrr == pytest.approx(1 / 3)
    assert result.ndcg == pytest.approx(1 / np.log2(4))
    assert leave_one_out(_events(rows), POPULARITY, k=2).results[0].hr == 0.0


def test_a_repeated_item_stays_rankable():
    # u's test item "a" is also a training item: the exclusion leaves the target itself in
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "a", 3), ("v", "a", 0)]
    result = leave_one_out(_events(rows), POPULARITY, k=1).results[0]
    assert result.hr == 1.0


def test_scoring_in_blocks_changes_nothing(shop, monkeypatch):
    models = {"mf": partial(MatrixFactorization, factors=8, iterations=3, seed=1)}
    whole = leave_one_out(shop, models).results[0]
    # the package's leave_one_out is the function, which hides the module of the same name
    module = import_module("lifelong_rec.evaluate.leave_one_out")
    monkeypatch.setattr(module, "SCORE_BLOCK", 7)  # one user per block
    blocked = leave_one_out(shop, models).results[0]
    assert (whole.hr, whole.ndcg, whole.mrr, whole.valid_ndcg) == (
        blocked.hr,
        blocked.ndcg,
        blocked.mrr,
        blocked.valid_ndcg,
    )
    assert 0 < whole.ndcg < 1


# ------------------------------------------------------------------------------ report, errors


def test_report(shop):
    models = dict(parse_model(spec) for spec in ("pop", "itemknn", "mf(factors=8)", "bpr"))
    report = leave_one_out(shop, models, k=5, min_interactions=4)
    payload = report.to_dict()
    assert payload["protocol"] == "P2"
    assert payload["params"] == {"k": 5, "min_interactions": 4}
    assert [r["model"] for r in payload["results"]] == list(models)
    assert payload["data"]["rows"] == len(shop)
    assert (
        payload["data"]["evaluated_users"] + payload["data"]["users_left_out"]
        == (payload["data"]["users"])
    )
    for result in report.results:
        assert 0 <= result.ndcg <= result.hr <= 1 and result.train_seconds > 0
        assert result.peak_memory_mib > 0
    table = report.markdown_table()
    assert "| model | HR@5 | NDCG@5 | MRR@5 |" in table
    assert "| mf(factors=8) |" in table and "P2:" in table


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 0}, ValueError, "k must be a positive integer"),
        ({"min_interactions": 2}, ValueError, "min_interactions must be at least 3"),
        ({"min_interactions": 3.5}, ValueError, "min_interactions must be a positive integer"),
        ({"min_interactions": 10**4}, ValueError, "no user has min_interactions=10000"),
        ({"models": {}}, ValueError, "models must map at least one name"),
        ({"events": [("u", "a", 1.0)]}, TypeError, "events must be an EventBatch"),
    ],
)
def test_bad_arguments(shop, kwargs, error, message):
    arguments = {"events": shop, "models": POPULARITY} | kwargs
    with pytest.raises(error, match=message):
        leave_one_out(**arguments)
