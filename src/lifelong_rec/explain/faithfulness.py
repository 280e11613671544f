"""The deletion test: do the reasons a model gives really drive its scores?

For every recommended (user, item) whose explanation rests on a history item, remove that
item (the top history reason's) from the user's history and recompute the score; then do the
same with a random other item of the history the model reads. A faithful explanation names an
item whose removal lowers the score, and by more than a random one's. Scores are recomputed by
the model itself (``Recommender.deletion_scores``): MF folds the user in again, item-kNN sums
the neighbours of the remaining items, the transformer re-reads the shortened sequence.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from lifelong_rec.models import Recommender


@dataclass(frozen=True)
class DeletionTest:
    """What :func:`deletion_test` measured for one model.

    Attributes
    ----------
    model : str
    method : str
        How the model's explanations split its scores.
    users : int
        Users whose recommendations were tested.
    pairs : int
        (user, item) pairs tested: recommended items whose explanation has a history reason.
    skipped : int
        Recommended items without a history reason (only popularity, or nothing lifts the
        score), or whose user reads fewer than two history items.
    drop_share : float
        Share of pairs whose score drops when the top reason's item is removed.
    beats_random_share : float
        Share of pairs whose score drops by more than when a random other history item is
        removed instead.
    mean_drop_top, mean_drop_random : float
        Mean score drop (score units) when the top reason's item, or a random one, is removed.
    mean_relative_drop_top, mean_relative_drop_random : float
        The same drops as shares of each pair's absolute score, averaged.
    seconds : float
    """

    model: str
    method: str
    users: int
    pairs: int
    skipped: int
    drop_share: float
    beats_random_share: float
    mean_drop_top: float
    mean_drop_random: float
    mean_relative_drop_top: float
    mean_relative_drop_random: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def deletion_test(model: Recommender, users: object, k: int = 10, seed: int = 0) -> DeletionTest:
    """Run the deletion test on the top-``k`` recommendations of ``users``.

    Parameters
    ----------
    model : Recommender
        Fitted, with scores computed from the history.

    Raises
    ------
    NotImplementedError
        For a model whose scores do not come from the history (popularity, BPR).
    users : sequence of ids
        Users to test; unknown users and users without history are skipped.
    k : int
    seed : int
        Seeds the choice of the random history items.
    """
    if type(model)._deletion_scores is Recommender._deletion_scores:
        raise NotImplementedError(
            f"{type(model).__name__} does not compute its scores from the user's history: "
            "there is no history item to delete"
        )
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    known = model.users_.lookup(np.asarray(users, dtype=str)) >= 0
    users = np.asarray(users, dtype=str)[known]
    recommendations = model.recommend(users, k, explain=True, reasons=2)
    explained = recommendations.explanations
    assert explained is not None  # explain=True
    base: list[np.ndarray] = []
    top: list[np.ndarray] = []
    random: list[np.ndarray] = []
    skipped, tested_users, method = 0, 0, ""
    for row, user in enumerate(users.tolist()):
        explanations = explained[row]
        if recommendations.fallback[row]:
            skipped += len(explanations)
            continue
        read = model.read_history(user)
        pairs = [(e.item, _top_history_item(e.reasons)) for e in explanations]
        pairs = [(item, reason) for item, reason in pairs if reason is not None]
        skipped += len(explanations) - len(pairs)
        if len(read) < 2 or not pairs:
            skipped += len(pairs)
            continue
        method = explanations[0].method
        items = [item for item, _ in pairs]
        removed = [reason for _, reason in pairs]
        others = [rng.choice(read[read != reason]) for reason in removed]
        scores = model.deletion_scores(user, items, removed + others)
        n = len(items)
        base.append(scores[0])
        top.append(scores[1 : n + 1][np.arange(n), np.arange(n)])
        random.append(scores[n + 1 :][np.arange(n), np.arange(n)])
        tested_users += 1
    base_scores, top_scores, random_scores = (
        np.concatenate(part) if part else np.zeros(0) for part in (base, top, random)
    )
    drop_top, drop_random = base_scores - top_scores, base_scores - random_scores
    scale = np.maximum(np.abs(base_scores), 1e-12)
    mean = lambda values: float(values.mean()) if len(values) else float("nan")  # noqa: E731
    return DeletionTest(
        model=repr(model),
        method=method,
        users=tested_users,
        pairs=len(base_scores),
        skipped=skipped,
        drop_share=mean(drop_top > 0),
        beats_random_share=mean(drop_top > drop_random),
        mean_drop_top=mean(drop_top),
        mean_drop_random=mean(drop_random),
        mean_relative_drop_top=mean(drop_top / scale),
        mean_relative_drop_random=mean(drop_random / scale),
        seconds=time.perf_counter() - started,
    )


def _top_history_item(reasons: tuple) -> str | None:
    return next((reason.item for reason in reasons if reason.item is not None), None)
