"""External peers for the P1 headline benchmark, wrapped in the Recommender contract so that
they run through the very same harness as lifelong-rec's own models.

- ``ImplicitALS``: the ``implicit`` library's ALS (CPU). ``fit`` is its batch fit; ``learn``
  is its own incremental path, ``partial_fit_items`` then ``partial_fit_users`` for what the
  batch touched.
- ``ImplicitItemKNN``: the ``implicit`` library's item-item nearest neighbours (cosine, BM25
  or TF-IDF) over each user's history; ``learn`` keeps the histories current and refits the
  similarities from the whole history every ``refit_every`` positive events.
- ``RiverBiasedMF``: river's ``reco.BiasedMF``, learning one event at a time with
  ``learn_one`` (its only way), by default with the settings of river's own MovieLens example.

``implicit`` needs the bench extra (``pip install -e '.[bench]'``; river is a core
dependency). They are benchmark adapters: they do not save or explain.

Every hyperparameter is a constructor argument, so a configuration is a dict of them:
``ImplicitALS(**TUNED["implicit-als"])``. ``TUNED`` holds the configurations chosen with the
same budget for every peer (bench/tune_peers.py), frozen for every data set.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.models import Recommender
from lifelong_rec.models.base import IndexedEvents

# Chosen by `.venv/bin/python bench/tune_peers.py` (bench/results/tune-peers.json, 2026-12-06):
# the best NDCG@10 of each peer's grid of 12 under P1 with 100 blocks on ML-100K (ALS and
# item-item naive@block, river naive@row), then used unchanged for every data set.
TUNED: dict[str, dict[str, object]] = {
    "implicit-als": {"factors": 64, "regularization": 1.0, "alpha": 1.0},
    "implicit-itemknn": {"similarity": "cosine", "neighbours": 200},
    "river-biasedmf": {"factors": 32, "latent_learning_rate": 0.05},
}


class _Adapter(Recommender):
    """What a benchmark adapter does not do: explain, save, load."""

    def _attribute(self, users: np.ndarray, items: np.ndarray):
        raise NotImplementedError("a benchmark adapter: does not explain")

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError("a benchmark adapter: not saved")

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError("a benchmark adapter: not loaded")


class ImplicitALS(_Adapter):
    """``implicit.cpu.als.AlternatingLeastSquares`` with lifelong-rec's MF settings."""

    name = "implicit-als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 1.0,
        alpha: float = 10.0,
        iterations: int = 15,
        seed: int = 0,
        fallback_half_life_days: float | None = 7.0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days

    def _reset_model(self) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        self.als_ = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=self.iterations,
            random_state=self.seed,
            num_threads=1,
        )
        self._fitted = False

    def _grow(self, n_users: int, n_items: int) -> None:
        pass  # implicit's partial_fit_* grow its factor tables

    def _fit(self, events: IndexedEvents) -> None:
        self.als_.fit(self.history_.tocsr().astype(np.float32), show_progress=False)
        self._fitted = True

    def _learn(self, events: IndexedEvents) -> None:
        if not self._fitted:
            self._fit(events)
            return
        positive = events.positive
        items = np.unique(events.item[positive])
        users = np.unique(events.user[positive])
        # Rows for new ids first (zeros), so neither partial fit meets an id the other side's
        # factors lack; the cached Gram matrices go stale with them.
        self.als_.user_factors = self._padded(self.als_.user_factors, len(self.users_))
        self.als_.item_factors = self._padded(self.als_.item_factors, len(self.items_))
        self.als_._XtX = self.als_._YtY = None
        if len(items):
            by_item = self.history_.tocsr().T.tocsr()
            self.als_.partial_fit_items(items, by_item[items].astype(np.float32))
        if len(users):
            self.als_.partial_fit_users(users, self.history_.rows(users).astype(np.float32))

    def _score(self, user_index, item_index) -> np.ndarray:
        users = self._padded(self.als_.user_factors, len(self.users_))
        items = self._padded(self.als_.item_factors, len(self.items_))
        return (users[user_index] @ items[item_index].T).astype(np.float32)

    def _padded(self, factors: np.ndarray, n: int) -> np.ndarray:
        """Rows for ids implicit has not seen yet (only in weight-0 events) are zeros."""
        if len(factors) >= n:
            return factors
        return np.vstack([factors, np.zeros((n - len(factors), factors.shape[1]), factors.dtype)])


SIMILARITIES = ("cosine", "bm25", "tfidf")


