"""Event-log benchmark: durable appends in batches of 1,000, single-event appends, reads.

Targets (issue #2): batches of 1,000 at >= 100,000 events/s with synchronous=FULL (the
default: every returned append survives power loss); single-event appends: the rate reported.
NORMAL (survives a killed process, not power loss) is measured for comparison.
Run: .venv/bin/python bench/eventlog.py   (prints JSON, writes bench/results/eventlog.json)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import report

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import EventBatch
from lifelong_rec.store import EventLog

BATCH = 1_000
N_BATCHED = 200_000
N_SINGLE = 2_000


def _append_rate(events: EventBatch, batch: int, synchronous: str) -> dict[str, float]:
    chunks = [events.take(slice(i, i + batch)) for i in range(0, len(events), batch)]
    with tempfile.TemporaryDirectory() as folder:
        with EventLog(Path(folder) / "events.db", synchronous=synchronous) as log:
            started = time.perf_counter()
            for chunk in chunks:
                log.append(chunk)
            seconds = time.perf_counter() - started
            read_started = time.perf_counter()
            back = log.read()
            read_seconds = time.perf_counter() - read_started
    assert len(back) == len(events)
    return {
        "events": len(events),
        "appends": len(chunks),
        "seconds": round(seconds, 4),
        "events_per_second": round(len(events) / seconds),
        "appends_per_second": round(len(chunks) / seconds, 1),
        "ms_per_append": round(1000 * seconds / len(chunks), 3),
        "read_all_seconds": round(read_seconds, 4),
        "read_events_per_second": round(len(events) / read_seconds),
    }


def main() -> int:
    stream = synthetic_stream(n_users=5_000, n_items=2_000, n_events=N_BATCHED, seed=0).events
    stream = stream.take(slice(0, N_BATCHED))
    results = {
        "data": f"synthetic_stream(n_users=5000, n_items=2000, seed=0), {len(stream)} events",
        "batched_full": _append_rate(stream, BATCH, "FULL"),
        "batched_normal": _append_rate(stream, BATCH, "NORMAL"),
        "single_full": _append_rate(stream.take(slice(0, N_SINGLE)), 1, "FULL"),
        "single_normal": _append_rate(stream.take(slice(0, N_SINGLE)), 1, "NORMAL"),
        "target_batched_events_per_second": 100_000,
    }
    results["meets_target"] = results["batched_full"]["events_per_second"] >= 100_000
    report("eventlog", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
