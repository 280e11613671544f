"""The Items page: the catalogue with search, an item's similar items (``Engine.similar``),
and where the serving model ranks an item, and for whom."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from lifelong_rec.service.ui.charts import bar_chart

if TYPE_CHECKING:
    from lifelong_rec.events import Catalog
    from lifelong_rec.models import Recommender

__all__ = ["PLACEMENT_CELLS", "PLACEMENT_USERS", "RANK_BUCKETS", "placement", "search"]

#: the most users whose ranking of an item is computed (spread over all the model's users)
PLACEMENT_USERS = 2_000
#: ... and the most scores held at once for it (users x items)
PLACEMENT_CELLS = 20_000_000
#: how ranks are grouped on the page: (label, lowest rank, highest rank)
RANK_BUCKETS = (
    ("top 10", 1, 10),
    ("11-50", 11, 50),
    ("51-100", 51, 100),
    ("101-500", 101, 500),
    ("beyond 500", 501, None),
)


def search(catalog: Catalog, query: str, limit: int = 50) -> tuple[list[dict[str, object]], int]:
    """Catalogue items whose id or title contains ``query`` (any case), newest first (the
    catalogue's order is first sight); with no query, the newest. Returns the first
    ``limit`` and how many match."""
    ids, titles = catalog.item.astype(str), catalog.title.astype(str)
    if query:
        needle = query.lower()
        match = (np.char.find(np.char.lower(titles), needle) >= 0) | (
            np.char.find(np.char.lower(ids), needle) >= 0
        )
        rows = np.flatnonzero(match)[::-1]
    else:
        rows = np.arange(len(ids))[::-1]
    return [
        {"item": ids[row], "title": titles[row], "categories": list(catalog.categories[row])}
        for row in rows[:limit].tolist()
    ], len(rows)


def placement(model: Recommender, item: str) -> dict[str, object] | None:
    """Where ``model`` ranks ``item`` for a spread of its users (as served: items they have
    interacted with left out), and the users it ranks it highest for; None when the model
    does not know the item.

    The rank of the item for a user is one plus the number of their unseen items that score
    above it, from one scoring of every item for every user of the spread
    (:data:`PLACEMENT_USERS` at most, fewer on a large catalogue).
    """
    index = int(model.items_.lookup([item])[0])
    if index < 0:
        return None
    n_users, n_items = len(model.users_), len(model.items_)
    count = min(n_users, PLACEMENT_USERS, max(50, PLACEMENT_CELLS // max(n_items, 1)))
    if count == 0:
        return {"users": 0, "seen": 0, "best": [], "median": None, "items": n_items}
    rows = np.unique(np.linspace(0, n_users - 1, count).astype(np.int64))
    users = model.users_.ids(rows)
    scores = np.nan_to_num(model.score_all(users), nan=-np.inf)
    target = scores[:, index]
    above = scores > target[:, None]
    seen = model.history_.rows(rows).tocoo()
    inside = seen.col < n_items
    seen_rows, seen_cols = seen.row[inside], seen.col[inside]
    # seen items above the item do not count: the served list leaves them out
    above_seen = np.bincount(
        seen_rows, weights=above[seen_rows, seen_cols].astype(np.float64), minlength=len(rows)
    )
    ranks = 1 + above.sum(axis=1) - above_seen.astype(np.int64)
    has_seen = np.zeros(len(rows), dtype=bool)
    has_seen[seen_rows[seen_cols == index]] = True
    open_ranks, open_users = ranks[~has_seen], users[~has_seen]
    order = np.argsort(open_ranks, kind="stable")[:10]
    buckets = []
    for label, low, high in RANK_BUCKETS:
        inside_bucket = (open_ranks >= low) & (open_ranks <= (high or n_items))
        buckets.append((label, int(inside_bucket.sum())))
    return {
        "users": len(rows),
        "all_users": n_users,
        "seen": int(has_seen.sum()),
        "buckets": buckets,
        "best": [{"user": str(open_users[j]), "rank": int(open_ranks[j])} for j in order.tolist()],
        "median": float(np.median(open_ranks)) if len(open_ranks) else None,
        "items": n_items,
        "chart": bar_chart(
            [label for label, _ in buckets],
            [count for _, count in buckets],
            label=f"users by the rank of {item}",
            value_format="{:,.0f} users",
        ),
    }
