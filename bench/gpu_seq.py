"""The sequential transformer on a GPU: time to quality on ML-100K and ML latest-small, in bf16,
beside RecBole's SASRec, in under 4 minutes.

Self-contained: it needs the project installed and the two data sets under
``$LIFELONG_REC_DATASETS`` (``ml-100k``, ``ml-latest-small``; a missing one is skipped). Each
data set is cut for protocol P2 (chronological leave-one-out, full ranking,
``min_interactions=3``); each variant trains from scratch epoch by epoch on the training rows
as ``fit`` does, and after each epoch of ``--eval-at`` a copy of the model learns the
validation rows and ranks the test items, as ``leave_one_out`` does. Variants: the full
softmax, and the sampled softmax (in-batch + ``--negatives`` uniform negatives, log-Q).

On CUDA the model runs its forward passes in bfloat16 autocast (logits and losses in float32)
and its optimiser fused, as ``SequentialTransformer`` does on any GPU; the JSON says which ran.

Reported per data set and variant: the curve (epoch, training seconds so far, evaluation
excluded; test HR@10 and NDCG@10), the best NDCG@10 and NDCG@10 per training minute at it,
the training seconds to reach each of ``--thresholds`` x the best full-softmax NDCG@10 (and
RecBole's figure on ML-100K), and seconds per epoch. The reference: RecBole's SASRec on
ML-100K, converged, NDCG@10 0.0914 at about 2.2 s per epoch on an H200 (the figure issue #18
gives; RecBole's own leave-one-out full ranking, so comparable, not identical, to P2). Each
variant stops early when its share of ``--budget-seconds`` is spent, so the whole run stays
under about 4 minutes.

Writes bench/results/gpu_seq-<device>.json (``gpu_seq-cuda.json`` on a GPU; a CPU run writes
``gpu_seq-cpu-smoke.json``: a check that the script runs, not a result).

Run on a GPU: python bench/gpu_seq.py              (device "auto": CUDA when present)
Smoke run on a CPU: python bench/gpu_seq.py --device cpu --epochs 2 --eval-at 1,2
    --budget-seconds 120
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

import numpy as np
import torch
from common import DATASETS, RESULTS, machine

from lifelong_rec.data import load
from lifelong_rec.evaluate.leave_one_out import _ranks, _targets, leave_one_out_split
from lifelong_rec.evaluate.metrics import hits, ndcg
from lifelong_rec.models import SequentialTransformer, with_catalog

DATA_SETS = ("ml-100k", "ml-latest-small")
RECBOLE_SASREC: dict[str, Any] = {
    "model": "RecBole SASRec",
    "data": "ml-100k",
    "ndcg@10": 0.0914,
    "seconds_per_epoch": 2.2,
    "device": "NVIDIA H200",
    "state": "converged",
    "source": "issue #18 (the figure it asks to compare with); RecBole's leave-one-out full "
    "ranking: comparable to P2, not identical",
}
VARIANTS = {
    "full softmax": {"loss": "softmax"},
    "sampled: in-batch + uniform, log-Q": {"loss": "sampled"},
}


def curve(
    data_name: str, label: str, params: dict[str, Any], args: argparse.Namespace,
    deadline: float,
) -> dict[str, Any]:  # fmt: skip
    """Train one variant epoch by epoch, evaluating at ``args.eval_at``; stop at the last
    epoch or, after an evaluation, once ``deadline`` (perf_counter) has passed."""
    data, split, targets = _prepared(data_name)
    made = with_catalog(
        lambda: SequentialTransformer(epochs=args.epochs, device=args.device, **params),
        data.catalog,
    )()  # fmt: skip
    assert isinstance(made, SequentialTransformer)
    model = made
    cuda = model._device.type == "cuda"
    windows, _ = model.start_fit(split.train)
    points, trained, epoch_seconds, stopped = [], 0.0, [], None
    for epoch in range(1, args.epochs + 1):
        _sync(cuda)
        started = time.perf_counter()
        order = np.random.default_rng([model.seed, epoch - 1]).permutation(len(windows))
        for start in range(0, len(order), model.batch_size):
            model.train_step(windows[order[start : start + model.batch_size]])
        _sync(cuda)
        epoch_seconds.append(time.perf_counter() - started)
        trained += epoch_seconds[-1]
        if epoch in args.eval_at or epoch == args.epochs:
            hr, gain = _p2(model, split, targets)
            points.append({"epoch": epoch, "train_seconds": round(trained, 2),
                           "hr@10": round(hr, 4), "ndcg@10": round(gain, 4)})  # fmt: skip
            print(data_name, label, points[-1], flush=True)
            if time.perf_counter() > deadline and epoch < args.epochs:
                stopped = f"its share of --budget-seconds was spent after epoch {epoch}"
                break
    best = max(points, key=lambda point: point["ndcg@10"])
    return {
        "variant": label,
        "model": repr(model),
        "precision": "bfloat16 autocast (logits and losses float32)" if cuda else "float32",
        "fused_optimizer": bool(model.optimizer_.defaults.get("fused")),
        "lazy_item_optimizer": model.item_optimizer_ is not None,
        "items": len(model.items_),
        "training_windows": len(windows),
        "curve": points,
        "best_epoch": best["epoch"],
        "best_ndcg@10": best["ndcg@10"],
        "ndcg@10_per_training_minute_at_best": round(
            best["ndcg@10"] / max(best["train_seconds"], 1e-9) * 60, 4
        ),
        "seconds_per_epoch_median": round(statistics.median(epoch_seconds), 3),
        "seconds_per_epoch_first": round(epoch_seconds[0], 3),  # CUDA start-up included
        "stopped_early": stopped,
    }


_PREPARED: dict[str, tuple[Any, Any, Any]] = {}


def _prepared(name: str) -> tuple[Any, Any, Any]:
    """The data set, its P2 split and targets, loaded once for every variant."""
    if name not in _PREPARED:
        data = load(DATASETS / name, "movielens")
        split = leave_one_out_split(data.events)
        _PREPARED[name] = (data, split, _targets(split, data.events))
    return _PREPARED[name]


def time_to(points: list[dict[str, Any]], level: float) -> float | None:
    """Training seconds at the first evaluation reaching NDCG@10 ``level`` (None: never)."""
    return next((p["train_seconds"] for p in points if p["ndcg@10"] >= level), None)


def _p2(model: SequentialTransformer, split, targets) -> tuple[float, float]:
    """Test HR@10 and NDCG@10 of a copy that learns the validation rows, as P2 does."""
    evaluated = copy.deepcopy(model)
    evaluated.learn(split.validation)
    ranks = _ranks(evaluated, targets, targets.test, also=targets.validation)
    return float(np.mean(hits(ranks, 10))), float(np.mean(ndcg(ranks, 10)))


def _sync(cuda: bool) -> None:
    if cuda:  # the steps are queued: time them when they have run
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=50, help="at most, per variant")
    parser.add_argument("--eval-at", default="1,2,5,10,20,30,40,50", help="epochs evaluated")
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--thresholds", default="0.8,0.9,1.0",
                        help="time to these shares of the best full-softmax NDCG@10")  # fmt: skip
    parser.add_argument("--budget-seconds", type=float, default=210.0,
                        help="training and evaluation, shared by the variants")  # fmt: skip
    args = parser.parse_args()
    args.eval_at = {int(epoch) for epoch in args.eval_at.split(",")}
    started = time.perf_counter()
    device = SequentialTransformer(device=args.device, text_encoder=None)._device
    cuda = device.type == "cuda"
    out: dict[str, Any] = {
        "benchmark": "gpu_seq-cuda" if cuda else f"gpu_seq-{device.type}-smoke",
        "protocol": "P2 (chronological leave-one-out, full ranking, min_interactions=3)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "reference": RECBOLE_SASREC,
        "settings": {
            "epochs": args.epochs,
            "eval_at": sorted(args.eval_at),
            "negatives": args.negatives,
            "budget_seconds": args.budget_seconds,
        },
    }
    runs = [(name, label, params) for name in DATA_SETS if (DATASETS / name).is_dir()
            for label, params in VARIANTS.items()]  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {}
    for index, (name, label, params) in enumerate(runs):
        if params["loss"] == "sampled":
            params = params | {"negatives": args.negatives}
        share = (args.budget_seconds - (time.perf_counter() - started)) / (len(runs) - index)
        results.setdefault(name, []).append(
            curve(name, label, params, args, time.perf_counter() + share)
        )
    thresholds = [float(t) for t in args.thresholds.split(",")]
    for name, variants in results.items():
        full = max(v["best_ndcg@10"] for v in variants if v["variant"] == "full softmax")
        levels = {f"{t:g} x best full softmax ({t * full:.4f})": t * full for t in thresholds}
        if name == RECBOLE_SASREC["data"]:
            levels[f"RecBole SASRec ({RECBOLE_SASREC['ndcg@10']})"] = RECBOLE_SASREC["ndcg@10"]
        to_quality = {v["variant"]: {level: time_to(v["curve"], value)
                                     for level, value in levels.items()}
                      for v in variants}  # fmt: skip
        out[name] = {"variants": variants, "train_seconds_to_ndcg@10": to_quality}
    out["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(out, indent=2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out['benchmark']}.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
