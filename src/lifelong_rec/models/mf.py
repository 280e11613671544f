"""Matrix factorisation for implicit feedback (weighted ALS), with per-event fold-in updates."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from lifelong_rec.buffers import appended
from lifelong_rec.checks import check_positive_ints
from lifelong_rec.events import EventBatch
from lifelong_rec.models.base import IndexedEvents, Recommender
from lifelong_rec.models.bounded import Sightings, admitted, compact, footprint
from lifelong_rec.models.explanation import Attribution, cosine, pad_rows, solve_positive
from lifelong_rec.models.kernels import DPOSV, DSYRK, fold_in_split, solve_rows
from lifelong_rec.models.quantise import CompressedServing, check_precision
from lifelong_rec.models.retrieval import IndexedItems, make_retrieval
from lifelong_rec.models.sparse import GrowingSparse, RowBlock

#: what ``memory_`` counts: events of ids not admitted yet, ids expired, bytes they freed
MEMORY_COUNTS = ("unadmitted_events", "expired_users", "expired_items", "freed_bytes")


class MatrixFactorization(CompressedServing, IndexedItems, Recommender):
    """Implicit-feedback matrix factorisation (Hu, Koren and Volinsky, ICDM 2008).

    Each observed (user, item) pair has confidence ``c = 1 + alpha * w`` (``w``: the summed
    event weights) and preference 1; every other pair confidence 1 and preference 0. ``fit``
    alternates exact-in-the-limit least-squares solves for all users and all items; each solve
    runs a few conjugate-gradient steps from the previous factors, vectorised over every row
    at once with sparse products (the approach of the ``implicit`` library's CG solver).

    ``learn`` is the same solve restricted to what a batch touched: the users in the batch are
    folded in given the item factors (the closed-form ALS fold-in, solved by CG from the
    current factors), then the items in the batch given the user factors. New users and items
    get rows on first sight (new items a small seeded random vector, so that a user and an
    item that are both new can still move each other).

    Parameters
    ----------
    factors : int
    regularization : float
        L2 penalty on every factor vector.
    alpha : float
        Confidence slope: ``c = 1 + alpha * w``.
    iterations : int
        Alternating passes of ``fit``.
    cg_steps : int
        Conjugate-gradient steps per solve in ``fit``.
    learn_cg_steps : int
        Conjugate-gradient steps per solve in ``learn``.
    update_items : bool
        Whether ``learn`` also updates the touched items (else only users are folded in).
    refresh_share : float
        ``learn`` re-solves a touched user or item once its summed interaction weight has
        grown by this share since its last solve. New and light rows (a user in their first
        sessions, a new item) are re-solved at every event; a row with thousands of
        interactions every few dozen, since one more event moves its factor by about that
        share while solving it costs as much as all its interactions. 0 re-solves every
        touched row at every event.
    recency_half_life_seconds : float or None
        If set, a user's interactions weigh less the older they are than the user's latest
        one, halving every this many seconds, when the user's vector is solved: the vector
        leans to the current session (a minute or so: on ML-100K under P1 this lifts
        incremental NDCG@10 by half). Item vectors use the plain weights; every touched user
        is then re-solved at every event, whatever ``refresh_share`` says, since their newest
        event weighs most. None: all interactions weigh their full weight.
    init_scale : float
        Standard deviation of the initial item factors.
    seed : int
    fallback_half_life_days : float or None
    retrieval : str, optional
        How the top-k items are found: None or ``"exact"`` scores every item; ``"ivf"``
        (``"ivf(nprobe=32)"``, see :class:`~lifelong_rec.models.retrieval.IVFIndex`) keeps an
        approximate index of the item factors in step with every update, for catalogues of
        hundreds of thousands of items and more (needs ``lifelong-rec[ann]``). Scoring,
        explaining and a request with a candidate list stay exact.
    admit_after : int
        Sightings an id needs before it gets factors of its own (1: at once). Until then its
        events are not learned and it is served as a new id (see :mod:`.bounded`).
    expire_after_days : float or None
        Drop users and items with no event for this long (stream time), with their factors
        and histories; None keeps every id. What is freed is counted in ``memory_``.
    serve_precision : {"fp32", "fp16", "int8"}
        What scoring and ranking read: the float32 factor tables, or a compressed copy of
        both kept in step with every update (float16, or int8 with a scale per row; see
        :mod:`.quantise`). Learning and explaining use the float32 tables, and a saved model
        holds those (its copy is rebuilt on load); an approximate index keeps float32
        vectors to find candidates, which are then scored from the copy.
    """

    name = "mf"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 1.0,
        alpha: float = 10.0,
        iterations: int = 15,
        cg_steps: int = 3,
        learn_cg_steps: int = 3,
        update_items: bool = True,
        refresh_share: float = 0.05,
        recency_half_life_seconds: float | None = None,
        init_scale: float = 0.01,
        seed: int = 0,
        fallback_half_life_days: float | None = 7.0,
        retrieval: str | None = None,
        admit_after: int = 1,
        expire_after_days: float | None = None,
        serve_precision: str = "fp32",
    ) -> None:
        check_positive_ints(
            factors=factors, iterations=iterations, cg_steps=cg_steps,
            learn_cg_steps=learn_cg_steps, admit_after=admit_after,
        )  # fmt: skip
        if expire_after_days is not None and not expire_after_days > 0:
            raise ValueError(f"expire_after_days must be > 0 or None, got {expire_after_days!r}")
        make_retrieval(retrieval)  # checks the spec (and that faiss is there) now
        check_precision(serve_precision)
        for name, value in (("regularization", regularization), ("alpha", alpha)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        if not refresh_share >= 0:
            raise ValueError(f"refresh_share must be >= 0, got {refresh_share!r}")
        if recency_half_life_seconds is not None and not recency_half_life_seconds > 0:
            raise ValueError(
                f"recency_half_life_seconds must be > 0 or None, got {recency_half_life_seconds!r}"
            )
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.cg_steps = cg_steps
        self.learn_cg_steps = learn_cg_steps
        self.update_items = update_items
        self.refresh_share = refresh_share
        self.recency_half_life_seconds = recency_half_life_seconds
        self.init_scale = init_scale
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days
        self.retrieval = retrieval
        self.admit_after = admit_after
        self.expire_after_days = expire_after_days
        self.serve_precision = serve_precision

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {"factors": 8, "iterations": 3, "recency_half_life_seconds": 3600.0}

    # -------------------------------------------------------------- state

    def _reset_model(self) -> None:
        self.user_factors_ = np.zeros((0, self.factors), dtype=np.float32)
        self.item_factors_ = np.zeros((0, self.factors), dtype=np.float32)
        self.item_history_ = GrowingSparse((0, 0), "sum", np.float32)  # history_ transposed
        # Per row: its summed interaction weight now ("users", "items") and at its last solve
        # ("users_solved", ...), and its latest event time ("users_last", ...: kept up to date
        # only where ids expire).
        self.weights_ = {f"{side}{kind}": np.zeros(0) for side in ("users", "items")
                         for kind in ("", "_solved", "_last")}  # fmt: skip
        self._anchors: dict[str, np.ndarray] = {}  # factors to pull toward, by side
        self._pull = 0.0
        self._user_gram = np.zeros((self.factors, self.factors))  # U^T U, kept in step
        self._item_gram = np.zeros((self.factors, self.factors))  # Y^T Y, kept in step
        # the approximate top-k index of the item factors (None: every item is scored)
        self.index_ = make_retrieval(self.retrieval)
        # compressed copies of both tables that scoring reads (None: it reads the above)
        self._reset_served()
        # bounded memory (.bounded): sightings of ids not admitted yet, and what was left out
        self.sightings_ = Sightings() if self.admit_after > 1 else None
        self.memory_ = dict.fromkeys(MEMORY_COUNTS, 0)
        self._expiry_checked = -np.inf  # the stream time idle ids were last looked for
        self._latest = -np.inf  # the latest event time noted (where ids expire)

    def _grow(self, n_users: int, n_items: int) -> None:
        # Tables grow into spare room (see appended): a stream that brings new users in every
        # batch copies them O(log n) times in all, not once per batch.
        new_users = n_users - len(self.user_factors_)
        if new_users > 0:
            zeros = np.zeros((new_users, self.factors), dtype=np.float32)
            self.user_factors_ = appended(self.user_factors_, zeros)
            self._requantise("users", np.arange(0))  # the new rows
        new_items = n_items - len(self.item_factors_)
        if new_items > 0:
            # Seeded by the first new index: the same stream gives the same factors, and a
            # loaded model grows exactly as the saved one would have.
            rng = np.random.default_rng([self.seed, len(self.item_factors_)])
            fresh = rng.normal(0.0, self.init_scale, size=(new_items, self.factors))
            self.item_factors_ = appended(self.item_factors_, fresh.astype(np.float32))
            self._item_gram += fresh.T @ fresh
            self._sync_index(np.arange(n_items - new_items, n_items))
            self._requantise("items", np.arange(0))  # the new rows
        self.item_history_.grow(n_items, n_users)
        for side, n in (("users", n_users), ("items", n_items)):
            for key in (side, f"{side}_solved", f"{side}_last"):
                extra = n - len(self.weights_[key])
                fill = -np.inf if key.endswith("_last") else 0.0
                self.weights_[key] = appended(self.weights_[key], np.full(extra, fill))

    # -------------------------------------------------------------- bounded memory

    def _admissible(self, events: EventBatch) -> EventBatch:
        if self.sightings_ is None:
            return events
        kept = admitted(self, self.sightings_, events, self.admit_after)
        self.memory_["unadmitted_events"] += len(events) - len(kept)
        return kept

    def _note_activity(self, events: IndexedEvents) -> None:
        """Each user's and item's latest event, where ids expire."""
        if self.expire_after_days is not None and len(events.timestamp):
            np.maximum.at(self.weights_["users_last"], events.user, events.timestamp)
            np.maximum.at(self.weights_["items_last"], events.item, events.timestamp)
            self._latest = max(self._latest, float(events.timestamp.max()))

    def _expire_idle(self) -> None:
        """Every eighth of ``expire_after_days`` of stream time, drop the ids idle for
        longer than it (see :mod:`.bounded`)."""
        if self.expire_after_days is None:
            return
        user_last, item_last = self.weights_["users_last"], self.weights_["items_last"]
        now = self._latest  # kept as events arrive: no scan of every id per update
        seconds = self.expire_after_days * 86_400.0
        if not now - self._expiry_checked >= seconds / 8:
            return
        self._expiry_checked = now
        idle_users, idle_items = user_last < now - seconds, item_last < now - seconds
        if idle_users.any() or idle_items.any():
            before = footprint(self)
            compact(self, ~idle_users, ~idle_items)
            self.memory_["expired_users"] += int(idle_users.sum())
            self.memory_["expired_items"] += int(idle_items.sum())
            self.memory_["freed_bytes"] += before - footprint(self)

    def _compact_model(self, user_rows: np.ndarray, item_rows: np.ndarray) -> None:
        self.user_factors_ = self.user_factors_[user_rows]
        self.item_factors_ = self.item_factors_[item_rows]
        self.item_history_ = self.item_history_.subset(item_rows, user_rows)
        for side, rows in (("users", user_rows), ("items", item_rows)):
            for key in (side, f"{side}_solved", f"{side}_last"):
                self.weights_[key] = self.weights_[key][rows]
            anchored = self._anchors.get(side)
            if anchored is not None:  # rows added since the anchor stay unpulled
                self._anchors[side] = anchored[rows[rows < len(anchored)]]
        self._user_gram = self._gram(self.user_factors_)
        self._item_gram = self._gram(self.item_factors_)
        self._sync_index()  # the rows were renumbered: clusters trained again
        if self.served_ is not None:  # the same rows, renumbered alike
            self.served_["users"].subset(user_rows)
            self.served_["items"].subset(item_rows)

    def _own_bytes(self) -> int:
        arrays: list[np.ndarray] = [self.user_factors_, self.item_factors_,
                                    *self.weights_.values()]  # fmt: skip
        if self.sightings_ is not None:
            arrays.append(self.sightings_.counts_)
        served = 0 if self.served_ is None else self.served_bytes()  # the copies, besides
        return self.item_history_.nbytes + sum(array.nbytes for array in arrays) + served

    # -------------------------------------------------------------- training

    def _fit(self, events: IndexedEvents) -> None:
        self._note_activity(events)
        positive = events.positive
        self.item_history_.add(
            events.item[positive], events.user[positive], events.weight[positive]
        )
        by_user = self._confidence(self._user_rows(None))
        by_item = self._confidence(self.item_history_.tocsr())
        for _ in range(self.iterations):
            self.user_factors_ = self._solve(
                by_user, self.item_factors_, self._gram(self.item_factors_), self.user_factors_,
                self.cg_steps,
            )  # fmt: skip
            self.item_factors_ = self._solve(
                by_item, self.user_factors_, self._gram(self.user_factors_), self.item_factors_,
                self.cg_steps,
            )  # fmt: skip
        # A last half-step on the users: each user vector is then (up to the CG steps) the
        # fold-in of its history against the final item factors, which ``explain`` splits.
        self.user_factors_ = self._solve(
            by_user, self.item_factors_, self._gram(self.item_factors_), self.user_factors_,
            self.cg_steps,
        )  # fmt: skip
        self._user_gram = self._gram(self.user_factors_)
        self._item_gram = self._gram(self.item_factors_)
        self._sync_index()
        self._requantise("users")
        self._requantise("items")
        for side, matrix in (("users", self.history_), ("items", self.item_history_)):
            self.weights_[side] = np.asarray(matrix.tocsr().sum(axis=1), dtype=np.float64).ravel()
            self.weights_[f"{side}_solved"] = self.weights_[side].copy()

    def _learn(self, events: IndexedEvents) -> None:
        self._note_activity(events)
        positive = events.positive
        if not positive.any():
            return
        users, items = events.user[positive], events.item[positive]
        weights = events.weight[positive].astype(np.float64)
        self.item_history_.add(items, users, events.weight[positive])
        np.add.at(self.weights_["users"], users, weights)
        np.add.at(self.weights_["items"], items, weights)
        if self.recency_half_life_seconds is None:
            due_users = self._due("users", users)
        else:  # the newest event weighs most: always re-solve
            due_users = np.unique(users)
            self.weights_["users_solved"][due_users] = self.weights_["users"][due_users]
        self._refresh(due_users, self._due("items", items))

    def _replay(self, users: np.ndarray, items: np.ndarray) -> None:
        users, items = np.unique(users), np.unique(items)
        self.weights_["users_solved"][users] = self.weights_["users"][users]
        self.weights_["items_solved"][items] = self.weights_["items"][items]
        self._refresh(users, items)

    def _anchor(self, strength: float) -> None:
        self._pull = strength
        self._anchors = {"users": self.user_factors_.copy(), "items": self.item_factors_.copy()}

    def _refresh(self, users: np.ndarray, items: np.ndarray) -> None:
        """Re-solve the given users given the items, then the given items given the users."""
        self._update_rows(
            "users", users, self._user_rows(users),
            self.item_factors_, self._item_gram, self._user_gram,
        )  # fmt: skip
        if self.update_items and len(items):
            self._update_rows(
                "items", items, self.item_history_.row_block(items),
                self.user_factors_, self._user_gram, self._item_gram,
            )  # fmt: skip

    def _user_rows(self, users: np.ndarray | None) -> sp.csr_matrix | RowBlock:
        """The users' history rows (all users when None), recency-weighted if configured."""
        rows = self.history_.tocsr() if users is None else self.history_.row_block(users)
        if self.recency_half_life_seconds is None or rows.nnz == 0:
            return rows
        times = self.last_seen_.tocsr() if users is None else self.last_seen_.row_block(users)
        # Both matrices get the same (user, item) entries and keep them sorted: aligned data.
        if not np.array_equal(times.indices, rows.indices):
            raise RuntimeError("history and last-seen times are out of step")
        lengths = np.diff(times.indptr)
        filled = lengths > 0
        latest = np.maximum.reduceat(times.data, times.indptr[:-1][filled])  # per user
        age = np.repeat(latest, lengths[filled]) - times.data
        decay = 0.5 ** (age / self.recency_half_life_seconds)
        return RowBlock(
            rows.indptr, rows.indices, (rows.data * decay).astype(np.float32), rows.shape
        )

    def _due(self, side: str, touched: np.ndarray) -> np.ndarray:
        """Touched rows whose weight grew by ``refresh_share`` since their last solve."""
        touched = np.unique(touched)
        now, solved = self.weights_[side], self.weights_[f"{side}_solved"]
        due = touched[now[touched] > (1.0 + self.refresh_share) * solved[touched]]
        solved[due] = now[due]
        return due

    def _update_rows(
        self,
        side: str,
        rows: np.ndarray,
        interactions: sp.csr_matrix | RowBlock,
        other: np.ndarray,
        other_gram: np.ndarray,
        own_gram: np.ndarray,
    ) -> None:
        """Re-solve ``side``'s ``rows`` given the other side; keep ``own_gram`` in step."""
        if len(rows) == 0:
            return
        factors = self.user_factors_ if side == "users" else self.item_factors_
        old = factors[rows].astype(np.float64)
        anchor: tuple[np.ndarray, np.ndarray] | None = None
        if self._pull > 0 and side in self._anchors:
            anchored = self._anchors[side]
            inside = rows < len(anchored)  # rows added since the anchor are not pulled
            target = np.zeros((len(rows), self.factors), dtype=np.float32)
            target[inside] = anchored[rows[inside]]
            anchor = (target, np.where(inside, self._pull, 0.0).astype(np.float32))
        new = self._solve(
            self._confidence(interactions), other, other_gram, factors[rows], self.learn_cg_steps,
            anchor,
        )  # fmt: skip
        factors[rows] = new
        self._requantise(side, rows)
        if side == "items":
            self._sync_index(rows)
        new = new.astype(np.float64)
        own_gram += new.T @ new - old.T @ old

    def _confidence(self, interactions: sp.csr_matrix | RowBlock) -> RowBlock:
        """The same pattern with ``c - 1 = alpha * w`` as values."""
        return RowBlock(
            interactions.indptr,
            interactions.indices,
            self.alpha * interactions.data.astype(np.float32),
            interactions.shape,
        )

    @staticmethod
    def _gram(factors: np.ndarray) -> np.ndarray:
        as64 = factors.astype(np.float64)
        return as64.T @ as64

    def _solve(
        self,
        confidence: RowBlock,
        other: np.ndarray,
        other_gram: np.ndarray,
        start: np.ndarray,
        steps: int,
        anchor: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Conjugate-gradient steps on every row's normal equations, in one compiled call
        (:func:`~lifelong_rec.models.kernels.solve_rows`).

        Row r solves ``(G + O_r^T (C_r - I) O_r + reg I) x_r = O_r^T C_r 1`` where ``G`` is
        ``other_gram``, ``O_r`` the other side's factors of r's interactions and ``C_r`` their
        confidences. With an ``anchor`` (vectors a_r, strengths m_r), the penalty
        ``m_r |x_r - a_r|^2`` adds ``m_r I`` to the matrix and ``m_r a_r`` to the target.

        The rows are solved one after the other: a single event's one or two rows cost
        microseconds instead of the dozens of numpy calls a vectorised solve takes, and a full
        fit is faster too (on this project's 2-core machine, 2-5x the vectorised numpy solve it
        replaced, from 16 to 4,096 rows of 64 factors; a variant vectorised over the rows, with
        one BLAS product per step for the Gram part, was slower still at 50,000 rows).

        Returns
        -------
        factors : array of float32, shape (n_rows, factors)
        """
        if anchor is None:  # no pull
            anchor = (start, np.zeros(confidence.shape[0], dtype=np.float32))
        gram = other_gram + self.regularization * np.eye(self.factors)
        return solve_rows(confidence.indptr, confidence.indices, confidence.data, other, gram,
                          start, anchor[1], anchor[0], steps)  # fmt: skip

    # -------------------------------------------------------------- scoring

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        return self._served_factor_scores(user_index, item_index)

    def _item_table(self) -> np.ndarray:
        return self.item_factors_

    def _queries(self, user_index: np.ndarray) -> np.ndarray:
        return self.user_factors_[user_index]

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        """The exact split of the fold-in score over the history (as implicit's ALS explain).

        With ``A = Y^T Y + Y_u^T (C_u - I) Y_u + reg I``, the folded-in user vector is
        ``x_u = A^-1 Y_u^T c_u``, so ``score = y_i . x_u = sum_j c_uj (A^-1 y_i) . y_j``: each
        history item j contributes ``c_uj (A^-1 y_i) . y_j``. The contributions add up to the
        exact fold-in score, which the CG solves of ``learn`` approach; one Cholesky
        factorisation per user serves its k items.
        """
        history, weights = self._split(users, items)
        kinds = np.full(items.shape, "history", dtype=object)
        return Attribution("exact split of the fold-in score", history, weights, kinds)

    def _split(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(history (n, h), weights (n, h, k)): one compiled pass over the users."""
        rows = self._user_rows(users)
        return fold_in_split(
            rows.indptr, rows.indices, rows.data, float(self.alpha), self.item_factors_,
            self._item_gram, float(self.regularization),
            np.ascontiguousarray(items, dtype=np.int64), DSYRK, DPOSV,
        )  # fmt: skip

    def _deletion_scores(self, user: int, items: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """Fold-in scores from the history, then from the history without each removed item
        (its confidence set to 0: it leaves both sides of the normal equations)."""
        history, confidence, chosen = self._fold_in_parts(np.array([user]))
        variants = np.repeat(confidence, len(removed) + 1, axis=0)  # (r + 1, h)
        variants[1:][history[0][None, :] == removed[:, None]] = 0.0
        chosen = np.broadcast_to(chosen, (len(variants), *chosen.shape[1:]))
        right = np.einsum("rhf,rh->rf", chosen, variants)[:, :, None]
        vectors = solve_positive(self._fold_in_systems(variants, chosen), right)[:, :, 0]
        return vectors @ self.item_factors_[items].T.astype(np.float64)

    def _fold_in_parts(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each user's history (n, h; -1 pads), confidences (n, h; 0 pads) and the history
        items' factors (n, h, f; 0 pads), in float64."""
        unique, inverse = np.unique(users, return_inverse=True)
        rows = self._user_rows(unique)
        history, values = pad_rows(rows.indptr, rows.indices, rows.data)
        history, values = history[inverse], values[inverse]
        present = history >= 0
        confidence = np.where(present, 1.0 + self.alpha * values, 0.0)
        chosen = self.item_factors_[np.maximum(history, 0)].astype(np.float64)
        chosen *= present[:, :, None]
        return history, confidence, chosen

    def _fold_in_systems(self, confidence: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """``A = Y^T Y + Y_u^T (C_u - I) Y_u + reg I`` per row, shape (n, f, f); entries of
        confidence 0 (padding, a removed item) leave ``A`` as if absent."""
        extra = np.where(confidence > 0, confidence - 1.0, 0.0)
        systems = np.transpose(chosen, (0, 2, 1)) @ (extra[:, :, None] * chosen)
        return systems + self._item_gram + self.regularization * np.eye(self.factors)

    # -------------------------------------------------------------- persistence

    def _item_similarity(self, item: int) -> np.ndarray:
        return cosine(self.item_factors_, item)

    def _state(self) -> dict[str, np.ndarray]:
        weights = {f"weights.{key}": value for key, value in self.weights_.items()}
        # The Gram matrices as kept in step, so a loaded model solves (and explains) bit for
        # bit as the saved one would have.
        grams = {"user_gram": self._user_gram, "item_gram": self._item_gram}
        factors = {"user_factors": self.user_factors_, "item_factors": self.item_factors_}
        index = self._index_state()
        bounded = {"memory": np.array([self.memory_[key] for key in MEMORY_COUNTS])}
        if self.sightings_ is not None:
            bounded["sightings"] = self.sightings_.counts_
        return factors | weights | grams | index | bounded

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors_ = arrays["user_factors"].astype(np.float32)
        self.item_factors_ = arrays["item_factors"].astype(np.float32)
        self.weights_ = {
            key.removeprefix("weights."): value.astype(np.float64)
            for key, value in arrays.items()
            if key.startswith("weights.")
        }
        for side, n in (("users", len(self.users_)), ("items", len(self.items_))):
            self.weights_.setdefault(f"{side}_last", np.full(n, -np.inf))  # older saves
        matrix = self.history_.tocsr().T.tocsr()
        self.item_history_ = GrowingSparse(matrix.shape, "sum", np.float32)
        coo = matrix.tocoo()
        self.item_history_.add(coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data)
        self._user_gram = arrays["user_gram"].astype(np.float64)
        self._item_gram = arrays["item_gram"].astype(np.float64)
        self._restore_index(arrays)
        self._requantise("users")  # the copies, quantised from the float32 tables: one pass
        self._requantise("items")
        counts = arrays.get("memory", np.zeros(len(MEMORY_COUNTS), dtype=np.int64))
        self.memory_ = {key: int(count) for key, count in zip(MEMORY_COUNTS, counts, strict=True)}
        self.sightings_ = Sightings() if self.admit_after > 1 else None
        if self.sightings_ is not None and "sightings" in arrays:
            self.sightings_.set_state({"counts": arrays["sightings"]})
        self._expiry_checked = -np.inf
        self._latest = float(max(self.weights_["users_last"].max(initial=-np.inf),
                                 self.weights_["items_last"].max(initial=-np.inf)))  # fmt: skip


class SessionMatrixFactorization(MatrixFactorization):
    """:class:`MatrixFactorization` whose user fold-in leans on the current session: the
    same model with ``recency_half_life_seconds=60`` by default, under a name of its own
    (``session-mf``).

    A user's interactions weigh half as much for every minute they are older than the user's
    latest one when the user's vector is solved, so learning every event (``incremental@row``)
    follows what the user is doing now. Under P1 (500 blocks) it reaches NDCG@10 0.0875
    against 0.0535 for ``mf`` on ML-100K, and 0.0388 against 0.0204 on ML latest-small.
    ``mf`` keeps its default (every interaction weighs alike), so published ``mf`` numbers
    stay comparable. The parameters are those of :class:`MatrixFactorization`.
    """

    name = "session-mf"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 1.0,
        alpha: float = 10.0,
        iterations: int = 15,
        cg_steps: int = 3,
        learn_cg_steps: int = 3,
        update_items: bool = True,
        refresh_share: float = 0.05,
        recency_half_life_seconds: float | None = 60.0,
        init_scale: float = 0.01,
        seed: int = 0,
        fallback_half_life_days: float | None = 7.0,
        retrieval: str | None = None,
        admit_after: int = 1,
        expire_after_days: float | None = None,
        serve_precision: str = "fp32",
    ) -> None:
        super().__init__(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            cg_steps=cg_steps,
            learn_cg_steps=learn_cg_steps,
            update_items=update_items,
            refresh_share=refresh_share,
            recency_half_life_seconds=recency_half_life_seconds,
            init_scale=init_scale,
            seed=seed,
            fallback_half_life_days=fallback_half_life_days,
            retrieval=retrieval,
            admit_after=admit_after,
            expire_after_days=expire_after_days,
            serve_precision=serve_precision,
        )
