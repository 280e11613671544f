"""New items reach their users (issue #15, part 4): the ``fresh`` wrapper against its inner model.

Protocol P1 (prequential, warm-up 50 %) on ML latest-small, every model learning with the naive
strategy (plain ``learn``) per block and/or per row. Each inner model (``pop``, ``session-mf``,
``ensemble``) runs alone and with the placement: inside ``fresh(inner=...)``, which ranks the
catalogue's never-seen items against the known ones by a calibrated chance
(src/lifelong_rec/models/fresh.py); for ``ensemble`` that is ``auto``, the default model, whose
placement is calibrated by the ensemble's own judging (src/lifelong_rec/models/auto.py). Every
model gets the catalogue (texts and release years) through ``with_catalog``.

Reported per run: NDCG@10 and HR@10 over all scored rows, HR@10 and NDCG@10 over the rows that
are the first interaction with their item (``new_items``), update and warm-up seconds; and the
expected HR@10 of a ranker that picks 10 of the catalogue's items at random. The target: the
wrapper's new-item HR@10 >= 5x random, with overall NDCG@10 at most 2 % below the inner model's.

Run: .venv/bin/python bench/newitems.py [--blocks 100] [--strategies naive@block]
     [--inners pop,session-mf,ensemble] [--workers 1] [--tag NAME]
Writes bench/results/newitems[-NAME].json (with the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

from common import DATASETS, RESULTS, machine

from lifelong_rec.data import load
from lifelong_rec.evaluate import prequential
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import parse_model, with_catalog

TARGET_FACTOR = 5.0  # new-item HR@10 over random
TARGET_DROP = 0.02  # most relative NDCG@10 loss on all rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--strategies", default="naive@block")
    parser.add_argument("--inners", default="pop,session-mf,ensemble")
    parser.add_argument("--fresh", default="", help="extra Fresh parameters, e.g. depth=50")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tag", default="", help="results go to newitems-<tag>.json")
    args = parser.parse_args()
    source = DATASETS / "ml-latest-small"
    if not source.is_dir():
        print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    data = load(source, "movielens")
    extra = f", {args.fresh}" if args.fresh else ""
    factories, inner_of = {}, {}
    for inner in args.inners.split(","):
        factories[inner] = parse_model(inner)[1]
        ensemble = inner.partition("(")[0].strip() == "ensemble"  # auto(...) takes its params
        spec = "auto" + inner[len("ensemble") :] if ensemble else f"fresh(inner={inner!r}{extra})"
        factories[spec] = parse_model(spec)[1]
        inner_of[spec] = inner
    strategies = {
        (name, strategy): partial(parse_strategy, strategy, with_catalog(factory, data.catalog))
        for name, factory in factories.items()
        for strategy in args.strategies.split(",")
    }
    started = time.perf_counter()
    report = prequential(data.events, strategies, blocks=args.blocks, workers=args.workers)
    seconds = time.perf_counter() - started
    random_hr = 10 / len(data.catalog)
    results = [
        {
            "model": result.model,
            "strategy": result.strategy,
            "ndcg": result.ndcg,
            "hr": result.hr,
            "new_items": result.new_items,
            "new_items_hr_over_random": result.new_items["hr"] / random_hr,
            "update_seconds": result.update_seconds,
            "update_cpu_seconds": result.update_cpu_seconds,
            "warmup_seconds": result.warmup_seconds,
        }
        for result in report.results
    ]
    verdicts = {}
    for result in report.results:
        if result.model not in inner_of:
            continue
        alone = report.result(inner_of[result.model], result.strategy)
        if alone is None:
            continue
        drop = 1.0 - result.ndcg / alone.ndcg
        factor = result.new_items["hr"] / random_hr
        verdicts[f"{result.model} {result.strategy}"] = {
            "new_items_hr_over_random": factor,
            "ndcg_drop_vs_inner": drop,
            "met": bool(factor >= TARGET_FACTOR and drop <= TARGET_DROP),
        }
    payload = {
        "benchmark": "newitems" + (f"-{args.tag}" if args.tag else ""),
        "protocol": "P1 (naive strategies), new_items = rows that are the first interaction "
        "with their item",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "seconds": round(seconds, 1),
        "params": report.params,
        "data": report.data | {"catalog_items": len(data.catalog)},
        "random_hr_at_10": random_hr,
        "target": {"new_items_hr_over_random": TARGET_FACTOR, "ndcg_drop_vs_inner": TARGET_DROP},
        "models": {name: repr(factory()) for name, factory in factories.items()},
        "results": results,
        "verdicts": verdicts,
    }
    text = json.dumps(payload, indent=2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{payload['benchmark']}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
