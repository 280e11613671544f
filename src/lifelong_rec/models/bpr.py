"""Bayesian personalised ranking: matrix factorisation trained by SGD or Adam on sampled pairs."""

from __future__ import annotations

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.models.base import IndexedEvents, Recommender
from lifelong_rec.models.explanation import Attribution, cosine
from lifelong_rec.models.kernels import history_products
from lifelong_rec.models.quantise import CompressedServing, check_precision
from lifelong_rec.models.retrieval import IndexedItems, Stacked, make_retrieval

OPTIMIZERS = ("adam", "sgd")


class BPR(CompressedServing, IndexedItems, Recommender):
    """Matrix factorisation with item biases, trained on the BPR loss (Rendle et al., UAI 2009).

    For an observed pair (u, i) and a sampled item j, the loss is ``-log sigmoid(x_ui - x_uj)``
    with ``x_ui = p_u . q_i + b_i``, plus L2 on the rows involved. Mini-batches are vectorised:
    the gradients of a batch are accumulated per row with ``np.add.at`` and applied by plain
    SGD or by Adam with per-row moments, updated only for the rows the batch touched ("lazy"
    Adam, as sparse embeddings are usually trained).

    ``fit`` runs ``epochs`` passes over the distinct (user, item) pairs; ``learn`` runs
    ``learn_passes`` passes over the batch's new events. Negatives are drawn uniformly; a
    sampled positive is rare and tolerated. The comparison learner for the ALS model.

    Parameters
    ----------
    factors : int
    optimizer : {"adam", "sgd"}
    learning_rate : float
    regularization : float
    epochs : int
    learn_passes : int
    batch_size : int
    init_scale : float
    seed : int
    fallback_half_life_days : float or None
    retrieval : str, optional
        How the top-k items are found: None or ``"exact"`` scores every item; ``"ivf"`` keeps
        an approximate index of ``[q_i, b_i]`` (the bias as one more dimension, searched with
        ``[p_u, 1]``), in step with every step, as ``mf(retrieval=...)`` does (needs
        ``lifelong-rec[ann]``). Scoring, explaining and candidate lists stay exact.
    serve_precision : {"fp32", "fp16", "int8"}
        What scoring and ranking read: the float32 factor tables, or a compressed copy of
        the user and item factors kept in step with every optimiser step (float16, or int8
        with a scale per row; see :mod:`.quantise`); the item bias stays float32. Learning
        and explaining use the float32 tables, and a saved model holds those.
    """

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        optimizer: str = "sgd",
        learning_rate: float = 0.05,
        regularization: float = 1e-4,
        epochs: int = 30,
        learn_passes: int = 2,
        batch_size: int = 1024,
        init_scale: float = 0.1,
        seed: int = 0,
        fallback_half_life_days: float | None = 7.0,
        retrieval: str | None = None,
        serve_precision: str = "fp32",
    ) -> None:
        make_retrieval(retrieval)  # checks the spec (and that faiss is there) now
        check_precision(serve_precision)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        check_positive_ints(
            factors=factors, epochs=epochs, learn_passes=learn_passes, batch_size=batch_size
        )
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if not regularization >= 0:
            raise ValueError(f"regularization must be >= 0, got {regularization!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        self.factors = factors
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.epochs = epochs
        self.learn_passes = learn_passes
        self.batch_size = batch_size
        self.init_scale = init_scale
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days
        self.retrieval = retrieval
        self.serve_precision = serve_precision

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {"factors": 8, "epochs": 2}

    # -------------------------------------------------------------- state

    _TABLES = ("user_factors", "item_factors", "item_bias")

    def _reset_model(self) -> None:
        self.user_factors_ = np.zeros((0, self.factors), dtype=np.float32)
        self.item_factors_ = np.zeros((0, self.factors), dtype=np.float32)
        self.item_bias_ = np.zeros((0, 1), dtype=np.float32)
        self.moments_ = {f"{t}.{m}": getattr(self, f"{t}_").copy() for t in self._TABLES
                         for m in ("first", "second")}  # fmt: skip
        self.steps_ = np.zeros(1, dtype=np.int64)  # optimiser steps taken (also seeds batches)
        self._anchors: dict[str, np.ndarray] = {}  # parameters to pull toward, by table
        self._pull = 0.0
        # the approximate top-k index of [q_i, b_i] (None: every item is scored)
        self.index_ = make_retrieval(self.retrieval)
        # compressed copies of the factor tables that scoring reads (None: it reads them)
        self._reset_served()

    def _grow(self, n_users: int, n_items: int) -> None:
        known = len(self.item_factors_)
        for table, n in (
            ("user_factors", n_users),
            ("item_factors", n_items),
            ("item_bias", n_items),
        ):
            current = getattr(self, f"{table}_")
            extra = n - len(current)
            if extra <= 0:
                continue
            # Seeded by table and first new row, so growth does not depend on call history.
            rng = np.random.default_rng([self.seed, self._TABLES.index(table), len(current)])
            fresh = rng.normal(0, self.init_scale, (extra, current.shape[1]))
            if table == "item_bias":
                fresh[:] = 0.0
            setattr(self, f"{table}_", np.vstack([current, fresh.astype(np.float32)]))
            for moment in ("first", "second"):
                key = f"{table}.{moment}"
                self.moments_[key] = np.vstack(
                    [self.moments_[key], np.zeros((extra, current.shape[1]), dtype=np.float32)]
                )
        if n_items > known:
            self._sync_index(np.arange(known, n_items))
        for side in ("users", "items"):  # the new rows
            self._requantise(side, np.arange(0))

    # -------------------------------------------------------------- training

    def _fit(self, events: IndexedEvents) -> None:
        pairs = self.history_.tocsr().tocoo()
        users, items = pairs.row.astype(np.int64), pairs.col.astype(np.int64)
        # The index and the compressed copies are not moved step by step: built once, after.
        index, self.index_ = self.index_, None
        served, self.served_ = self.served_, None
        for _ in range(self.epochs):
            self._passes(users, items)
        self.index_, self.served_ = index, served
        self._sync_index()
        self._requantise("users")
        self._requantise("items")

    def _learn(self, events: IndexedEvents) -> None:
        positive = events.positive
        for _ in range(self.learn_passes):
            self._passes(events.user[positive], events.item[positive])

    def _replay(self, users: np.ndarray, items: np.ndarray) -> None:
        self._passes(users, items)

    def _anchor(self, strength: float) -> None:
        self._pull = strength
        self._anchors = {table: getattr(self, f"{table}_").copy() for table in self._TABLES}

    def _passes(self, users: np.ndarray, items: np.ndarray) -> None:
        """One pass over (users, items) in shuffled mini-batches."""
        if len(users) == 0:
            return
        rng = np.random.default_rng([self.seed, int(self.steps_[0])])
        order = rng.permutation(len(users))
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            negatives = rng.integers(len(self.items_), size=len(chosen))
            self._step(users[chosen], items[chosen], negatives)

    def _step(self, users: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> None:
        p, q_pos, q_neg = (self.user_factors_[users], self.item_factors_[positives],
                           self.item_factors_[negatives])  # fmt: skip
        margin = (
            np.einsum("ij,ij->i", p, q_pos - q_neg)
            + self.item_bias_[positives, 0]
            - self.item_bias_[negatives, 0]
        )
        pull = (1.0 / (1.0 + np.exp(np.clip(margin, -30, 30))))[:, None]  # sigmoid(-margin)
        reg = self.regularization
        gradients = {
            "user_factors": [(users, -pull * (q_pos - q_neg) + reg * p)],
            "item_factors": [
                (positives, -pull * p + reg * q_pos),
                (negatives, pull * p + reg * q_neg),
            ],
            "item_bias": [(positives, -pull), (negatives, pull)],
        }
        self.steps_[0] += 1
        for table, parts in gradients.items():
            rows = np.concatenate([r for r, _ in parts])
            order = np.argsort(rows, kind="stable")
            rows = rows[order]
            starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
            summed = np.add.reduceat(np.concatenate([g for _, g in parts])[order], starts, axis=0)
            self._apply(table, rows[starts], summed)  # one summed gradient per touched row
        self._sync_index(np.concatenate([positives, negatives]))

    def _apply(self, table: str, rows: np.ndarray, gradient: np.ndarray) -> None:
        values = getattr(self, f"{table}_")
        self._step_rows(table, values, rows, gradient)
        if self._pull > 0 and table in self._anchors:
            # The L2 pull as a proximal step (exact for the penalty, stable for any strength,
            # unlike adding it to the gradient, which diverges once rate x strength > 2).
            anchored = self._anchors[table]
            rows = rows[rows < len(anchored)]  # rows added since the anchor are not pulled
            shrink = 1.0 / (1.0 + self.learning_rate * self._pull)
            values[rows] = anchored[rows] + shrink * (values[rows] - anchored[rows])
        if table != "item_bias":  # served as it is
            self._requantise(table.removesuffix("_factors") + "s", rows)

    def _step_rows(
        self, table: str, values: np.ndarray, rows: np.ndarray, gradient: np.ndarray
    ) -> None:
        if self.optimizer == "sgd":
            values[rows] -= (self.learning_rate * gradient).astype(np.float32)
            return
        beta1, beta2, epsilon = 0.9, 0.999, 1e-8
        first, second = self.moments_[f"{table}.first"], self.moments_[f"{table}.second"]
        first[rows] = beta1 * first[rows] + (1 - beta1) * gradient
        second[rows] = beta2 * second[rows] + (1 - beta2) * gradient**2
        step = int(self.steps_[0])
        corrected = first[rows] / (1 - beta1**step)
        scale = np.sqrt(second[rows] / (1 - beta2**step)) + epsilon
        values[rows] -= (self.learning_rate * corrected / scale).astype(np.float32)

    # -------------------------------------------------------------- scoring

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        scores = self._served_factor_scores(user_index, item_index)
        return scores + self.item_bias_[item_index, 0]

    def _served_offsets(self, item_index: np.ndarray) -> np.ndarray:
        return self.item_bias_[item_index, 0]

    def _served_extra_bytes(self) -> int:
        return int(self.item_bias_.nbytes)

    def _own_bytes(self) -> int:
        served = 0 if self.served_ is None else self.served_bytes() - self._served_extra_bytes()
        return super()._own_bytes() + served

    # -------------------------------------------------------------- approximate top-k

    def _item_table(self) -> Stacked:
        """What the index holds: ``[q_i, b_i]`` per item."""
        return Stacked(self.item_factors_, self.item_bias_)

    def _queries(self, user_index: np.ndarray) -> np.ndarray:
        return np.hstack([self.user_factors_[user_index], np.ones((len(user_index), 1))])

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        """The item bias exactly (as popularity), and the history items by the dot product of
        their factors with the item's. The latter is not a split of the score: a BPR user
        vector is a trained parameter, not a function of the history, so the rest of the
        score stays in ``Explanation.rest``."""
        rows = self.history_.row_block(users)
        history, weights = history_products(
            rows.indptr, rows.indices, self.item_factors_, np.ascontiguousarray(items, np.int64)
        )
        return Attribution(
            method="item bias, and factor similarity to the history (not a split of the score)",
            history=history,
            weights=weights,
            kinds=np.full(items.shape, "similar_item", dtype=object),
            popularity=self.item_bias_[items, 0].astype(np.float64),
        )

    def _item_similarity(self, item: int) -> np.ndarray:
        return cosine(self.item_factors_, item)

    def _state(self) -> dict[str, np.ndarray]:
        state = {table: getattr(self, f"{table}_") for table in self._TABLES}
        index = self._index_state()
        moments = {f"moments.{k}": v for k, v in self.moments_.items()}
        return state | moments | {"steps": self.steps_} | index

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        for table in self._TABLES:
            setattr(self, f"{table}_", arrays[table].astype(np.float32))
        self.moments_ = {
            k.removeprefix("moments."): v.astype(np.float32)
            for k, v in arrays.items()
            if k.startswith("moments.")
        }
        self.steps_ = arrays["steps"].astype(np.int64)
        self._restore_index(arrays)
        self._requantise("users")  # the copies, quantised from the float32 tables: one pass
        self._requantise("items")
