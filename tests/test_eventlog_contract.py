"""The event log contract, run against both backends (SQLite, PostgreSQL), and what only the
PostgreSQL log has to guarantee: offsets that never skip with concurrent writers, versioned
migrations that run once and refuse a newer schema.

The PostgreSQL cases need $LIFELONG_REC_TEST_POSTGRES (see ``postgres_url`` in conftest.py).
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from lifelong_rec.data import Rejected, synthetic_stream
from lifelong_rec.events import Catalog, EventBatch
from lifelong_rec.store import EventLog, open_log

T = 1_700_000_000.0


def _events(n: int, start: int = 0, **columns) -> EventBatch:
    rows = np.arange(start, start + n)
    return EventBatch.from_columns(
        user=[f"u{r % 7}" for r in rows],
        item=[f"i{r % 11}" for r in rows],
        timestamp=T + rows,
        **columns,
    )


@dataclass(frozen=True)
class Backend:
    """How to open (another connection to) one test's log, and which module implements it."""

    name: str
    open: Callable[[], EventLog]  # a PostgresEventLog has the same API
    module: str


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", lambda: EventLog(tmp_path / "events.db"), "eventlog")
    url = request.getfixturevalue("postgres_url")
    schema = request.getfixturevalue("postgres_schema")
    return Backend("postgres", lambda: open_log(url, schema=schema), "postgres")


@pytest.fixture
def log(backend: Backend) -> Iterator[EventLog]:
    with backend.open() as log:
        yield log


# ---------------------------------------------------------------------- the contract


def test_appends_get_contiguous_offsets_and_read_back_equal(log):
    first = log.append(_events(5), source="a")
    second = log.append(_events(3, start=5), source="b")
    assert (first.first_offset, first.count) == (0, 5)
    assert (second.first_offset, second.next_offset) == (5, 8)
    assert log.end_offset == len(log) == 8
    assert log.read().equals(EventBatch.concat([_events(5), _events(3, start=5)]))
    assert log.read(2, 6).equals(_events(4, start=2))
    assert len(log.read(8)) == 0
    assert log.batches()[["first_offset", "count", "source"]].values.tolist() == [
        [0, 5, "a"],
        [5, 3, "b"],
    ]


def test_every_column_survives_the_round_trip(log):
    data = synthetic_stream(n_users=40, n_items=30, n_events=800, seed=2)
    decisions = EventBatch.from_columns(
        ["u1", "u2", "u3"],
        ["i1", "i2", "i3"],
        [T + 0.123456789, T + 1, T + 2],
        ["impression", "click", "rating"],
        [np.nan, 1.0, 4.5],
        context={"position": [1, np.nan, 3], "device": ["ios", "web", ""]},
        policy=["linucb", "linucb", ""],
        model_version=["v3", "v3", ""],
        propensity=[0.25, 0.5, np.nan],
    )
    log.append(data.events)
    log.append(decisions)
    assert log.read(0, len(data.events)).equals(data.events)
    tail = log.read(len(data.events))
    assert tail.equals(decisions)  # every column, NaN equal to NaN, exact floats
    assert tail.timestamp[0] == T + 0.123456789
    assert tail.weight.dtype == np.float32 and tail.kind.dtype == np.uint8
    assert np.isnan(tail.value[0]) and np.isnan(tail.propensity[2])
    assert tail.context["device"].tolist() == ["ios", "web", ""]
    # rows appended without context read back with empty context values
    back = log.read()
    assert back.context["device"][0] == "" and np.isnan(back.context["position"][0])


def test_an_idempotency_key_appends_once(backend, log):
    first = log.append(_events(4), key="client-1:batch-9")
    again = log.append(_events(4), key="client-1:batch-9")
    assert not first.duplicate and again.duplicate
    assert (again.batch_id, again.first_offset, again.count) == (first.batch_id, 0, 4)
    other = log.append(_events(2, start=4), key="client-1:batch-10")
    assert (other.first_offset, other.duplicate) == (4, False)
    with backend.open() as elsewhere:  # a retry that lands on another connection
        retry = elsewhere.append(_events(4), key="client-1:batch-9")
    assert retry == again
    assert log.end_offset == 6 and len(log.batches()) == 2


