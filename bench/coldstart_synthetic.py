"""Cold-start items on the synthetic shop: does a text-only item reach the users of its topic?

40 catalogue items (seeded) are held out: their events are removed, so the transformer knows
them from the catalogue only (title and text naming the item's topic). After fitting on the
rest, every user (whose topic is that of their latest item) ranks every item; reported: the
mean share of items ranked above a held-out item, for users of the item's topic and for the
others (0 = first, 0.5 = the middle of the list).

Run: .venv/bin/python bench/coldstart_synthetic.py [--id-dropout 0.1]
Writes bench/results/coldstart-synthetic.json (with the machine).
"""

from __future__ import annotations

import argparse

import numpy as np
from common import report

from lifelong_rec.data import synthetic_stream
from lifelong_rec.models import SequentialTransformer

HELD_OUT = 40


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--id-dropout", type=float, nargs="+", default=[0.1, 0.5])
    args = parser.parse_args()
    data = synthetic_stream(n_users=1_000, n_items=600, n_events=40_000, seed=0)
    events, catalog = data.events, data.catalog
    topics = np.array([c[0] for c in catalog.categories])
    held = np.random.default_rng(0).choice(catalog.item, HELD_OUT, replace=False)
    train = events.take(~np.isin(events.item, held))
    users, last = np.unique(train.user[::-1], return_index=True)
    user_topic = topics[np.searchsorted(catalog.item, train.item[::-1][last])]
    held_topic = topics[np.searchsorted(catalog.item, held)]
    match = user_topic[:, None] == held_topic[None, :]
    results = {}
    for share in args.id_dropout:
        model = SequentialTransformer(max_len=20, dim=32, epochs=5, id_dropout=share)
        model.add_items(catalog).fit(train)
        scores = model.score_all(users)
        held_scores = scores[:, model.items_.lookup(held)]
        above = (held_scores[:, :, None] < scores[:, None, :]).mean(axis=2)
        results[f"id_dropout={share}"] = {
            "share_above_same_topic": float(above[match].mean()),
            "share_above_other_topics": float(above[~match].mean()),
            "model": repr(model),
        }
    report("coldstart-synthetic", {"held_out_items": HELD_OUT, "users": len(users),
                                   "items": len(model.items_), "results": results})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
