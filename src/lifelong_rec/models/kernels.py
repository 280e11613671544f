"""Compiled kernels (numba) for the per-event update path and the per-request path.

A single event touches one user and one item: a handful of short rows. Written with numpy,
gathering those rows from a growing sparse matrix and solving their normal equations takes a
few dozen array calls, each costing microseconds of overhead for nanoseconds of arithmetic;
on ML-100K that overhead was most of matrix factorisation's 0.7 ms per event. Here each of the
two steps is one compiled call that loops over the rows, with BLAS for each row's products;
it is faster than the vectorised numpy it replaced for large problems too (a full fit, the
fold of a sparse matrix's pending increments).

A request's explanations are the same kind of work: a few short rows per user (MF's fold-in
split, BPR's similarities, the top reasons of ten items), done by one compiled call each.

The kernels are compiled on first use and cached on disk (``cache=True``: next to this file,
or numba's user cache where that is read-only), and they release the GIL.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import get_cython_function_address, intrinsic

_TINY = 1e-20


@njit(cache=True, nogil=True)
def gather_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    index: np.ndarray,
    pending_rows: np.ndarray,
    pending_cols: np.ndarray,
    pending_values: np.ndarray,
    take_max: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``index`` (a row may repeat) of a CSR base plus pending increments, as CSR arrays
    (indptr, indices, data) with sorted, unique columns per row.

    A column in both the base and the pending increments, or several times among the pending
    ones, is combined: added up, or the largest kept when ``take_max``.
    """
    n = len(index)
    # each pending increment's requested positions: index sorted, then a binary search per
    # increment within the requested rows' range, O(pending) compares and O(matches * log n)
    order = np.argsort(index, kind="mergesort")
    by_row = index[order]
    first, last = (by_row[0], by_row[-1]) if n else (0, -1)
    lows = np.zeros(len(pending_rows), dtype=np.int64)  # each increment's span of by_row
    highs = np.zeros(len(pending_rows), dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    for p in range(len(pending_rows)):
        if first <= pending_rows[p] <= last:
            lows[p] = np.searchsorted(by_row, pending_rows[p], side="left")
            highs[p] = np.searchsorted(by_row, pending_rows[p], side="right")
            for q in range(lows[p], highs[p]):
                counts[order[q]] += 1
    starts = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        starts[i + 1] = starts[i] + counts[i]
    members = np.empty(starts[n], dtype=np.int64)  # per position, its increments in time order
    filled = starts[:-1].copy()
    for p in range(len(pending_rows)):
        for q in range(lows[p], highs[p]):
            members[filled[order[q]]] = p
            filled[order[q]] += 1

    bound = starts[n]
    for i in range(n):
        bound += indptr[index[i] + 1] - indptr[index[i]]
    out_indptr = np.zeros(n + 1, dtype=np.int64)
    out_indices = np.empty(bound, dtype=indices.dtype)
    out_data = np.empty(bound, dtype=data.dtype)
    at = 0
    for i in range(n):
        b, b_end = indptr[index[i]], indptr[index[i] + 1]
        mine = members[starts[i] : starts[i + 1]]
        # the row's increments by column (stable: equal columns stay in time order)
        mine = mine[np.argsort(pending_cols[mine], kind="mergesort")]
        p, row_start = 0, at
        while b < b_end or p < len(mine):
            if p == len(mine) or (b < b_end and indices[b] <= pending_cols[mine[p]]):
                column, value = indices[b], data[b]
                b += 1
            else:
                column, value = pending_cols[mine[p]], pending_values[mine[p]]
                p += 1
            if at > row_start and out_indices[at - 1] == column:
                previous = out_data[at - 1]
                out_data[at - 1] = max(previous, value) if take_max else previous + value
            else:
                out_indices[at] = column
                out_data[at] = value
                at += 1
        out_indptr[i + 1] = at
    return out_indptr, out_indices[:at], out_data[:at]


@njit(cache=True, nogil=True)
def _apply(
    gram: np.ndarray, rows: np.ndarray, extra: np.ndarray, pull: float, vector: np.ndarray
) -> np.ndarray:
    """(G + O^T (C - I) O + pull I) vector, with O = ``rows`` (one row's interactions' factors,
    gathered) and C - I = ``extra``: three BLAS matrix-vector products."""
    along = rows @ vector.astype(np.float32)
    return gram @ vector + pull * vector + (rows.T @ (along * extra)).astype(np.float64)


@njit(cache=True, nogil=True)
def solve_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    extra: np.ndarray,
    other: np.ndarray,
    gram: np.ndarray,
    start: np.ndarray,
    pull: np.ndarray,
    anchor: np.ndarray,
    steps: int,
) -> np.ndarray:
    """Conjugate-gradient steps on each row's normal equations, row by row.

    Row r solves ``(G + O_r^T (C_r - I) O_r + pull_r I) x_r = O_r^T C_r 1 + pull_r a_r``, with
    ``G = gram`` (the other side's Gram matrix plus the regularisation), ``O_r`` the other
    side's factors of r's interactions (``other[indices[indptr[r]:indptr[r + 1]]]``), ``C_r - I``
    their ``extra`` confidences and ``a_r`` the ``anchor`` row. Starts from ``start``; a row
    stops early once its residual vanishes. The vectors are float64, the gathered factors
    float32 (the tables'); the result is float32.
    """
    n, k = start.shape
    out = np.empty((n, k), dtype=np.float32)
    for r in range(n):
        lo, hi = indptr[r], indptr[r + 1]
        rows = np.empty((hi - lo, k), dtype=np.float32)
        for j in range(lo, hi):
            rows[j - lo] = other[indices[j]]
        weights = extra[lo:hi].astype(np.float32)
        x = start[r].astype(np.float64)
        target = pull[r] * anchor[r].astype(np.float64) + (
            rows.T @ (weights + np.float32(1.0))
        ).astype(np.float64)
        residual = target - _apply(gram, rows, weights, pull[r], x)
        direction = residual.copy()
        norm = residual @ residual
        for _ in range(steps):
            if norm < _TINY:
                break
            moved = _apply(gram, rows, weights, pull[r], direction)
            step = norm / max(direction @ moved, _TINY)
            x += step * direction
            residual -= step * moved
            new_norm = residual @ residual
            direction = residual + (new_norm / max(norm, _TINY)) * direction
            norm = new_norm
        out[r] = x.astype(np.float32)
    return out


