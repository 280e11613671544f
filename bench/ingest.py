"""Ingest benchmark: read, validate and clean ML-100K; then the same into a fresh event log.

Target (issue #2): read + clean under 1 s on the 2-core development machine.
Run: .venv/bin/python bench/ingest.py   (prints JSON, writes bench/results/ingest.json)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import DATASETS, report, timed

from lifelong_rec.data import load
from lifelong_rec.store import EventLog

REPEATS = 5


def main() -> int:
    source = DATASETS / "ml-100k"
    if not (source / "u.data").is_file():
        print(f"ML-100K not found at {source}; set LIFELONG_REC_DATASETS", file=sys.stderr)
        return 1
    data = load(source, "movielens")
    clean_seconds, clean_runs = timed(lambda: load(source, "movielens"), REPEATS)

    def load_and_append() -> None:
        with tempfile.TemporaryDirectory() as folder:
            with EventLog(Path(folder) / "events.db") as log:
                dataset = load(source, "movielens")
                log.append(dataset.events)
                log.upsert_catalog(dataset.catalog)
                log.quarantine(dataset.rejected)

    log_seconds, log_runs = timed(load_and_append, REPEATS)
    report(
        "ingest",
        {
            "data": "ml-100k",
            "events": len(data.events),
            "rejected": data.report.rejected_total,
            "catalog_items": len(data.catalog),
            "repeats": REPEATS,
            "read_and_clean_seconds": round(clean_seconds, 4),
            "read_and_clean_runs": [round(s, 4) for s in clean_runs],
            "read_clean_and_append_seconds": round(log_seconds, 4),
            "read_clean_and_append_runs": [round(s, 4) for s in log_runs],
            "events_per_second_read_and_clean": round(len(data.events) / clean_seconds),
            "target_read_and_clean_seconds": 1.0,
            "meets_target": clean_seconds < 1.0,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
