"""The Models page: the snapshots with the online quality each was saved with, what serves,
and what changed between two snapshots."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lifelong_rec.service.snapshots import DamagedSnapshot
from lifelong_rec.service.ui.charts import Series, line_chart

if TYPE_CHECKING:
    from lifelong_rec.models import Recommender
    from lifelong_rec.service.engine import Engine

__all__ = ["COMPARED_USERS", "compare", "models_page", "snapshot_problem"]

#: users whose top 10 are compared between two snapshots (spread over the older one's users)
COMPARED_USERS = 300


def models_page(engine: Engine) -> dict[str, object]:
    models = engine.models()
    snapshots: list[dict[str, object]] = list(models["snapshots"])  # type: ignore[call-overload]
    with_quality = [s for s in snapshots if s.get("quality")]

    def series(metric: str, name: str) -> Series:
        return Series(
            name,
            [float(s["version"]) for s in with_quality],  # type: ignore[arg-type]
            [float(s["quality"][metric]) for s in with_quality],  # type: ignore[index]
        )

    learner = engine.learner
    return {
        "models": models,
        "snapshots": list(reversed(snapshots)),
        "newest_version": learner.latest.version if learner.latest.model is not None else None,
        "quality_chart": line_chart(
            [
                series("recent_hr_at_10", "HR@10 (recent)"),
                series("recent_ndcg_at_10", "NDCG@10 (recent)"),
            ],
            label="online quality saved with each snapshot, by version",
            time_axis=False,
            empty="no snapshot on disk carries a quality yet",
        ),
    }


def compare(engine: Engine, older: int, newer: int) -> dict[str, object]:
    """What changed from snapshot ``older`` to ``newer`` (both on disk): events learned and
    time between them, users and items known, the online quality each was saved with, and
    how much the top 10 of the same users moved.

    Raises
    ------
    KeyError
        If either snapshot is not on disk.
    DamagedSnapshot
        If either cannot be read.
    """
    store = engine.learner.store
    first_model, first = store.load(older)
    second_model, second = store.load(newer)
    users = _shared_users(first_model, second_model, COMPARED_USERS)
    overlap = identical = None
    if len(users):
        a = first_model.recommend(users, k=10).items
        b = second_model.recommend(users, k=10).items
        shared = np.array(
            [len(set(row_a) & set(row_b) - {""}) for row_a, row_b in zip(a, b, strict=True)]
        )
        overlap = float(shared.mean() / 10)
        identical = float(np.mean([list(x) == list(y) for x, y in zip(a, b, strict=True)]))
    quality = {
        metric: (
            None if first.quality is None else first.quality.get(metric),
            None if second.quality is None else second.quality.get(metric),
        )
        for metric in ("recent_hr_at_10", "recent_ndcg_at_10", "hr_at_10", "ndcg_at_10")
    }
    return {
        "older": first.to_dict(),
        "newer": second.to_dict(),
        "events_between": second.offset - first.offset,
        "seconds_between": second.created_at - first.created_at,
        "users": (len(first_model.users_), len(second_model.users_)),
        "items": (len(first_model.items_), len(second_model.items_)),
        "same_model": first.model == second.model,
        "quality": quality,
        "compared_users": len(users),
        "overlap": overlap,
        "identical": identical,
    }


def _shared_users(first: Recommender, second: Recommender, count: int) -> np.ndarray:
    """Up to ``count`` users both models know, spread evenly over the first one's."""
    known = first.users_.to_array()
    if not len(known):
        return known
    picked = known[np.unique(np.linspace(0, len(known) - 1, min(count, len(known))).astype(int))]
    return picked[second.users_.lookup(picked) >= 0]


def snapshot_problem(error: Exception, older: int, newer: int) -> str:
    """What to tell the operator when a comparison cannot load its snapshots."""
    if isinstance(error, DamagedSnapshot):
        return str(error)
    return f"snapshot {older} or {newer} is not on disk (pruned, or never persisted)"
