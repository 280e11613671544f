"""The loaders on the real public data sets in ../shared/datasets (skipped where absent)."""

from __future__ import annotations

import numpy as np
import pytest

from lifelong_rec.data import load
from lifelong_rec.events import Kind


def test_movielens_100k_loads_whole(datasets):
    data = load(datasets / "ml-100k", "movielens")
    events = data.events
    assert len(events) == 100_000
    assert data.report.rejected_total == 0
    assert len(np.unique(events.user)) == 943
    assert len(np.unique(events.item)) == 1_682
    assert set(events.kind.tolist()) == {Kind.RATING}
    assert set(np.unique(events.value).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.all(np.diff(events.timestamp) >= 0)
    # every item has its title and genres in the catalog
    assert len(data.catalog) == 1_682
    assert (data.catalog.title != "").all()
    assert data.catalog.titles_of(["1", "50"]).tolist() == ["Toy Story (1995)", "Star Wars (1977)"]
    toy_story = data.catalog.records()[0]
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]


def test_movielens_latest_small_loads_whole(datasets):
    data = load(datasets / "ml-latest-small", "movielens")
    assert len(data.events) == 100_004 and data.report.rejected_total == 0
    assert len(np.unique(data.events.user)) == 671
    assert 0.5 in data.events.value  # half-star ratings
    assert len(data.catalog) >= len(np.unique(data.events.item))


def test_yoochoose_clicks_load_as_csv_with_a_mapping(datasets):
    # anonymous sessions are the users; rows come grouped by session, not sorted by time
    data = load(datasets / "yoochoose-100k" / "clicks.tsv", "csv",
                mapping="user=SessionId,item=ItemId,time=Time")  # fmt: skip
    assert data.report.rows_read == 83_846
    assert data.report.rejected == {"duplicate": 1}  # one exact copy, kept aside
    assert len(data.events) == 83_845
    assert len(np.unique(data.events.user)) == 21_210
    assert len(np.unique(data.events.item)) == 2_933
    assert (data.events.weight > 0).all()


@pytest.mark.parametrize("behavior", ["random", "bts"])
@pytest.mark.parametrize(("campaign", "n_items"), [("all", 80), ("men", 34), ("women", 46)])
def test_open_bandit_dataset_files(datasets, behavior, campaign, n_items):
    data = load(datasets / "obd" / behavior / campaign, "obd")
    events = data.events
    assert len(events) == 10_000 and data.report.rejected_total == 0
    assert np.isfinite(events.propensity).all()
    assert ((events.propensity >= 0) & (events.propensity <= 1)).all()
    if behavior == "random":  # the uniform-random policy's propensity is constant: 1/n_items
        np.testing.assert_allclose(events.propensity, 1 / n_items)
    assert set(events.policy.tolist()) == {behavior}
    assert set(events.context["position"].tolist()) == {1.0, 2.0, 3.0}
    clicks = events.kind == Kind.CLICK
    assert (events.value[clicks] == 1).all() and (events.value[~clicks] == 0).all()
    assert 0.002 < clicks.mean() < 0.01  # OBD click rates are 0.38-0.69 %
    assert len(data.catalog) == n_items
