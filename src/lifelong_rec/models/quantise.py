"""Compressed factor tables for serving: float16, or int8 with a scale per row.

A factor model learns in float32 (the ALS solves and the BPR steps need it) and serves from a
compressed copy of its user and item tables, kept in step row by row: after every update only
the rows that changed are quantised again, in one vectorised call. The copy is always exactly
what quantising the float32 table from scratch gives, so a saved model keeps only the float32
tables (learning resumes exactly) and a loaded one rebuilds its copy in one pass.

- ``"int8"``: symmetric, one float32 scale per row, ``scale = max|row| / 127`` and
  ``q = round(row / scale)``: 1 byte an entry and 4 a row (68 bytes a 64-factor row against
  256). An entry is off by at most ``scale / 2``, so a score ``u . y`` by at most
  ``(|u|_1 max|y| + |y|_1 max|u|) / 254`` (and the product of the two errors).
- ``"fp16"``: IEEE half precision (2 bytes an entry; relative error 2^-11 an entry); entries
  beyond its range (65,504) are clipped to it.
- ``"fp32"``: no copy; the model serves its float32 tables (the default).

Scores for a few users (a request: up to :data:`KERNEL_USERS`) come from compiled kernels that
widen each stored row to float32 in registers as they read it (:func:`.kernels.int8_scores`,
:func:`.kernels.half_scores`): the table is read once, at 1 or 2 bytes an entry. More users at
once (a batch) are scored by blocks of :data:`BLOCK_ROWS` items, each upcast to float32 (where it
stays in cache) and multiplied by all the users' vectors with BLAS, then scaled per item.

A model opts in by mixing in :class:`CompressedServing` (before ``IndexedItems`` and
``Recommender``), taking ``serve_precision``, and calling :meth:`CompressedServing._requantise`
wherever its factor rows change or arrive; see
:class:`~lifelong_rec.models.mf.MatrixFactorization` and :class:`~lifelong_rec.models.bpr.BPR`.
"""

from __future__ import annotations

import numpy as np

from lifelong_rec.models.kernels import half_scores, int8_scores, quantise_int8_rows

PRECISIONS = ("fp32", "fp16", "int8")
#: items upcast to float32 at a time while scoring: 4,096 x 64 factors is 1 MiB
BLOCK_ROWS = 4096
#: up to this many users at once are scored by the compiled kernels, more by BLAS blocks
KERNEL_USERS = 4
_FP16_LIMIT = float(np.finfo(np.float16).max)
_STORED = {"fp16": np.float16, "int8": np.int8}


def check_precision(serve_precision: object) -> None:
    """Raise ValueError naming ``serve_precision`` unless it is one of :data:`PRECISIONS`.

    >>> check_precision("int8")
    >>> check_precision("int4")
    Traceback (most recent call last):
    ...
    ValueError: serve_precision must be one of ('fp32', 'fp16', 'int8'), got 'int4'
    """
    if not (isinstance(serve_precision, str) and serve_precision in PRECISIONS):
        raise ValueError(f"serve_precision must be one of {PRECISIONS}, got {serve_precision!r}")


