"""The transformer's item table behind the approximate index (issue #17, part 1).

A synthetic shop with a catalogue of ``--items`` items (titles and categories hashed into the
text encoder), most of them never interacted with (they are ranked through their text, as news
is); ``transformer(retrieval='ivf')`` against the same transformer ranking exactly (trained
alike: the same seed, the same steps on a CPU).

Reported: the index's build after ``fit`` (k-means, then every item added), single-user
top-10 latency on one thread (p50, p99), exact and through the index at several ``nprobe``
(clusters scanned), the recall@10 of the served lists (the share of the exact model's top-10
the indexed one serves; seen items left out by both), and what a learned event costs each:
with a fine-tuning step (every item's representation moves, so all of them go back into the
trained clusters) and with sequence updates only (``update_steps=0``: only a new item or one
at its first event moves).

Run: .venv/bin/python bench/retrieval_transformer.py [--items 200000] [--events 60000]
     [--queries 500] [--epochs 2]
Writes bench/results/retrieval-transformer.json (with the machine).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from common import percentiles, report, timed
from threadpoolctl import threadpool_limits

from lifelong_rec.data import synthetic_stream
from lifelong_rec.models import SequentialTransformer

K = 10


def each(call: Callable[[Any], object], inputs: Sequence[Any]) -> dict[str, float]:
    """Percentiles of the time ``call`` takes on each of ``inputs`` in turn (made beforehand:
    the clock runs only around ``call``)."""
    turn = iter(inputs)
    return percentiles(timed(lambda: call(next(turn)), len(inputs))[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--nprobes", default="16,64,256,1024")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    threadpool_limits(1)
    data = synthetic_stream(n_users=args.users, n_items=args.items, n_events=args.events,
                            n_topics=12, initial_items=1.0, seed=0)  # fmt: skip
    events = data.events
    learned, later = events.take(slice(0, len(events) - 50)), events.take(slice(-50, None))
    params = {"epochs": args.epochs, "loss": "sampled", "device": "cpu"}
    models, fit_seconds = {}, {}
    for name, retrieval in (("exact", None), ("ivf", "ivf(check_share=0.0)")):
        model = SequentialTransformer(**params, retrieval=retrieval).add_items(data.catalog)
        started = time.perf_counter()
        model.fit(learned)
        fit_seconds[name] = round(time.perf_counter() - started, 1)
        models[name] = model
    exact, indexed = models["exact"], models["ivf"]
    assert indexed.index_ is not None and indexed.index_.ready
    started = time.perf_counter()
    indexed.index_.sync(indexed._item_table())  # the clusters trained again, as after fit
    build_s = time.perf_counter() - started

    rng = np.random.default_rng(1)
    users = rng.choice(np.unique(learned.user), args.queries, replace=False)
    want = exact.recommend(users, K).items
    exact_latency = each(lambda user: exact.recommend([user], K), users)
    by_nprobe = {}
    for nprobe in [int(n) for n in args.nprobes.split(",")]:
        indexed.index_._index.nprobe = nprobe  # clusters scanned per query
        got = indexed.recommend(users, K).items
        found = [len(np.intersect1d(w, g)) / K for w, g in zip(want, got, strict=True)]
        by_nprobe[nprobe] = each(lambda user: indexed.recommend([user], K), users) | {
            "recall@10_of_served_lists": round(float(np.mean(found)), 4)
        }
        print(nprobe, by_nprobe[nprobe], flush=True)
    indexed.index_._index.nprobe = indexed.index_.nprobe  # the default again

    described = repr(indexed)  # before the loop below changes update_steps
    learning = {}
    for steps in (1, 0):  # a fine-tuning step per event, then sequence updates only
        for model in models.values():
            model.update_steps = steps
        learning[f"update_steps={steps}"] = {
            name: each(model.learn, [later.take(slice(i, i + 1)) for i in range(25)])
            for name, model in models.items()
        }
    n_interacted = int(indexed.net_.interacted[1 : len(indexed.items_) + 1].sum())
    results = {
        "model": described,
        "items": len(indexed.items_),
        "items_with_events": n_interacted,
        "events": len(learned),
        "users": len(np.unique(learned.user)),
        "fit_seconds": fit_seconds,
        "lists": int(indexed.index_._index.nlist),
        "index_build_s": round(build_s, 2),
        "exact_top10": exact_latency,
        "ivf_top10_by_nprobe": by_nprobe,
        "default_nprobe": indexed.index_.nprobe,
        "learn_one_event": learning,
        "threads": 1,
    }
    report("retrieval-transformer", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