def test_a_failed_append_leaves_nothing_behind(backend, log, monkeypatch):
    log.append(_events(3))

    def broken(events):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(f"lifelong_rec.store.{backend.module}._context_json", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        log.append(_events(4, start=100), key="k")
    monkeypatch.undo()
    assert log.end_offset == 3 and len(log.batches()) == 1
    assert "u100" not in log.user_index()  # the rolled-back ids did not stay in the index
    log.append(_events(2, start=3), key="k")  # the key is still free
    assert log.read().equals(_events(5))
    assert log.user_index().to_array().tolist() == [f"u{r}" for r in range(5)]


def test_positive_reads_skip_zero_weight_events(log):
    log.append(
        EventBatch.from_columns(
            ["a", "b", "c", "d"], ["x", "y", "z", "x"], [T] * 4, ["impression", "click"] * 2
        )
    )
    everything = log.read()
    assert everything.weight.tolist()[0] == 0.0  # an impression teaches nothing
    positive = log.read(positive=True)
    assert positive.equals(everything.take(everything.weight > 0))
    assert positive.user.tolist() == ["b", "d"]
    assert log.read(2, positive=True).user.tolist() == ["d"]


def test_id_indexes_grow_in_order_of_first_sight_and_persist(backend):
    with backend.open() as log:
        log.append(EventBatch.from_columns(["b", "a", "b"], ["x", "y", "z"], [T, T + 5, T + 1]))
        log.append(EventBatch.from_columns(["c", "a"], ["y", "w"], [T, T]))
    with backend.open() as log:
        assert log.user_index().to_array().tolist() == ["b", "a", "c"]
        assert log.item_index().lookup(["z", "x", "w"]).tolist() == [2, 0, 3]
        assert log.stats()["users"] == 3 and log.stats()["items"] == 4


def test_two_connections_share_one_log(backend):
    writer_a = backend.open()
    writer_b = backend.open()
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


def test_consumer_offsets_commit_atomically_and_are_checked(backend, log):
    log.append(_events(10))
    assert log.committed("learner") == 0
    log.commit("learner", 6)
    log.commit("evaluator", 10)
    log.commit("learner", 7)
    assert log.committed("learner") == 7
    assert log.consumers() == {"evaluator": 10, "learner": 7}
    with backend.open() as elsewhere:
        assert elsewhere.committed("learner") == 7
    with pytest.raises(ValueError, match="outside the log"):
        log.commit("learner", 11)
    with pytest.raises(ValueError, match="outside the log"):
        log.commit("learner", -1)
    with pytest.raises(ValueError, match="name is required"):
        log.commit("", 1)
    assert log.committed("learner") == 7


def test_iter_batches_covers_the_log_in_chunks(log):
    log.append(_events(25))
    chunks = list(log.iter_batches(start=3, size=10))
    assert [first for first, _ in chunks] == [3, 13, 23]
    assert EventBatch.concat([chunk for _, chunk in chunks]).equals(_events(22, start=3))
    with pytest.raises(ValueError, match="size"):
        list(log.iter_batches(size=0))


def test_catalog_upsert_adds_items_to_the_index_and_replaces_metadata(log):
    log.append(_events(3))
    assert log.upsert_catalog(Catalog.from_records([])) == 0
    written = log.upsert_catalog(
        Catalog.from_records([{"item": "i1", "title": "Old"}, {"item": "new", "text": "t"}])
    )
    log.upsert_catalog(
        Catalog.from_records(
            [{"item": "i1", "title": "New", "categories": ["Drama"], "attributes": {"year": 1977}}]
        )
    )
    catalog = {r["item"]: r for r in log.catalog().records()}
    assert written == 2 and set(catalog) == {"i1", "new"}
    assert catalog["i1"]["title"] == "New" and catalog["i1"]["categories"] == ["Drama"]
    assert catalog["i1"]["attributes"] == {"year": 1977}
    assert catalog["new"]["title"] == "" and catalog["new"]["text"] == "t"
    assert "new" in log.item_index()  # recommendable before any event
    assert log.item_index().lookup(["new"]).tolist() == [3]  # after i0, i1, i2
    assert log.stats()["items_with_metadata"] == 2


def test_quarantine_keeps_rejected_rows(log):
    assert log.quarantine(Rejected.empty()) == 0
    rejected = Rejected(
        source=["f.csv", "f.csv", "http"],
        line=[3, 9, 0],
        reason=["missing_id", "duplicate", "missing_id"],
        field=["user", "", "item"],
        detail=["user id is empty", "exact copy", "item id is empty"],
        raw=['{"user": ""}', "{}", '{"item": ""}'],
    )
    assert log.quarantine(rejected) == 3
    assert log.rejected_counts() == {"duplicate": 1, "missing_id": 2}
    assert log.rejected().records() == rejected.records()  # oldest first, every field
    back = log.rejected(reason="missing_id")
    assert back.records() == [rejected.records()[0], rejected.records()[2]]
    assert log.rejected(limit=1).records() == [rejected.records()[0]]
    assert len(log.rejected(reason="unknown")) == 0


def test_stats_count_everything(log):
    log.append(_events(12), key="a")
    log.append(_events(2, start=12), key="b")
    log.upsert_catalog(Catalog.from_records([{"item": "i0", "title": "Zero"}]))
    log.quarantine(Rejected(["f"], [1], ["duplicate"], [""], ["copy"], ["{}"]))
    log.commit("learner", 5)
    stats = log.stats()
    assert {key: stats[key] for key in ("events", "users", "items", "batches")} == {
        "events": 14,
        "users": 7,
        "items": 11,
        "batches": 2,
    }
    assert (stats["items_with_metadata"], stats["quarantined"]) == (1, 1)
    assert stats["consumers"] == {"learner": 5}


def test_bad_offset_ranges(log):
    with pytest.raises(ValueError, match="bad offset range"):
        log.read(-1)
    with pytest.raises(ValueError, match="bad offset range"):
        log.read(5, 2)


# ---------------------------------------------------------------------- the factory


def test_open_log_picks_the_backend_from_the_target(tmp_path):
    with open_log(tmp_path / "e.db") as log:
        assert type(log) is EventLog
    with pytest.raises(ValueError, match="for PostgreSQL"):
        open_log(tmp_path / "e.db", schema="other")


def test_open_log_opens_postgresql_urls(postgres_url, postgres_schema):
    from lifelong_rec.store import PostgresEventLog

    with open_log(postgres_url, schema=postgres_schema) as log:
        assert type(log) is PostgresEventLog and log.schema == postgres_schema


def test_importing_the_store_does_not_import_psycopg():
    code = "import sys, lifelong_rec.store; print('psycopg' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_url_without_psycopg_names_the_extra(monkeypatch):
    monkeypatch.delitem(sys.modules, "lifelong_rec.store.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(ImportError, match=r"lifelong-rec\[postgres\]"):
        open_log("postgresql://postgres@127.0.0.1:5432/test")


# ---------------------------------------------------------------------- PostgreSQL only


def test_concurrent_writers_never_make_a_reader_skip_a_late_commit(
    postgres_url, postgres_schema, monkeypatch
):
    """4 writers (own connections) append while a consumer follows from its offset to the end:
    it must see every event once, in offset order. Each append sleeps a random moment between
    taking its offsets and committing, so with offsets handed out before commit (a sequence) a
    later batch would often commit first and the consumer would step over the earlier one."""
    from lifelong_rec.store import postgres

    n_writers, n_batches, batch_size = 4, 25, 40
    context_json = postgres._context_json
    jitter = random.Random(0)

    def slow_context_json(events):
        time.sleep(jitter.uniform(0, 0.004))  # inside the transaction, after the offsets
        return context_json(events)

    monkeypatch.setattr(postgres, "_context_json", slow_context_json)
    open_log(postgres_url, schema=postgres_schema).close()  # migrate once, before the race
    appended: dict[int, list] = {writer: [] for writer in range(n_writers)}
    errors: list[BaseException] = []
    writers_done = threading.Event()

    def write(writer: int) -> None:
        try:
            with open_log(postgres_url, schema=postgres_schema) as log:
                for batch in range(n_batches):
                    # value = writer * 10^6 + batch * 10^3 + row: which event it is
                    values = writer * 1e6 + batch * 1e3 + np.arange(batch_size)
                    events = EventBatch.from_columns(
                        [f"w{writer}-u{v % 13}" for v in range(batch_size)],
                        [f"i{v % 17}" for v in range(batch_size)],
                        [T] * batch_size,
                        "rating",
                        values,
                    )
                    appended[writer].append(log.append(events, key=f"w{writer}-b{batch}"))
        except BaseException as error:
            errors.append(error)

    seen: list[np.ndarray] = []
    reads_past_the_start = 0

    def consume() -> None:
        nonlocal reads_past_the_start
        try:
            with open_log(postgres_url, schema=postgres_schema) as log:
                position = log.committed("follower")
                while True:
                    finished = writers_done.is_set()  # before reading the end: no race
                    end = log.end_offset
                    events = log.read(position, end)
                    assert len(events) == end - position, "a hole below the end offset"
                    if len(events):
                        seen.append(events.value)
                        reads_past_the_start += 1
                        log.commit("follower", end)
                        position = end
                    if finished:
                        return
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(writer,)) for writer in range(n_writers)]
    consumer = threading.Thread(target=consume)
    consumer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    writers_done.set()
    consumer.join(timeout=120)
    assert not errors, errors
    total = n_writers * n_batches * batch_size
    values = np.concatenate(seen)
    expected = {w * 1e6 + b * 1e3 + r for w in range(n_writers) for b in range(n_batches)
                for r in range(batch_size)}  # fmt: skip
    assert len(values) == total and set(values.tolist()) == expected  # each once, none missed
    assert reads_past_the_start > 1  # the consumer really read while the writers wrote
    # in offset order: every append's events are where its offsets say, in the batch's order
    for writer, batches in appended.items():
        for batch, landed in enumerate(batches):
            chunk = values[landed.first_offset : landed.next_offset]
            assert chunk.tolist() == (writer * 1e6 + batch * 1e3 + np.arange(batch_size)).tolist()
    offsets = sorted(a.first_offset for batches in appended.values() for a in batches)
    assert offsets == list(range(0, total, batch_size))  # contiguous, no gaps


