"""The event schema: kinds and weights, id indexes, columnar batches, the catalog."""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import Annotated

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import StringConstraints, TypeAdapter, ValidationError

from lifelong_rec.events import (
    KIND_NAMES,
    Catalog,
    EventBatch,
    EventWeights,
    IdIndex,
    Kind,
    as_ids,
    kind_codes,
    kind_names,
)
from lifelong_rec.events.ids import (
    FORBIDDEN_ID_RANGES,
    ID_PATTERN,
    has_forbidden_characters,
    id_problem,
)

# ------------------------------------------------------------------------------ kinds, weights


def test_kind_codes_round_trip_and_unknown_is_minus_one():
    codes = kind_codes(np.array([*KIND_NAMES, "hover", ""]))
    assert codes[: len(KIND_NAMES)].tolist() == list(range(len(KIND_NAMES)))
    assert codes[-2:].tolist() == [-1, -1]
    assert kind_names(codes[: len(KIND_NAMES)]).tolist() == list(KIND_NAMES)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (Kind.VIEW, np.nan, 1.0),
        (Kind.CLICK, np.nan, 2.0),
        (Kind.CART, 19.99, 3.0),
        (Kind.PURCHASE, 19.99, 5.0),
        (Kind.RATING, 4.0, 4.0),
        (Kind.RATING, 0.5, 0.5),
        (Kind.WATCH, 0.0, 0.0),
        (Kind.WATCH, 300.0, 4.0 * (1 - np.exp(-1))),
        (Kind.WATCH, 1e6, 4.0),  # saturates
        (Kind.SKIP, np.nan, 0.0),
        (Kind.IMPRESSION, 0.0, 0.0),
    ],
)
def test_default_weights(kind, value, expected):
    weight = EventWeights().weights(np.array([kind]), np.array([value]))
    assert weight.dtype == np.float32
    assert weight[0] == pytest.approx(expected, rel=1e-6)


def test_weights_can_be_overridden():
    weights = EventWeights(view=0.5, purchase=10.0, rating=2.0)
    got = weights.weights(np.array([Kind.VIEW, Kind.PURCHASE, Kind.RATING]), np.array([0, 0, 3.0]))
    assert got.tolist() == [0.5, 10.0, 6.0]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"view": -1.0}, "EventWeights.view must be finite and >= 0"),
        ({"click": float("nan")}, "EventWeights.click must be finite"),
        ({"watch_saturation_seconds": 0.0}, "watch_saturation_seconds must be > 0"),
    ],
)
def test_bad_weights_are_rejected(arguments, message):
    with pytest.raises(ValueError, match=message):
        EventWeights(**arguments)


# ------------------------------------------------------------------------------ ids


def test_as_ids_canonicalises_ints_strings_and_whole_floats():
    assert as_ids([196, "196", 7.0]).tolist() == ["196", "196", "7"]
    assert as_ids(np.array([1, 2], dtype=np.int32)).tolist() == ["1", "2"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.5], "whole numbers"),
        ([None], "not an id"),
        ([True, "a"], "not an id"),
        (["a\x00"], "NUL"),
        (np.array([np.nan]), "whole numbers"),
    ],
)
def test_as_ids_rejects_non_ids(values, message):
    with pytest.raises(ValueError, match=message):
        as_ids(values)


def _forbidden(code: int) -> bool:
    return any(low <= code <= high for low, high in FORBIDDEN_ID_RANGES)


def test_forbidden_id_characters_cover_every_control_and_invisible_character():
    # Ids with zero-width spaces or bidi controls looked equal to others and were not; ids
    # from invalid UTF-8 (U+FFFD) collapsed into one.
    categories = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    missed = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in categories and not _forbidden(code)
    ]
    assert missed == [], f"add to FORBIDDEN_ID_RANGES (Unicode {unicodedata.unidata_version})"
    assert _forbidden(0xFFFD)
    # nothing visible is forbidden: every forbidden character is one of those categories,
    # U+FFFD, or unassigned in this Python's Unicode (assigned by a later version)
    allowed = categories | {"Cn"}
    extra = [
        f"U+{code:04X}"
        for low, high in FORBIDDEN_ID_RANGES
        for code in range(low, high + 1)
        if code != 0xFFFD and unicodedata.category(chr(code)) not in allowed
    ]
    assert extra == []


_SAMPLES = ["u1", "café", "東京", "user 1", "👩", "a-b_c.d", "a\u200bb", "\u202eabc", "a\ufffd",
            "a\x85", "\u2028", "x\U000e0041", "\U0001d173", "a\x00b", "\t"]  # fmt: skip


