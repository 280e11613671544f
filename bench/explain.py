"""Explanations on ML-100K: are they faithful (the deletion test), and what do they cost?

Faithfulness. Every model is fitted on all of ML-100K. For each user's top-10, the item a
reason rests on (the top history reason) is removed from the user's history and the score
recomputed by the model (``deletion_scores``); then a random other item of the history the
model reads is removed instead. Reported per model: the share of (user, item) pairs whose
score drops, the share where it drops by more than for the random item, and the mean drops.
Popularity and BPR give no history-based score, so the test does not apply to them.

Completeness. Where the reasons split the score (the models the deletion test applies to),
how far the parts (every history item's weight, plus the popularity part: the transformer's
score for an emptied history) fall from the score they split, over every user's top-10:
mean |parts - score| against mean |score - popularity part|. Zero for item-kNN (an exact
sum); for MF the gap between the stored user factors and the exact fold-in the split uses;
for the transformer the integration error of integrated gradients.

Cost. ``recommend(users, 10)`` against ``recommend(users, 10, explain=True)`` (3 reasons),
for every user in one batch (median of 3 runs) and for single-user requests (as the
service makes them; median over 200 users). The target: explaining a top-10 costs at most
about twice the recommendation (ten times for the transformer, whose integrated gradients
run a backward pass for every quadrature node). PyTorch's thread count is recorded: on a
shared 2-core machine run with OMP_NUM_THREADS=1, as two threads that wait on a busy core
make single requests erratic.

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
            results[label]["completeness"] = _completeness(model, users)
        except NotImplementedError as error:
            results[label]["deletion_test"] = {"not_applicable": str(error)}
        print(f"{label}: {results[label]}", file=sys.stderr)
    tag = f"-{args.tag}" if args.tag else ""
    threads = (
        {"torch_threads": sys.modules["torch"].get_num_threads()} if "torch" in sys.modules else {}
    )
    report(f"explain-{args.data}{tag}", {"data": args.data, "users": len(users), "k": K,
                                         **threads, "models": results})  # fmt: skip
    return 0


def _cost(model, users: np.ndarray, catalog) -> dict[str, float]:
    """Seconds of recommend with and without explanations, batched and one user at a time.
    Each side is timed in a run of its own: a plain request right after an explained one
    finds colder caches (measured: the transformer's 0.96 ms recommendation took 1.6 ms
    when the two alternated), which would flatter the ratio."""
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


def _completeness(model, users: np.ndarray) -> dict[str, float]:
    """How far the parts of every user's top-K scores fall from the scores (see above)."""
    recommendations = model.recommend(users, K)
    warm = ~recommendations.fallback
    user_index = model.users_.lookup(recommendations.users[warm])
    items = model.items_.lookup(recommendations.items[warm].ravel()).reshape(-1, K)
    attribution = model._attribute(user_index, np.maximum(items, 0))
    popularity = 0.0 if attribution.popularity is None else attribution.popularity
    scores = recommendations.scores[warm].astype(np.float64)
    gap = (attribution.weights.sum(axis=1) + popularity - scores)[items >= 0]
    moved = (scores - popularity)[items >= 0]
    relative = np.abs(gap) / np.maximum(np.abs(moved), 1e-12)
    return {
        "pairs": len(gap),
        "mean_abs_gap": round(float(np.abs(gap).mean()), 6),
        "mean_abs_score_minus_popularity": round(float(np.abs(moved).mean()), 6),
        "gap_share": round(float(np.abs(gap).mean() / np.abs(moved).mean()), 6),
        "median_relative_gap": round(float(np.median(relative)), 6),
        "p90_relative_gap": round(float(np.quantile(relative, 0.9)), 6),
    }


if __name__ == "__main__":
    raise SystemExit(main())
