"""A sparse matrix that grows and takes increments cheaply, for models that learn per event.

A CSR matrix is cheap to read by rows but expensive to change: inserting one entry moves every
entry after it. :class:`GrowingSparse` keeps a consolidated CSR *base* plus a *pending* list of
(row, column, value) increments. Reads merge the two for the rows asked for; the pending list
is folded into the base once it holds more than 1/32 of the base's entries, so a stream of
single-event updates costs amortised O(1) per event plus vectorised consolidations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from lifelong_rec.models.kernels import gather_rows

AGGREGATES = ("sum", "max")


@dataclass(frozen=True, slots=True)
class RowBlock:
    """Rows of a sparse matrix as plain CSR arrays (``tocsr`` makes the scipy matrix)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return len(self.indices)

    def tocsr(self) -> sp.csr_matrix:
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=self.shape)


class GrowingSparse:
    """A growable sparse matrix with pending increments.

    Parameters
    ----------
    shape : (int, int)
    aggregate : {"sum", "max"}
        How repeated entries combine: added up (counts, weights) or the largest kept
        (last-seen times).
    dtype : numpy dtype of the values

    Examples
    --------
    >>> m = GrowingSparse((2, 3))
    >>> m.add(np.array([0, 0, 1]), np.array([2, 2, 0]), np.array([1.0, 2.0, 5.0]))
    >>> m.rows(np.array([0])).toarray().tolist()
    [[0.0, 0.0, 3.0]]
    """

    def __init__(
        self,
        shape: tuple[int, int] = (0, 0),
        aggregate: str = "sum",
        dtype: np.dtype | type = np.float32,
    ) -> None:
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate: {aggregate!r} is not one of {AGGREGATES}")
        self.aggregate = aggregate
        self.dtype = np.dtype(dtype)
        self._base = sp.csr_matrix(shape, dtype=self.dtype)
        # the pending increments: the first _pending_count entries of buffers that double as
        # they fill, so that recording an event copies only the event (and reading writes
        # nothing)
        self._pending_rows = np.zeros(0, dtype=np.int64)
        self._pending_cols = np.zeros(0, dtype=np.int64)
        self._pending_values = np.zeros(0, dtype=self.dtype)
        self._pending_count = 0
        self._base_keys: np.ndarray | None = None  # row * n_cols + col of the base, sorted

    @property
    def shape(self) -> tuple[int, int]:
        return self._base.shape

    def grow(self, n_rows: int, n_cols: int) -> None:
        """Enlarge to at least (n_rows, n_cols); new rows and columns are empty."""
        rows, cols = self.shape
        if n_rows <= rows and n_cols <= cols:
            return
        rows, cols = max(rows, n_rows), max(cols, n_cols)
        indptr = np.concatenate(
            [self._base.indptr, np.full(rows - self.shape[0], self._base.indptr[-1])]
        )
        self._base = sp.csr_matrix(
            (self._base.data, self._base.indices, indptr), shape=(rows, cols)
        )
        self._base_keys = None  # keys depend on the number of columns

    def add(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        """Record increments (sum) or candidate maxima (max) at (rows[k], cols[k])."""
        if len(rows) == 0:
            return
        if rows.max() >= self.shape[0] or cols.max() >= self.shape[1]:
            raise IndexError(f"entry outside the matrix of shape {self.shape}; grow() it first")
        start, end = self._pending_count, self._pending_count + len(rows)
        if end > len(self._pending_rows):
            size = max(2 * end, 64)
            self._pending_rows = _resized(self._pending_rows, size, start)
            self._pending_cols = _resized(self._pending_cols, size, start)
            self._pending_values = _resized(self._pending_values, size, start)
        self._pending_rows[start:end] = rows
        self._pending_cols[start:end] = cols
        self._pending_values[start:end] = values
        self._pending_count = end
        # Reads scan the pending list, so keep it short relative to the base.
        if self._pending_count > max(4096, self._base.nnz // 32):
            self.consolidate()

    def consolidate(self) -> None:
        """Fold the pending increments into the CSR base: every row merged with its
        increments in one compiled pass, O(entries + increments * log rows), where sorting
        everything again would cost O(entries * log entries) at every fold."""
        if not self._pending_count:
            return
        every_row = np.arange(self.shape[0], dtype=np.int64)
        indptr, indices, data = gather_rows(
            self._base.indptr, self._base.indices, self._base.data, every_row,
            *self._take_pending(), self.aggregate == "max",
        )  # fmt: skip
        self._base = sp.csr_matrix((data, indices, indptr), shape=self.shape)
        self._base_keys = None

    def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Whether each (rows[k], cols[k]) has an entry, shape (n,), without reading rows."""
        n_cols = max(self.shape[1], 1)
        keys = np.asarray(rows, dtype=np.int64) * n_cols + np.asarray(cols, dtype=np.int64)
        if self._base_keys is None:
            lengths = np.diff(self._base.indptr)
            self._base_keys = (
                np.repeat(np.arange(self.shape[0], dtype=np.int64), lengths) * n_cols
                + self._base.indices
            )
        found = np.zeros(len(keys), dtype=bool)
        if len(self._base_keys):
            position = np.minimum(np.searchsorted(self._base_keys, keys), len(self._base_keys) - 1)
            found = self._base_keys[position] == keys
        if self._pending_count:
            pending_rows, pending_cols, _ = self._pending()
            pending = pending_rows * n_cols + pending_cols
            if len(keys) * len(pending) <= 1_000_000:  # a few keys (one event): compare all
                found |= (keys[:, None] == pending[None, :]).any(axis=1)
            else:
                found |= np.isin(keys, pending)
        return found

    def tocsr(self) -> sp.csr_matrix:
        """The whole matrix, consolidated (shared: do not modify)."""
        self.consolidate()
        return self._base

    @property
    def nnz(self) -> int:
        return self.tocsr().nnz

    def rows(self, index: np.ndarray) -> sp.csr_matrix:
        """Rows ``index`` (a row may repeat), shape (len(index), n_cols), pending increments
        included."""
        return self.row_block(index).tocsr()

    def row_block(self, index: np.ndarray) -> RowBlock:
        """:meth:`rows` as plain CSR arrays, for the hot path of a single event.

        One compiled call (:func:`~lifelong_rec.models.kernels.gather_rows`) merges the base
        rows with their pending increments: on the few rows one event touches, numpy's or
        scipy's per-call overhead costs more than the data.
        """
        index = np.asarray(index, dtype=np.int64)
        base = self._base
        if self._pending_count:
            pending_rows, pending_cols, pending_values = self._pending()
        else:
            pending_rows = pending_cols = np.zeros(0, dtype=np.int64)
            pending_values = np.zeros(0, dtype=self.dtype)
        indptr, indices, data = gather_rows(
            base.indptr, base.indices, base.data, index,
            pending_rows, pending_cols, pending_values, self.aggregate == "max",
        )  # fmt: skip
        return RowBlock(indptr, indices, data, (len(index), self.shape[1]))

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that rebuild this matrix with :meth:`from_state`."""
        matrix = self.tocsr()
        return {
            "indptr": matrix.indptr.astype(np.int64),
            "indices": matrix.indices.astype(np.int64),
            "data": matrix.data,
            "shape": np.array(matrix.shape, dtype=np.int64),
        }

    @classmethod
    def from_state(
        cls, state: dict[str, np.ndarray], aggregate: str = "sum", dtype: type = np.float32
    ) -> GrowingSparse:
        rows, columns = (int(s) for s in state["shape"])
        matrix = cls((rows, columns), aggregate, dtype)
        matrix._base = sp.csr_matrix(
            (state["data"].astype(dtype), state["indices"], state["indptr"]),
            shape=matrix.shape,
        )
        return matrix

    @property
    def nbytes(self) -> int:
        """Bytes held: the CSR base and the pending buffers (their spare room included)."""
        base = self._base
        buffers = (self._pending_rows, self._pending_cols, self._pending_values)
        return sum(a.nbytes for a in (base.indptr, base.indices, base.data, *buffers))

    def subset(self, rows: np.ndarray, cols: np.ndarray) -> GrowingSparse:
        """A consolidated matrix of ``rows`` and ``cols`` only (each ascending, no repeats),
        renumbered 0.. in their order."""
        clone = GrowingSparse((len(rows), len(cols)), self.aggregate, self.dtype)
        clone._base = sp.csr_matrix(self.tocsr()[rows][:, cols])
        clone._base.sort_indices()
        return clone

    def copy(self) -> GrowingSparse:
        """A consolidated copy: it has no pending increments, so reading it never writes."""
        clone = GrowingSparse(self.shape, self.aggregate, self.dtype)
        clone._base = self.tocsr().copy()
        return clone

    def __deepcopy__(self, memo: dict[int, object]) -> GrowingSparse:
        """:meth:`copy`. A model published to serving is a deep copy that many request threads
        read at once; some reads (:meth:`tocsr`) fold the pending increments in place, which
        two threads must not do together (one would find the increments the other had just
        folded)."""
        clone = self.copy()
        memo[id(self)] = clone
        return clone

    def _pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views of the pending increments (valid until the next :meth:`add`)."""
        n = self._pending_count
        return self._pending_rows[:n], self._pending_cols[:n], self._pending_values[:n]

    def _take_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pending increments, emptied (views: use them before the next :meth:`add`)."""
        pending = self._pending()
        self._pending_count = 0
        return pending


def _resized(buffer: np.ndarray, size: int, keep: int) -> np.ndarray:
    """A buffer of ``size`` entries holding the first ``keep`` of ``buffer``."""
    grown = np.empty(size, dtype=buffer.dtype)
    grown[:keep] = buffer[:keep]
    return grown


def used_columns(matrix: sp.csr_matrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """The columns a CSR matrix uses (sorted) and the matrix over just those: a product with
    their rows of another matrix (``compact @ other[columns]``) then touches no other row.

    >>> columns, compact = used_columns(sp.csr_matrix([[0.0, 2.0, 0.0, 3.0]]))
    >>> columns.tolist(), compact.toarray().tolist()
    ([1, 3], [[2.0, 3.0]])
    """
    columns = np.unique(matrix.indices)
    compact = sp.csr_matrix(
        (matrix.data, np.searchsorted(columns, matrix.indices), matrix.indptr),
        shape=(matrix.shape[0], len(columns)),
    )
    return columns, compact


def segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges starts[k] .. starts[k] + lengths[k] - 1, vectorised: the positions
    of CSR row segments, without a Python loop.

    >>> segments(np.array([5, 0]), np.array([2, 3])).tolist()
    [5, 6, 0, 1, 2]
    """
    total = int(lengths.sum())
    return np.repeat(starts, lengths) + (
        np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    )