_API_ID = TypeAdapter(Annotated[str, StringConstraints(pattern=ID_PATTERN)])


@pytest.mark.parametrize("text", _SAMPLES)
def test_the_id_pattern_of_the_api_and_the_rule_of_files_agree(text):
    # The API checks ids with ID_PATTERN (pydantic's Rust regex), files with the Python
    # rule: one list of ranges makes both.
    try:
        _API_ID.validate_python(text)
        valid_over_http = True
    except ValidationError:
        valid_over_http = False
    assert valid_over_http == (id_problem(text) is None)
    assert valid_over_http == (re.match(ID_PATTERN, text) is not None)  # OpenAPI's reading
    assert has_forbidden_characters(np.array([text])).tolist() == [not valid_over_http]


@given(st.lists(st.text(st.characters(blacklist_characters="\x00"), max_size=8), max_size=50))
def test_the_vectorised_check_agrees_with_the_rule_on_each_id(ids):
    # has_forbidden_characters only searches ids with a control or non-ASCII character
    expected = [id_problem(text) is not None for text in ids]
    assert has_forbidden_characters(np.array(ids, dtype=str)).tolist() == expected


def test_id_problem_names_the_character():
    assert id_problem("adm\u200bin") == "holds U+200B, a control or invisible character"
    assert id_problem("caf\ufffd") == "holds U+FFFD, the mark of invalid UTF-8"
    assert id_problem("a\udc80") == "holds U+DC80, a lone surrogate (invalid UTF-16)"
    assert id_problem("café") is None


_ID_TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=6)


@given(st.lists(st.lists(_ID_TEXT, max_size=20), max_size=8))
def test_id_index_assigns_stable_dense_indexes_in_order_of_first_sight(batches):
    index = IdIndex()
    expected: dict[str, int] = {}
    for batch in batches:
        got = index.add(batch)
        for external in batch:
            expected.setdefault(external, len(expected))
        assert got.tolist() == [expected[e] for e in batch]
    assert len(index) == len(expected)
    assert index.to_array().tolist() == list(expected)
    assert index.lookup(list(expected)).tolist() == list(range(len(expected)))


def test_id_index_lookup_unknown_and_ids_bounds():
    index = IdIndex(["a", "b"])
    assert index.lookup(["b", "nope", "a"]).tolist() == [1, -1, 0]
    assert "a" in index and "zz" not in index
    with pytest.raises(IndexError, match="out of range"):
        index.ids([2])


def test_id_index_keeps_long_ids_whole():
    # Guards a bug: adding to ids of a narrower width once truncated the longer new ones.
    index = IdIndex(["a"])
    index.add(["a-much-longer-id"])
    assert index.lookup(["a-much-longer-id"]).tolist() == [1]


def test_id_index_grows_into_spare_room_and_copies_are_apart():
    """A stream of new ids one at a time copies the id array a logarithmic number of times
    (not once per id), ids of any width survive widening, and a copy does not see what is
    added to its original afterwards (nor the original the copy's)."""
    index = IdIndex()
    buffers = set()
    for n in range(300):
        index.add([f"u{n}" if n % 50 else f"user-with-a-long-id-{n}"])
        buffers.add(index._ids.base.ctypes.data)
    assert len(buffers) <= 12  # doublings and a few widenings, not 300 copies
    names = [f"u{n}" if n % 50 else f"user-with-a-long-id-{n}" for n in range(300)]
    assert index.to_array().tolist() == names
    assert index.lookup(names[::-1]).tolist() == list(range(299, -1, -1))
    clone = index.copy()
    index.add(["only-in-the-original"])
    clone.add(["only-in-the-copy"])
    assert clone.lookup(["only-in-the-original", "only-in-the-copy"]).tolist() == [-1, 300]
    assert index.lookup(["only-in-the-original", "only-in-the-copy"]).tolist() == [300, -1]
    assert index.ids([300]).tolist() == ["only-in-the-original"]


def test_id_index_saves_and_loads(tmp_path):
    index = IdIndex(["x", "7", "é"])
    index.save(tmp_path / "ids.json")
    assert IdIndex.load(tmp_path / "ids.json") == index


def test_id_index_load_rejects_other_format_version(tmp_path):
    (tmp_path / "ids.json").write_text('{"format_version": 99, "ids": []}')
    with pytest.raises(ValueError, match="format version 99"):
        IdIndex.load(tmp_path / "ids.json")


# ------------------------------------------------------------------------------ batches