class ImplicitItemKNN(_Adapter):
    """``implicit.nearest_neighbours``: item-item similarities, scored over each user's history.

    The similarity matrix keeps each item's ``neighbours`` most similar items; it is the
    implicit recommender's ``fit`` on the whole user x item history (summed positive weights).
    A user's scores are their history row times that matrix, as implicit's ``recommend``
    computes them, for a batch of users in one sparse product.

    ``learn`` is honest at any cadence: a user's history is current after every call (the
    base class records it), so the next score reads it; the similarities are refitted from the
    whole history once ``refit_every`` positive events have arrived since the last fit, and
    items that arrived since have no neighbours (score 0) until then. The default, 100, is the
    block size of P1 with 500 blocks on ML-100K and ML latest-small: per block it refits after
    every block, and per row (``naive@row``) the similarities are as fresh as per block while
    the histories follow every row. It keeps a 500-block ``naive@row`` run on 100,000 events
    to 500 refits: on one core 0.1 to 0.2 s each on ML-100K (1,682 items; the whole run with
    ``TUNED`` took 217 s, 117 s of them in updates, on a busy two-core machine) and up to
    0.65 s on ML latest-small (9,066 items); refitting every 50 events would take about twice
    as long.

    Parameters
    ----------
    similarity : {"cosine", "bm25", "tfidf"}
        implicit's ``CosineRecommender``, ``BM25Recommender`` (its default K1 = 1.2,
        B = 0.75) or ``TFIDFRecommender``.
    neighbours : int
        Most similar items kept per item (implicit's ``K``).
    refit_every : int
        Positive events between two fits of the similarities.
    fallback_half_life_days : float or None
        Half-life of the popularity fallback for cold users.
    """

    name = "implicit-itemknn"

    def __init__(
        self,
        similarity: str = "cosine",
        neighbours: int = 50,
        refit_every: int = 100,
        fallback_half_life_days: float | None = 7.0,
    ) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        check_positive_ints(neighbours=neighbours, refit_every=refit_every)
        self.similarity = similarity
        self.neighbours = neighbours
        self.refit_every = refit_every
        self.fallback_half_life_days = fallback_half_life_days

    def _reset_model(self) -> None:
        from implicit import nearest_neighbours

        recommender = {
            "cosine": nearest_neighbours.CosineRecommender,
            "bm25": nearest_neighbours.BM25Recommender,
            "tfidf": nearest_neighbours.TFIDFRecommender,
        }[self.similarity]
        self.knn_ = recommender(K=self.neighbours, num_threads=1)
        self.similarity_ = sp.csr_matrix((0, 0), dtype=np.float32)
        self._events_since_fit = 0

    def _grow(self, n_users: int, n_items: int) -> None:
        # New items get empty rows and columns: no neighbours until the next refit.
        self.similarity_ = _resized(self.similarity_, n_items)

    def _fit(self, events: IndexedEvents) -> None:
        from implicit.utils import ParameterWarning

        with warnings.catch_warnings():
            # implicit's own weighting hands its kNN a COO matrix and warns about it.
            warnings.simplefilter("ignore", ParameterWarning)
            self.knn_.fit(self.history_.tocsr().astype(np.float32), show_progress=False)
        self.similarity_ = _resized(self.knn_.similarity.astype(np.float32), len(self.items_))
        self._events_since_fit = 0

    def _learn(self, events: IndexedEvents) -> None:
        self._events_since_fit += int(events.positive.sum())
        if self._events_since_fit >= self.refit_every:
            self._fit(events)

    def _score(self, user_index, item_index) -> np.ndarray:
        unique, inverse = np.unique(user_index, return_inverse=True)
        scores = self.history_.rows(unique) @ self.similarity_
        return scores[inverse][:, item_index].toarray().astype(np.float32)


def _resized(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """``matrix`` as an n x n matrix, sharing its arrays: new rows and columns are empty."""
    if matrix.shape == (n, n):
        return matrix
    indptr = np.concatenate([matrix.indptr, np.full(n - matrix.shape[0], matrix.indptr[-1])])
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(n, n))


class RiverBiasedMF(_Adapter):
    """river's ``reco.BiasedMF``: SGD on squared error, one event at a time.

    The defaults are river's MovieLens example (10 factors, learning rates 0.05 for the
    latent factors and 0.025 for the biases, no L2).
    """

    name = "river-biasedmf"

    def __init__(
        self,
        factors: int = 10,
        latent_learning_rate: float = 0.05,
        bias_learning_rate: float = 0.025,
        l2_latent: float = 0.0,
        seed: int = 73,
        fallback_half_life_days: float | None = 7.0,
    ) -> None:
        self.factors = factors
        self.latent_learning_rate = latent_learning_rate
        self.bias_learning_rate = bias_learning_rate
        self.l2_latent = l2_latent
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days

    def _reset_model(self) -> None:
        from river import optim, reco

        self.river_ = reco.BiasedMF(
            n_factors=self.factors,
            bias_optimizer=optim.SGD(self.bias_learning_rate),
            latent_optimizer=optim.SGD(self.latent_learning_rate),
            loss=optim.losses.Squared(),
            l2_bias=0.0,
            l2_latent=self.l2_latent,
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=self.seed),
        )
        self.user_vectors_ = np.zeros((0, self.factors))
        self.item_vectors_ = np.zeros((0, self.factors))
        self.user_bias_ = np.zeros(0)
        self.item_bias_ = np.zeros(0)

    def _grow(self, n_users: int, n_items: int) -> None:
        def extend(array: np.ndarray, n: int) -> np.ndarray:
            extra = np.zeros((n - len(array), *array.shape[1:]))
            return np.concatenate([array, extra]) if len(extra) else array

        self.user_vectors_ = extend(self.user_vectors_, n_users)
        self.item_vectors_ = extend(self.item_vectors_, n_items)
        self.user_bias_ = extend(self.user_bias_, n_users)
        self.item_bias_ = extend(self.item_bias_, n_items)

    def _learn(self, events: IndexedEvents) -> None:
        users = self.users_.ids(events.user).tolist()
        items = self.items_.ids(events.item).tolist()
        river = self.river_
        for u, i, ui, ii, target in zip(users, items, events.user, events.item,
                                        events.weight.tolist(), strict=True):  # fmt: skip
            if target <= 0:
                continue
            river.learn_one(u, i, target)
            self.user_vectors_[ui] = river.u_latents[u]
            self.item_vectors_[ii] = river.i_latents[i]
            self.user_bias_[ui] = river.u_biases[u]
            self.item_bias_[ii] = river.i_biases[i]

    def _score(self, user_index, item_index) -> np.ndarray:
        scores = self.user_vectors_[user_index] @ self.item_vectors_[item_index].T
        scores += self.user_bias_[user_index][:, None] + self.item_bias_[item_index][None, :]
        return scores.astype(np.float32)
