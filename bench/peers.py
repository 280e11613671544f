"""External peers for the P1 headline benchmark, wrapped in the Recommender contract so that
they run through the very same harness as lifelong-rec's own models.

- ``ImplicitALS``: the ``implicit`` library's ALS (CPU). ``fit`` is its batch fit; ``learn``
  is its own incremental path, ``partial_fit_items`` then ``partial_fit_users`` for what the
  batch touched.
- ``RiverBiasedMF``: river's ``reco.BiasedMF``, learning one event at a time with
  ``learn_one`` (its only way), with the settings of river's own MovieLens example.

Both need the bench extra (``pip install -e '.[bench]'``; river is a core dependency). They
are benchmark adapters: they do not save or explain.
"""

from __future__ import annotations

import numpy as np

from lifelong_rec.models import Recommender
from lifelong_rec.models.base import IndexedEvents


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


class RiverBiasedMF(_Adapter):
    """river's ``reco.BiasedMF``: SGD on squared error, one event at a time."""

    name = "river-biasedmf"

    def __init__(
        self, factors: int = 10, seed: int = 73, fallback_half_life_days: float | None = 7.0
    ) -> None:
        self.factors = factors
        self.seed = seed
        self.fallback_half_life_days = fallback_half_life_days

    def _reset_model(self) -> None:
        from river import optim, reco

        self.river_ = reco.BiasedMF(
            n_factors=self.factors,
            bias_optimizer=optim.SGD(0.025),
            latent_optimizer=optim.SGD(0.05),
            loss=optim.losses.Squared(),
            l2_bias=0.0,
            l2_latent=0.0,
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
