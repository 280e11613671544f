"""Protocol P2 (chronological leave-one-out, full ranking) on ML-100K or ML latest-small.

Per user, the last interaction is the test item and the one before it the validation item;
every model trains on the rest, ranks the validation items (reported apart, for tuning only),
learns them, then ranks the test items among all items, the user's training and validation
items excluded. HR@10, NDCG@10 and MRR@10 over users: the numbers RecBole's sequential
benchmarks publish, so they can be set side by side.

Run: .venv/bin/python bench/p2.py [--data ml-100k] [--models "pop,mf(factors=64)"]
     [--k 10] [--min-interactions 3]
Writes bench/results/p2-<data>.json (with the machine) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import DATASETS, RESULTS, machine

from lifelong_rec.data import load
from lifelong_rec.evaluate import leave_one_out
from lifelong_rec.models import parse_model, split_specs, with_catalog

# Model specs, as parse_model reads them. The transformer reads item titles and genres through
# the hashing text encoder (numpy only) or all-MiniLM-L6-v2, or ids only (text_encoder=None).
DEFAULT_MODELS = [
    "pop",
    "itemknn",
    "mf",
    "bpr",
    "transformer(epochs=20)",
    "transformer(epochs=20, text_encoder=None)",
    "transformer(epochs=20, text_encoder=minilm)",
    "transformer(epochs=30)",
]
DATA = {"ml-100k": "ml-100k", "ml-latest-small": "ml-latest-small"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", choices=list(DATA), default="ml-100k")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="model specs, comma-separated"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--min-interactions", type=int, default=3)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    try:
        models = dict(parse_model(spec) for spec in split_specs(args.models))
    except ValueError as error:
        parser.error(str(error))
    source = DATASETS / DATA[args.data]
    if not source.is_dir():
        print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    data = load(source, "movielens")
    events = data.events
    models = {label: with_catalog(factory, data.catalog) for label, factory in models.items()}
    started = time.perf_counter()
    report = leave_one_out(
        events,
        models,
        k=args.k,
        min_interactions=args.min_interactions,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - started
    payload = {
        "benchmark": f"p2-{args.data}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "seconds": round(seconds, 1),
    } | report.to_dict()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"p2-{args.data}.json").write_text(json.dumps(payload, indent=2, default=str))
    print(report.markdown_table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
