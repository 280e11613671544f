"""Cold-start items: how well the first interaction with a never-seen item is predicted.

Protocol P1 (prequential, 500 blocks, warm-up 50 %) on ML latest-small, every model learning
incrementally per block (``incremental@block``). The measure is HR@10 and NDCG@10 on the scored
rows that are the first interaction anyone has with their item: at that moment no model has a
single interaction with the item, so a collaborative model cannot rank it at all (it does not
know the item), while the transformer knows it from the catalogue and represents it by its text
alone. Compared: the transformer reading titles and genres through the hashing encoder (and,
with ``--minilm``, through all-MiniLM-L6-v2), the same transformer with ids only, and the
collaborative models. For scale, a ranker that picks 10 of the known items at random has an
expected HR@10 of 10 / (items it could rank), also reported.

Run: .venv/bin/python bench/coldstart.py [--data ml-latest-small] [--blocks 500] [--minilm]
     [--models transformer-text] [--id-dropout 0.1] [--tag NAME]
Writes bench/results/coldstart-<data>[-NAME].json (with the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

from common import DATASETS, RESULTS, machine

from lifelong_rec.data import load
from lifelong_rec.evaluate import markdown_table, prequential
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import MatrixFactorization, SequentialTransformer, with_catalog

STRATEGY = "incremental@block"
DATA = {"ml-100k": "ml-100k", "ml-latest-small": "ml-latest-small"}
# The configuration of the P1 benchmark (bench/p1.py).
TRANSFORMER = partial(SequentialTransformer, epochs=20)
MODELS = {
    "transformer-text": TRANSFORMER,
    "transformer-id": partial(TRANSFORMER, text_encoder=None),
    "mf": partial(MatrixFactorization, recency_half_life_seconds=60.0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", choices=list(DATA), default="ml-latest-small")
    parser.add_argument("--blocks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minilm", action="store_true", help="also the MiniLM text encoder")
    parser.add_argument("--models", default=",".join(MODELS), help="a subset of the models")
    parser.add_argument("--id-dropout", type=float, default=0.1, help="the text models' share")
    parser.add_argument("--tag", default="", help="results go to coldstart-<data>-<tag>.json")
    args = parser.parse_args()
    source = DATASETS / DATA[args.data]
    if not source.is_dir():
        print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    data = load(source, "movielens")
    models = {name: MODELS[name] for name in args.models.split(",")}
    if args.minilm:
        models["transformer-minilm"] = partial(TRANSFORMER, text_encoder="minilm")
    for name in [name for name in models if name not in ("transformer-id", "mf")]:
        models[name] = partial(models[name], id_dropout=args.id_dropout)
    strategies = {
        (name, STRATEGY): partial(parse_strategy, STRATEGY, with_catalog(factory, data.catalog))
        for name, factory in models.items()
    }
    name = f"coldstart-{args.data}" + (f"-{args.tag}" if args.tag else "")
    started = time.perf_counter()
    report = prequential(data.events, strategies, blocks=args.blocks, workers=args.workers)
    seconds = time.perf_counter() - started
    results = {
        result.model: {
            "new_items": result.new_items,
            "all_rows": {"hr": result.hr, "ndcg": result.ndcg},
            "update_seconds": result.update_seconds,
            "update_cpu_seconds": result.update_cpu_seconds,
            "warmup_seconds": result.warmup_seconds,
        }
        for result in report.results
    }
    payload = {
        "benchmark": name,
        "protocol": "P1 (rows that are the first interaction with their item)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "seconds": round(seconds, 1),
        "strategy": STRATEGY,
        "params": report.params,
        "data": report.data | {"catalog_items": len(data.catalog)},
        "random_hr_at_10": 10 / len(data.catalog),
        "models": {name: repr(factory()) for name, factory in models.items()},
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(markdown_table(report))
    print(json.dumps({name: r["new_items"] for name, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