# ------------------------------------------------------------------------------ serving

_HALF_TO_SINGLE = np.float32(2.0**112)  # rebias a half's exponent (15) to a single's (127)


@njit(cache=True, nogil=True, fastmath=True)
def int8_scores(queries: np.ndarray, values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``queries @ (scales[:, None] * values).T`` without a float32 copy of the table: each
    int8 row is widened in registers as it is read (a few users at a time: a request).

    Parameters
    ----------
    queries : float32 array, shape (m, f)
    values : int8 array, shape (n, f)
    scales : float32 array, shape (n,)

    Returns
    -------
    scores : float32 array, shape (m, n)
    """
    m, f = queries.shape
    n = values.shape[0]
    out = np.empty((m, n), dtype=np.float32)
    for i in range(n):
        for u in range(m):
            total = np.float32(0.0)
            for k in range(f):
                total += queries[u, k] * np.float32(values[i, k])
            out[u, i] = total * scales[i]
    return out


@njit(cache=True, nogil=True, fastmath=True)
def half_scores(queries: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """``queries @ table.T`` for a float16 ``table`` given as its bits (uint16, shape
    (n, f)), each row widened to float32 as it is read: the half's sign, exponent and
    mantissa shifted into a single's places, then the exponent rebiased by one product
    (exact for normal and subnormal halves; the tables hold no infinities or NaN)."""
    m, f = queries.shape
    n = bits.shape[0]
    out = np.empty((m, n), dtype=np.float32)
    widened = np.empty(f, dtype=np.uint32)
    row = widened.view(np.float32)
    for i in range(n):
        for k in range(f):
            half = np.uint32(bits[i, k])
            widened[k] = ((half & np.uint32(0x8000)) << np.uint32(16)) | (
                (half & np.uint32(0x7FFF)) << np.uint32(13)
            )
        for u in range(m):
            total = np.float32(0.0)
            for k in range(f):
                total += queries[u, k] * row[k]
            out[u, i] = total * _HALF_TO_SINGLE
    return out


@njit(cache=True, nogil=True)
def quantise_int8_rows(
    table: np.ndarray, rows: np.ndarray, values: np.ndarray, scales: np.ndarray
) -> None:
    """Quantise ``table``'s ``rows`` (float32, shape (n, f)) into ``values[rows]`` (int8)
    and ``scales[rows]`` (float32), in place: ``scale = max|row| / 127``,
    ``value = round(row / scale)`` (half to even), a row of zeros kept at scale 0. In float32
    throughout, as numpy computes it on float32 arrays, so a row quantised here equals the
    same row quantised in a whole table. One compiled call: an update's few rows cost a
    microsecond, not the dozen numpy calls of a vectorised quantisation."""
    f = table.shape[1]
    for j in range(len(rows)):
        r = rows[j]
        largest = np.float32(0.0)
        for k in range(f):
            largest = max(largest, abs(table[r, k]))
        scale = np.float32(largest / np.float32(127.0))
        scales[r] = scale
        inverse = np.float32(np.float32(1.0) / scale) if scale > 0 else np.float32(0.0)
        for k in range(f):
            value = np.rint(np.float32(table[r, k] * inverse))
            values[r, k] = np.int8(min(max(value, np.float32(-127.0)), np.float32(127.0)))


# ------------------------------------------------------------------------------ the new-item prior


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def prior_step(
    profiles: np.ndarray,
    embeddings: np.ndarray,
    discovered: np.ndarray,
    log_share: np.ndarray,
    candidates: np.ndarray,
    release: np.ndarray,
    years: np.ndarray,
    picked: np.ndarray,
    age_edges: np.ndarray,
    log_rates: np.ndarray,
    coef: np.ndarray,
    calibration_edges: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The sums one step of :class:`~lifelong_rec.models.fresh.NewItemPrior` takes from its
    judged events, in one pass over (event, candidate) pairs instead of a dozen (n, C) arrays
    (and no copy of the candidates' texts).

    ``profiles`` (n, dim): each event's user's recent items, a unit (or zero) row;
    ``embeddings``, ``discovered``, ``release``: per item (``candidates`` are indexes into
    them, sorted); ``log_share``, ``years``, ``picked`` (the candidate column of the event's
    item where it was a first pick among the candidates, else -1): per event. A candidate
    released after the event's year is no candidate for it. Returns the Poisson
    log-likelihood's gradient in the coefficients (3,), the exposures exp(c . x) and first
    picks per age bucket, and the summed chances and first picks per calibration bin."""
    n_ages = len(age_edges) + 1
    gradient = np.zeros(3)
    exposure = np.zeros(n_ages)
    picks = np.zeros(n_ages)
    expected = np.zeros(len(calibration_edges) + 1)
    observed = np.zeros(len(calibration_edges) + 1)
    for r in range(profiles.shape[0]):
        x2 = log_share[r]
        for c in range(len(candidates)):
            item = candidates[c]
            if release[item] > years[r]:  # not released yet: never a candidate
                continue
            age = years[r] - release[item]
            bucket = n_ages - 1  # unknown age
            if not np.isnan(age):
                bucket = max(np.searchsorted(age_edges, age, side="right") - 1, 0)
            dot = np.float32(0.0)  # in float32, as the texts are: the loop vectorises
            for d in range(profiles.shape[1]):
                dot += profiles[r, d] * embeddings[item, d]
            x0 = np.float64(dot)
            x1 = np.float64(discovered[item])
            linear = x0 * coef[0] + x1 * coef[1] + x2 * coef[2]
            chance = np.exp(min(log_rates[bucket] + linear, 0.0))
            exposure[bucket] += np.exp(min(linear, 50.0))
            calibration = np.searchsorted(calibration_edges, np.log10(max(chance, 1e-300)))
            expected[calibration] += chance
            weight = -chance
            if picked[r] == c:
                weight += 1.0
                picks[bucket] += 1.0
                observed[calibration] += 1.0
            gradient[0] += weight * x0
            gradient[1] += weight * x1
            gradient[2] += weight * x2
    return gradient, exposure, picks, expected, observed


@njit(cache=True, nogil=True)
def record_users(
    profile: np.ndarray,
    newness: np.ndarray,
    embeddings: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    first: np.ndarray,
    decay: float,
) -> None:
    """Events in time order into the users' decayed sums of recent item texts (``profile``)
    and of (first picks, events) (``newness``), in place: per event, the user's sums decay by
    ``decay`` and the event is added."""
    for e in range(len(users)):
        user, item = users[e], items[e]
        for d in range(profile.shape[1]):
            profile[user, d] = profile[user, d] * decay + embeddings[item, d]
        newness[user, 0] = newness[user, 0] * decay + (1.0 if first[e] else 0.0)
        newness[user, 1] = newness[user, 1] * decay + 1.0


# ------------------------------------------------------------------------------ the ensemble


@njit(cache=True, nogil=True)
def judged_ranks(
    parts: np.ndarray,
    excluded: np.ndarray,
    items: np.ndarray,
    weights: np.ndarray,
    history: np.ndarray,
    item_ages: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The rank of each judged event's item under every candidate of an ensemble and under
    their blend, in one pass over the items (ties count against the item).

    ``parts`` (candidates, n, items): the candidates' standardised scores; ``excluded``
    (n, items): what each user has seen (the event's own item is ranked all the same);
    ``items`` (n,): the event's item, -1 where unknown (rank inf); ``weights`` (history
    buckets, age buckets, candidates); ``history`` (n,) and ``item_ages`` (items,): the
    buckets. The blend of item ``i`` for event ``r`` is ``sum_c weights[history[r],
    item_ages[i], c] * parts[c, r, i]``, added in candidate order. Returns the ranks under
    each candidate (n, candidates) and under the blend (n,)."""
    n_candidates, n, n_items = parts.shape
    ranks = np.zeros((n, n_candidates))
    blend_ranks = np.zeros(n)
    for r in range(n):
        target = items[r]
        if target < 0:
            ranks[r, :] = np.inf
            blend_ranks[r] = np.inf
            continue
        h = history[r]
        target_blend = 0.0
        for c in range(n_candidates):
            target_blend += weights[h, item_ages[target], c] * parts[c, r, target]
        for i in range(n_items):
            if excluded[r, i] and i != target:
                continue
            blend = 0.0
            for c in range(n_candidates):
                part = parts[c, r, i]
                if part >= parts[c, r, target]:
                    ranks[r, c] += 1.0
                blend += weights[h, item_ages[i], c] * part
            if blend >= target_blend:
                blend_ranks[r] += 1.0
    return ranks, blend_ranks


# ------------------------------------------------------------------------------ explaining


@njit(cache=True, nogil=True)
def top_positive(
    history: np.ndarray, weights: np.ndarray, popularity: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``width`` largest positive weights of every (user, item), largest first, in one
    pass: the reasons of an explanation.

    ``history`` (n, h): each user's history items, -1 pads; ``weights`` (n, h, k): what
    history item ``h`` adds to the score of item ``k``; ``popularity`` (n, k), or (0, k) for
    none: one more candidate per item after the history ones (item -2). Of equal weights the
    earlier candidate ranks first (as a stable sort). Returns the chosen history items (n, k,
    width; -1 where fewer candidates are positive) and their weights (0 there)."""
    n, h = history.shape
    k = weights.shape[2]
    with_popularity = popularity.shape[0] == n
    items = np.full((n, k, width), -1, dtype=np.int64)
    chosen = np.zeros((n, k, width))
    if width == 0:
        return items, chosen
    for u in range(n):
        for i in range(k):
            filled = 0
            for j in range(h + (1 if with_popularity else 0)):
                if j < h:
                    item = history[u, j]
                    if item < 0:
                        continue
                    weight = weights[u, j, i]
                else:
                    item = -2
                    weight = popularity[u, i]
                if not weight > 0.0:  # also skips NaN
                    continue
                if filled == width:
                    if weight <= chosen[u, i, width - 1]:
                        continue
                    slot = width - 1
                else:
                    slot = filled
                    filled += 1
                while slot > 0 and chosen[u, i, slot - 1] < weight:  # ties keep the earlier
                    chosen[u, i, slot] = chosen[u, i, slot - 1]
                    items[u, i, slot] = items[u, i, slot - 1]
                    slot -= 1
                chosen[u, i, slot] = weight
                items[u, i, slot] = item
    return items, chosen


# BLAS and LAPACK routines numba does not wrap, called through scipy's exports: by address,
# an argument of the kernel, so that the compiled kernel stays cacheable (an address baked in
# would be a "dynamic global").
DSYRK = get_cython_function_address("scipy.linalg.cython_blas", "dsyrk")
DPOSV = get_cython_function_address("scipy.linalg.cython_lapack", "dposv")


@intrinsic
def _fortran_call(typingctx, address, arrays):
    """Call the Fortran routine at ``address`` with the data pointers of a tuple of arrays
    (every Fortran argument is a pointer: scalars are passed as one-element arrays)."""
    if not isinstance(address, types.Integer) or not isinstance(arrays, types.BaseTuple):
        return None
    if not all(isinstance(member, types.Array) for member in arrays):
        return None

    def codegen(context, builder, signature, args):
        address_value, members = args
        byte = ir.IntType(8).as_pointer()
        pointers = [
            builder.bitcast(
                context.make_array(kind)(context, builder, builder.extract_value(members, at)).data,
                byte,
            )
            for at, kind in enumerate(arrays)
        ]
        routine = ir.FunctionType(ir.VoidType(), [byte] * len(pointers))
        builder.call(builder.inttoptr(address_value, routine.as_pointer()), pointers)
        return context.get_dummy_value()

    return types.void(address, arrays), codegen


@njit(cache=True, nogil=True)
def _history_tables(
    indptr: np.ndarray, indices: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """What a split over CSR history rows (one per user) fills: each user's history items
    (n, h; -1 pads, h the longest row, at least 1) and zeros for their weights (n, h, k)."""
    n = len(indptr) - 1
    width = 1
    for u in range(n):
        width = max(width, indptr[u + 1] - indptr[u])
    history = np.full((n, width), -1, dtype=np.int64)
    for u in range(n):
        for j in range(indptr[u + 1] - indptr[u]):
            history[u, j] = indices[indptr[u] + j]
    return history, np.zeros((n, width, k))


@njit(cache=True, nogil=True)
def fold_in_split(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    alpha: float,
    factors: np.ndarray,
    gram: np.ndarray,
    regularization: float,
    items: np.ndarray,
    syrk: int,
    posv: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact split of implicit-feedback ALS fold-in scores over each user's history.

    For user ``u`` with history rows ``Y_u`` (factors of the items in CSR row ``u``: columns
    ``indices``, weights ``data``) and confidences ``c = 1 + alpha * w``, the folded-in
    vector is ``x_u = A^-1 Y_u^T c`` with ``A = gram + regularization I + Y_u^T (C - I)
    Y_u`` (``gram``: the item factors' Gram matrix), so the score of item ``i`` splits as
    ``sum_j c_j (A^-1 y_i) . y_j``. Per user: ``A`` by a symmetric rank-h update (BLAS
    ``dsyrk`` on ``sqrt(c - 1) Y_u``, half a matrix product), one Cholesky factorisation
    that solves all k items (LAPACK ``dposv``), one product with the history.

    ``items`` (n, k) are factor rows; ``syrk`` and ``posv`` the addresses of ``DSYRK`` and
    ``DPOSV``. History weights are positive (a weight at or below 0 adds nothing to ``A``).
    Returns each user's history (n, h; -1 pads) and the split (n, h, k; 0 at pads), float64.
    """
    n, k = items.shape
    f = factors.shape[1]
    history, weights = _history_tables(indptr, indices, k)
    base = gram.copy()
    for d in range(f):
        base[d, d] += regularization
    lower, plain = np.array([ord("L")], dtype=np.uint8), np.array([ord("N")], dtype=np.uint8)
    one = np.ones(1)
    size, lead = np.full(1, f, dtype=np.int32), np.full(1, f, dtype=np.int32)
    rank, columns = np.zeros(1, dtype=np.int32), np.full(1, k, dtype=np.int32)
    info = np.zeros(1, dtype=np.int32)
    for u in range(n):
        start, m = indptr[u], indptr[u + 1] - indptr[u]
        chosen = np.empty((m, f))
        scaled = np.empty((m, f))
        confidence = np.empty(m)
        for j in range(m):
            item = indices[start + j]
            extra = max(alpha * data[start + j], 0.0)
            confidence[j] = 1.0 + extra
            root = np.sqrt(extra)
            for d in range(f):
                chosen[j, d] = factors[item, d]
                scaled[j, d] = chosen[j, d] * root
        system = base.copy()  # symmetric: its rows read as Fortran's columns
        rank[0] = m
        _fortran_call(syrk, (lower, plain, size, rank, one, scaled, lead, one, system, lead))  # type: ignore[call-arg]
        directions = np.empty((k, f))  # Fortran's f x k right-hand sides
        for i in range(k):
            for d in range(f):
                directions[i, d] = factors[items[u, i], d]
        right = directions.copy()
        _fortran_call(posv, (lower, size, columns, system, lead, directions, lead, info))
        if info[0] != 0:  # not positive definite by rounding: LU on the whole system
            directions = np.linalg.solve(base + scaled.T @ scaled, right.T).T.copy()
        split = chosen @ directions.T  # (m, k)
        for j in range(m):
            for i in range(k):
                weights[u, j, i] = confidence[j] * split[j, i]
    return history, weights


@njit(cache=True, nogil=True)
def history_products(
    indptr: np.ndarray, indices: np.ndarray, factors: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The dot product of each user's history items' factors with each of its items':
    CSR rows ``indptr``/``indices`` (one per user), ``items`` (n, k) factor rows. Returns
    the history (n, h; -1 pads) and the products (n, h, k; 0 at pads), float64."""
    n, k = items.shape
    f = factors.shape[1]
    history, products = _history_tables(indptr, indices, k)
    for u in range(n):
        start, m = indptr[u], indptr[u + 1] - indptr[u]
        for j in range(m):
            item = indices[start + j]
            for i in range(k):
                total = 0.0
                for d in range(f):
                    total += np.float64(factors[item, d]) * np.float64(factors[items[u, i], d])
                products[u, j, i] = total
    return history, products
