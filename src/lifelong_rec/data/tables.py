"""Reading tabular files (CSV, Parquet, JSON Lines) into raw rows with canonical column names.

Readers never guess silently: a file that cannot be read as a table raises :class:`InputError`
naming the file, the line or column, and the problem; a single malformed line is kept aside as a
``malformed_row`` with its line number, and the rest of the file is read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from lifelong_rec.data.errors import InputError
from lifelong_rec.data.report import Rejected

FIELDS: tuple[str, ...] = (
    "user",
    "item",
    "timestamp",
    "kind",
    "value",
    "policy",
    "model_version",
    "propensity",
)
REQUIRED: tuple[str, ...] = ("user", "item", "timestamp")
_FIELD_ALIASES = {"time": "timestamp", "ts": "timestamp", "event": "kind", "rating": "value"}
_DELIMITERS = (",", "\t", ";", "|")


@dataclass(frozen=True, eq=False)
class RawTable:
    """Rows as read from a source, before cleaning, with canonical column names.

    Attributes
    ----------
    frame : DataFrame, shape (n, ...)
        Columns named after :data:`FIELDS`, plus the context columns.
    lines : array of int64, shape (n,)
        Source line (or row, for Parquet) of each row, 1-based; -1 where unknown.
    source : array of str, shape (n,)
        The file each row came from.
    context_columns : tuple of str
    malformed : Rejected
        Lines the parser could not split into columns.
    """

    frame: pd.DataFrame
    lines: np.ndarray
    source: np.ndarray
    context_columns: tuple[str, ...] = ()
    malformed: Rejected = field(default_factory=Rejected.empty)

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def concat(cls, tables: list[RawTable]) -> RawTable:
        context = tuple(dict.fromkeys(c for t in tables for c in t.context_columns))
        return cls(
            frame=pd.concat([t.frame for t in tables], ignore_index=True),
            lines=np.concatenate([t.lines for t in tables]),
            source=np.concatenate([t.source for t in tables]),
            context_columns=context,
            malformed=Rejected.concat([t.malformed for t in tables]),
        )


def parse_mapping(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """Parse a column mapping such as ``"user=userId,item=movieId,time=timestamp"``.

    Keys are event fields (:data:`FIELDS`, with ``time`` for ``timestamp``) or
    ``context.NAME`` for a context feature; values are the file's column names.

    Raises
    ------
    InputError
        If an entry is not ``field=column`` or names an unknown field.
    """
    if text is None:
        return {}
    pairs = text.items() if isinstance(text, Mapping) else _split_pairs(text)
    mapping: dict[str, str] = {}
    for key, column in pairs:
        key = _FIELD_ALIASES.get(key.strip(), key.strip())
        if key not in FIELDS and not (key.startswith("context.") and len(key) > 8):
            raise InputError(
                f"unknown field {key!r} in the column mapping; fields are "
                f"{', '.join(FIELDS)} or context.NAME"
            )
        if not column.strip():
            raise InputError(f"the column mapping gives no column for {key!r}")
        mapping[key] = column.strip()
    return mapping


def _split_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in entry:
            raise InputError(f"column mapping entry {entry!r} is not field=column")
        key, column = entry.split("=", 1)
        pairs.append((key, column))
    return pairs


def apply_mapping(
    frame: pd.DataFrame, mapping: Mapping[str, str], path: str | Path
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Rename the file's columns to event fields.

    Columns already named after fields (or ``time``, ``ts``, ``event``, ``rating``) are used
    for the fields that the mapping does not name. Other columns are left out.

    Returns
    -------
    frame : DataFrame
        Columns named after fields, plus ``context.NAME`` columns.
    context_columns : tuple of str
    """
    defaults: dict[str, str] = {}
    for column in map(str, frame.columns):
        key = _FIELD_ALIASES.get(column, column)
        if key in FIELDS and column not in mapping.values():
            defaults.setdefault(key, column)
    mapping = defaults | dict(mapping)
    columns = list(map(str, frame.columns))
    hint = ""
    if len(columns) == 1:
        found = [d for d in _DELIMITERS if d in columns[0]]
        if found:
            hint = f"; the header is one column: is the delimiter {found[0]!r}?"
    for key in REQUIRED:
        if key not in mapping:
            raise InputError(
                f"no column for the required field {key!r}; map one with --map {key}=COLUMN "
                f"(the file's columns: {', '.join(columns)}){hint}",
                path=path,
            )
    for key, column in mapping.items():
        if column not in frame.columns:
            raise InputError(
                f"required column not found (mapped to {key}); "
                f"the file's columns: {', '.join(columns)}{hint}",
                path=path,
                column=column,
            )
    renamed = pd.DataFrame({key: frame[column] for key, column in mapping.items()})
    context = tuple(key for key in mapping if key.startswith("context."))
    renamed = renamed.rename(columns={c: c.removeprefix("context.") for c in context})
    return renamed, tuple(c.removeprefix("context.") for c in context)


