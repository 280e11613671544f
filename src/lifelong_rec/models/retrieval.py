"""Approximate top-k retrieval over an item table that keeps changing.

A factor model ranks a user's items by the inner product of the user's vector with every item
vector: exact, and linear in the catalogue (about 10 ms a user over a million items of 64
dimensions). :class:`IVFIndex` answers the same question from faiss's inverted-file index
(IVF-Flat): the item vectors are split into ``lists`` clusters by k-means, and a query scans
only the ``nprobe`` clusters whose centres score highest, computing exact inner products
there. An item whose vector changes is moved in constant time (removed from its list, added
to its new one), so the index follows every learned event without the slow decay of a graph
index's quality under updates; the clusters themselves are trained again when the catalogue
has grown to ``regrow`` times its size at the last training.

faiss, hnswlib and usearch were measured on the same vectors (``bench/retrieval.py``): the
graph indexes answer about as fast at a million items, but build 10-20 times slower, take
0.4-0.8 ms to move one item (faiss IVF: 0.01 ms), and lose recall as items move (on 100,000
clustered vectors, 60 % of them replaced: 0.965 usearch, 0.986 hnswlib, IVF unchanged).

How good the approximation is stays visible: a share of live queries (``check_share``) is
kept aside, and :meth:`IVFIndex.check_recall` (off the request path: the service runs it when
its metrics are read) compares each with the exact top-k of the same table.

faiss is an optional dependency (``pip install 'lifelong-rec[ann]'``).
"""

from __future__ import annotations

import collections
import threading
from typing import Any

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.specs import parse_spec

_PENDING = 64  # queries kept for the recall check at most (the newest win)


class Stacked:
    """A table of columns side by side, ``[factors | bias]``, gathered only for the rows
    asked: a model that scores ``q_i . p_u + b_i`` (BPR) searches the inner product of
    ``[q_i, b_i]`` with ``[p_u, 1]`` without keeping a stacked copy of its item table.

    >>> table = Stacked(np.ones((3, 2), np.float32), np.arange(3, dtype=np.float32)[:, None])
    >>> table.shape, table[np.array([2])].tolist(), (table @ np.array([1.0, 1.0, 1.0])).tolist()
    ((3, 3), [[1.0, 1.0, 2.0]], [2.0, 3.0, 4.0])
    """

    def __init__(self, *parts: np.ndarray) -> None:
        self.parts = parts

    def __len__(self) -> int:
        return len(self.parts[0])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), sum(part.shape[1] for part in self.parts)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return np.hstack([part[rows] for part in self.parts])

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return np.hstack(self.parts).astype(np.float32 if dtype is None else dtype)

    def __matmul__(self, vector: np.ndarray) -> np.ndarray:
        ends = np.cumsum([part.shape[1] for part in self.parts])
        return sum(
            (
                part @ vector[end - part.shape[1] : end]
                for part, end in zip(self.parts, ends, strict=True)
            ),
            start=np.zeros(len(self)),
        )


