"""Explanations on ML-100K: are they faithful (the deletion test), and what do they cost?

Faithfulness. Every model is fitted on all of ML-100K. For each user's top-10, the item a
reason rests on (the top history reason) is removed from the user's history and the score
recomputed by the model (``deletion_scores``); then a random other item of the history the
model reads is removed instead. Reported per model: the share of (user, item) pairs whose
score drops, the share where it drops by more than for the random item, and the mean drops.
Popularity and BPR give no history-based score, so the test does not apply to them.

Cost. ``recommend(users, 10)`` against ``recommend(users, 10, explain=True)`` (3 reasons),
for every user in one batch (median of 3 runs) and for single-user requests (as the
service makes them; median over 200 users). The target: explaining a top-10 costs at most
about twice the recommendation.

Run: .venv/bin/python bench/explain.py [--data ml-100k] [--models "itemknn,mf,transformer"]
     [--users N] [--tag TAG]
Writes bench/results/explain-<data>[-TAG].json (with the machine) and prints it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from common import DATASETS, report, timed

from lifelong_rec.data import load
from lifelong_rec.explain import deletion_test
from lifelong_rec.models import Wording, parse_model, split_specs, with_catalog

DEFAULT_MODELS = ["pop", "itemknn", "mf", "bpr", "transformer(epochs=20)"]
SINGLE_USERS = 200  # single-user requests timed per model
K = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", choices=["ml-100k", "ml-latest-small"], default="ml-100k")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--users", type=int, default=None, help="test only the first N users")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    try:
        models = dict(parse_model(spec) for spec in split_specs(args.models))
    except ValueError as error:
        parser.error(str(error))
    source = DATASETS / args.data
    if not source.is_dir():
        print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    data = load(source, "movielens")
    users = np.unique(data.events.user)[: args.users]
    results = {}
    for label, factory in models.items():
        model = with_catalog(factory, data.catalog)()
        started = time.perf_counter()
        model.fit(data.events)
        fit_seconds = time.perf_counter() - started
        print(f"{label}: fitted in {fit_seconds:.1f} s", file=sys.stderr)
        results[label] = {"model": repr(model), "fit_seconds": round(fit_seconds, 2)}
        results[label] |= _cost(model, users, data.catalog)
        try:
            results[label]["deletion_test"] = deletion_test(model, users, k=K).to_dict()
        except NotImplementedError as error:
            results[label]["deletion_test"] = {"not_applicable": str(error)}
        print(f"{label}: {results[label]}", file=sys.stderr)
    tag = f"-{args.tag}" if args.tag else ""
    report(f"explain-{args.data}{tag}", {"data": args.data, "users": len(users), "k": K,
                                         "models": results})  # fmt: skip
    return 0


def _cost(model, users: np.ndarray, catalog) -> dict[str, float]:
    """Seconds of recommend with and without explanations, batched and one user at a time."""
    plain = lambda batch: model.recommend(batch, K)  # noqa: E731
    wording = Wording(catalog, "watched")
    explained = lambda batch: model.recommend(batch, K, explain=True, wording=wording)  # noqa: E731
    explained(users[:8])  # warm caches (item similarities, item vectors) before timing
    batch_plain, _ = timed(lambda: plain(users), 3)
    batch_explained, _ = timed(lambda: explained(users), 3)
    singles = users[:: max(1, len(users) // SINGLE_USERS)][:SINGLE_USERS]
    single_plain = statistics.median(timed(lambda u=u: plain([u]), 1)[0] for u in singles)
    single_explained = statistics.median(timed(lambda u=u: explained([u]), 1)[0] for u in singles)
    return {
        "batch_recommend_s": round(batch_plain, 4),
        "batch_recommend_explained_s": round(batch_explained, 4),
        "batch_ratio": round(batch_explained / batch_plain, 2),
        "single_recommend_ms": round(1e3 * single_plain, 3),
        "single_recommend_explained_ms": round(1e3 * single_explained, 3),
        "single_ratio": round(single_explained / single_plain, 2),
    }


if __name__ == "__main__":
    raise SystemExit(main())
