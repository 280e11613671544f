"""The synthetic shop: seeded, drifting, with arriving items, a funnel and item text."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import Kind


@pytest.fixture(scope="module")
def shop():
    return synthetic_stream(n_users=300, n_items=200, n_events=20_000, seed=3)


def test_same_seed_same_stream_other_seed_other_stream(shop):
    again = synthetic_stream(n_users=300, n_items=200, n_events=20_000, seed=3)
    assert again.events.equals(shop.events)
    assert again.catalog.records() == shop.catalog.records()
    other = synthetic_stream(n_users=300, n_items=200, n_events=20_000, seed=4)
    assert not other.events.equals(shop.events)


def test_size_order_and_cleanliness(shop):
    assert 18_000 <= len(shop.events) <= 22_000
    assert np.all(np.diff(shop.events.timestamp) >= 0)
    assert shop.report.rejected_total == 0


def test_funnel_ratios_look_like_a_shop(shop):
    counts = np.bincount(shop.events.kind, minlength=len(Kind))
    views, clicks, carts, purchases = (counts[k] for k in (Kind.VIEW, Kind.CLICK, Kind.CART,
                                                           Kind.PURCHASE))  # fmt: skip
    assert views > clicks > carts > purchases > 0
    assert 0.15 < clicks / views < 0.5 and 0.15 < purchases / carts < 0.9
    priced = np.isin(shop.events.kind, [Kind.CART, Kind.PURCHASE])
    assert (shop.events.value[priced] > 0).all() and np.isnan(shop.events.value[~priced]).all()


def test_items_arrive_during_the_stream(shop):
    events = shop.events
    first_seen = {}
    for item, t in zip(events.item[::-1], events.timestamp[::-1], strict=True):
        first_seen[item] = t
    start = events.timestamp[0]
    late = [t for t in first_seen.values() if t > start + 7 * 86_400]
    assert len(late) >= 30  # a good share of the catalogue appears after the first week


def test_tastes_drift_so_popular_items_change(shop):
    events = shop.events
    quarter = len(events) // 4
    first = np.unique(events.item[:quarter], return_counts=True)
    last = np.unique(events.item[-quarter:], return_counts=True)
    top_first = set(first[0][np.argsort(-first[1])[:20]])
    top_last = set(last[0][np.argsort(-last[1])[:20]])
    assert len(top_first & top_last) < 10


def test_items_have_text_from_their_topic(shop):
    catalog = shop.catalog
    assert len(catalog) == 200 and (catalog.title != "").all()
    record = catalog.records()[0]
    topic = record["categories"][0]
    assert topic in record["text"] and record["title"] in record["text"]


def test_dirty_rows_exercise_every_cleaning_reason():
    data = synthetic_stream(n_users=100, n_items=80, n_events=5_000, dirty_fraction=0.02, seed=1)
    assert set(data.report.rejected) == {
        "missing_id", "bad_timestamp", "timestamp_out_of_range", "unknown_kind", "bad_value",
        "value_out_of_range", "duplicate", "bot_burst",
    }  # fmt: skip
    assert data.report.accepted + data.report.rejected_total == data.report.rows_read


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_users": 0}, "n_users must be a positive integer"),
        ({"n_topics": 13}, "n_topics must be between 1 and 12"),
        ({"drift": 1.5}, "drift must be between 0 and 1"),
        ({"days": 0}, "days must be > 0"),
        ({"funnel": (0.5, 2.0, 0.1)}, "funnel must be three rates"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        synthetic_stream(**arguments)
