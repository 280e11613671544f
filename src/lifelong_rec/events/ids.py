"""External ids and the growing index that maps them to dense integer positions."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from itertools import repeat
from pathlib import Path

import numpy as np

from lifelong_rec.buffers import appended

FORMAT_VERSION = 1

# ------------------------------------------------------------------------------ id characters

# Characters no id may hold, as inclusive code point ranges: the Unicode categories Cc (C0, DEL
# and C1 controls: they break logs, CSV exports and terminals), Cf (invisible format characters:
# zero-width spaces and joiners, bidi controls, tags), Cs (surrogates: halves of invalid
# UTF-16), Zl and Zp (line and paragraph separators), and U+FFFD, what a decoder puts in place
# of invalid UTF-8 (two different broken ids would collapse into one). Invisible characters
# make ids that look equal and are not. Unicode 15.1; tests/test_events.py checks the list
# against the categories of the running Python's ``unicodedata``.
FORBIDDEN_ID_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F),
    (0x007F, 0x009F),
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xD800, 0xDFFF),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0xFFFD, 0xFFFD),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)
_SURROGATES = (0xD800, 0xDFFF)


def _escape(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _character_class(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in ranges)


# The pattern of a valid id, for JSON schemas and pydantic (whose Rust regex engine cannot name
# surrogates: it rejects strings holding them before any pattern applies). Escapes that Python's
# ``re`` and Rust's ``regex`` read alike.
ID_PATTERN = "^[^" + _character_class(r for r in FORBIDDEN_ID_RANGES if r != _SURROGATES) + "]+$"
_FORBIDDEN = re.compile("[" + _character_class(FORBIDDEN_ID_RANGES) + "]")


def id_problem(text: str) -> str | None:
    """What makes ``text`` no id, if a character does: its first forbidden one, named.

    Examples
    --------
    >>> id_problem("user\\u200b1"), id_problem("usér 1")
    ('holds U+200B, a control or invisible character', None)
    """
    found = _FORBIDDEN.search(text)
    if found is None:
        return None
    code = ord(found.group())
    if code == 0xFFFD:
        return "holds U+FFFD, the mark of invalid UTF-8"
    if _SURROGATES[0] <= code <= _SURROGATES[1]:
        return f"holds U+{code:04X}, a lone surrogate (invalid UTF-16)"
    return f"holds U+{code:04X}, a control or invisible character"


def has_forbidden_characters(ids: np.ndarray) -> np.ndarray:
    """Whether each id holds a character no id may hold, shape (n,), bool.

    Vectorised: only ids with a control or a non-ASCII character are searched one by one (a
    search of every id cost 0.6 s per million).
    """
    ids = np.ascontiguousarray(ids, dtype=str)
    found = np.zeros(len(ids), dtype=bool)
    if not len(ids) or ids.dtype.itemsize == 0:
        return found
    # numpy pads each id with NULs to the longest one: a NUL counts only before the id's end
    # (trailing NULs are lost already, when the ids became a numpy array)
    codes = ids.view(np.uint32).reshape(len(ids), -1)
    width = codes.shape[1]
    step = max(1, 2**22 // width)  # a few MB of temporaries per block
    for start in range(0, len(ids), step):
        block = codes[start : start + step]
        nuls = np.count_nonzero(block == 0, axis=1)
        suspect = nuls > width - np.char.str_len(ids[start : start + step])
        suspect |= np.count_nonzero(block < 0x20, axis=1) > nuls  # another C0 control
        suspect |= block.max(axis=1) >= 0x7F  # DEL, or not ASCII
        for row in np.flatnonzero(suspect).tolist():
            found[start + row] = _FORBIDDEN.search(ids[start + row]) is not None
    return found


def as_ids(values: Iterable[object] | np.ndarray, name: str = "id") -> np.ndarray:
    """Canonical external ids: a numpy array of str.

    External ids are strings or integers; both are kept as their decimal or literal text, so the
    integer 196 and the string "196" name the same user. Floats are accepted only when they are
    whole numbers (a CSV column of ids with a gap often arrives as float).

    Ids may not hold NUL characters: numpy's fixed-width strings would drop trailing ones.

    Raises
    ------
    ValueError
        If a value is a non-integral float, None, a boolean, or holds a NUL character.
    """
    if isinstance(values, np.ndarray):
        array = values.reshape(-1)
    else:  # a Python sequence: keep each value's own type (np.asarray would stringify 7.0)
        array = np.empty(len(values := list(values)), dtype=object)
        array[:] = values
        if all(type(value) is str and "\x00" not in value for value in values):
            return array.astype(str) if len(array) else np.array([], dtype=str)
    if array.dtype.kind in "US":
        return array.astype(str)
    if array.dtype.kind in "iu":
        return array.astype(str)
    if array.dtype.kind == "b":
        raise ValueError(f"{name}: booleans are not ids")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{name}: float ids must be whole numbers")
        return array.astype(np.int64).astype(str)
    # object arrays: mixed ints and strings
    out = []
    for value in array.tolist():
        if value is None or isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not an id")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError(f"{name}: {value!r} holds a NUL character")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{name}: float ids must be whole numbers, got {value!r}")
            value = int(value)
        out.append(str(value))
    return np.array(out, dtype=str) if out else np.array([], dtype=str)


class IdIndex:
    """A growing two-way map between external ids and dense indexes 0..n-1.

    Indexes are assigned in order of first sight and never change, so arrays indexed by them
    (embedding tables, counts) only ever grow at the end. Ids map to indexes through a hash
    table (a dict, walked by C-level ``map``: no Python loop per id), so a lookup or an
    added id costs the same at ten ids as at ten million; indexes map back to ids through an
    array that grows into spare room.

    Examples
    --------
    >>> index = IdIndex()
    >>> index.add(["b", "a", "b"]).tolist()
    [0, 1, 0]
    >>> index.lookup(["a", "zzz"]).tolist()
    [1, -1]
    >>> index.ids([0, 1]).tolist()
    ['b', 'a']
    """

    def __init__(self, ids: Iterable[object] | np.ndarray = ()) -> None:
        self._positions: dict[str, int] = {}
        self._ids = np.array([], dtype=str)  # a prefix of its buffer, as appended makes it
        self.add(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, external_id: object) -> bool:
        return bool(self.lookup([external_id])[0] >= 0)

    def __repr__(self) -> str:
        return f"IdIndex(n={len(self)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdIndex) and np.array_equal(self._ids, other._ids)

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    @property
    def nbytes(self) -> int:
        """Bytes held by the index: the id array (the rows in use), the hash table, and an
        estimate of its keys (a str object each: 49 bytes and its ASCII characters) and
        values (an int object each past 256)."""
        keys = len(self._ids) * 49 + int(np.char.str_len(self._ids).sum()) if len(self) else 0
        values = max(len(self._ids) - 257, 0) * 28
        return self._ids.nbytes + sys.getsizeof(self._positions) + keys + values

    def copy(self) -> IdIndex:
        clone = IdIndex()
        clone._positions = self._positions.copy()
        clone._ids = self._ids.copy()
        return clone

    def to_array(self) -> np.ndarray:
        """All ids in index order, shape (n,). A copy."""
        return self._ids.copy()

    def lookup(self, ids: Iterable[object] | np.ndarray) -> np.ndarray:
        """Dense indexes of ``ids``, shape (n,), int64; -1 where an id is unknown."""
        return self._find(as_ids(ids).tolist())

    def _find(self, keys: list[str]) -> np.ndarray:
        found = map(self._positions.get, keys, repeat(-1, len(keys)))
        return np.fromiter(found, dtype=np.int64, count=len(keys))

    def add(self, ids: Iterable[object] | np.ndarray) -> np.ndarray:
        """Indexes of ``ids``, adding the unknown ones in order of first appearance."""
        query = as_ids(ids)
        keys = query.tolist()
        indexes = self._find(keys)
        unknown = np.flatnonzero(indexes < 0)
        if not len(unknown):
            return indexes
        new = query[unknown]
        new_keys = new.tolist()
        first = list(dict.fromkeys(new_keys))  # unique, in order of first appearance
        once = len(first) == len(new_keys)  # (a load, a batch of new users: no repeats)
        n = len(self._ids)
        # ids first, positions second: a reader in another thread that finds a position
        # finds its id
        self._ids = appended(self._ids, new if once else np.array(first, dtype=new.dtype))
        self._positions.update(zip(first, range(n, n + len(first)), strict=True))
        indexes[unknown] = np.arange(n, n + len(first)) if once else self._find(new_keys)
        return indexes

    def ids(self, indexes: Iterable[int] | np.ndarray) -> np.ndarray:
        """External ids at ``indexes``, shape (n,).

        Raises
        ------
        IndexError
            If an index is outside 0..n-1.
        """
        positions = np.asarray(indexes, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self._ids)):
            raise IndexError(f"index out of range for an IdIndex of {len(self._ids)} ids")
        return self._ids[positions]

    def save(self, path: str | Path) -> None:
        """Write the index as JSON (ids in index order and a format version)."""
        payload = {"format_version": FORMAT_VERSION, "ids": self._ids.tolist()}
        Path(path).write_text(json.dumps(payload), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> IdIndex:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: IdIndex format version {payload.get('format_version')!r} "
                f"is not the supported {FORMAT_VERSION}"
            )
        return cls(np.array(payload["ids"], dtype=str))
