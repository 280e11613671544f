"""The SQLite event log: atomic appends, offsets, idempotency, consumers, ids, catalog."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from lifelong_rec.data import Rejected, synthetic_stream
from lifelong_rec.events import Catalog, EventBatch
from lifelong_rec.store import EventLog

T = 1_700_000_000.0


def _events(n: int, start: int = 0, **columns) -> EventBatch:
    rows = np.arange(start, start + n)
    return EventBatch.from_columns(
        user=[f"u{r % 7}" for r in rows],
        item=[f"i{r % 11}" for r in rows],
        timestamp=T + rows,
        **columns,
    )


@pytest.fixture
def log(tmp_path):
    with EventLog(tmp_path / "events.db") as log:
        yield log


def test_appends_get_contiguous_offsets_and_read_back_equal(log):
    first = log.append(_events(5), source="a")
    second = log.append(_events(3, start=5), source="b")
    assert (first.first_offset, first.count) == (0, 5)
    assert (second.first_offset, second.next_offset) == (5, 8)
    assert log.end_offset == len(log) == 8
    assert log.read().equals(EventBatch.concat([_events(5), _events(3, start=5)]))
    assert log.read(2, 6).equals(_events(4, start=2))
    assert len(log.read(8)) == 0


def test_every_column_survives_the_round_trip(log):
    data = synthetic_stream(n_users=40, n_items=30, n_events=800, seed=2)
    decisions = EventBatch.from_columns(
        ["u1", "u2"],
        ["i1", "i2"],
        [T, T + 1],
        ["impression", "click"],
        [0.0, 1.0],
        context={"position": [1, 2], "device": ["ios", "web"]},
        policy=["linucb", "linucb"],
        model_version=["v3", "v3"],
        propensity=[0.25, 0.5],
    )
    log.append(data.events)
    log.append(decisions)
    assert log.read(0, len(data.events)).equals(data.events)
    back = log.read()
    tail = back.take(slice(len(data.events), None))
    assert tail.policy.tolist() == ["linucb", "linucb"]
    assert tail.propensity.tolist() == [0.25, 0.5]
    assert tail.context["device"].tolist() == ["ios", "web"]
    assert tail.context["position"].tolist() == [1.0, 2.0]
    # rows appended without context read back with empty context values
    assert back.context["device"][0] == "" and np.isnan(back.context["position"][0])


def test_an_idempotency_key_appends_once(log):
    first = log.append(_events(4), key="client-1:batch-9")
    again = log.append(_events(4), key="client-1:batch-9")
    assert not first.duplicate and again.duplicate
    assert (again.batch_id, again.first_offset, again.count) == (first.batch_id, 0, 4)
    assert log.end_offset == 4


def test_a_failed_append_leaves_nothing_behind(log, monkeypatch):
    log.append(_events(3))

    def broken(events):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("lifelong_rec.store.eventlog._context_json", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        log.append(_events(4, start=100), key="k")
    monkeypatch.undo()
    assert log.end_offset == 3 and len(log.batches()) == 1
    assert "u100" not in log.user_index()  # the rolled-back ids did not stay in the index
    log.append(_events(2, start=3), key="k")  # the key is still free
    assert log.read().equals(_events(5))


def test_id_indexes_grow_in_order_of_first_sight_and_persist(tmp_path):
    with EventLog(tmp_path / "e.db") as log:
        log.append(EventBatch.from_columns(["b", "a", "b"], ["x", "y", "z"], [T, T + 5, T + 1]))
    with EventLog(tmp_path / "e.db") as log:
        assert log.user_index().to_array().tolist() == ["b", "a"]
        assert log.item_index().lookup(["z", "x"]).tolist() == [2, 0]
        first_seen = sqlite3.connect(tmp_path / "e.db").execute(
            "SELECT id, first_seen FROM users ORDER BY idx"
        )
        assert first_seen.fetchall() == [("b", T), ("a", T + 5)]


def test_two_connections_share_one_log(tmp_path):
    writer_a = EventLog(tmp_path / "e.db")
    writer_b = EventLog(tmp_path / "e.db")
    writer_a.append(EventBatch.from_columns(["a"], ["x"], [T]))
    writer_b.append(EventBatch.from_columns(["b", "a"], ["y", "x"], [T, T]))
    writer_a.append(EventBatch.from_columns(["c"], ["z"], [T]))
    for log in (writer_a, writer_b):
        events = log.read()
        assert events.user.tolist() == ["a", "b", "a", "c"]
        assert events.item.tolist() == ["x", "y", "x", "z"]
        assert log.user_index().to_array().tolist() == ["a", "b", "c"]
    writer_a.close()
    writer_b.close()


def test_consumer_offsets_commit_atomically_and_are_checked(log):
    log.append(_events(10))
    assert log.committed("learner") == 0
    log.commit("learner", 6)
    log.commit("evaluator", 10)
    assert log.committed("learner") == 6
    assert log.consumers() == {"evaluator": 10, "learner": 6}
    with pytest.raises(ValueError, match="outside the log"):
        log.commit("learner", 11)
    with pytest.raises(ValueError, match="outside the log"):
        log.commit("learner", -1)
    with pytest.raises(ValueError, match="name is required"):
        log.commit("", 1)


def test_iter_batches_covers_the_log_in_chunks(log):
    log.append(_events(25))
    chunks = list(log.iter_batches(start=3, size=10))
    assert [first for first, _ in chunks] == [3, 13, 23]
    assert EventBatch.concat([chunk for _, chunk in chunks]).equals(_events(22, start=3))


def test_catalog_upsert_adds_items_to_the_index_and_replaces_metadata(log):
    log.append(_events(3))
    log.upsert_catalog(Catalog.from_records([{"item": "i1", "title": "Old"}, {"item": "new"}]))
    log.upsert_catalog(
        Catalog.from_records([{"item": "i1", "title": "New", "categories": ["Drama"]}])
    )
    catalog = {r["item"]: r for r in log.catalog().records()}
    assert catalog["i1"]["title"] == "New" and catalog["i1"]["categories"] == ["Drama"]
    assert catalog["new"]["title"] == ""
    assert "new" in log.item_index()  # recommendable before any event
    assert log.stats()["items_with_metadata"] == 2


def test_quarantine_keeps_rejected_rows(log):
    rejected = Rejected(
        source=["f.csv", "f.csv"],
        line=[3, 9],
        reason=["missing_id", "duplicate"],
        field=["user", ""],
        detail=["user id is empty", "exact copy"],
        raw=['{"user": ""}', "{}"],
    )
    assert log.quarantine(rejected) == 2
    assert log.rejected_counts() == {"duplicate": 1, "missing_id": 1}
    back = log.rejected(reason="missing_id")
    assert back.records() == [rejected.records()[0]]
    assert len(log.rejected(limit=1)) == 1


def test_the_readable_view_shows_external_ids(log, tmp_path):
    log.append(EventBatch.from_columns(["alice"], ["Star Wars"], [T], "rating", [5.0]))
    row = (
        sqlite3.connect(log.path)
        .execute("SELECT user, item, time, kind, value FROM events_readable")
        .fetchone()
    )
    assert row == ("alice", "Star Wars", "2023-11-14T22:13:20.000Z", "rating", 5.0)


def test_durability_settings(tmp_path):
    with EventLog(tmp_path / "e.db") as log:
        mode = log._db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = log._db.execute("PRAGMA synchronous").fetchone()[0]
    assert mode == "wal" and sync == 2  # 2 = FULL
    with pytest.raises(ValueError, match="synchronous"):
        EventLog(tmp_path / "f.db", synchronous="OFF")


def test_a_log_of_another_format_version_is_refused(tmp_path):
    EventLog(tmp_path / "e.db").close()
    db = sqlite3.connect(tmp_path / "e.db")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    db.commit()
    db.close()
    with pytest.raises(ValueError, match="event log format 99"):
        EventLog(tmp_path / "e.db")


def test_bad_offset_ranges(log):
    with pytest.raises(ValueError, match="bad offset range"):
        log.read(-1)
    with pytest.raises(ValueError, match="bad offset range"):
        log.read(5, 2)