def test_a_newer_schema_is_refused_naming_both_versions(postgres_url, postgres_schema):
    import psycopg

    from lifelong_rec.store.postgres import SCHEMA_VERSION, SchemaVersionError

    open_log(postgres_url, schema=postgres_schema).close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            f"INSERT INTO {postgres_schema}.schema_version VALUES (%s, 'future', 0)".encode(),
            (SCHEMA_VERSION + 1,),
        )
    message = f"at version {SCHEMA_VERSION + 1}, newer than version {SCHEMA_VERSION}"
    with pytest.raises(SchemaVersionError, match=message):
        open_log(postgres_url, schema=postgres_schema)


def test_opens_at_once_apply_each_migration_once(postgres_url, postgres_schema):
    import psycopg

    from lifelong_rec.store.postgres import MIGRATIONS, PostgresEventLog

    n_opens = 4
    start = threading.Barrier(n_opens)
    applied: list[tuple[int, ...]] = []
    errors: list[BaseException] = []

    def open_and_close() -> None:
        try:
            start.wait(timeout=30)
            log = PostgresEventLog(postgres_url, postgres_schema)
            applied.append(log.applied_migrations)
            log.close()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_and_close) for _ in range(n_opens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    versions = tuple(version for version, _, _ in MIGRATIONS)
    assert sorted(applied) == [()] * (n_opens - 1) + [versions]
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            f"SELECT version FROM {postgres_schema}.schema_version ORDER BY version".encode()
        ).fetchall()
    assert [version for (version,) in rows] == list(versions)


def test_the_readable_view_shows_external_ids(postgres_url, postgres_schema):
    import psycopg

    with open_log(postgres_url, schema=postgres_schema) as log:
        log.append(EventBatch.from_columns(["alice"], ["Star Wars"], [T], "rating", [5.0]))
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute(
            'SELECT "user", item, time, kind, value FROM '
            f"{postgres_schema}.events_readable".encode()
        ).fetchone()
    assert row == ("alice", "Star Wars", "2023-11-14T22:13:20.000Z", "rating", 5.0)


@pytest.mark.parametrize(
    ("arguments", "error", "pattern"),
    [
        ({"schema": "Public"}, ValueError, "lower-case letters"),
        ({"schema": "a;drop table x"}, ValueError, "lower-case letters"),
        ({"schema": "ok", "pool_size": 0}, ValueError, "pool_size"),
    ],
)
def test_bad_arguments(arguments, error, pattern):
    pytest.importorskip("psycopg")
    from lifelong_rec.store.postgres import PostgresEventLog

    with pytest.raises(error, match=pattern):
        PostgresEventLog("postgresql://nobody@127.0.0.1:1/none", **arguments)
