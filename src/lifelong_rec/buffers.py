"""Arrays that grow at their end into spare room, as ids, factor tables and per-item state do."""

from __future__ import annotations

import numpy as np


def appended(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array`` (a prefix of its buffer, as this function returns it) with ``rows`` after it.

    The rows are written into spare room behind ``array`` where its buffer has some; else a
    new buffer with room to double is made, so an array that grows by a row at a time (a new
    user or item per event) is copied a logarithmic number of times, not at every row. A
    string array widens to hold longer strings (a copy); other arrays keep their dtype.
    """
    n, extra = len(array), len(rows)
    dtype = np.promote_types(array.dtype, rows.dtype) if array.dtype.kind == "U" else array.dtype
    room = array.base
    if not (
        isinstance(room, np.ndarray)
        and room.dtype == dtype
        and room.shape[1:] == array.shape[1:]
        and len(room) >= n + extra
        and room.ctypes.data == array.ctypes.data
        and room.flags.c_contiguous
    ):
        room = np.empty((max(2 * (n + extra), 64), *array.shape[1:]), dtype=dtype)
        room[:n] = array
    room[n : n + extra] = rows
    return room[: n + extra]