def _batch() -> EventBatch:
    return EventBatch.from_columns(
        user=[1, 2, 1],
        item=["a", "b", "c"],
        timestamp=[30.0, 10.0, 20.0],
        kind=["view", "rating", "purchase"],
        value=[np.nan, 4.0, 9.5],
        context={"position": [1, 2, 3], "device": ["ios", "web", "ios"]},
    )


def test_from_columns_builds_typed_columns_with_weights():
    batch = _batch()
    assert batch.user.tolist() == ["1", "2", "1"]
    assert batch.kind_names.tolist() == ["view", "rating", "purchase"]
    assert batch.weight.tolist() == [1.0, 4.0, 5.0]
    assert batch.context["position"].dtype == np.float64
    assert batch.context["device"].tolist() == ["ios", "web", "ios"]
    assert batch.policy.tolist() == ["", "", ""]
    assert np.isnan(batch.propensity).all() and not batch.has_decisions


def test_batches_are_immutable():
    batch = _batch()
    with pytest.raises(ValueError, match="read-only"):
        batch.user[0] = "x"
    with pytest.raises(AttributeError):
        batch.user = batch.item  # type: ignore[misc]


def test_batch_copies_its_input():
    users = np.array(["u1", "u2"])
    batch = EventBatch.from_columns(users, ["a", "b"], [1.0, 2.0])
    users[0] = "changed"
    assert batch.user[0] == "u1"


def test_sorted_by_time_is_stable():
    batch = EventBatch.from_columns(["a", "b", "c", "d"], ["i"] * 4, [2.0, 1.0, 2.0, 1.0])
    assert batch.sorted_by_time().user.tolist() == ["b", "d", "a", "c"]


def test_take_and_concat_fill_missing_context():
    batch = _batch()
    plain = EventBatch.from_columns(["9"], ["z"], [5.0], "click")
    joined = EventBatch.concat([batch.take(np.array([2, 0])), plain])
    assert joined.user.tolist() == ["1", "1", "9"]
    assert np.isnan(joined.context["position"][2])
    assert joined.context["device"].tolist() == ["ios", "ios", ""]
    assert EventBatch.concat([]).equals(EventBatch.empty())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"kind": "hover"}, "kind: 'hover' is not one of"),
        ({"kind": ["view"]}, "one entry per event"),
        ({"value": [1.0, 2.0, 3.0]}, "one entry per event"),
        ({"timestamp": [1.0]}, r"timestamp: expected shape \(2,\)"),
        ({"context": {"pos": [1]}}, r"context\['pos'\]: expected shape \(2,\)"),
        ({"propensity": [0.5]}, r"propensity: expected shape \(2,\)"),
    ],
)
def test_bad_batches_name_the_field(arguments, message):
    base = {"user": ["a", "b"], "item": ["x", "y"], "timestamp": [1.0, 2.0]}
    with pytest.raises(ValueError, match=message):
        EventBatch.from_columns(**(base | arguments))


def test_unknown_kind_code_is_rejected():
    batch = _batch()
    with pytest.raises(ValueError, match="not a known event kind"):
        EventBatch(
            user=batch.user,
            item=batch.item,
            timestamp=batch.timestamp,
            kind=np.array([0, 1, 200]),
            value=batch.value,
            weight=batch.weight,
        )


# ------------------------------------------------------------------------------ catalog


def test_catalog_records_round_trip_and_titles():
    catalog = Catalog.from_records(
        [
            {"item": 1, "title": "Toy Story (1995)", "categories": ["Animation"]},
            {"item": "b", "text": "no title", "attributes": {"price": 3.5}},
        ]
    )
    assert len(catalog) == 2
    assert Catalog.from_records(catalog.records()).records() == catalog.records()
    assert catalog.titles_of(["1", "b", "zzz"]).tolist() == ["Toy Story (1995)", "", ""]


def test_catalog_rejects_duplicate_items():
    with pytest.raises(ValueError, match="unique"):
        Catalog.from_records([{"item": "a"}, {"item": "a"}])


def test_to_records_gives_the_rows_post_events_reads():
    batch = EventBatch.from_columns(
        ["u1", "u2"], ["i1", "i2"], [1.7e9, 1.7e9 + 1], ["view", "rating"], [float("nan"), 4.0]
    )
    assert batch.to_records() == [
        {"user": "u1", "item": "i1", "kind": "view", "timestamp": 1.7e9},
        {"user": "u2", "item": "i2", "kind": "rating", "timestamp": 1.7e9 + 1, "value": 4.0},
    ]
