"""The sampled softmax's id-table optimiser (issue #18): lazy Adam against dense Adam, P2
quality per epoch over several seeds.

``transformer(loss="sampled")`` (in-batch and 256 uniform negatives, log-Q) trains epoch by
epoch on the training rows of the P2 split (chronological leave-one-out, full ranking) with
``item_optimizer="lazy"`` (LazyAdam: the rows a step touches) and ``"dense"`` (Adam over the
whole table); after each epoch a copy learns the validation rows and ranks the test items, as
``bench/train_scale.py --part quality`` does. One thread per process.

Run: .venv/bin/python bench/item_optimizer.py [--data ml-latest-small] [--epochs 8]
     [--seeds 0,1,2] [--item-optimizers lazy,dense]
Writes bench/results/item-optimizer-<data>.json (with the machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import train_scale
from common import DATASETS, report

from lifelong_rec.data import load
from lifelong_rec.evaluate.leave_one_out import _targets, leave_one_out_split
from lifelong_rec.models import with_catalog


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=list(train_scale.DATA), default="ml-latest-small")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--item-optimizers", default="lazy,dense")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load(DATASETS / train_scale.DATA[args.data], "movielens")
    split = leave_one_out_split(data.events)
    targets = _targets(split, data.events)
    runs = []
    for kind in args.item_optimizers.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            spec = (f"transformer(epochs={args.epochs}, loss='sampled', device='cpu', "
                    f"negatives=256, item_optimizer={kind!r}, seed={seed})")  # fmt: skip
            model = with_catalog(lambda spec=spec: train_scale._make(spec), data.catalog)()
            windows, _ = model.start_fit(split.train)
            curve, trained = [], 0.0
            for epoch in range(args.epochs):
                started = time.perf_counter()
                order = np.random.default_rng([model.seed, epoch]).permutation(len(windows))
                for start in range(0, len(order), model.batch_size):
                    model.train_step(windows[order[start : start + model.batch_size]])
                trained += time.perf_counter() - started
                curve.append(round(train_scale._p2(model, split, targets)[1], 4))
            runs.append({"item_optimizer": kind, "seed": seed, "ndcg@10_by_epoch": curve,
                         "train_seconds": round(trained, 1)})  # fmt: skip
            print(runs[-1], flush=True)
    final = {kind: [r["ndcg@10_by_epoch"][-1] for r in runs if r["item_optimizer"] == kind]
             for kind in args.item_optimizers.split(",")}  # fmt: skip
    report(f"item-optimizer-{args.data}", {
        "protocol": "P2 (chronological leave-one-out, full ranking)", "data": args.data,
        "epochs": args.epochs, "runs": runs,
        "final_ndcg@10": final, "final_mean": {k: round(float(np.mean(v)), 4)
                                               for k, v in final.items()},
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
