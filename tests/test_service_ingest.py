"""``POST /events`` against the real app (FastAPI's TestClient, lifespan and all): one input
contract with files (issue #13), accepted row by row."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from lifelong_rec.data import load
from lifelong_rec.service import Settings, create_app
from lifelong_rec.service import ingest as ingest_module
from lifelong_rec.store import EventLog

MAX_BATCH = 50
T = 1_700_000_000.0  # 2023-11-14, seconds


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(db=db, max_batch=MAX_BATCH))) as http:
        yield http


def post(client: TestClient, body: object) -> tuple[int, dict]:
    """POST /events with ``body`` as JSON (NaN and Infinity written as JavaScript does)."""
    response = client.post(
        "/events", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    return response.status_code, response.json()


def quarantined(db: Path) -> list[dict[str, object]]:
    with EventLog(db) as log:
        return log.rejected().records()


def appended(db: Path) -> list[tuple[str, str]]:
    with EventLog(db) as log:
        events = log.read()
    return list(zip(events.user.tolist(), events.item.tolist(), strict=True))


def counters(client: TestClient) -> dict[tuple[str, tuple], float]:
    text = client.get("/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("lifelong_rec_events_")
    }


# ------------------------------------------------------------------------------ row by row


# Rows that failed the row schema made the whole batch a 422: the good rows were lost with
# them, where `lifelong-rec ingest` quarantines a bad line and keeps the rest.
BAD_ROWS = [
    ({"item": "i"}, "user", "missing_id"),
    ({"user": "", "item": "i"}, "user", "missing_id"),
    ({"user": 5, "item": "i"}, "user", "invalid_id"),  # a number where an id belongs
    ({"user": "u", "item": ["i"]}, "item", "invalid_id"),
    ({"user": "u", "item": "i" * 257}, "item", "id_too_long"),
    ("not an event", "", "malformed_row"),
    ([{"user": "u", "item": "i"}], "", "malformed_row"),
    ({"user": "u", "item": "i", "colour": "red"}, "colour", "malformed_row"),
    ({"user": "u", "item": "i", "kind": "hug"}, "kind", "unknown_kind"),
    ({"user": "u", "item": "i", "kind": 3}, "kind", "unknown_kind"),
    ({"user": "u", "item": "i", "timestamp": "yesterday"}, "timestamp", "bad_timestamp"),
    ({"user": "u", "item": "i", "timestamp": True}, "timestamp", "bad_timestamp"),
    ({"user": "u", "item": "i", "timestamp": 1.0}, "timestamp", "timestamp_out_of_range"),
    ({"user": "u", "item": "i", "kind": "rating"}, "value", "bad_value"),
    ({"user": "u", "item": "i", "value": "x"}, "value", "bad_value"),
    ({"user": "u", "item": "i", "value": float("nan")}, "value", "bad_value"),
    ({"user": "u", "item": "i", "context": [1]}, "context", "bad_context"),
    ({"user": "u", "item": "i", "context": {"x": "y"}}, "context.x", "bad_context"),
    ({"user": "u", "item": "i", "context": {"a b": 1}}, "context.a b", "bad_context"),
    # A context feature named like a column overwrote the column (a forged propensity).
    ({"user": "u", "item": "i", "context": {"propensity": 1}}, "context.propensity", "bad_context"),
]  # fmt: skip


def test_bad_rows_are_quarantined_and_the_good_ones_appended(client: TestClient, db: Path) -> None:
    good = [{"user": "good", "item": f"i{n}", "timestamp": T + n} for n in range(3)]
    events = [good[0], *[row for row, _, _ in BAD_ROWS], good[1], good[2]]
    code, body = post(client, {"events": events})
    assert code == 200, body
    assert (body["accepted"], body["rejected"]) == (3, len(BAD_ROWS))
    got = [(r["index"], r["field"], r["reason"]) for r in body["rejections"]]
    assert got == [(1 + n, field, reason) for n, (_, field, reason) in enumerate(BAD_ROWS)]
    assert all(r["detail"] for r in body["rejections"])
    assert appended(db) == [("good", "i0"), ("good", "i1"), ("good", "i2")]


def test_the_rejection_index_finds_the_row_in_the_quarantine(client: TestClient, db: Path) -> None:
    # The quarantine kept a request's row under its 1-based line, the answer under its
    # 0-based index: one number, two meanings. Both are the 0-based index in "events" now.
    events = [
        {"user": "q", "item": "i0", "timestamp": T},
        {"user": "q", "item": "i1", "timestamp": 1.0},  # cleaning rejects it
        {"user": "q"},  # the schema rejects it
        {"user": "q", "item": "i3", "timestamp": T + 3},
    ]
    code, body = post(client, {"events": events, "key": "batch-q"})
    assert code == 200, body
    kept = {row["line"]: row for row in quarantined(db)}
    assert [r["index"] for r in body["rejections"]] == [1, 2]
    for rejection in body["rejections"]:
        row = kept[rejection["index"]]
        assert json.loads(row["raw"]) == events[rejection["index"]]  # the row as sent
        assert (row["reason"], row["field"], row["detail"]) == (
            rejection["reason"],
            rejection["field"],
            rejection["detail"],
        )
        assert row["source"] == "http key=batch-q"


def test_every_row_rejected_is_422_with_the_rows_listed(client: TestClient, db: Path) -> None:
    code, body = post(client, {"user": 5, "item": "i"})
    assert code == 422
    assert (body["accepted"], body["first_offset"], body["duplicate"]) == (0, None, False)
    assert body["rejections"] == [
        {
            "index": 0,
            "field": "user",
            "reason": "invalid_id",
            "detail": "user id must be a JSON string, not a number",
        }
    ]
    assert len(quarantined(db)) == 1


# ------------------------------------------------------------------------------ same as files


def test_iso_times_and_kind_aliases_give_the_events_a_file_gives(
    client: TestClient, db: Path, tmp_path: Path
) -> None:
    # POST /events refused ISO-8601 times and kind aliases (addtocart) that the CLI reads.
    rows = [
        {"user": "f1", "item": "a", "timestamp": "2024-05-01T10:00:00Z", "kind": "addtocart"},
        {"user": "f1", "item": "b", "timestamp": "2024-05-01T12:00:00+02:00", "kind": "BUY"},
        {"user": "f2", "item": "a", "timestamp": "2024-05-02", "kind": "rate", "value": 4.5},
        {"user": "f2", "item": "c", "timestamp": "2024-05-02T08:00:00.250Z", "kind": "play",
         "value": 120},
        {"user": "f3", "item": "c", "timestamp": T, "kind": "pageview"},
        {"user": "f3", "item": "d", "timestamp": T + 1, "kind": "transaction", "value": 9.99},
        {"user": "f3", "item": "e", "timestamp": "soon", "kind": "view"},  # rejected by both
        {"user": "f4", "item": "e", "timestamp": "2024-05-03T00:00:00Z", "kind": "hover"},
    ]  # fmt: skip
    code, body = post(client, {"events": rows})
    assert code == 200, body
    with EventLog(db) as log:
        over_http = log.read()

    path = tmp_path / "events.csv"
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, ["user", "item", "timestamp", "kind", "value"])
        writer.writeheader()
        writer.writerows(rows)
    from_file = load(path, "csv")  # the CLI's rules, as `lifelong-rec ingest` reads it

    assert body["accepted"] == len(from_file.events) == 6
    for column in ("user", "item", "timestamp", "kind", "value", "weight"):
        np.testing.assert_array_equal(
            getattr(over_http, column), getattr(from_file.events, column), err_msg=column
        )
    # a file's line 2 is the first row after the header; a request's index 0 is its first event
    lines = (from_file.rejected.line - 2).tolist()
    rejected_by_file = dict(zip(lines, from_file.rejected.reason.tolist(), strict=True))
    rejected_by_http = {r["index"]: r["reason"] for r in body["rejections"]}
    assert rejected_by_http == rejected_by_file == {6: "bad_timestamp", 7: "unknown_kind"}


# ------------------------------------------------------------------------------ retries


def test_a_retried_key_counts_and_quarantines_each_row_once(client: TestClient, db: Path) -> None:
    # A retried keyed batch counted its rejections twice in lifelong_rec_events_rejected.
    events = [
        {"user": "r", "item": "i0", "timestamp": T},
        {"user": "r", "item": "i1", "timestamp": 1.0},
        {"user": "r", "item": "i2", "colour": "red"},
    ]
    before = counters(client)
    first = post(client, {"events": events, "key": "retried"})
    after_first = counters(client)
    again = post(client, {"events": events, "key": "retried"})
    assert first[0] == again[0] == 200
    assert again[1]["duplicate"] and not first[1]["duplicate"]
    assert again[1]["first_offset"] == first[1]["first_offset"]
    assert again[1]["accepted"] == first[1]["accepted"] == 1
    assert again[1]["rejections"] == first[1]["rejections"]
    assert counters(client) == after_first  # nothing counted again
    ingested = ("lifelong_rec_events_ingested_total", ())
    assert after_first[ingested] - before.get(ingested, 0) == 1
    assert after_first[("lifelong_rec_events_rejected_total", (("reason", "malformed_row"),))] == 1
    assert (
        after_first[("lifelong_rec_events_rejected_total", (("reason", "timestamp_out_of_range"),))]
        == 1
    )
    assert len(quarantined(db)) == 2
    assert appended(db) == [("r", "i0")]


def test_a_retried_key_with_every_row_rejected_is_recognised(client: TestClient, db: Path) -> None:
    # Nothing was appended when every row was rejected, so the key was not recorded and a
    # retry quarantined and counted the rows again.
    events = [{"user": "z", "item": "i", "timestamp": 1.0}]
    first = post(client, {"events": events, "key": "all-bad"})
    after_first = counters(client)
    again = post(client, {"events": events, "key": "all-bad"})
    assert first[0] == again[0] == 422
    assert (first[1]["duplicate"], again[1]["duplicate"]) == (False, True)
    assert counters(client) == after_first
    assert len(quarantined(db)) == 1
    assert appended(db) == []


# ------------------------------------------------------------------------------ the body


def test_a_batch_over_the_limit_is_413_before_any_row_is_validated(
    client: TestClient, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 7.5 MB batch of 10,001 events was validated event by event, on the event loop (a
    # 1.3 s stall for every request), before its size was checked.
    def no_row_checks(*args: object) -> None:
        raise AssertionError("a row was validated")

    monkeypatch.setattr(ingest_module, "_check_rows", no_row_checks)
    code, body = post(client, {"events": [{"user": 5}] * (MAX_BATCH + 1), "key": 7})
    assert code == 413
    assert body["detail"] == f"events: {MAX_BATCH + 1} events, over the batch limit of {MAX_BATCH}"
    assert quarantined(db) == [] and appended(db) == []


BAD_BODIES = [
    (b"", r"^body: an event, or"),
    (b'{"user": "u", "item": "i"', r"^body: invalid JSON at character 25: Expecting ','"),
    (b'{"user": "\xff", "item": "i"}', r"^body: not UTF-8"),
    (b"[" * 100_000, r"^body: JSON nested too deeply"),
    (b"[]", r"^body: an event, or .*not a JSON array"),
    (b'"event"', r"^body: .*not a JSON string"),
    (b'{"events": []}', r"^events: at least one event"),
    (b'{"events": {"user": "u"}}', r"^events: a list of events, not a JSON object"),
    (b'{"events": [{"user": "u", "item": "i"}], "colour": 1}', r"^body: 'colour' is not a batch"),
    (b'{"events": [{"user": "u", "item": "i"}], "key": ""}', r"^key: .*at least 1 char"),
    (b'{"events": [{"user": "u", "item": "i"}], "key": 5}', r"^key: .*valid string"),
    (b'{"events": [{"user": "u", "item": "i"}], "key": "k\\u200b"}', r"^key: holds U\+200B"),
]


@pytest.mark.parametrize(("body", "pattern"), BAD_BODIES, ids=[b[:30] for b, _ in BAD_BODIES])
def test_a_body_no_row_can_be_read_from_is_422(
    client: TestClient, db: Path, body: bytes, pattern: str
) -> None:
    response = client.post("/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert re.search(pattern, response.json()["detail"]), response.json()
    assert quarantined(db) == [] and appended(db) == []


# ------------------------------------------------------------------------------ ids, context

INVISIBLE = ["\u200b", "\u200d", "\ufeff", "\u202e", "\u2066", "\u2028", "\x85", "\U000e0041"]


@pytest.mark.parametrize("character", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_ids_with_invisible_characters_are_rejected_in_the_body(
    client: TestClient, db: Path, character: str
) -> None:
    # "admin" and "adm\u200bin" look the same and were two users; a bidi override turns an
    # id around on screen.
    code, body = post(client, {"user": f"adm{character}in", "item": "i"})
    assert code == 422
    [rejection] = body["rejections"]
    assert (rejection["field"], rejection["reason"]) == ("user", "invalid_id")
    assert f"U+{ord(character):04X}" in rejection["detail"]


def test_lone_surrogates_are_rejected_in_the_body(client: TestClient, db: Path) -> None:
    body = b'{"events": [{"user": "a\\ud800", "item": "i"}, {"user": "b", "item": "i"}]}'
    response = client.post("/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    [rejection] = response.json()["rejections"]
    assert (rejection["index"], rejection["reason"]) == (0, "invalid_id")
    assert "surrogate" in rejection["detail"]
    assert json.loads(quarantined(db)[0]["raw"])["user"] == "a\ud800"  # kept, escaped


@pytest.mark.parametrize(
    "path",
    [
        "/users/a%FFb/recommendations",  # invalid UTF-8: decoded to U+FFFD
        "/users/a%E2%80%8Bb/recommendations",  # U+200B
        "/users/a%E2%80%AEb/recommendations",  # U+202E, right-to-left override
        "/items/a%FE/similar",
    ],
)
def test_ids_with_invalid_utf8_or_invisible_characters_are_rejected_in_paths(
    client: TestClient, path: str
) -> None:
    # Invalid percent-encoded bytes became U+FFFD: "a%FF" and "a%FE" were one item.
    response = client.get(path)
    assert response.status_code == 422, response.text
    assert "path." in response.json()["detail"]


def test_an_item_put_with_invalid_utf8_is_rejected_and_a_plain_unicode_one_kept(
    client: TestClient,
) -> None:
    assert client.put("/items/a%FF", json={"title": "x"}).status_code == 422
    assert client.put("/items/caf%C3%A9", json={"title": "café"}).status_code == 200
    assert client.get("/items/caf%C3%A9").json()["title"] == "café"


@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_an_infinite_context_value_is_rejected(client: TestClient, db: Path, value: float) -> None:
    # Infinite context values were stored as null (the log keeps context as JSON).
    events = [
        {"user": "c", "item": "i0", "timestamp": T, "context": {"pos": value}},
        {"user": "c", "item": "i1", "timestamp": T, "context": {"pos": 2}},
    ]
    code, body = post(client, {"events": events})
    assert code == 200, body
    [rejection] = body["rejections"]
    assert (rejection["index"], rejection["field"], rejection["reason"]) == (
        0,
        "context.pos",
        "bad_context",
    )
    with EventLog(db) as log:
        assert log.read().context["pos"].tolist() == [2.0]
