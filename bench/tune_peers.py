"""Tuning the external peers with one budget (issue #15), the budget our own models get.

Each peer gets a grid of at most 12 configurations, each run under protocol P1 with 100 blocks
on ML-100K, one strategy at a time (workers=1); the configuration with the best NDCG@10 is
chosen and frozen (``TUNED`` in bench/peers.py) for every data set.

- implicit's ALS and implicit's item-item recommender learn per block (``naive@block``).
- river's BiasedMF only learns one event at a time, so it runs ``naive@row``: about a minute a
  configuration on one core, which the 12-configuration budget affords.

Grids: ALS regularisation x alpha at 64 factors; item-item similarity x neighbours; river's
latent learning rate x factors.

Run: .venv/bin/python bench/tune_peers.py [--peers implicit-als,implicit-itemknn]
     [--blocks 100]
Writes bench/results/tune-peers.json (every configuration's metrics, the chosen ones, the
machine).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from functools import partial

from common import DATASETS, report
from peers import ImplicitALS, ImplicitItemKNN, RiverBiasedMF

from lifelong_rec.data import load
from lifelong_rec.evaluate import prequential
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import Recommender

MAX_CONFIGURATIONS = 12
DATA = "ml-100k"


def grid(**values: list[object]) -> list[dict[str, object]]:
    """Every combination of the values, as constructor arguments."""
    return [dict(zip(values, combination, strict=True))
            for combination in itertools.product(*values.values())]  # fmt: skip


# peer -> (model class, strategy, configurations)
GRIDS: dict[str, tuple[Callable[..., Recommender], str, list[dict[str, object]]]] = {
    "implicit-als": (
        ImplicitALS,
        "naive@block",
        grid(factors=[64], regularization=[0.01, 0.05, 0.2, 1.0], alpha=[1.0, 10.0, 40.0]),
    ),
    "implicit-itemknn": (
        ImplicitItemKNN,
        "naive@block",
        grid(similarity=["cosine", "bm25", "tfidf"], neighbours=[20, 50, 100, 200]),
    ),
    "river-biasedmf": (
        RiverBiasedMF,
        "naive@row",
        grid(factors=[10, 32, 64], latent_learning_rate=[0.01, 0.02, 0.05, 0.1]),
    ),
}
assert all(len(configurations) <= MAX_CONFIGURATIONS for _, _, configurations in GRIDS.values())


def label(peer: str, params: dict[str, object]) -> str:
    """``peer(name=value, ...)``: the configuration as a model spec."""
    return f"{peer}({', '.join(f'{name}={value!r}' for name, value in params.items())})"


def tune(events, peer: str, blocks: int) -> dict[str, object]:
    """Run every configuration of ``peer`` under P1; the results and the best by NDCG@10."""
    model_class, spec, configurations = GRIDS[peer]
    strategies = {
        (label(peer, params), spec): partial(parse_strategy, spec, partial(model_class, **params))
        for params in configurations
    }
    started = time.perf_counter()
    outcome = prequential(events, strategies, blocks=blocks, workers=1, progress=False)
    seconds = time.perf_counter() - started
    rows = [
        {
            "params": params,
            "ndcg": result.ndcg,
            "hr": result.hr,
            "update_seconds": round(result.update_seconds, 2),
            "update_cpu_seconds": round(result.update_cpu_seconds, 2),
            "warmup_seconds": round(result.warmup_seconds, 2),
        }
        for params, result in zip(configurations, outcome.results, strict=True)
    ]
    best = max(rows, key=lambda row: row["ndcg"])
    return {
        "strategy": spec,
        "configurations": len(rows),
        "seconds": round(seconds, 1),
        "results": rows,
        "chosen": best["params"],
        "chosen_ndcg": best["ndcg"],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", default=",".join(GRIDS), help="default: every peer")
    parser.add_argument("--blocks", type=int, default=100)
    args = parser.parse_args()
    peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = sorted(set(peers) - set(GRIDS))
    if unknown:
        print(f"unknown peers {unknown}: use {', '.join(GRIDS)}", file=sys.stderr)
        return 1
    source = DATASETS / DATA
    if not source.is_dir():
        print(f"{source} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    events = load(source, "movielens").events
    tuned = {}
    for peer in peers:
        tuned[peer] = tune(events, peer, args.blocks)
        print(f"{peer}: {tuned[peer]['chosen']} NDCG@10 {tuned[peer]['chosen_ndcg']:.4f} "
              f"({tuned[peer]['seconds']} s)", file=sys.stderr)  # fmt: skip
    report(
        "tune-peers",
        {
            "protocol": "P1",
            "data": DATA,
            "params": {"warmup": 0.5, "blocks": args.blocks, "k": 10, "workers": 1},
            "selection": "best NDCG@10 per peer",
            "chosen": {peer: result["chosen"] for peer, result in tuned.items()},
            "peers": tuned,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
