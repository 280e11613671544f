"""The Data page: the quarantine (rejected rows with their reason, source, line and raw row),
filtered, and the ingestion history (every append to the log)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from lifelong_rec.service.ui.charts import Series, line_chart

if TYPE_CHECKING:
    from lifelong_rec.store import EventLog
    from lifelong_rec.store.postgres import PostgresEventLog

__all__ = ["BATCH_ROWS", "PAGE_ROWS", "QUARANTINE_READ", "ingestion", "quarantine"]

#: the most quarantined rows read for one page (the oldest first, as the log returns them)
QUARANTINE_READ = 20_000
#: rows of the quarantine per page
PAGE_ROWS = 50
#: appends listed, the newest first
BATCH_ROWS = 30
#: bucket widths of the ingestion chart, in seconds: the smallest giving at most 60 buckets
_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3_600, 6 * 3_600, 86_400, 7 * 86_400, 30 * 86_400)


def quarantine(
    log: EventLog | PostgresEventLog, reason: str, source: str, text: str, page: int
) -> dict[str, object]:
    """One page of quarantined rows (newest first) of ``reason`` and ``source`` whose reason,
    field, detail or raw row contains ``text`` (any case); empty filters match all."""
    counts = log.rejected_counts()
    rejected = log.rejected(reason or None, limit=QUARANTINE_READ)
    match = np.ones(len(rejected), dtype=bool)
    if source:
        match &= rejected.source.astype(str) == source
    if text:
        needle = text.lower()
        found = np.zeros(len(rejected), dtype=bool)
        for column in (rejected.raw, rejected.detail, rejected.field, rejected.reason):
            found |= np.char.find(np.char.lower(column.astype(str)), needle) >= 0
        match &= found
    rows = np.flatnonzero(match)[::-1]
    pages = max(1, math.ceil(len(rows) / PAGE_ROWS))
    page = min(max(page, 1), pages)
    shown = rows[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
    return {
        "counts": counts,
        "total": sum(counts.values()),
        "read": len(rejected),
        "truncated": len(rejected) == QUARANTINE_READ,
        "sources": sorted(set(rejected.source.astype(str).tolist())),
        "matching": len(rows),
        "page": page,
        "pages": pages,
        "rows": [
            {
                "source": str(rejected.source[row]),
                "line": int(rejected.line[row]),
                "reason": str(rejected.reason[row]),
                "field": str(rejected.field[row]),
                "detail": str(rejected.detail[row]),
                "raw": str(rejected.raw[row]),
            }
            for row in shown.tolist()
        ],
    }


def ingestion(log: EventLog | PostgresEventLog) -> dict[str, object]:
    """Every append to the log: the newest :data:`BATCH_ROWS`, totals per source, and the
    events appended over time."""
    frame = log.batches()
    if not len(frame):
        return {
            "batches": [],
            "sources": [],
            "appends": 0,
            "chart": line_chart(
                [], label="events appended over time", empty="nothing was appended yet"
            ),
        }
    frame = frame.sort_values("id")
    sources = (
        frame.groupby("source", sort=False)
        .agg(appends=("id", "size"), events=("count", "sum"), last=("appended_at", "max"))
        .sort_values("last", ascending=False)
        .reset_index()
    )
    newest = frame.tail(BATCH_ROWS).iloc[::-1]
    newest = newest.astype(object).where(newest.notna(), None)  # a batch without a key: None
    at = frame["appended_at"].to_numpy(dtype=np.float64)
    counts = frame["count"].to_numpy(dtype=np.float64)
    span = float(at.max() - at.min())
    width = next((b for b in _BUCKETS if span / b <= 60), _BUCKETS[-1])
    starts = np.floor(at / width) * width
    edges = np.arange(starts.min(), starts.max() + width, width)
    per_bucket = np.bincount(
        ((starts - edges[0]) / width).astype(np.int64), weights=counts, minlength=len(edges)
    )
    return {
        "appends": len(frame),
        "batches": newest.to_dict("records"),
        "sources": sources.to_dict("records"),
        "bucket_seconds": width,
        "chart": line_chart(
            [Series(f"events per {_duration(width)}", edges.tolist(), per_bucket.tolist())],
            label="events appended over time",
        ),
    }


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}" if seconds != size else unit
    return f"{seconds} s"
