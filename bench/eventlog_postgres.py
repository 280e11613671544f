"""Event-log benchmark on PostgreSQL (issue #14): keyed appends in batches of 1,000, from one
writer and from four at once, and reading the log back.

Target: >= 20,000 events/s in batches of 1,000. The server is the one at ``--url`` (default
the local test server, trust authentication); everything goes into a schema of its own, which
is dropped afterwards. Client and server share this machine's cores.
Run: .venv/bin/python bench/eventlog_postgres.py [--url postgresql://...]
     (prints JSON, writes bench/results/eventlog-postgres.json)
"""

from __future__ import annotations

import argparse
import threading
import time

import psycopg
from common import report

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch
from lifelong_rec.store import open_log

BATCH = 1_000
SCHEMA = "lr_bench_eventlog"


def _append(url: str, chunks: list[EventBatch], writers: int) -> dict[str, float]:
    """Append ``chunks`` (keyed) from ``writers`` threads, each with its own log."""
    logs = [open_log(url, schema=SCHEMA) for _ in range(writers)]
    shares = [list(range(w, len(chunks), writers)) for w in range(writers)]

    def write(log: object, numbers: list[int]) -> None:
        for number in numbers:
            log.append(chunks[number], key=f"w{writers}-b{number}")  # type: ignore[attr-defined]

    threads = [threading.Thread(target=write, args=pair) for pair in zip(logs, shares, strict=True)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    events = sum(len(chunk) for chunk in chunks)
    for log in logs:
        log.close()
    return {
        "writers": writers,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_second": round(events / seconds),
        "ms_per_append": round(1000 * seconds / len(chunks) * writers, 2),
    }


def _drop(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    stream = synthetic_stream(n_users=5_000, n_items=2_000, n_events=args.events, seed=1).events
    chunks = [stream.take(slice(i, i + BATCH)) for i in range(0, len(stream), BATCH)]
    results: dict[str, object] = {"data": f"synthetic_stream(seed=1), {len(stream)} events"}
    try:
        for writers in (1, 4):
            _drop(args.url)
            results[f"append_{writers}_writer{'s' if writers > 1 else ''}"] = _append(
                args.url, chunks, writers
            )
        with open_log(args.url, schema=SCHEMA) as log:
            started = time.perf_counter()
            back = log.read()
            seconds = time.perf_counter() - started
        results["read_all"] = {
            "events": len(back),
            "seconds": round(seconds, 3),
            "events_per_second": round(len(back) / seconds),
        }
    finally:
        _drop(args.url)
    results["target_events_per_second"] = 20_000
    results["meets_target"] = all(
        entry["events_per_second"] >= 20_000  # type: ignore[index]
        for name, entry in results.items()
        if name.startswith("append_")
    )
    report("eventlog-postgres", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
