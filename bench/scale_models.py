"""MF at catalogue scale (issue #17): learn throughput, memory with and without id admission
and expiry, and NDCG@10 on the recent window, on a synthetic stream of 10M users and 1M items.

The stream: ``--users`` users over ``--days`` days, most of them seen once (a visitor who
never comes back). A share ``--returning`` of them comes back, with 1 + Poisson(3) more events
spread over the days, and has a taste: one of 1,000 clusters of items, from which 60 % of
its events come (power-law popularity inside the cluster); the rest, and every one-off
visitor's event, follow the catalogue's power-law popularity. Events are learned in time
order in batches of ``--batch`` (a learner catching up on a log), by each configuration in a
process of its own:

- ``pop`` (decayed popularity, 7-day half-life): the reference every user without factors
  gets, and a floor for the others;
- ``mf``: every id gets factors at once and is kept forever;
- ``mf(admit_after=2, expire_after_days=7)``: an id gets factors at its second sighting, and
  ids idle for 7 days of stream time are dropped.

Reported per configuration: events learned per second, the model's own arrays
(``bounded.footprint``: ids, histories, factors, sketch) and the process's peak resident
memory, both at the end; the users and items it holds; what admission left out and expiry
freed; NDCG@10 on the recent window: the last ``--window`` share of the stream is held out and
each of its events by a returning user the model knows (``--queries`` of them, sampled) is
ranked against every item the user has not seen (test then train: the window is not learned).

Run: .venv/bin/python bench/scale_models.py [--users 10000000] [--items 1000000]
     [--batch 500000] [--tag TAG]
Writes bench/results/scale_models[-TAG].json (with the machine) and prints it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import numpy as np
from common import report

from lifelong_rec.events import EventBatch
from lifelong_rec.models import parse_model
from lifelong_rec.models.bounded import footprint

CONFIGURATIONS = ("pop", "mf", "mf(admit_after=2, expire_after_days=7)")
CLUSTERS = 1_000
TASTE_SHARE = 0.6


def make_stream(args: argparse.Namespace) -> EventBatch:
    rng = np.random.default_rng(args.seed)
    n_users, n_items = args.users, args.items
    returning = rng.random(n_users) < args.returning
    extra = np.where(returning, 1 + rng.poisson(3.0, n_users), 0)
    user = np.repeat(np.arange(n_users), 1 + extra)
    n = len(user)
    seconds = args.days * 86_400.0
    time_of = rng.uniform(0.0, seconds, n)
    # catalogue popularity: a power law over a random order of the items
    rank_item = rng.permutation(n_items)
    popular = rank_item[np.minimum(rng.zipf(1.2, n) - 1, n_items - 1)]
    # a returning user's taste: a cluster of items (item % CLUSTERS), power law inside it
    taste = rng.integers(0, CLUSTERS, n_users)[user]
    per_cluster = n_items // CLUSTERS
    in_cluster = np.minimum(rng.zipf(1.3, n) - 1, per_cluster - 1) * CLUSTERS + taste
    tasteful = returning[user] & (rng.random(n) < TASTE_SHARE)
    item = np.where(tasteful, in_cluster, popular)
    order = np.argsort(time_of, kind="stable")
    return EventBatch.from_columns(
        np.char.add("u", user[order].astype(str)),
        np.char.add("i", item[order].astype(str)),
        time_of[order],
    )


def run(
    spec: str,
    events: EventBatch,
    queries: np.ndarray,
    args: argparse.Namespace,
    out: multiprocessing.Queue,
) -> None:
    """Learn the stream but its window with ``spec``, then rank the window's ``queries``
    (rows): a user the model does not hold gets the fallback, as the service serves one."""
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = parse_model(spec)[1]()
    learned = int(len(events) * (1.0 - args.window))
    started = time.process_time()
    wall = time.perf_counter()
    for start in range(0, learned, args.batch):
        model.learn(events.take(slice(start, min(start + args.batch, learned))))
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    held = model.users_.lookup(events.user[queries]) >= 0
    gains = []
    for row in queries:  # one user per request, as the service ranks them
        listed = model.recommend([events.user[row]], 10).items[0]
        hit = np.flatnonzero(listed == events.item[row])
        gains.append(1.0 / np.log2(hit[0] + 2.0) if len(hit) else 0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "model": spec,
        "events_learned": learned,
        "learn_cpu_s": round(cpu, 1),
        "learn_wall_s": round(wall, 1),
        "events_per_cpu_s": round(learned / cpu),
        "users_held": len(model.users_),
        "items_held": len(model.items_),
        "model_mib": round(footprint(model) / 2**20, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_rss_growth_mib": round((peak - baseline) / 1024, 1),
        "bounded": dict(getattr(model, "memory_", {})),
        "queries_user_held": round(float(held.mean()), 4) if len(held) else None,
        "ndcg@10_recent": round(float(np.mean(gains)), 4) if gains else None,
    }
    out.put(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--returning", type=float, default=0.1)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=500_000)
    parser.add_argument("--window", type=float, default=0.01)
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    started = time.perf_counter()
    events = make_stream(args)
    made = time.perf_counter() - started
    print(f"{len(events):,} events made in {made:.0f} s", flush=True)
    # the queries: window events by users seen before the window, the same for every model
    learned = int(len(events) * (1.0 - args.window))
    before = np.unique(events.user[:learned])
    window = np.arange(learned, len(events))
    returning = window[np.isin(events.user[window], before)]
    rng = np.random.default_rng(args.seed)
    queries = np.sort(rng.choice(returning, min(args.queries, len(returning)), replace=False))
    context = multiprocessing.get_context("fork")  # the children read the stream, not a copy
    results = []
    for spec in CONFIGURATIONS:
        out = context.Queue()
        child = context.Process(target=run, args=(spec, events, queries, args, out))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"{spec}: the run failed (exit code {child.exitcode})")
        results.append(out.get(timeout=60))
        print(results[-1], flush=True)
    report("scale_models" + (f"-{args.tag}" if args.tag else ""), {
        "stream": {"users": args.users, "items": args.items, "events": len(events),
                   "returning_share": args.returning, "days": args.days,
                   "batch": args.batch, "window_share": args.window,
                   "window_events": len(window), "queries": len(queries)},
        "results": results,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