# ---------------------------------------------------------------------------------- bytes


def read_checked(path: str | Path, encoding: str = "utf-8") -> bytes:
    """The bytes of a text file, after checking that it is one.

    Raises
    ------
    InputError
        If the file is missing, empty, binary (has NUL bytes) or not in ``encoding``, naming
        the line of the first offending byte.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=path)
    data = path.read_bytes()
    if not data.strip():
        raise InputError("the file is empty", path=path)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise InputError(
            f"binary data (a NUL byte at offset {nul}): this is not a text file",
            path=path,
            line=data.count(b"\n", 0, nul) + 1,
        )
    try:
        data.decode(encoding)
    except UnicodeDecodeError as error:
        raise InputError(
            f"byte 0x{data[error.start]:02x} is not valid {encoding}; "
            "pass the file's encoding (for example --encoding latin-1)",
            path=path,
            line=data.count(b"\n", 0, error.start) + 1,
        ) from None
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}", path=path) from None
    return data


def _nonempty_lines(data: bytes) -> np.ndarray:
    """1-based numbers of the lines that hold anything (the CSV parser skips empty ones)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buffer == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(buffer)]])
    lengths = ends - starts
    carriage_only = (lengths == 1) & (buffer[np.minimum(starts, len(buffer) - 1)] == 13)
    return np.flatnonzero((lengths > 0) & ~carriage_only) + 1


def _sniff_delimiter(first_line: str) -> str:
    counts = {d: first_line.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


# ---------------------------------------------------------------------------------- CSV


def read_csv(
    path: str | Path,
    *,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    column_names: list[str] | None = None,
    data: bytes | None = None,
) -> tuple[pd.DataFrame, np.ndarray, Rejected]:
    """Read a delimited text file with every column as text.

    Parameters
    ----------
    path : path
    delimiter : str, optional
        One character; sniffed from the first line when None.
    encoding : str
    column_names : list of str, optional
        For files without a header line.
    data : bytes, optional
        The file's content when already read (it is then not read again).

    Returns
    -------
    frame : DataFrame, shape (n, columns), dtype str
    lines : array of int64, shape (n,)
        Line of each row; -1 for all rows when quoted line breaks make lines ambiguous.
    malformed : Rejected
        Lines with the wrong number of fields.
    """
    data = read_checked(path, encoding) if data is None else data
    first_line = data.split(b"\n", 1)[0].decode(encoding).lstrip("\ufeff").rstrip("\r")
    if delimiter is None:
        delimiter = _sniff_delimiter(first_line)
    if len(delimiter) != 1:
        raise InputError(f"the delimiter must be one character, got {delimiter!r}", path=path)
    malformed: list[tuple[int, str, str]] = []

    def keep_aside(row: pa_csv.InvalidRow) -> str:
        detail = f"expected {row.expected_columns} fields, found {row.actual_columns}"
        malformed.append((row.number if row.number is not None else -1, detail, row.text))
        return "skip"

    header = column_names or next(csv.reader([first_line], delimiter=delimiter))
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(
                use_threads=False,  # single-threaded: the parser then reports line numbers
                encoding=encoding,
                column_names=column_names,
                block_size=1 << 24,
            ),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, invalid_row_handler=keep_aside),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in header},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as error:
        raise InputError(f"cannot parse as delimited text: {error}", path=path) from None
    frame = table.to_pandas()
    frame.columns = [str(c) for c in frame.columns]

    # The parser numbers rows among the non-empty lines (the header is row 1): map them back
    # to physical line numbers.
    nonempty = _nonempty_lines(data)
    rows = np.array([row for row, _, _ in malformed], dtype=np.int64)
    bad_lines = (
        np.where((rows >= 1) & (rows <= len(nonempty)), nonempty[np.clip(rows - 1, 0, None)], -1)
        if len(rows)
        else rows
    )
    lines = nonempty[0 if column_names else 1 :]
    lines = lines[~np.isin(lines, bad_lines)]
    if len(lines) != len(frame):  # quoted fields with line breaks: lines are not rows
        lines = np.full(len(frame), -1, dtype=np.int64)
    rejected = Rejected(
        source=np.full(len(malformed), str(path)),
        line=bad_lines,
        reason=np.full(len(malformed), "malformed_row"),
        field=np.full(len(malformed), ""),
        detail=np.array([detail for _, detail, _ in malformed], dtype=str),
        raw=np.array([text for _, _, text in malformed], dtype=str),
    )
    return frame, lines, rejected


