"""Compressed tables (issue #17 part 3): what serving the factor models from float16 or int8
copies of their tables costs in quality, and what it saves in memory and scoring time.

For session-mf and bpr at serve_precision fp32, fp16 and int8, on ML latest-small and the
YOOCHOOSE click stream:

- P1 (500 blocks, the same harness as ``bench/p1.py``): NDCG@10 and HR@10 of each model's
  per-row strategy (session-mf ``incremental@row``, bpr ``naive@row`` by default: see
  ``STRATEGIES``), with update CPU seconds;
- the served tables' bytes (``served_bytes``: what scoring reads) and every array's
  (``model_bytes``) of the model fitted on the whole data set;
- scoring latency: ``score_all`` of one user (p50 and p90 over ``--requests`` warm users, one
  at a time) and of a batch of 256 users (p50 per user).

With ``--synthetic 100000,1000000`` instead: the scoring latency alone, on random 64-factor
item tables of those sizes (one user's query, as a request; a batch of 256), float32 BLAS
against the compressed tables (bench/results/quantise-synthetic.json).

Run: .venv/bin/python bench/quantise.py [--data ml-latest-small,yoochoose-100k] [--blocks 500]
     [--workers 1] [--requests 300] [--tag NAME] [--synthetic SIZES]
Writes bench/results/quantise[-NAME].json (with the machine) and the P1 reports under
bench/results/p1-<data>-quant[-NAME]/ (a rerun takes the strategies already finished there).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import numpy as np
from common import DATASETS, RESULTS, report

from lifelong_rec.data import load
from lifelong_rec.evaluate import markdown_table, prequential, write_report
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import parse_model
from lifelong_rec.models.bounded import footprint
from lifelong_rec.models.quantise import CompressedTable

PRECISIONS = ("fp32", "fp16", "int8")
STRATEGIES = {"session-mf": "incremental@row", "bpr": "naive@row"}
DATA = {  # as bench/p1.py reads them
    "ml-latest-small": ("ml-latest-small", "movielens", None),
    "yoochoose-100k": ("yoochoose-100k/clicks.tsv", "csv", "user=SessionId,item=ItemId,time=Time"),
}
BATCH = 256


def spec(model: str, precision: str) -> str:
    return model if precision == "fp32" else f"{model}(serve_precision='{precision}')"


def latency(model, users: np.ndarray, requests: int) -> dict[str, float]:
    """Milliseconds of ``score_all``: one user at a time (p50, p90) and per user of a batch."""
    rng = np.random.default_rng(0)
    chosen = rng.choice(users, size=requests, replace=len(users) < requests)
    model.score_all(chosen[:5])  # compile and warm the caches
    single = []
    for user in chosen:
        started = time.perf_counter()
        model.score_all([user])
        single.append(time.perf_counter() - started)
    batch = []
    for _ in range(5):
        block = rng.choice(users, size=BATCH)
        started = time.perf_counter()
        model.score_all(block)
        batch.append((time.perf_counter() - started) / BATCH)
    return {
        "score_all_1_user_p50_ms": round(1e3 * float(np.percentile(single, 50)), 4),
        "score_all_1_user_p90_ms": round(1e3 * float(np.percentile(single, 90)), 4),
        f"score_all_batch_{BATCH}_per_user_p50_ms": round(1e3 * float(np.median(batch)), 4),
    }


def synthetic(sizes: list[int], repeats: int = 50) -> dict[str, object]:
    """Scoring milliseconds (p50) on random item tables of ``sizes`` rows, 64 factors."""
    rng = np.random.default_rng(0)
    out: dict[str, object] = {}
    for n in sizes:
        table = rng.normal(0.0, 0.3, size=(n, 64)).astype(np.float32)
        one, batch = (rng.normal(size=(m, 64)).astype(np.float32) for m in (1, BATCH))
        scorers = {"fp32": lambda q, t=table: q @ t.T}
        sizes_of = {"fp32": table.nbytes}
        for precision in PRECISIONS[1:]:
            compressed = CompressedTable(precision, 64)
            compressed.refresh(table)
            scorers[precision] = lambda q, c=compressed: c.scores(q, slice(None))
            sizes_of[precision] = compressed.nbytes
        row: dict[str, object] = {}
        for precision, score in scorers.items():
            score(one)  # compile and warm
            single = [_seconds(score, one) for _ in range(repeats)]
            many = [_seconds(score, batch) / BATCH for _ in range(max(3, repeats // 10))]
            row[precision] = {
                "table_bytes": sizes_of[precision],
                "1_user_p50_ms": round(1e3 * float(np.median(single)), 4),
                f"batch_{BATCH}_per_user_p50_ms": round(1e3 * float(np.median(many)), 4),
            }
        out[str(n)] = row
    return out


def _seconds(score, queries: np.ndarray) -> float:
    started = time.perf_counter()
    score(queries)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=",".join(DATA))
    parser.add_argument("--models", default=",".join(STRATEGIES))
    parser.add_argument("--blocks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tag", default="")
    parser.add_argument("--synthetic", default="", help="item counts: scoring latency only")
    args = parser.parse_args()
    suffix = f"-{args.tag}" if args.tag else ""
    if args.synthetic:
        sizes = [int(n) for n in args.synthetic.split(",")]
        threads = {"blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "factors": 64}
        report(f"quantise-synthetic{suffix}", threads | synthetic(sizes))
        return 0
    results: dict[str, object] = {
        "protocol": f"P1, {args.blocks} blocks, workers {args.workers}",
        "strategies": STRATEGIES,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    for data_name in args.data.split(","):
        folder, format, mapping = DATA[data_name]
        source = DATASETS / folder
        if not source.exists():
            print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
            return 1
        events = load(source, format, mapping=mapping).events
        chosen = [(m, p) for m in args.models.split(",") for p in PRECISIONS]
        strategies = {
            (spec(m, p), STRATEGIES[m]): partial(
                parse_strategy, STRATEGIES[m], parse_model(spec(m, p))[1]
            )
            for m, p in chosen
        }
        name = f"p1-{data_name}-quant{suffix}"
        started = time.perf_counter()
        p1 = prequential(events, strategies, blocks=args.blocks, workers=args.workers,
                         folder=RESULTS / name)  # fmt: skip
        write_report(p1, RESULTS / name, title=f"P1 on {data_name}: compressed tables")
        print(markdown_table(p1))
        rows: dict[str, object] = {"p1_seconds": round(time.perf_counter() - started, 1)}
        for model, precision in chosen:
            label = spec(model, precision)
            result = p1.result(label, STRATEGIES[model])
            assert result is not None
            fitted = parse_model(label)[1]().fit(events)
            warm = fitted.users_.ids(np.flatnonzero(fitted.history_size_ > 0))
            rows[label] = {
                "strategy": result.strategy,
                "ndcg_at_10": round(result.ndcg, 5),
                "hr_at_10": round(result.hr, 5),
                "update_cpu_seconds": round(result.update_cpu_seconds, 1),
                "served_bytes": fitted.served_bytes(),
                "model_bytes": footprint(fitted),
                "users": len(fitted.users_),
                "items": len(fitted.items_),
                **latency(fitted, warm, args.requests),
            }
        for model in args.models.split(","):
            base = rows[spec(model, "fp32")]
            assert isinstance(base, dict)
            for precision in PRECISIONS[1:]:
                row = rows[spec(model, precision)]
                assert isinstance(row, dict)
                row["ndcg_vs_fp32"] = round(row["ndcg_at_10"] / base["ndcg_at_10"], 4)
                row["served_bytes_vs_fp32"] = round(row["served_bytes"] / base["served_bytes"], 4)
        results[data_name] = rows
    report(f"quantise{suffix}", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
