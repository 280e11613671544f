"""The sequential transformer on a GPU: training throughput and P2 quality, in under 4 minutes.

Self-contained: it needs the project installed and, for its first part, ML-100K (skipped when
absent). Two parts, each trained from scratch and evaluated with protocol P2 (chronological
leave-one-out, full ranking):

1. ML-100K (943 users, 1,682 items): full softmax, titles and genres through the hashing text
   encoder, ``--epochs`` epochs.
2. A larger synthetic catalogue (``--items`` items, ``--users`` users, about ``--events``
   events from the drifting synthetic shop): sampled softmax with ``--negatives`` negatives.

Printed and written to bench/results/gpu_seq-<device type>.json: per part, the training
seconds, the median epoch seconds, training targets per second (next-item predictions the
loss saw, per second), the final training loss, and HR@10, NDCG@10 and MRR@10.

Run on a GPU: python bench/gpu_seq.py            (device "auto": CUDA when present)
Smoke run on a CPU: python bench/gpu_seq.py --device cpu --epochs 2 --items 5000 --users 2000
    --events 100000 --synthetic-epochs 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch
from common import DATASETS, RESULTS, machine

from lifelong_rec.data import load, synthetic_stream
from lifelong_rec.evaluate import leave_one_out
from lifelong_rec.models import SequentialTransformer, with_catalog


def part(name: str, events, catalog, factory) -> dict[str, object]:
    """Train and evaluate one configuration; the model is kept to read its training log."""
    made: list[SequentialTransformer] = []

    def make() -> SequentialTransformer:
        made.append(with_catalog(factory, catalog)())
        return made[-1]

    started = time.perf_counter()
    report = leave_one_out(events, {name: make})
    result = report.results[0]
    log = made[0].training_log_
    return {
        "model": repr(made[0]),
        "data": report.data,
        "hr@10": result.hr,
        "ndcg@10": result.ndcg,
        "mrr@10": result.mrr,
        "train_seconds": result.train_seconds,
        "epoch_seconds_median": statistics.median(e["seconds"] for e in log),
        "epoch_seconds_first": log[0]["seconds"],
        "targets_per_second": statistics.median(e["targets_per_second"] for e in log),
        "final_loss": log[-1]["loss"],
        "seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=30_000)
    parser.add_argument("--events", type=int, default=1_500_000)
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--synthetic-epochs", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    device = SequentialTransformer(device=args.device, text_encoder=None)._device
    out: dict[str, object] = {
        "benchmark": f"gpu_seq-{device.type}",
        "protocol": "P2",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    source = DATASETS / "ml-100k"
    if source.is_dir():
        data = load(source, "movielens")
        factory = partial(SequentialTransformer, epochs=args.epochs, device=args.device)
        out["ml-100k"] = part("transformer", data.events, data.catalog, factory)
        print(json.dumps({"ml-100k": out["ml-100k"]}, indent=2), flush=True)
    shop = synthetic_stream(n_users=args.users, n_items=args.items, n_events=args.events, seed=0)
    factory = partial(SequentialTransformer, epochs=args.synthetic_epochs, loss="sampled",
                      negatives=args.negatives, batch_size=256, device=args.device)  # fmt: skip
    out["synthetic"] = part("transformer", shop.events, shop.catalog, factory)
    out["synthetic"]["generator"] = {"users": args.users, "items": args.items,
                                     "events": args.events, "seed": 0}  # fmt: skip
    out["seconds"] = time.perf_counter() - started
    text = json.dumps(out, indent=2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out['benchmark']}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