# ---------------------------------------------------------------------------------- JSON Lines


def read_jsonl(
    path: str | Path, *, encoding: str = "utf-8"
) -> tuple[pd.DataFrame, np.ndarray, Rejected]:
    """Read one JSON object per line; nested objects become dotted columns (``context.position``).

    Lines that are not a JSON object are kept aside as malformed rows.
    """
    text = read_checked(path, encoding).decode(encoding)
    records, lines, bad = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            bad.append((number, f"not JSON: {error.msg} at column {error.colno}", line))
            continue
        if not isinstance(record, dict):
            bad.append((number, f"a JSON {type(record).__name__}, not an object", line))
            continue
        records.append(record)
        lines.append(number)
    frame = pd.json_normalize(records, sep=".") if records else pd.DataFrame()
    rejected = Rejected(
        source=np.full(len(bad), str(path)),
        line=np.array([b[0] for b in bad], dtype=np.int64),
        reason=np.full(len(bad), "malformed_row"),
        field=np.full(len(bad), ""),
        detail=np.array([b[1] for b in bad], dtype=str),
        raw=np.array([b[2] for b in bad], dtype=str),
    )
    return frame, np.array(lines, dtype=np.int64), rejected


# ---------------------------------------------------------------------------------- Parquet


def read_parquet(path: str | Path) -> tuple[pd.DataFrame, np.ndarray, Rejected]:
    """Read a Parquet file; ``lines`` are row numbers (1-based)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path=path)
    try:
        frame = pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"cannot read as Parquet: {error}", path=path) from None
    frame.columns = [str(c) for c in frame.columns]
    return frame, np.arange(1, len(frame) + 1, dtype=np.int64), Rejected.empty()


READERS = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}
SUFFIXES = {
    "csv": (".csv", ".tsv", ".txt"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "parquet": (".parquet", ".pq"),
}


def read_table(
    path: str | Path,
    format: str,
    *,
    mapping: Mapping[str, str] | str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
) -> RawTable:
    """Read a file, or every file of the format in a folder, into canonical raw rows.

    Raises
    ------
    InputError
        For an unknown format, a missing path, a folder with no such files, or any file that
        cannot be read as a table.
    """
    if format not in READERS:
        raise InputError(f"unknown table format {format!r}; use one of {', '.join(READERS)}")
    path = Path(path)
    mapping = parse_mapping(mapping)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES[format])
        if not files:
            raise InputError(f"no {format} files ({', '.join(SUFFIXES[format])}) here", path=path)
        return RawTable.concat([_read_one(f, format, mapping, delimiter, encoding) for f in files])
    return _read_one(path, format, mapping, delimiter, encoding)


def _read_one(
    path: Path, format: str, mapping: dict[str, str], delimiter: str | None, encoding: str
) -> RawTable:
    if format == "csv":
        frame, lines, malformed = read_csv(path, delimiter=delimiter, encoding=encoding)
    elif format == "jsonl":
        frame, lines, malformed = read_jsonl(path, encoding=encoding)
    else:
        frame, lines, malformed = read_parquet(path)
    if frame.empty and len(malformed) == 0:
        raise InputError("no rows after the header", path=path)
    if frame.empty:
        frame = pd.DataFrame({key: pd.Series(dtype=str) for key in mapping or REQUIRED})
        frame, context = apply_mapping(frame, {k: k for k in mapping or REQUIRED}, path)
    else:
        frame, context = apply_mapping(frame, mapping, path)
    return RawTable(
        frame=frame,
        lines=lines,
        source=np.full(len(frame), str(path)),
        context_columns=context,
        malformed=malformed,
    )
