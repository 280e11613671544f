"""The headline benchmark: protocol P1 (prequential) on ML-100K, ML latest-small and the
YOOCHOOSE click stream.

- ``auto``, the online ensemble (issue #15), learning naively per row, and each of its
  candidates alone per row (naive and incremental learning): popularity, the session-aware
  item-kNN, sequential rules, the session-aware MF and the classic MF; and the classic item-kNN
  and session-kNN (neighbour users).
- Matrix factorisation with the session-aware fold-in (``session-mf``) under every strategy
  (frozen, retrain@10, retrain@1, incremental with replay and pull per block and per row, naive
  incremental per block and per row).
- Three external peers through the very same harness, each with the tuning budget our models
  get (``bench/tune_peers.py``: at most 12 configurations on a 100-block run on ML-100K, then
  frozen for every set, ``peers.TUNED``): the ``implicit`` library's ALS (retrain@1, and its own
  partial_fit path per block and per row), its item-item recommender over each user's history,
  and river's BiasedMF learning row by row.
- On ML-100K, the sequential transformer (issue #5) frozen, retrained every 10 blocks,
  fine-tuned per block and per row (with replay and distillation), and updating only its
  sequences per row (``--models transformer,transformer-seq``; CPU hours).

Targets: session-mf incremental@row NDCG@10 >= its retrain@1's with <= 1/10 of its update
seconds (issue #4); ``auto`` >= 1.05x its best candidate under the same strategy and never
below popularity, >= 1.3x the best tuned peer on the MovieLens sets and >= 1.2x decayed
popularity on YOOCHOOSE (issue #15).

Run: .venv/bin/pip install -e '.[bench]' && .venv/bin/python bench/p1.py [--data ml-100k]
     [--blocks 500] [--workers 2] [--models auto,pop,'itemknn(recency_decay=0.8)']
     [--strategies naive@row] [--tag NAME]
Writes bench/results/p1-<data>[-NAME].json (with the machine) and p1-<data>[-NAME]/p1.md, p1.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

from common import DATASETS, RESULTS, machine
from peers import TUNED, ImplicitALS, ImplicitItemKNN, RiverBiasedMF

from lifelong_rec.data import load
from lifelong_rec.evaluate import markdown_table, prequential, write_report
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import (
    Auto,
    ItemKNN,
    MatrixFactorization,
    Popularity,
    SequentialRules,
    SequentialTransformer,
    SessionKNN,
    parse_model,
    split_specs,
    with_catalog,
)
from lifelong_rec.models.auto import DEFAULT_CANDIDATES
from lifelong_rec.models.itemknn import SessionItemKNN
from lifelong_rec.models.mf import SessionMatrixFactorization

TRANSFORMER_EPOCHS = 20
# The transformer reads titles and genres (hashing text encoder). Its user state is the sequence
# itself: "transformer-seq" takes no gradient step after the warm-up (update_steps=0, naive@row:
# sequence updates only); "transformer" fine-tunes on every update, with replay and distillation
# from the previous snapshot under the incremental strategies.
TRANSFORMER = partial(SequentialTransformer, epochs=TRANSFORMER_EPOCHS)
DEEP = ("transformer", "transformer-seq")  # run only when named (CPU hours)
PER_ROW = ["naive@row", "incremental@row"]
CANDIDATES = DEFAULT_CANDIDATES  # auto's, each also run alone
PEERS = ("implicit-als", "implicit-itemknn", "river-biasedmf")
RUNS = {
    "auto": (Auto, ["naive@row"]),  # its replay reaches every candidate: CPU hours per row
    "pop": (Popularity, ["frozen", *PER_ROW]),
    "itemknn": (ItemKNN, ["incremental@block", *PER_ROW]),
    "session-itemknn": (SessionItemKNN, PER_ROW),
    "sequential-rules": (SequentialRules, PER_ROW),
    "session-knn": (SessionKNN, PER_ROW),  # not among auto's candidates: see the README
    "session-mf": (SessionMatrixFactorization, ["frozen", "retrain@10", "retrain@1",
                                                "incremental@block", "naive@block", *PER_ROW]),
    "mf": (MatrixFactorization, PER_ROW),
    "implicit-als": (partial(ImplicitALS, **TUNED["implicit-als"]),
                     ["retrain@1", "naive@block", "naive@row"]),
    "implicit-itemknn": (partial(ImplicitItemKNN, **TUNED["implicit-itemknn"]),
                         ["naive@block", "naive@row"]),
    "river-biasedmf": (partial(RiverBiasedMF, **TUNED["river-biasedmf"]), ["naive@row"]),
    "transformer": (TRANSFORMER, ["frozen", "retrain@10", "incremental@block", "incremental@row"]),
    "transformer-seq": (partial(TRANSFORMER, update_steps=0), ["naive@row"]),
}  # fmt: skip
# name -> (folder under the data sets, format, column mapping)
DATA = {
    "ml-100k": ("ml-100k", "movielens", None),
    "ml-latest-small": ("ml-latest-small", "movielens", None),
    "yoochoose-100k": ("yoochoose-100k/clicks.tsv", "csv", "user=SessionId,item=ItemId,time=Time"),
}


def targets(report) -> dict[str, object]:
    """The issues' targets, each with the numbers behind it."""
    out: dict[str, object] = {}
    row = report.result("session-mf", "incremental@row")
    retrain = report.result("session-mf", "retrain@1")
    if row and retrain:
        out["session-mf"] = {
            "ndcg_row_vs_retrain@1": row.ndcg / retrain.ndcg,
            "update_cpu_seconds_retrain@1_over_row": (
                retrain.update_cpu_seconds / row.update_cpu_seconds
            ),
        }
    peers = [r for r in report.results if r.model in PEERS]
    best_peer = max(peers, key=lambda r: r.ndcg) if peers else None
    popularity = [r for r in report.results if r.model == "pop"]
    best_pop = max(popularity, key=lambda r: r.ndcg) if popularity else None
    for strategy in PER_ROW:
        auto = report.result("auto", strategy)
        if auto is None:
            continue
        alone = [r for name in CANDIDATES if (r := report.result(name, strategy))]
        found: dict[str, object] = {"ndcg": auto.ndcg, "update_cpu": auto.update_cpu_seconds}
        if alone:
            best = max(alone, key=lambda r: r.ndcg)
            found["best_candidate"] = f"{best.model} {best.strategy}"
            found["vs_best_candidate"] = auto.ndcg / best.ndcg
            found["candidates_update_cpu"] = sum(r.update_cpu_seconds for r in alone)
        if best_pop:
            found["vs_best_popularity"] = auto.ndcg / best_pop.ndcg
        if best_peer:
            found["best_peer"] = f"{best_peer.model} {best_peer.strategy}"
            found["vs_best_peer"] = auto.ndcg / best_peer.ndcg
        out[f"auto {strategy}"] = found
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=[*DATA, "all"], default="all")
    parser.add_argument("--blocks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", default="",
                        help="names from RUNS or any model specs (run per row); default: all "
                        "but the transformer's")  # fmt: skip
    parser.add_argument("--strategies", default="", help="default: each model's (RUNS)")
    parser.add_argument("--tag", default="", help="results go to p1-<data>-<tag>.json")
    args = parser.parse_args()
    only = {spec.strip() for spec in args.strategies.split(",") if spec.strip()}
    for data_name in DATA if args.data == "all" else [args.data]:
        chosen = split_specs(args.models) or [name for name in RUNS if name not in DEEP]
        folder, format, mapping = DATA[data_name]
        source = DATASETS / folder
        if not source.exists():
            print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
            return 1
        data = load(source, format, mapping=mapping)
        events = data.events
        runs = {model: RUNS.get(model) or (parse_model(model)[1], PER_ROW) for model in chosen}
        strategies = {
            (model, spec): partial(parse_strategy, spec, with_catalog(runs[model][0], data.catalog))
            for model in chosen
            for spec in runs[model][1]
            if not only or spec in only
        }
        name = f"p1-{data_name}" + (f"-{args.tag}" if args.tag else "")
        started = time.perf_counter()
        # each strategy's result lands in the folder as it finishes: a rerun resumes
        report = prequential(events, strategies, blocks=args.blocks, workers=args.workers,
                             folder=RESULTS / name)  # fmt: skip
        seconds = time.perf_counter() - started
        write_report(report, RESULTS / name, title=f"P1 on {data_name}")
        payload = {
            "benchmark": name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "workers": args.workers,
            "seconds": round(seconds, 1),
            "targets": targets(report),
        } | report.to_dict()
        for result in payload["results"]:
            result.pop("per_block")  # the series are in p1-<data>/p1.json
        (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
        print(markdown_table(report))
        print(json.dumps(payload["targets"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
