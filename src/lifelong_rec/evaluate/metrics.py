"""Ranking metrics, vectorised. A rank starts at 1; ``inf`` is a miss (item not rankable)."""

from __future__ import annotations

import numpy as np

from lifelong_rec.checks import check_positive_ints


def target_ranks(
    scores: np.ndarray, owner: np.ndarray, excluded: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Rank of each row's ``target`` column in ``scores``, shape (n_rows,), after the
    (``owner`` row, ``excluded`` column) pairs are left out (set to -inf in ``scores``, in
    place). Ties count against the target (its rank is the number of columns scoring at least
    as high); the target itself is never left out; a column of -1, in ``excluded`` or
    ``target``, is an item the scores do not cover: ignored, or a miss (rank inf).

    Examples
    --------
    >>> scores = np.array([[3.0, 2.0, 2.0, 1.0]])
    >>> target_ranks(scores, np.array([0]), np.array([0]), np.array([2])).tolist()
    [2.0]
    """
    keep = (excluded >= 0) & (excluded != target[owner])
    scores[owner[keep], excluded[keep]] = -np.inf
    ranks = np.full(len(scores), np.inf)
    known = np.flatnonzero(target >= 0)
    chosen = scores[known, target[known]]
    rank = (scores[known] >= chosen[:, None]).sum(axis=1)
    ranks[known] = np.where(np.isnan(chosen), np.inf, rank)
    return ranks


def hits(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """1.0 where the rank is within the top ``k``, shape as ``ranks``.

    Examples
    --------
    >>> hits(np.array([1, 10, 11, np.inf]), k=10).tolist()
    [1.0, 1.0, 0.0, 0.0]
    """
    return (np.asarray(ranks, dtype=np.float64) <= _check_k(k)).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """``1 / log2(rank + 1)`` within the top ``k``, else 0 (one relevant item per row)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks <= _check_k(k)
    return np.where(inside, 1.0 / np.log2(np.where(inside, ranks, 1.0) + 1.0), 0.0)


def reciprocal_rank(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """``1 / rank`` within the top ``k``, else 0 (MRR@k is its mean)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks <= _check_k(k)
    return np.where(inside, 1.0 / np.where(inside, ranks, 1.0), 0.0)


def recall(recommended: np.ndarray, relevant: list[set[str]]) -> np.ndarray:
    """Share of each user's relevant items found in their list, shape (n_users,).

    Parameters
    ----------
    recommended : array of str, shape (n_users, k)
    relevant : list of sets of item ids, length n_users
    """
    sizes = np.array([len(r) for r in relevant], dtype=np.float64)
    found = np.array(
        [len(r.intersection(row.tolist())) for row, r in zip(recommended, relevant, strict=True)],
        dtype=np.float64,
    )
    return np.divide(found, sizes, out=np.zeros_like(found), where=sizes > 0)


def coverage(recommended: np.ndarray, catalogue_size: int) -> float:
    """Share of the catalogue that appears in at least one list ("" padding ignored)."""
    shown = np.unique(recommended[recommended != ""])
    return len(shown) / catalogue_size if catalogue_size else 0.0


def novelty(recommended: np.ndarray, items: np.ndarray, counts: np.ndarray) -> float:
    """Mean self-information ``-log2 p(item)`` of recommended items, p from ``counts``.

    Higher means less popular items are recommended. Items absent from ``items`` count as
    seen once.
    """
    shown = recommended[recommended != ""]
    if len(shown) == 0:
        return 0.0
    order = np.argsort(items)
    position = np.minimum(np.searchsorted(items[order], shown), len(items) - 1)
    found = items[order][position] == shown
    count = np.where(found, counts[order][position], 1.0)
    total = max(float(np.sum(counts)), 1.0)
    return float(np.mean(-np.log2(np.maximum(count, 1.0) / total)))


def _check_k(k: int) -> int:
    check_positive_ints(k=k)
    return int(k)