class IVFIndex:
    """Approximate maximum-inner-product search (faiss IVF-Flat) over a changing table.

    Parameters
    ----------
    nprobe : int
        Clusters scanned per query: recall and cost both grow with it.
    lists : int, optional
        Clusters. None: ``4 * sqrt(items)`` when trained (faiss's rule of thumb).
    min_items : int
        Below this many items the index is not built and callers rank exactly (an exact scan
        of a small table is as fast, and k-means wants data).
    regrow : float
        Train the clusters again when the table has grown this many times over since the
        last training.
    check_share : float
        Share of searched queries kept aside for the recall check.
    seed : int
        Seeds k-means's sample and the choice of queries checked.
    """

    name = "ivf"

    def __init__(
        self,
        nprobe: int = 64,
        lists: int | None = None,
        min_items: int = 20_000,
        regrow: float = 4.0,
        check_share: float = 0.01,
        seed: int = 0,
    ) -> None:
        check_positive_ints(nprobe=nprobe)
        if lists is not None:
            check_positive_ints(lists=lists)
        if not (isinstance(min_items, int) and min_items >= 0):
            raise ValueError(f"min_items must be an int >= 0, got {min_items!r}")
        if not regrow > 1:
            raise ValueError(f"regrow must be > 1, got {regrow!r}")
        if not 0 <= check_share <= 1:
            raise ValueError(f"check_share must be in [0, 1], got {check_share!r}")
        self.nprobe = nprobe
        self.lists = lists
        self.min_items = min_items
        self.regrow = regrow
        self.check_share = check_share
        self.seed = seed
        self._faiss = _import_faiss()
        self._index: Any = None  # faiss.IndexIVFFlat once trained
        self._trained_size = 0
        self._rng = np.random.default_rng(seed)
        self._pending: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque(
            maxlen=_PENDING
        )
        self._recall = (0.0, 0.0)  # decayed (overlap, checked) sums
        self._lock = threading.Lock()  # the recall sums: checks may run from several threads

    @property
    def ready(self) -> bool:
        """Whether searches are answered (the table reached ``min_items``)."""
        return self._index is not None

    # -------------------------------------------------------------- keeping in step

    def sync(self, table: np.ndarray | Stacked, rows: np.ndarray | None = None) -> None:
        """Bring the index in step with ``table`` (items x dimensions) after its ``rows``
        changed or were added (None: all of them, as after a full training)."""
        n = len(table)
        if n < self.min_items:
            self._index = None
            return
        if rows is None or self._index is None or n >= self.regrow * self._trained_size:
            self._train(table)
            return
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows):
            self._index.remove_ids(rows)
            self._index.add_with_ids(np.ascontiguousarray(table[rows], dtype=np.float32), rows)

    def refill(self, table: np.ndarray | Stacked) -> None:
        """Every row of ``table`` changed (a model whose parameters all moved): put them all
        back in the clusters trained before, without k-means (unless the table grew
        ``regrow`` times since, or the index was not ready)."""
        n = len(table)
        if n < self.min_items or self._index is None or n >= self.regrow * self._trained_size:
            self.sync(table)
            return
        self._index.reset()
        vectors = np.ascontiguousarray(table, dtype=np.float32)
        self._index.add_with_ids(vectors, np.arange(n, dtype=np.int64))

    def _train(self, table: np.ndarray | Stacked) -> None:
        faiss = self._faiss
        n, dim = table.shape
        lists = self.lists or int(4 * np.sqrt(n))
        lists = max(1, min(lists, n // 39))  # k-means wants 39 points a cluster (faiss warns)
        vectors = np.ascontiguousarray(table, dtype=np.float32)
        sample = vectors
        if n > 64 * lists:  # k-means converges on a sample; faiss's own cap is 256 per list
            sample = vectors[np.random.default_rng(self.seed).choice(n, 64 * lists, replace=False)]
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # moves in O(1), not a full scan
        index.add_with_ids(vectors, np.arange(n, dtype=np.int64))
        self._adopt(index, n)

    def _adopt(self, index: Any, trained_size: int) -> None:
        """Serve from the faiss ``index`` (trained, restored or copied), probing ``nprobe``."""
        index.nprobe = min(self.nprobe, index.nlist)
        self._index, self._trained_size = index, trained_size

    # -------------------------------------------------------------- searching

    def search(
        self, queries: np.ndarray, k: int, checked: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows of highest inner product with each query, best first; the recall
        check (if this query is chosen for it) compares the first ``checked`` (all ``k``
        when None) with the exact top ``checked``.

        Returns
        -------
        rows : int64 array (n, k)
            -1 where the scanned clusters held fewer than ``k`` items.
        scores : float32 array (n, k)
            Exact inner products (-inf for -1 rows).
        """
        assert self._index is not None, "search only a ready index"
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self._index.search(queries, k)
        scores[rows < 0] = -np.inf
        self._offer(queries, rows[:, :checked])
        return rows, scores

    def _offer(self, queries: np.ndarray, rows: np.ndarray) -> None:
        if self.check_share <= 0 or not len(queries):
            return
        chosen = np.flatnonzero(self._rng.random(len(queries)) < self.check_share)
        for row in chosen:  # a handful per thousand queries
            self._pending.append((queries[row].copy(), rows[row].copy()))

    # -------------------------------------------------------------- recall

    def check_recall(self, table: np.ndarray | Stacked) -> float | None:
        """Check the queries kept aside against the exact top-k of ``table`` (the table they
        were searched in) and return the running recall@k (None: nothing checked yet). An
        exact scan per query: run it off the request path."""
        checked = overlap = 0.0
        while True:
            try:
                query, found = self._pending.popleft()
            except IndexError:
                break
            k = len(found)
            scores = table @ query
            width = min(k, len(scores))
            exact = np.argpartition(-scores, width - 1)[:width] if width else found[:0]
            overlap += len(np.intersect1d(exact, found[found >= 0])) / max(width, 1)
            checked += 1
        with self._lock:
            kept, total = self._recall
            if checked:
                decay = 0.99**checked  # about the last few hundred checks
                kept, total = kept * decay + overlap, total * decay + checked
                self._recall = (kept, total)
        return kept / total if total else None

    # -------------------------------------------------------------- persistence

    def to_bytes(self) -> np.ndarray:
        """The trained index, serialised (uint8; empty when not ready)."""
        if self._index is None:
            return np.zeros(0, dtype=np.uint8)
        return np.asarray(self._faiss.serialize_index(self._index), dtype=np.uint8)

    def restore(self, data: np.ndarray, table: np.ndarray | Stacked) -> None:
        """Take a serialised index back, or build one from ``table`` if there is none (or it
        does not hold the table's rows)."""
        if len(data):
            index = self._faiss.deserialize_index(np.asarray(data, dtype=np.uint8))
            if index.ntotal == len(table):
                self._adopt(index, index.ntotal)
                return
        self.sync(table)

    def __deepcopy__(self, memo: dict[int, object]) -> IVFIndex:
        copied = IVFIndex.__new__(IVFIndex)
        memo[id(self)] = copied
        copied.__setstate__(self.__getstate__())
        return copied

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_index"] = self.to_bytes()
        for key in ("_faiss", "_lock"):
            del state[key]
        state["_pending"] = list(self._pending)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        data = state.pop("_index")
        pending = state.pop("_pending")
        assert isinstance(pending, list)
        self.__dict__.update(state)
        self._faiss = _import_faiss()
        self._lock = threading.Lock()
        self._pending = collections.deque(pending, maxlen=_PENDING)
        self._index = None
        assert isinstance(data, np.ndarray)
        if len(data):
            self._adopt(self._faiss.deserialize_index(data), self._trained_size)


RETRIEVALS: dict[str, type] = {"ivf": IVFIndex}


def make_retrieval(spec: str | None) -> IVFIndex | None:
    """The index named by ``spec`` (``"ivf"``, ``"ivf(nprobe=32)"``), or None for exact
    ranking (``None`` or ``"exact"``).

    Raises
    ------
    ValueError
        For an unknown spec or parameter, naming ``retrieval``.
    ImportError
        When faiss is not installed, saying how to install it.
    """
    if spec is None or spec == "exact":
        return None
    try:
        cls, params = parse_spec(spec, RETRIEVALS, "retrieval")
        return cls(**params)
    except (TypeError, ValueError) as error:
        raise ValueError(f"retrieval: {error} (or exact)") from error


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "retrieval='ivf' needs faiss: pip install 'lifelong-rec[ann]' (faiss-cpu)"
        ) from error
    return faiss


class IndexedItems:
    """What a factor model that scores ``query(u) . row(i)`` needs to rank through an
    :class:`IVFIndex`: the recommend hooks, the recall check, and saving the index. Mixed in
    before :class:`~lifelong_rec.models.base.Recommender`; the model sets ``retrieval`` and
    ``index_`` (``make_retrieval(retrieval)``), says what the index holds
    (:meth:`_item_table`) and what it is searched with (:meth:`_queries`), and calls
    :meth:`_sync_index` whenever item rows change or arrive. The index holds float32
    vectors, also where the model serves compressed tables: it finds the candidates, and
    :meth:`_rescore` gives them the served scores."""

    retrieval: str | None
    index_: IVFIndex | None

    def _item_table(self) -> np.ndarray | Stacked:
        """The rows the index holds, one per item."""
        raise NotImplementedError

    def _queries(self, user_index: np.ndarray) -> np.ndarray:
        """The users' query vectors."""
        raise NotImplementedError

    def _sync_index(self, rows: np.ndarray | None = None) -> None:
        """Bring the index in step after item ``rows`` changed or arrived (None: all of them,
        retraining its clusters)."""
        if self.index_ is not None:
            self.index_.sync(self._item_table(), rows)

    def _retrieves(self) -> bool:
        return self.index_ is not None and self.index_.ready

    def _retrieve(
        self, user_index: np.ndarray, depth: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.index_ is not None
        rows, scores = self.index_.search(self._queries(user_index), depth, width)
        return rows, self._rescore(user_index, rows, scores)

    def _rescore(self, user_index: np.ndarray, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The scores the model serves for the found (user, row) pairs (rows -1: none). The
        index's inner products, unless the model scores from other tables than the index
        holds (compressed ones: :class:`~lifelong_rec.models.quantise.CompressedServing`)."""
        return scores

    def check_recall(self) -> float | None:
        """The approximate index's running recall@k on live queries (see
        :meth:`IVFIndex.check_recall`); None when every item is scored exactly, or nothing
        has been checked yet."""
        if not self._retrieves():
            return None
        assert self.index_ is not None
        return self.index_.check_recall(self._item_table())

    def _index_state(self) -> dict[str, np.ndarray]:
        """The serialised index, for the model's saved arrays (none when ranking exactly)."""
        return {} if self.index_ is None else {"retrieval": self.index_.to_bytes()}

    def _restore_index(self, arrays: dict[str, np.ndarray]) -> None:
        """The index from the saved arrays (built from the table if they hold none)."""
        self.index_ = make_retrieval(self.retrieval)
        if self.index_ is not None:
            self.index_.restore(arrays.get("retrieval", np.zeros(0, np.uint8)), self._item_table())
