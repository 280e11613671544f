"""One contract, two snapshot stores: a folder (SQLite deployments) and PostgreSQL (replicas on
many machines). The same tests run against both."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lifelong_rec.events import EventBatch
from lifelong_rec.models import Popularity, Recommender
from lifelong_rec.policy import LinUCB
from lifelong_rec.service.snapshots import DamagedSnapshot, PostgresSnapshotStore, SnapshotStore

Store = SnapshotStore | PostgresSnapshotStore


@pytest.fixture(params=["folder", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "folder":
        yield SnapshotStore(tmp_path / "snapshots")
        return
    url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("postgres_schema")
    opened = PostgresSnapshotStore(url, schema, "mf")
    yield opened
    opened.close()


def _model(n: int = 30) -> Recommender:
    users = [f"u{k % 7}" for k in range(n)]
    items = [f"i{k % 11}" for k in range(n)]
    return Popularity().fit(EventBatch.from_columns(users, items, 1.7e9 + np.arange(n)))


def test_a_saved_snapshot_loads_back_whole(store: Store) -> None:
    model = _model()
    quality = {"scored": 10, "hr_at_10": 0.5, "ndcg_at_10": 0.25,
               "recent_hr_at_10": 0.5, "recent_ndcg_at_10": 0.25}  # fmt: skip
    policy = LinUCB(k=2, alpha=0.3)
    info = store.save(model, 1, 30, {"default": policy}, quality, settled=7)
    loaded, loaded_info = store.load(1)
    assert loaded_info == info == store.info(1) == store.newest()
    assert loaded_info.offset == 30 and loaded_info.quality == quality
    assert loaded_info.settled == 7
    users = np.array(["u1", "u2"])
    np.testing.assert_array_equal(loaded.recommend(users, 5).items, model.recommend(users, 5).items)
    policies = store.load_policies(1)
    assert list(policies) == ["default"] and repr(policies["default"]) == repr(policy)


def test_versions_are_written_once(store: Store) -> None:
    store.save(_model(), 1, 30)
    with pytest.raises(FileExistsError):
        store.save(_model(), 1, 40)  # a learner that lost its lease is fenced off here
    assert [info.offset for info in store.list()] == [30]


def test_a_missing_snapshot_is_a_key_error(store: Store) -> None:
    assert store.versions() == [] and store.newest() is None
    for read in (store.load, store.info, store.load_policies):
        with pytest.raises(KeyError):
            read(3)


def test_prune_keeps_the_newest_the_protected_and_the_pinned(store: Store) -> None:
    for version in range(1, 7):
        store.save(_model(), version, version * 10)
    store.write_pin(2)
    store.prune(keep=2, protect={4})
    assert store.versions() == [2, 4, 5, 6]
    assert store.read_pin() == 2
    store.write_pin(None)
    assert store.read_pin() is None
    store.prune(keep=2)
    assert store.versions() == [5, 6]


def test_a_damaged_snapshot_says_so(store: Store) -> None:
    store.save(_model(), 1, 30)
    if isinstance(store, SnapshotStore):
        (store.folder / "v000001" / "arrays.npz").write_bytes(b"not an npz")
    else:
        with store._pool.connection() as connection:
            connection.execute("UPDATE snapshots SET archive = 'junk'::bytea")
    with pytest.raises(DamagedSnapshot, match="snapshot 1 is damaged"):
        store.load(1)
