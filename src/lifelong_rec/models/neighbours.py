"""Session-kNN: what the users (sessions) most like this one's recent items went on to pick."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from lifelong_rec.checks import check_decays, check_positive_ints, check_positive_ints_or_none
from lifelong_rec.models.base import IndexedEvents, Recommender
from lifelong_rec.models.explanation import Attribution, pad_rows
from lifelong_rec.models.itemknn import _top_per_row, recent_items
from lifelong_rec.models.sparse import GrowingSparse, used_columns


class SessionKNN(Recommender):
    """Neighbour users: the session-based kNN of Ludewig and Jannach (2018), online.

    A user's recent items (the ``history_length`` latest, the item at recency position ``p``
    weighted ``r_j = recency_decay ** p``) find the ``neighbours`` other users most similar to
    them, ``s_v = sum_j r_j h_vj / sqrt(n_v)`` (``h_vj`` = 1 if user ``v`` has item ``j``,
    ``n_v`` the size of ``v``'s history); an item scores the summed similarity of the
    neighbours who have it, ``score(i) = sum_v s_v h_vi``. Where item-kNN asks which items go
    together over everyone, this asks what the users who did the same did next, which on
    click sessions sees more than item pairs.

    Learning only records who has what (an item's users, updated per first pair), so an
    update costs one sparse addition; the work is in scoring. A score splits exactly over the
    recent items, given the neighbours: item ``j`` adds ``r_j sum_v h_vj h_vi / sqrt(n_v)``.

    Parameters
    ----------
    neighbours : int
        Most similar users a score is taken from.
    history_length : int or None
        How many of the user's most recent distinct items find the neighbours (None: all).
    recency_decay : float in (0, 1]
        Each step back in the user's history multiplies an item's weight by this.
    fallback_half_life_days : float or None
        Half-life of the popularity fallback for cold users.
    """

    name = "session-knn"

    def __init__(
        self,
        neighbours: int = 100,
        history_length: int | None = 20,
        recency_decay: float = 0.5,
        fallback_half_life_days: float | None = 7.0,
    ) -> None:
        check_positive_ints(neighbours=neighbours)
        check_decays(recency_decay=recency_decay)
        check_positive_ints_or_none(history_length=history_length)
        self.neighbours = neighbours
        self.history_length = history_length
        self.recency_decay = recency_decay
        self.fallback_half_life_days = fallback_half_life_days

    @classmethod
    def _unit_test_params(cls) -> dict[str, object]:
        return {"neighbours": 20, "history_length": 10}

    def _reset_model(self) -> None:
        self.item_users_ = GrowingSparse((0, 0), "max", np.float32)  # items x users: 1 = has

    def _grow(self, n_users: int, n_items: int) -> None:
        self.item_users_.grow(n_items, n_users)

    def _fit(self, events: IndexedEvents) -> None:
        has = self.history_.tocsr().T.tocoo()
        self.item_users_ = GrowingSparse(has.shape, "max", np.float32)
        self.item_users_.add(has.row, has.col, np.ones(has.nnz, dtype=np.float32))

    def _learn(self, events: IndexedEvents) -> None:
        pairs = events.new_pair
        self.item_users_.add(
            events.item[pairs], events.user[pairs], np.ones(int(pairs.sum()), dtype=np.float32)
        )

    # -------------------------------------------------------------- scoring

    def _recent(self, user_index: np.ndarray) -> sp.csr_matrix:
        return recent_items(self.last_seen_.rows(user_index), self.history_length,
                            self.recency_decay)  # fmt: skip

    def _similar_users(self, recent: sp.csr_matrix, owners: np.ndarray) -> sp.csr_matrix:
        """Each row's ``neighbours`` most similar users (its owner left out) and their
        similarities ``s_v``, shape (n, n_users)."""
        items, compact = used_columns(recent)
        similarity = (compact @ self.item_users_.rows(items)).multiply(self._norms()).tocsr()
        rows = np.repeat(np.arange(similarity.shape[0]), np.diff(similarity.indptr))
        similarity.data[similarity.indices == owners[rows]] = 0.0  # not one's own neighbour
        similarity.eliminate_zeros()
        return _top_per_row(similarity, self.neighbours)

    def _norms(self) -> np.ndarray:
        """1 / sqrt(n_v) for every user: what a shared item is worth in ``s_v``."""
        return 1.0 / np.sqrt(np.maximum(self.history_size_, 1))

    def _has(self, users: np.ndarray) -> sp.csr_matrix:
        """Users' histories as 0/1, shape (len(users), n_items)."""
        has = self.history_.rows(users)
        has.data = (has.data > 0).astype(np.float64)
        return has

    def _from_recent(self, recent: sp.csr_matrix, owners: np.ndarray) -> np.ndarray:
        """Every item's score for each row of recent items, shape (n, n_items)."""
        users, compact = used_columns(self._similar_users(recent, owners))
        return (compact @ self._has(users)).toarray()

    def _score(self, user_index: np.ndarray, item_index: np.ndarray | slice) -> np.ndarray:
        scores = self._from_recent(self._recent(user_index), user_index)
        return scores[:, item_index].astype(np.float32)

    # -------------------------------------------------------------- explaining

    def _attribute(self, users: np.ndarray, items: np.ndarray) -> Attribution:
        """The exact split of the score over the recent items, given the neighbours."""
        unique, inverse = np.unique(users, return_inverse=True)
        recent = self._recent(unique)
        history, recency = pad_rows(recent.indptr, recent.indices, recent.data)
        similar = self._similar_users(recent, unique)
        neighbours, _ = pad_rows(similar.indptr, similar.indices, similar.data)
        # per user: which neighbours have each recent item and each asked item, (n, V, h|k)
        weight = np.where(neighbours >= 0, self._norms()[np.maximum(neighbours, 0)], 0.0)
        has_history = self._contains(neighbours, history)
        has_item = self._contains(neighbours[inverse], items)
        shared = np.einsum("nvh,nv->nvh", has_history, weight)[inverse]
        weights = np.einsum("nvh,nvk->nhk", shared, has_item) * recency[inverse][:, :, None]
        kinds = np.full(items.shape, "similar_item", dtype=object)
        return Attribution(
            "exact sum over the recent items, through the most similar users",
            history[inverse], weights, kinds,
        )  # fmt: skip

    def _contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each user (n, V; -1 pads) has each item (n, m; -1 pads), shape (n, V, m)."""
        n, width = users.shape
        rows = np.broadcast_to(users[:, :, None], (n, width, items.shape[1]))
        cols = np.broadcast_to(items[:, None, :], rows.shape)
        valid = (rows >= 0) & (cols >= 0)
        out = np.zeros(rows.shape)
        out[valid] = self.history_.contains(rows[valid], cols[valid])
        return out

    def _deletion_scores(self, user: int, items: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """Scores from the recent items, then from those of the history without each removed
        item (an older item may move into the window; the neighbours are found again)."""
        row = self.last_seen_.rows(np.array([user]))
        history, times = row.indices.astype(np.int64), row.data.astype(np.float64)
        kept = np.ones((len(removed) + 1, len(history)), dtype=bool)
        kept[1:] = history[None, :] != removed[:, None]
        rows, slots = np.nonzero(kept)
        last_seen = sp.csr_matrix(
            (times[slots], (rows, history[slots])), shape=(len(kept), len(self.items_))
        )
        recent = recent_items(last_seen, self.history_length, self.recency_decay)
        return self._from_recent(recent, np.full(len(kept), user))[:, items]

    def _item_similarity(self, item: int) -> np.ndarray:
        """The users ``item`` shares with every other item."""
        users = self.item_users_.rows(np.array([item])).indices
        shared = np.asarray(self._has(users).sum(axis=0)).ravel()
        shared[item] = 0.0
        return shared

    # -------------------------------------------------------------- persistence

    def _state(self) -> dict[str, np.ndarray]:
        return {f"item_users.{k}": v for k, v in self.item_users_.state().items()}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        state = {k.removeprefix("item_users."): v for k, v in arrays.items() if "." in k}
        self.item_users_ = GrowingSparse.from_state(state, "max", np.float32)
