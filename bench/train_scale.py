"""The transformer's training at scale on this machine (issue #18): throughput of the
distributed trainer with 1 and 2 processes, and quality reached per minute of training with
the full and the sampled softmax (protocol P2).

Two parts (``--part``):

- ``throughput``: ML-100K written to a temporary SQLite log, trained by
  ``lifelong_rec.train.launch`` (torchrun's elastic launcher, gloo) for ``--epochs`` epochs
  with 2 user shards of ``batch_size`` windows, so that every step is the same 256 windows
  whether one process or two take it: 1 process with 2 threads, 1 process with 1 thread, and
  2 processes with 1 thread each. Reported per run: training targets (next-item predictions
  the loss saw) per second, the median over epochs after the first, and the wall-clock seconds
  of the whole launch (process start, reading the log, building the model included). For the
  full and the sampled softmax.
- ``quality``: P2 (chronological leave-one-out, full ranking, the split of
  ``lifelong_rec.evaluate.leave_one_out``) on ``--data``. Each variant trains epoch by epoch
  on the training rows as ``fit`` does (one process); after each epoch a copy of the model
  learns the validation rows and ranks the test items, as ``leave_one_out`` does. Reported:
  the training seconds so far (evaluation excluded) and the test HR@10, NDCG@10 after each
  epoch, and NDCG@10 per training minute at the best epoch. Variants: the full softmax; the
  sampled softmax with in-batch and ``--negatives`` uniform negatives and the log-Q
  correction; the same without the correction; uniform negatives only, without it (what
  ``loss="sampled"`` did before #18, but for drawing duplicates once).

- ``catalogue``: milliseconds per training step (128 windows of 50) against the catalogue's
  size (``--sizes``, default 10,000 to 1,000,000 items): the same number of events for every
  size (20,000 users x 20, ids only), drawn from a long tail over the catalogue (Zipf,
  exponent 1.1), and the rest of the catalogue known without any event, so most of a large
  catalogue is never interacted with. ``--losses``: the sampled softmax (in-batch + 256
  uniform negatives, log-Q), and the full one up to 50,000 items. With ``--baseline REV``
  the ``src`` of git revision REV is timed too, alternating with this code, each
  measurement in a process of its own: before and after a change, back to back.

Run: .venv/bin/python bench/train_scale.py --part throughput [--epochs 2] [--repeats 2]
     .venv/bin/python bench/train_scale.py --part quality --data ml-100k [--epochs 10]
         [--negatives 256] [--threads 1]
     .venv/bin/python bench/train_scale.py --part catalogue [--sizes 10000,100000,1000000]
         [--epochs 20 (timed steps)] [--losses sampled,softmax] [--baseline REV]
Writes bench/results/train-scale-<part>[-<data>].json (with the machine and load average).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import DATASETS, ROOT, report

from lifelong_rec.data import load
from lifelong_rec.evaluate.leave_one_out import _ranks, _targets, leave_one_out_split
from lifelong_rec.evaluate.metrics import hits, ndcg
from lifelong_rec.events import EventBatch
from lifelong_rec.models import SequentialTransformer, with_catalog
from lifelong_rec.store import EventLog
from lifelong_rec.train import TrainPlan, launch, newest_checkpoint

DATA = {"ml-100k": "ml-100k", "ml-latest-small": "ml-latest-small"}
# the transformer as P2 runs it (README): hashed titles and genres, default sizes
BASE = "transformer(epochs={epochs}, loss={loss!r}, device='cpu'{extra})"
VARIANTS = {
    "full softmax": {"loss": "softmax"},
    "sampled: in-batch + uniform, log-Q": {"loss": "sampled"},
    "sampled: in-batch + uniform, no log-Q": {"loss": "sampled", "log_q_correction": False},
    "sampled: uniform only, no log-Q": {
        "loss": "sampled", "in_batch_negatives": False, "log_q_correction": False,
    },
}  # fmt: skip
# the catalogue part's log: the same events for every catalogue size
CATALOGUE_USERS, CATALOGUE_EVENTS, CATALOGUE_ZIPF = 20_000, 20, 1.1


def throughput(epochs: int, repeats: int) -> dict[str, object]:
    data = load(DATASETS / "ml-100k", "movielens")
    runs = []
    configurations = [(loss, processes, threads) for loss in ("softmax", "sampled")
                      for processes, threads in ((1, 2), (1, 1), (2, 1))]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="train-scale-") as folder:
        db = Path(folder) / "events.db"
        with EventLog(db) as log:
            log.append(data.events)
            log.upsert_catalog(data.catalog)
        # interleaved, so that what else runs on the machine weighs on every configuration
        order = [(repeat, *configuration) for repeat in range(repeats)
                 for configuration in configurations]  # fmt: skip
        for repeat, loss, processes, threads in order:
            spec = BASE.format(epochs=epochs, loss=loss, extra="")
            checkpoints = Path(folder) / f"{loss}-{processes}x{threads}-{repeat}"
            plan = TrainPlan(model=spec, db=str(db), shards=2, threads=threads,
                             checkpoints=str(checkpoints), checkpoint_every=10_000)  # fmt: skip
            started = time.perf_counter()
            launch(plan, nproc=processes)
            wall = time.perf_counter() - started
            checkpoint = newest_checkpoint(checkpoints)
            assert checkpoint is not None
            log_ = checkpoint.training_log
            later = [epoch["targets_per_second"] for epoch in log_[1:]] or [
                log_[0]["targets_per_second"]
            ]
            runs.append({
                "repeat": repeat,
                "loss": loss,
                "processes": processes,
                "threads_per_process": threads,
                "targets_per_second": round(statistics.median(later)),
                "epoch_seconds": [round(epoch["seconds"], 2) for epoch in log_],
                "final_loss": round(log_[-1]["loss"], 4),
                "launch_wall_seconds": round(wall, 1),
            })  # fmt: skip
            print(runs[-1], file=sys.stderr, flush=True)
    summary = []
    for loss, processes, threads in configurations:
        each = [run["targets_per_second"] for run in runs
                if (run["loss"], run["processes"], run["threads_per_process"])
                == (loss, processes, threads)]  # fmt: skip
        summary.append({
            "loss": loss,
            "processes": processes,
            "threads_per_process": threads,
            "targets_per_second_median": statistics.median(each),
            "targets_per_second_each": each,
        })  # fmt: skip
    return {"part": "throughput", "data": "ml-100k", "epochs": epochs, "repeats": repeats,
            "shards": 2, "batch_per_shard": 128, "summary": summary, "runs": runs}  # fmt: skip


def quality(data_name: str, epochs: int, negatives: int, threads: int) -> dict[str, object]:
    torch.set_num_threads(threads)
    data = load(DATASETS / DATA[data_name], "movielens")
    split = leave_one_out_split(data.events)
    targets = _targets(split, data.events)
    results = []
    for label, params in VARIANTS.items():
        extra = "".join(f", {k}={v!r}" for k, v in params.items() if k != "loss")
        if params["loss"] == "sampled":
            extra += f", negatives={negatives}"
        spec = BASE.format(epochs=epochs, loss=params["loss"], extra=extra)
        model = with_catalog(lambda spec=spec: _make(spec), data.catalog)()
        assert isinstance(model, SequentialTransformer)
        windows, _ = model.start_fit(split.train)
        curve, trained = [], 0.0
        for epoch in range(epochs):
            started = time.perf_counter()
            order = np.random.default_rng([model.seed, epoch]).permutation(len(windows))
            for start in range(0, len(order), model.batch_size):
                model.train_step(windows[order[start : start + model.batch_size]])
            trained += time.perf_counter() - started
            hr, gain = _p2(model, split, targets)
            curve.append({"epoch": epoch + 1, "train_seconds": round(trained, 1),
                          "hr@10": round(hr, 4), "ndcg@10": round(gain, 4)})  # fmt: skip
            print(label, curve[-1], file=sys.stderr, flush=True)
        best = max(curve, key=lambda point: point["ndcg@10"])
        results.append({
            "variant": label,
            "model": spec,
            "curve": curve,
            "best_epoch": best["epoch"],
            "best_ndcg@10": best["ndcg@10"],
            "ndcg@10_per_training_minute_at_best": round(
                best["ndcg@10"] / (best["train_seconds"] / 60), 4
            ),
            "seconds_per_epoch": round(trained / epochs, 2),
        })  # fmt: skip
    return {"part": "quality", "protocol": "P2 (chronological leave-one-out, full ranking, "
            "min_interactions=3)", "data": data_name, "epochs": epochs,
            "negatives": negatives, "torch_threads": torch.get_num_threads(),
            "results": results}  # fmt: skip


def catalogue(
    sizes: list[int], steps: int, threads: int, losses: list[str], baseline: str | None
) -> dict[str, object]:
    """Milliseconds per training step against the catalogue's size, the same synthetic log
    for every size; with ``baseline`` (a git revision) that revision's ``src`` is timed too,
    one size after the other, alternating with this code, so both meet the same load."""
    codes = {"this code": ROOT / "src"}
    with tempfile.TemporaryDirectory(prefix="train-scale-baseline-") as folder:
        if baseline is not None:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", baseline, "src"],
                                     check=True, capture_output=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
            codes = {f"baseline {baseline}": Path(folder) / "src", **codes}
        runs = []
        for size in sizes:
            for loss in losses:
                if loss == "softmax" and size > 50_000:  # the logits: 6,400 x items floats
                    runs.append({"catalogue": size, "loss": loss, "step_ms_median": None,
                                 "skipped": "the full logits would take over 1 GiB"})  # fmt: skip
                    continue
                for code, source in codes.items():
                    child = subprocess.run(
                        [sys.executable, __file__, "--part", "catalogue-step",
                         "--sizes", str(size), "--loss", loss, "--epochs", str(steps),
                         "--threads", str(threads)],
                        check=True, capture_output=True, text=True,
                        env=os.environ | {"PYTHONPATH": str(source)},
                    )  # fmt: skip
                    runs.append({"code": code, **json.loads(child.stdout)})
                    print(runs[-1], file=sys.stderr, flush=True)
    return {"part": "catalogue", "users": CATALOGUE_USERS,
            "events_per_user": CATALOGUE_EVENTS, "zipf_exponent": CATALOGUE_ZIPF,
            "steps": steps, "batch_size": 128, "max_len": 50, "negatives": 256,
            "torch_threads": threads, "baseline": baseline, "runs": runs}  # fmt: skip


def catalogue_step(size: int, loss: str, steps: int, threads: int) -> dict[str, object]:
    """One measurement of :func:`catalogue`, in a process of its own (``PYTHONPATH`` picks
    the code): the log, a model of ``size`` items, the median of ``steps`` timed steps."""
    import lifelong_rec

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n_events = CATALOGUE_USERS * CATALOGUE_EVENTS
    users = np.repeat(np.arange(CATALOGUE_USERS), CATALOGUE_EVENTS).astype(str)
    times = np.tile(np.arange(CATALOGUE_EVENTS, dtype=np.float64), CATALOGUE_USERS) + 1.7e9
    # a long tail: item k (in a random order) drawn with probability proportional to
    # 1 / (k + 1)^CATALOGUE_ZIPF, so most of a large catalogue is never drawn
    weights = 1.0 / np.arange(1, size + 1) ** CATALOGUE_ZIPF
    ranked = rng.permutation(size)
    items = ranked[rng.choice(size, n_events, p=weights / weights.sum())].astype(str)
    events = EventBatch.from_columns(users, items, times)
    model = _make(BASE.format(epochs=1, loss=loss, extra=", text_encoder=None"))
    windows, _ = model.start_fit(events)
    interacted = len(model.items_)
    # the rest of the catalogue, known without any event (as add_items makes catalogue
    # items known; id-only models have no public way to, hence the private call)
    model._admit(np.arange(size).astype(str))
    batches = [windows[rng.integers(0, len(windows), model.batch_size)] for _ in range(steps + 2)]
    for batch in batches[:2]:  # warm-up
        model.train_step(batch)
    seconds = []
    for batch in batches[2:]:
        started = time.perf_counter()
        model.train_step(batch)
        seconds.append(time.perf_counter() - started)
    return {"catalogue": len(model.items_), "interacted": interacted, "loss": loss,
            "step_ms_median": round(1000 * statistics.median(seconds), 1),
            "step_ms_each": [round(1000 * s, 1) for s in seconds],
            "lifelong_rec": str(Path(lifelong_rec.__file__).parent)}  # fmt: skip


def _make(spec: str) -> SequentialTransformer:
    from lifelong_rec.models import parse_model

    model = parse_model(spec)[1]()
    assert isinstance(model, SequentialTransformer)
    return model


def _p2(model: SequentialTransformer, split, targets) -> tuple[float, float]:
    """Test HR@10 and NDCG@10 of a copy that learns the validation rows, as P2 does."""
    evaluated = copy.deepcopy(model)
    evaluated.learn(split.validation)
    ranks = _ranks(evaluated, targets, targets.test, also=targets.validation)
    return float(np.mean(hits(ranks, 10))), float(np.mean(ndcg(ranks, 10)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--part", choices=("throughput", "quality", "catalogue", "catalogue-step"), required=True
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="catalogue sizes")
    parser.add_argument("--losses", default="sampled", help="catalogue: sampled, softmax")
    parser.add_argument("--loss", default="sampled", help=argparse.SUPPRESS)  # catalogue-step
    parser.add_argument("--baseline", default=None, help="catalogue: a git revision to time too")
    parser.add_argument("--data", choices=list(DATA), default="ml-100k")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="throughput: runs of each")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="quality: PyTorch threads (default 1: with another job on this 2-core machine "
        "one thread trained 2.8x faster than two; see the throughput part)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.part == "catalogue-step":  # one measurement of the catalogue part, as JSON
        result = catalogue_step(int(args.sizes), args.loss, args.epochs or 20, args.threads)
        print(json.dumps(result))
        return 0
    if not (DATASETS / DATA[args.data]).is_dir():
        print(f"{DATASETS / DATA[args.data]} not found; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    started = time.perf_counter()
    if args.part == "throughput":
        results = throughput(args.epochs or 2, args.repeats)
        name = "train-scale-throughput"
    elif args.part == "catalogue":
        sizes = [int(size) for size in args.sizes.split(",")]
        losses = args.losses.split(",")
        results = catalogue(sizes, args.epochs or 20, args.threads, losses, args.baseline)
        name = "train-scale-catalogue"
    else:
        results = quality(args.data, args.epochs or 10, args.negatives, args.threads)
        name = f"train-scale-quality-{args.data}"
    results |= {"seconds": round(time.perf_counter() - started, 1),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    report(name, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