def quantise(rows: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (float32, shape (n, f)) compressed: the stored values (float16 or int8,
    shape (n, f)) and each row's scale (float32, shape (n,); ones for float16), so that
    ``values * scales[:, None]`` is the row again, up to the rounding.

    >>> values, scales = quantise(np.array([[0.5, -1.27, 0.0]], np.float32), "int8")
    >>> values.tolist(), scales.astype(np.float64).round(4).tolist()
    ([[50, -127, 0]], [0.01])
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if precision == "fp16":
        values = np.clip(rows, -_FP16_LIMIT, _FP16_LIMIT).astype(np.float16)
        return values, np.ones(len(rows), dtype=np.float32)
    if precision != "int8":
        raise ValueError(f"no compressed table for precision {precision!r}")
    values = np.empty(rows.shape, dtype=np.int8)
    scales = np.empty(len(rows), dtype=np.float32)
    quantise_int8_rows(rows, np.arange(len(rows)), values, scales)
    return values, scales


class CompressedTable:
    """A compressed copy of a float32 table (see :func:`quantise`), kept in step with it
    row by row, growing into spare room as the table grows.

    Parameters
    ----------
    precision : {"fp16", "int8"}
    width : int
        Entries a row (the factors).
    """

    def __init__(self, precision: str, width: int) -> None:
        self.precision = precision
        self._scaled = precision == "int8"  # float16 rows need no scale: none is kept
        self._values = np.zeros((0, width), dtype=_STORED[precision])
        self._scales = np.zeros(0, dtype=np.float32)
        self._rows = 0  # rows in use; the buffers may hold room for more

    def __len__(self) -> int:
        return self._rows

    @property
    def values(self) -> np.ndarray:
        """The stored entries, shape (n, f): float16 or int8."""
        return self._values[: self._rows]

    @property
    def scales(self) -> np.ndarray:
        """Each row's scale, shape (n,), float32 (ones for float16)."""
        if not self._scaled:
            return np.ones(self._rows, dtype=np.float32)
        return self._scales[: self._rows]

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in use (values, and int8's scales; spare room is not counted)."""
        return int(self.values.nbytes + (self.scales.nbytes if self._scaled else 0))

    def refresh(self, table: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Quantise ``table``'s ``rows`` again after they changed (None: every row), and any
        rows ``table`` has gained since (they are quantised whatever ``rows`` says)."""
        n = len(table)
        if rows is None:
            self._values = np.empty((n, table.shape[1]), dtype=self._values.dtype)
            self._scales = np.empty(n if self._scaled else 0, dtype=np.float32)
            self._rows = 0
            rows = np.arange(n)
        if n > self._rows:
            new = np.arange(self._rows, n)
            self._make_room(n)
            self._rows = n
            rows = np.union1d(rows, new)
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if self._scaled:  # in place, by one compiled call
            quantise_int8_rows(table, rows, self._values, self._scales)
        else:
            self._values[rows] = np.clip(table[rows], -_FP16_LIMIT, _FP16_LIMIT)

    def _make_room(self, n: int) -> None:
        if n <= len(self._values):
            return
        room = max(2 * n, 64)  # doubling: a table that grows every event is copied O(log n) times
        values = np.zeros((room, self._values.shape[1]), dtype=self._values.dtype)
        values[: self._rows] = self.values
        self._values = values
        if self._scaled:
            scales = np.zeros(room, dtype=np.float32)
            scales[: self._rows] = self.scales
            self._scales = scales

    def subset(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (old indexes), renumbered in their order (ids expired)."""
        self._values = self.values[rows]
        if self._scaled:
            self._scales = self.scales[rows]
        self._rows = len(rows)

    def dequantise(self, rows: np.ndarray | slice) -> np.ndarray:
        """The served float32 values of ``rows``, shape (len(rows), f)."""
        values = self.values[rows].astype(np.float32)
        if self._scaled:
            values *= self.scales[rows][..., None]
        return values

    def scores(self, queries: np.ndarray, rows: np.ndarray | slice) -> np.ndarray:
        """Inner products of float32 ``queries`` (shape (m, f)) with the served ``rows``
        (an index array, or ``slice(None)`` for all), shape (m, len(rows)), float32: by the
        compiled kernels for up to :data:`KERNEL_USERS` queries, else by blocks of
        :data:`BLOCK_ROWS` rows upcast to float32."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        values = self.values[rows]
        if len(queries) <= KERNEL_USERS:
            if self._scaled:
                return int8_scores(queries, values, self.scales[rows])
            return half_scores(queries, values.view(np.uint16))
        out = np.empty((len(queries), len(values)), dtype=np.float32)
        for start in range(0, len(values), BLOCK_ROWS):
            end = min(start + BLOCK_ROWS, len(values))
            np.matmul(queries, values[start:end].astype(np.float32).T, out=out[:, start:end])
        if self._scaled:
            out *= self.scales[rows]
        return out


class CompressedServing:
    """What a factor model needs to serve from compressed copies of its tables: the copies
    (``served_``: ``{"users": ..., "items": ...}``, None at ``serve_precision="fp32"``),
    keeping them in step, scoring and reranking with them, and their size.

    The model sets ``serve_precision``, keeps float32 ``user_factors_`` and ``item_factors_``,
    calls :meth:`_reset_served` when it resets and :meth:`_requantise` whenever rows of
    either table change or arrive (all rows after a fit, a load or a compaction)."""

    serve_precision: str
    factors: int
    user_factors_: np.ndarray
    item_factors_: np.ndarray
    served_: dict[str, CompressedTable] | None

    def _reset_served(self) -> None:
        self.served_ = None
        if self.serve_precision != "fp32":
            self.served_ = {side: CompressedTable(self.serve_precision, self.factors)
                            for side in ("users", "items")}  # fmt: skip

    def _requantise(self, side: str, rows: np.ndarray | None = None) -> None:
        """Quantise ``side``'s (``"users"`` or ``"items"``) ``rows`` again after they
        changed, with any rows the table gained (None: the whole table)."""
        if self.served_ is not None:
            table = self.user_factors_ if side == "users" else self.item_factors_
            self.served_[side].refresh(table, rows)

    def _served_factor_scores(
        self, user_index: np.ndarray, item_index: np.ndarray | slice
    ) -> np.ndarray:
        """``user . item`` over the served tables, shape (n_users, n_items), float32."""
        if self.served_ is None:
            return self.user_factors_[user_index] @ self.item_factors_[item_index].T
        queries = self.served_["users"].dequantise(user_index)
        return self.served_["items"].scores(queries, item_index)

    def _served_offsets(self, item_index: np.ndarray) -> np.ndarray | float:
        """What a model adds to ``user . item`` per item (BPR: its bias). Default: 0."""
        return 0.0

    def _rescore(self, user_index: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The served scores of the (user, row) pairs an approximate index found (rows
        shape (n, d), -1 where none: score -inf there). The index holds the float32 vectors;
        with compressed tables, the pairs are scored again as :meth:`_score` scores them."""
        if self.served_ is None:
            return scores
        queries = self.served_["users"].dequantise(user_index)  # (n, f)
        found = rows >= 0
        items = self.served_["items"].dequantise(np.where(found, rows, 0))  # (n, d, f)
        served = np.einsum("nf,ndf->nd", queries, items) + self._served_offsets(
            np.where(found, rows, 0)
        )
        return np.where(found, served, -np.inf).astype(np.float32)

    def served_bytes(self) -> int:
        """Bytes of the tables that scoring reads, rows in use: the compressed user and item
        tables (the float32 ones at ``serve_precision="fp32"``) and what the model adds per
        item (:meth:`_served_extra_bytes`). An approximate index keeps float32 vectors of
        its own, not counted here."""
        if self.served_ is None:
            tables = self.user_factors_.nbytes + self.item_factors_.nbytes
        else:
            tables = sum(table.nbytes for table in self.served_.values())
        return int(tables + self._served_extra_bytes())

    def _served_extra_bytes(self) -> int:
        """Bytes of what the model adds to ``user . item`` (BPR: its item bias). Default: 0."""
        return 0
