"""External ids and the growing index that maps them to dense integer positions."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


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
    (embedding tables, counts) only ever grow at the end. Lookups are vectorised: a sorted copy
    of the ids is searched with ``np.searchsorted``.

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
        self._ids = np.array([], dtype=str)
        self._sorted_ids = np.array([], dtype=str)
        self._sorted_positions = np.array([], dtype=np.int64)
        self.add(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, external_id: object) -> bool:
        return bool(self.lookup([external_id])[0] >= 0)

    def __repr__(self) -> str:
        return f"IdIndex(n={len(self)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdIndex) and np.array_equal(self._ids, other._ids)

    def __hash__(self) -> None:  # mutable: not hashable
        raise TypeError("IdIndex is mutable and not hashable")

    def copy(self) -> IdIndex:
        clone = IdIndex()
        clone._ids = self._ids.copy()
        clone._sorted_ids = self._sorted_ids.copy()
        clone._sorted_positions = self._sorted_positions.copy()
        return clone

    def to_array(self) -> np.ndarray:
        """All ids in index order, shape (n,). A copy."""
        return self._ids.copy()

    def lookup(self, ids: Iterable[object] | np.ndarray) -> np.ndarray:
        """Dense indexes of ``ids``, shape (n,), int64; -1 where an id is unknown."""
        query = as_ids(ids)
        if len(self._ids) == 0 or len(query) == 0:
            return np.full(len(query), -1, dtype=np.int64)
        position = np.searchsorted(self._sorted_ids, query)
        position = np.minimum(position, len(self._sorted_ids) - 1)
        found = self._sorted_ids[position] == query
        return np.where(found, self._sorted_positions[position], -1)

    def add(self, ids: Iterable[object] | np.ndarray) -> np.ndarray:
        """Indexes of ``ids``, adding the unknown ones in order of first appearance."""
        query = as_ids(ids)
        indexes = self.lookup(query)
        unknown = indexes < 0
        if not unknown.any():
            return indexes
        new_ids, first = np.unique(query[unknown], return_index=True)
        new_positions = len(self._ids) + np.argsort(np.argsort(first, kind="stable"))
        self._ids = np.concatenate([self._ids, new_ids[np.argsort(first, kind="stable")]])
        # new_ids is sorted, so one merge keeps the sorted copy sorted: O(n), no re-sort.
        at = np.searchsorted(self._sorted_ids, new_ids)
        # np.insert keeps the array's string width: widen first, or longer ids are truncated.
        self._sorted_ids = np.insert(self._sorted_ids.astype(self._ids.dtype), at, new_ids)
        self._sorted_positions = np.insert(self._sorted_positions, at, new_positions)
        indexes[unknown] = self.lookup(query[unknown])
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
