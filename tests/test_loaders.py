"""Loaders: CSV, JSON Lines, Parquet with column mappings; MovieLens layouts; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lifelong_rec.data import InputError, load, parse_mapping
from lifelong_rec.events import Kind

T = 1_700_000_000


def _write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# ------------------------------------------------------------------------------ CSV


def test_csv_with_a_column_mapping(tmp_path):
    path = _write(
        tmp_path / "events.csv",
        "userId,movieId,when,event,score,device\n"
        f"1,10,{T * 1000},rating,4,ios\n"
        f"2,11,{T * 1000 + 1500},click,,web\n",
    )
    data = load(
        path,
        "csv",
        mapping="user=userId,item=movieId,time=when,kind=event,value=score,context.device=device",
    )
    events = data.events
    assert events.user.tolist() == ["1", "2"]
    assert events.timestamp.tolist() == [T, T + 1.5]  # milliseconds detected
    assert events.kind.tolist() == [Kind.RATING, Kind.CLICK]
    assert events.weight.tolist() == [4.0, 2.0]
    assert events.context["device"].tolist() == ["ios", "web"]
    assert data.report.accepted == 2 and data.report.rejected_total == 0


@pytest.mark.parametrize("delimiter", [",", "\t", ";", "|"])
def test_csv_delimiter_is_sniffed_and_canonical_names_need_no_mapping(tmp_path, delimiter):
    rows = ["user,item,timestamp,kind", f"a,x,{T},view", f"b,y,{T + 1},purchase"]
    path = _write(tmp_path / "e.csv", "\n".join(r.replace(",", delimiter) for r in rows) + "\n")
    events = load(path, "csv").events
    assert events.user.tolist() == ["a", "b"]
    assert events.kind.tolist() == [Kind.VIEW, Kind.PURCHASE]


def test_csv_malformed_lines_are_kept_aside_with_their_line_numbers(tmp_path):
    path = _write(
        tmp_path / "e.csv",
        "user,item,timestamp\n"
        f"a,x,{T}\n"
        "\n"  # a blank line: skipped, but still counted in line numbers
        f"b,y,{T},EXTRA\n"
        f"c,,{T}\n"
        f"d,z,{T}\n",
    )
    data = load(path, "csv")
    assert data.events.user.tolist() == ["a", "d"]
    assert data.report.rejected == {"malformed_row": 1, "missing_id": 1}
    by_reason = {r["reason"]: r for r in data.rejected.records()}
    assert by_reason["malformed_row"]["line"] == 4
    assert by_reason["malformed_row"]["raw"] == f"b,y,{T},EXTRA"
    assert "expected 3 fields, found 4" in by_reason["malformed_row"]["detail"]
    assert by_reason["missing_id"]["line"] == 5
    assert by_reason["missing_id"]["source"] == str(path)


def test_csv_with_a_byte_order_mark_and_windows_line_ends(tmp_path):
    path = tmp_path / "e.csv"
    path.write_bytes(b"\xef\xbb\xbfuser,item,timestamp\r\n" + f"a,x,{T}\r\n".encode())
    assert load(path, "csv").events.item.tolist() == ["x"]


def test_latin1_csv_with_its_encoding(tmp_path):
    path = _write(tmp_path / "e.csv", f"user,item,timestamp\nJosé,Café,{T}\n", "latin-1")
    assert load(path, "csv", encoding="latin-1").events.user.tolist() == ["José"]


def test_a_partial_mapping_keeps_columns_named_after_fields(tmp_path):
    path = _write(tmp_path / "e.csv", f"customer,item,timestamp\nc1,x,{T}\n")
    assert load(path, "csv", mapping="user=customer").events.user.tolist() == ["c1"]


def test_a_folder_of_csv_files_is_read_whole(tmp_path):
    for day in (1, 2):
        _write(tmp_path / f"day{day}.csv", f"user,item,timestamp\nu{day},i,{T + day}\n")
    data = load(tmp_path, "csv")
    assert data.events.user.tolist() == ["u1", "u2"]


# ------------------------------------------------------------------------------ JSONL, Parquet


def test_jsonl_with_nested_context_and_a_malformed_line(tmp_path):
    lines = [
        {"user": "a", "item": "x", "ts": "2023-11-14T22:13:20Z", "context": {"position": 2}},
        "{not json",
        [1, 2],
        {"user": "b", "item": "y", "ts": T + 1, "kind": "watch", "value": 120},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path = _write(tmp_path / "e.jsonl", text + "\n")
    data = load(path, "jsonl", mapping="user=user,item=item,time=ts,kind=kind,value=value,"
                                       "context.position=context.position")  # fmt: skip
    assert data.events.user.tolist() == ["a", "b"]
    assert data.events.timestamp.tolist() == [T, T + 1]
    np.testing.assert_array_equal(data.events.context["position"], [2.0, np.nan])
    assert data.rejected.line.tolist() == [2, 3]
    assert data.report.rejected == {"malformed_row": 2}


def test_parquet_with_native_types(tmp_path):
    frame = pd.DataFrame(
        {
            "u": [1, 2],
            "i": ["x", "y"],
            "t": pd.to_datetime([T, T + 60], unit="s", utc=True),
            "rating": [3.5, 5.0],
        }
    )
    frame.to_parquet(tmp_path / "e.parquet")
    data = load(tmp_path / "e.parquet", "parquet", mapping="user=u,item=i,time=t,value=rating")
    assert data.events.user.tolist() == ["1", "2"]
    assert data.events.timestamp.tolist() == [T, T + 60]
    assert data.events.value.tolist() == [3.5, 5.0]


# ------------------------------------------------------------------------------ MovieLens


def test_movielens_1m_layout(tmp_path):
    _write(tmp_path / "ratings.dat", f"1::1193::5::{T}\n1::661::3::{T + 1}\n2::1193::4::{T}\n")
    _write(
        tmp_path / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n",
        "latin-1",
    )
    data = load(tmp_path, "movielens")
    assert len(data.events) == 3 and set(data.events.kind.tolist()) == {Kind.RATING}
    assert data.events.value.tolist() == [5.0, 4.0, 3.0]
    assert data.catalog.titles_of(["661"]).tolist() == ["James and the Giant Peach (1996)"]
    assert data.catalog.categories[1] == ("Animation", "Children's", "Musical")


def test_movielens_latest_layout(tmp_path):
    _write(tmp_path / "ratings.csv", f"userId,movieId,rating,timestamp\n1,31,2.5,{T}\n")
    _write(
        tmp_path / "movies.csv", 'movieId,title,genres\n31,"Dangerous Minds, The (1995)",Drama\n'
    )
    data = load(tmp_path, "movielens")
    assert data.events.value.tolist() == [2.5]
    assert data.catalog.records()[0]["title"] == "Dangerous Minds, The (1995)"


# ------------------------------------------------------------------------------ errors


def _error(path, *args, **kwargs) -> InputError:
    with pytest.raises(InputError) as caught:
        load(path, *args, **kwargs)
    return caught.value


def test_missing_file(tmp_path):
    error = _error(tmp_path / "nope.csv", "csv")
    assert str(error) == f"{tmp_path / 'nope.csv'}: no such file or folder"


@pytest.mark.parametrize(
    ("content", "message", "line"),
    [
        (b"", "the file is empty", None),
        (b"  \n\n", "the file is empty", None),
        (b"user,item,timestamp\n", "no rows after the header", None),
        (b"user,item,timestamp\na,b,1\n\x00\x01\x02garbage", "binary data", 3),
        (b"user,item,timestamp\na,b,1\nJos\xe9,x,2\n", "byte 0xe9 is not valid utf-8", 3),
    ],
)
def test_unreadable_csv_files(tmp_path, content, message, line):
    path = tmp_path / "e.csv"
    path.write_bytes(content)
    error = _error(path, "csv")
    assert message in str(error)
    assert error.path == str(path) and error.line == line


def test_wrong_delimiter_is_named(tmp_path):
    path = _write(tmp_path / "e.csv", f"user;item;timestamp\na;b;{T}\n")
    error = _error(path, "csv", delimiter=",")
    assert "no column for the required field 'user'" in str(error)
    assert "is the delimiter ';'?" in str(error)


def test_missing_required_column_names_it_and_lists_the_columns(tmp_path):
    path = _write(tmp_path / "e.csv", "userId,movieId\n1,2\n")
    error = _error(path, "csv", mapping="user=userId,item=movieId,time=timestamp")
    assert error.column == "timestamp"
    assert "the file's columns: userId, movieId" in str(error)
    error = _error(path, "csv")
    assert "no column for the required field 'user'" in str(error)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ("user=u,bogus=x", "unknown field 'bogus'"),
        ("user", "not field=column"),
        ("user=", "gives no column for 'user'"),
    ],
)
def test_bad_mappings(mapping, message):
    with pytest.raises(InputError, match=message):
        parse_mapping(mapping)


def test_not_a_parquet_file(tmp_path):
    path = _write(tmp_path / "e.parquet", "user,item\n")
    assert "cannot read as Parquet" in str(_error(path, "parquet"))


def test_unknown_format_and_not_movielens(tmp_path):
    assert "unknown format 'xml'" in str(_error(tmp_path, "xml"))
    assert "not a MovieLens folder" in str(_error(tmp_path, "movielens"))


def test_obd_log_without_its_columns(tmp_path):
    _write(tmp_path / "log.csv", "a,b\n1,2\n")
    _write(tmp_path / "item_context.csv", "item_id\n0\n")
    assert "not an Open Bandit Dataset log" in str(_error(tmp_path, "obd"))
