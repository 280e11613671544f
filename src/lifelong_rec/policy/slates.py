"""Slate arithmetic every policy shares: top-k picks, exploration flags, the candidates a mask
allows, and marginals (one-hot or Monte-Carlo)."""

from __future__ import annotations

import numpy as np


def top_k(values: np.ndarray, k: int, stable: bool = False) -> np.ndarray:
    """Indexes of the ``k`` largest values along the last axis, largest first.

    With ``stable=True`` ties go to the lower index (a full stable sort); otherwise a partial
    sort, for random draws where ties have probability zero.

    >>> top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), 2, stable=True).tolist()
    [[1, 3]]
    """
    if stable or k >= values.shape[-1]:
        return np.argsort(-values, axis=-1, kind="stable")[..., :k]
    part = np.argpartition(-values, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(values, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def outside_top_k(
    values: np.ndarray, chosen: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Whether each chosen index is outside the ``k`` largest values of its row, ties to the
    lower index: not in ``top_k(values, k, stable=True)``, found by counting the candidates
    ranked ahead of it instead of sorting.

    Parameters
    ----------
    values : array of float, shape (n, m)
    chosen : array of int, shape (n, c)
        Indexes into the rows of ``values``.
    k : int
    allowed : array of bool, shape (n, m), optional
        Only these candidates count as ranked ahead (the top ``k`` among them).

    Returns
    -------
    outside : array of bool, shape (n, c)

    >>> outside_top_k(np.array([[0.1, 0.9, 0.5, 0.9]]), np.array([[3, 2, 0]]), 2).tolist()
    [[False, True, True]]
    """
    own = np.take_along_axis(values, chosen, axis=1)[:, :, None]
    others = values[:, None, :]
    earlier = np.arange(values.shape[1]) < chosen[:, :, None]
    if allowed is not None:
        before = (others > own) | ((others == own) & earlier)
        return (before & allowed[:, None, :]).sum(axis=2) >= k
    ahead = (others > own).sum(axis=2) + ((others == own) & earlier).sum(axis=2)
    return ahead >= k


def allowed_columns(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's allowed candidates first, in order, padded to the largest count with
    disallowed ones: a policy can then work on (n, width) arrays instead of (n, m).

    Parameters
    ----------
    allowed : array of bool, shape (n, m)

    Returns
    -------
    columns : array of int64, shape (n, width)
        Distinct indexes into the candidates per row.
    valid : array of bool, shape (n, width)
        Whether each column is allowed (the padding is not).

    >>> columns, valid = allowed_columns(np.array([[False, True, True], [True, False, False]]))
    >>> columns.tolist(), valid.tolist()
    ([[1, 2], [0, 1]], [[True, True], [True, False]])
    """
    width = int(allowed.sum(axis=1).max()) if len(allowed) else 0
    columns = np.argsort(~allowed, axis=1, kind="stable")[:, :width]
    return columns, np.take_along_axis(allowed, columns, axis=1)


def uniform_probabilities(allowed: np.ndarray) -> np.ndarray:
    """One over each row's count of allowed candidates where allowed, 0 elsewhere.

    Parameters
    ----------
    allowed : array of bool, shape (n, m)

    Returns
    -------
    probabilities : array of float64, shape (n, m)

    >>> (3 * uniform_probabilities(np.array([[True, False, True, True]]))).tolist()
    [[1.0, 0.0, 1.0, 1.0]]
    """
    return allowed / allowed.sum(axis=1, keepdims=True)


def one_hot_marginals(slates: np.ndarray, m: int) -> np.ndarray:
    """The marginals of deterministic slates: 1 where an index sits at a position, else 0.

    Parameters
    ----------
    slates : array of int, shape (n, k)
    m : int

    Returns
    -------
    marginals : array of float64, shape (n, m, k)
    """
    n, k = slates.shape
    out = np.zeros((n, m, k))
    out[np.arange(n)[:, None], slates, np.arange(k)] = 1.0
    return out


def sampled_marginals(
    samples: np.ndarray,
    k: int,
    own: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Monte-Carlo marginals: how often each candidate is at each position among the top-k of
    sampled scores.

    Parameters
    ----------
    samples : array of float, shape (n, draws, m) or (draws, m)
        Sampled scores; a 2-D array is shared by every row (context-free policies).
    k : int
    own : array of int, shape (n, k), optional
        The slate each row was actually shown by its own draw; counted as one more draw, so
        a shown item never gets propensity 0.
    allowed : array of bool, shape (n, m), optional
        Each row's top-k is taken among its allowed candidates only (at least ``k``). Shared
        draws are then counted once per distinct mask, not once per row.

    Returns
    -------
    marginals : array of float64, shape (n, m, k) (n = 1 for shared draws without ``own``
    or ``allowed``)
    """
    shared = samples.ndim == 2
    inverse = None
    if allowed is not None:
        if shared:  # rows with the same mask have the same counts: one top-k per mask
            allowed, inverse = np.unique(allowed, axis=0, return_inverse=True)
            inverse = inverse.reshape(-1)
            samples = samples[None]
        samples = np.where(allowed[:, None, :], samples, -np.inf)
    elif shared:
        samples = samples[None]
    rows, draws, m = samples.shape
    top = top_k(samples, k)  # (rows, draws, k)
    flat = (np.arange(rows)[:, None, None] * m + top) * k + np.arange(k)
    counts = np.bincount(flat.ravel(), minlength=rows * m * k).reshape(rows, m, k)
    counts = counts.astype(np.float64)
    if inverse is not None:
        counts = counts[inverse]
    if own is None:
        return counts / draws
    if shared and inverse is None:
        counts = np.broadcast_to(counts, (len(own), m, k)).copy()
    counts[np.arange(len(own))[:, None], own, np.arange(k)] += 1.0
    return counts / (draws + 1)
