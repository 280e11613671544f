"""Model benchmark: training, incremental learning and recommendation speed, and quality.

For each model on ML-100K: fit seconds (first 90 % of the ratings by time), ``learn``
throughput in batches of 1 and of 1,000 (the last 10 %), ``recommend`` latency for one user and
for a batch of 1,000 users (top-10 over all items), and the hold-out quality checks of
``lifelong_rec.evaluate`` (temporal HR@10 on each known user's next 20 events; random
precision@10). Then MF on a synthetic catalogue of 100,000 users and 100,000 items.

Targets (issue #3, this 2-core machine): MF ``learn`` >= 50,000 events/s in batches of 1,000;
top-10 for one user over 100,000 items within 2 ms.
Run: .venv/bin/python bench/models.py   (prints JSON, writes bench/results/models.json)
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from common import DATASETS, report, timed

from lifelong_rec.data import load
from lifelong_rec.evaluate import random_precision, temporal_hit_rate
from lifelong_rec.events import EventBatch
from lifelong_rec.models import BPR, ItemKNN, MatrixFactorization, Popularity, Recommender

LARGE = 100_000  # users and items of the synthetic catalogue
LARGE_EVENTS = 1_000_000


def speed(model: Recommender, train: EventBatch, stream: EventBatch) -> dict[str, float]:
    fit_seconds, _ = timed(lambda: model.fit(train), 1)
    rng = np.random.default_rng(0)
    users = np.unique(train.user)

    started = time.perf_counter()
    batches = 0
    for start in range(0, min(len(stream), 20_000), 1_000):
        model.learn(stream.take(slice(start, start + 1_000)))
        batches += 1
    per_thousand = batches * 1_000 / (time.perf_counter() - started)

    singles = min(len(stream), 500)
    started = time.perf_counter()
    for row in range(singles):
        model.learn(stream.take(slice(row, row + 1)))
    per_one = singles / (time.perf_counter() - started)

    one_user = []
    for user in rng.choice(users, 200):
        started = time.perf_counter()
        model.recommend([user], k=10)
        one_user.append(time.perf_counter() - started)
    batch_users = rng.choice(users, 1_000)
    model.recommend(batch_users, k=10)  # caches are warm, as in serving
    thousand_seconds, _ = timed(lambda: model.recommend(batch_users, k=10), 5)
    return {
        "fit_seconds": round(fit_seconds, 3),
        "learn_events_per_second_batch_1000": round(per_thousand),
        "learn_events_per_second_batch_1": round(per_one),
        "recommend_ms_1_user_median": round(1000 * statistics.median(one_user), 3),
        "recommend_ms_1_user_p95": round(1000 * float(np.percentile(one_user, 95)), 3),
        "recommend_ms_1000_users": round(1000 * thousand_seconds, 1),
    }


def large_catalogue(seed: int = 0) -> EventBatch:
    """Power-law users and items: 1,000,000 events over 100,000 users and 100,000 items."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / (np.arange(LARGE) + 10.0) ** 0.8
    users = rng.choice(LARGE, LARGE_EVENTS, p=weights / weights.sum())
    items = rng.choice(LARGE, LARGE_EVENTS, p=weights / weights.sum())
    # every user and item appears at least once, so the catalogue is the full 100,000
    users[:LARGE], items[:LARGE] = rng.permutation(LARGE), rng.permutation(LARGE)
    return EventBatch.from_columns(
        users, items, 1.7e9 + np.sort(rng.uniform(0, 30 * 86_400, LARGE_EVENTS)), "click"
    )


def main() -> int:
    source = DATASETS / "ml-100k"
    if not (source / "u.data").is_file():
        print(f"ML-100K not found at {source}; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    ratings = load(source, "movielens").events
    cut = int(0.9 * len(ratings))
    train, stream = ratings.take(slice(0, cut)), ratings.take(slice(cut, None))
    models = [Popularity(), ItemKNN(), MatrixFactorization(), BPR()]
    ml100k = {}
    for model in models:
        ml100k[type(model).__name__] = {
            "params": model.get_params(),
            **speed(model, train, stream),
            "temporal_hr_at_10_next_20": round(temporal_hit_rate(model.clone(), ratings), 4),
            "random_precision_at_10": round(random_precision(model.clone(), ratings), 4),
        }
    references = {
        "Popularity(all-time)": Popularity(half_life_days=None),
        "Popularity(half_life_days=7)": Popularity(),
    }
    quality_references = {
        name: {
            "temporal_hr_at_10_next_20": round(temporal_hit_rate(model, ratings), 4),
            "random_precision_at_10": round(random_precision(model.clone(), ratings), 4),
        }
        for name, model in references.items()
    }

    large = large_catalogue()
    mf = MatrixFactorization(iterations=5)
    large_cut = int(0.98 * len(large))
    large_result = speed(mf, large.take(slice(0, large_cut)), large.take(slice(large_cut, None)))
    results = {
        "protocols": {
            "speed": "fit on the first 90 % of ML-100K by time; learn on the rest",
            "temporal_hr_at_10_next_20": "train on the first 80 % by time; HR@10 on each "
            "known user's next 20 events; seen items excluded",
            "random_precision_at_10": "seeded random 20 % of rows held out; precision@10",
        },
        "ml100k": ml100k,
        "ml100k_quality_references": quality_references,
        "mf_100k_users_100k_items": {
            "events": len(large),
            "params": mf.get_params(),
            **large_result,
        },
        "targets": {
            "mf_learn_events_per_second_batch_1000": 50_000,
            "mf_recommend_ms_1_user_100k_items": 2.0,
        },
    }
    results["meets_targets"] = {
        "mf_learn_ml100k": ml100k["MatrixFactorization"]["learn_events_per_second_batch_1000"]
        >= 50_000,
        "mf_learn_100k": large_result["learn_events_per_second_batch_1000"] >= 50_000,
        "mf_recommend_1_user_100k": large_result["recommend_ms_1_user_median"] <= 2.0,
    }
    report("models", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
