"""Cleaning: every rejection reason, normalisation, and nothing lost silently."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifelong_rec.data import REASONS, CleaningConfig, clean, collapse_repeats, parse_timestamps
from lifelong_rec.events import EventBatch, EventWeights, Kind

NOW = 1_800_000_000.0  # 2027-01-15
T = 1_700_000_000  # 2023-11-14


def _good(**overrides: object) -> dict[str, object]:
    return {
        "user": "u1",
        "item": "i1",
        "timestamp": str(T),
        "kind": "view",
        "value": "",
    } | overrides


def _clean(rows: list[dict[str, object]], **config: object):
    return clean(pd.DataFrame(rows), source="test.csv", config=CleaningConfig(now=NOW, **config))


@pytest.mark.parametrize(
    ("bad_row", "reason", "field", "detail"),
    [
        (_good(user=""), "missing_id", "user", "user id is empty"),
        (_good(user="   "), "missing_id", "user", "user id is empty"),
        (_good(item=None), "missing_id", "item", "item id is empty"),
        (_good(item="x" * 300), "id_too_long", "item", "longer than 256"),
        # Invisible characters made ids that look alike and are not; U+FFFD is what invalid
        # UTF-8 decodes to, so two different broken ids became one.
        (_good(user="adm\u200bin"), "invalid_id", "user", "holds U+200B, a control or invisible"),
        (_good(user="u\u202e1"), "invalid_id", "user", "holds U+202E"),  # bidi override
        (_good(item="caf\ufffd"), "invalid_id", "item", "holds U+FFFD, the mark of invalid UTF-8"),
        (_good(item="a\x85b"), "invalid_id", "item", "holds U+0085"),  # C1 control
        (_good(item="a\u2028b"), "invalid_id", "item", "holds U+2028"),  # line separator
        (_good(timestamp="yesterday"), "bad_timestamp", "timestamp", "cannot read 'yesterday'"),
        (_good(timestamp=""), "bad_timestamp", "timestamp", "cannot read"),
        (_good(timestamp="1989-12-31T23:59:59Z"), "timestamp_out_of_range", "timestamp", "1990"),
        (_good(timestamp=str(int(NOW + 2 * 86400))), "timestamp_out_of_range", "timestamp",
         "future"),
        (_good(kind="hover"), "unknown_kind", "kind", "'hover' is not a known event kind"),
        (_good(kind="rating", value=""), "bad_value", "value", "needs a value"),
        (_good(kind="watch", value=""), "bad_value", "value", "needs a value"),
        (_good(kind="cart", value="abc"), "bad_value", "value", "'abc' is not a finite number"),
        (_good(kind="cart", value="inf"), "bad_value", "value", "'inf' is not a finite number"),
        (_good(kind="rating", value="11"), "value_out_of_range", "value", "rating outside"),
        (_good(kind="rating", value="-1"), "value_out_of_range", "value", "rating outside"),
        (_good(kind="watch", value="90000"), "value_out_of_range", "value", "watch time above"),
        (_good(kind="purchase", value="-5"), "value_out_of_range", "value", "negative"),
        (_good(propensity="1.5"), "bad_propensity", "propensity", "not a probability"),
        (_good(propensity="p"), "bad_propensity", "propensity", "not a probability"),
    ],
)  # fmt: skip
def test_each_bad_row_is_rejected_with_its_reason(bad_row, reason, field, detail):
    good = _good(user="u2", propensity="0.5") if "propensity" in bad_row else _good(user="u2")
    cleaned = _clean([good, bad_row])
    assert len(cleaned.events) == 1
    assert cleaned.events.user.tolist() == ["u2"]
    assert cleaned.report.rejected == {reason: 1}
    assert cleaned.rejected.reason.tolist() == [reason]
    assert cleaned.rejected.field.tolist() == [field]
    assert detail in cleaned.rejected.detail[0]
    assert cleaned.rejected.line.tolist() == [2]
    assert cleaned.rejected.source.tolist() == ["test.csv"]
    raw = json.loads(cleaned.rejected.raw[0])
    assert raw["item"] == bad_row["item"]  # the original row is kept, unparsed


def test_exact_duplicates_keep_the_first():
    rows = [_good(), _good(), _good(kind="click"), _good()]
    cleaned = _clean(rows)
    assert cleaned.events.kind_names.tolist() == ["view", "click"]
    assert cleaned.report.rejected == {"duplicate": 2}
    assert cleaned.rejected.line.tolist() == [2, 4]


def test_duplicates_can_be_kept():
    assert len(_clean([_good(), _good()], drop_duplicates=False).events) == 2


def test_bot_burst_rejects_the_whole_second_of_that_user_only():
    burst = [_good(user="bot", item=f"i{k}", timestamp=f"{T}.{k:02d}") for k in range(5)]
    calm = [_good(user="human", item=f"i{k}", timestamp=f"{T}.{k:02d}") for k in range(4)]
    later = [_good(user="bot", item="x", timestamp=str(T + 5))]
    cleaned = _clean(burst + calm + later, max_events_per_second=4)
    assert cleaned.report.rejected == {"bot_burst": 5}
    assert sorted(cleaned.events.user.tolist()) == ["bot"] + ["human"] * 4
    assert "5 events in one second (limit 4)" in cleaned.rejected.detail[0]
    assert len(_clean(burst, max_events_per_second=None).events) == 5


def test_first_reason_wins_and_each_row_counts_once():
    cleaned = _clean([_good(user="", timestamp="bad", kind="hover")])
    assert cleaned.report.rejected == {"missing_id": 1}
    assert cleaned.report.rejected_total == 1


def test_timestamps_in_seconds_milliseconds_and_iso():
    rows = [
        _good(item="s", timestamp=str(T)),
        _good(item="iso", timestamp="2023-11-14T22:13:21Z"),
        _good(item="iso-offset", timestamp="2023-11-14 23:13:22+01:00"),
    ]
    seconds = _clean(rows).events
    assert dict(zip(seconds.item, seconds.timestamp, strict=True)) == {
        "s": T, "iso": T + 1, "iso-offset": T + 2,
    }  # fmt: skip
    millis = _clean([_good(timestamp=str(T * 1000 + 500))]).events
    assert millis.timestamp.tolist() == [T + 0.5]


@pytest.mark.parametrize(
    ("values", "unit", "expected"),
    [
        (pd.Series([T, T + 1]), "auto", [T, T + 1]),
        (pd.Series([T * 1000, T * 1000 + 1]), "auto", [T, T + 0.001]),
        (pd.Series([T * 10**6]), "auto", [T]),
        (pd.Series([T * 10**9]), "auto", [T]),
        (pd.Series([T * 1000]), "ms", [T]),
        (pd.Series(pd.to_datetime([T], unit="s")), "auto", [T]),
        (pd.Series(["2023-11-14T22:13:20.500Z", None, "x"]), "auto", [T + 0.5, np.nan, np.nan]),
    ],
)
def test_parse_timestamps(values, unit, expected):
    np.testing.assert_allclose(parse_timestamps(values, unit), expected, rtol=0, atol=1e-3)


def test_kinds_are_case_insensitive_aliased_and_defaulted():
    rows = [_good(kind="CLICK"), _good(kind="addtocart", item="2"), _good(kind="", item="3")]
    cleaned = _clean(rows, default_kind="click", kind_aliases={"like": "purchase"})
    assert cleaned.events.kind_names.tolist() == ["click", "cart", "click"]
    liked = _clean([_good(kind="like")], kind_aliases={"like": "purchase"})
    assert liked.events.kind_names.tolist() == ["purchase"]


def test_weights_are_normalised_from_kinds_and_values():
    rows = [_good(kind="rating", value="4"), _good(kind="purchase", value="20", item="2")]
    cleaned = _clean(rows, weights=EventWeights(purchase=8.0))
    assert cleaned.events.weight.tolist() == [4.0, 8.0]


def test_accepted_events_are_sorted_by_time_stably():
    rows = [_good(item="late", timestamp=str(T + 9)), _good(item="a"), _good(item="b")]
    assert _clean(rows).events.item.tolist() == ["a", "b", "late"]
    assert _clean(rows, sort_by_time=False).events.item.tolist() == ["late", "a", "b"]


def test_collapse_merges_repeats_within_the_window():
    rows = [
        _good(kind="watch", value="10", timestamp=str(T)),
        _good(kind="watch", value="20", timestamp=str(T + 30)),
        _good(kind="watch", value="40", timestamp=str(T + 50)),  # 20 s after the previous
        _good(kind="watch", value="5", timestamp=str(T + 500)),  # a new run
        _good(kind="view", timestamp=str(T + 10)),  # another kind: never merged
    ]
    cleaned = _clean(rows, collapse_window=60.0)
    events = cleaned.events
    assert cleaned.report.collapsed == 2
    assert events.kind_names.tolist() == ["watch", "view", "watch"]
    assert events.timestamp.tolist() == [T, T + 10, T + 500]
    np.testing.assert_array_equal(events.value, [40.0, np.nan, 5.0])  # the run's last value
    single = EventWeights().weights(np.full(3, Kind.WATCH), np.array([10.0, 20.0, 40.0])).sum()
    assert events.weight[0] == pytest.approx(single)


def test_collapse_repeats_on_a_batch_is_a_no_op_without_repeats():
    batch = EventBatch.from_columns(["a", "b"], ["x", "x"], [1.0, 2.0])
    merged, count = collapse_repeats(batch, 10.0)
    assert count == 0 and merged.equals(batch)


def test_context_columns_keep_numbers_and_text():
    frame = pd.DataFrame([_good(), _good(item="2")]).assign(pos=["1", "2"], dev=["ios", None])
    cleaned = clean(frame, context_columns=["pos", "dev"], config=CleaningConfig(now=NOW))
    assert cleaned.events.context["pos"].tolist() == [1.0, 2.0]
    assert cleaned.events.context["dev"].tolist() == ["ios", ""]


@pytest.mark.parametrize("cells", [["1", "inf"], [1.0, float("-inf")], ["1", "-Infinity"]])
def test_infinite_context_values_are_rejected(cells):
    # Infinite context values were accepted and stored as null (the log keeps context as JSON).
    frame = pd.DataFrame([_good(), _good(item="2")]).assign(pos=cells)
    cleaned = clean(frame, context_columns=["pos"], config=CleaningConfig(now=NOW))
    assert cleaned.events.context["pos"].tolist() == [1.0]
    assert cleaned.report.rejected == {"bad_context": 1}
    assert (cleaned.rejected.field[0], cleaned.rejected.line[0]) == ("pos", 2)
    assert "not finite" in cleaned.rejected.detail[0]


def test_plain_unicode_ids_are_kept():
    ids = ["café", "東京", "user 1", "👩", "ünïcödé-Ω"]
    cleaned = _clean([_good(user=user, item=str(n)) for n, user in enumerate(ids)])
    assert sorted(cleaned.events.user.tolist()) == sorted(ids)


def test_missing_required_columns_reject_every_row():
    cleaned = clean(pd.DataFrame({"user": ["a"], "item": ["b"]}), config=CleaningConfig(now=NOW))
    assert cleaned.report.rejected == {"bad_timestamp": 1}


def test_report_formats_and_serialises():
    cleaned = _clean([_good(), _good(user=""), _good(kind="hover", user="u3")])
    text = cleaned.report.format()
    assert "missing_id" in text and "line 2: user id is empty" in text
    payload = cleaned.report.to_dict()
    assert payload["rows_read"] == 3 and payload["accepted"] == 1
    assert payload["rejected"] == {"missing_id": 1, "unknown_kind": 1}
    json.dumps(payload)


def test_rejected_rows_write_to_jsonl(tmp_path):
    cleaned = _clean([_good(user="")])
    cleaned.rejected.write_jsonl(tmp_path / "rejected.jsonl")
    records = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert records[0]["reason"] == "missing_id" and records[0]["line"] == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"default_kind": "hover"}, "default_kind: 'hover'"),
        ({"kind_aliases": {"like": "love"}}, r"kind_aliases\['like'\]"),
        ({"time_unit": "days"}, "time_unit"),
        ({"rating_range": (5.0, 1.0)}, "rating_range"),
        ({"max_events_per_second": 0}, "max_events_per_second"),
        ({"collapse_window": -1.0}, "collapse_window"),
        ({"max_id_length": 0}, "max_id_length"),
    ],
)
def test_bad_config_is_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        CleaningConfig(**arguments)


_CELLS = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.sampled_from(["1", str(T), "2023-01-01", "-1", "nan", "inf", "rating", "view", "watch"]),
    st.floats(allow_nan=True, allow_infinity=True),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries({f: _CELLS for f in ("user", "item", "timestamp", "kind", "value")}),
        max_size=30,
    )
)
def test_nothing_is_lost_silently(rows):
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp", "kind", "value"])
    cleaned = clean(frame, config=CleaningConfig(now=NOW))
    assert len(cleaned.events) + len(cleaned.rejected) == len(frame)
    assert cleaned.report.accepted + cleaned.report.rejected_total == cleaned.report.rows_read
    assert set(cleaned.report.rejected) <= set(REASONS)
    assert np.isfinite(cleaned.events.timestamp).all()
    assert (cleaned.events.user != "").all() and (cleaned.events.item != "").all()
