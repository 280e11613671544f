"""A writer process for the crash test: appends numbered batches, acknowledging each one.

Usage: python log_writer.py DB N_BATCHES

Batch b has ``batch_size(b)`` events, all of user ``w{b}``; it is appended with the key
``batch-{b}`` and acknowledged on stdout ("ACK b") only after ``append`` has returned. A writer
that is restarted appends every batch again from 0: the keys make that exactly-once.
"""

from __future__ import annotations

import sys

import numpy as np

from lifelong_rec.events import EventBatch
from lifelong_rec.store import EventLog


def batch_size(b: int) -> int:
    return 1 + (b * 7919) % 300


def batch(b: int) -> EventBatch:
    n = batch_size(b)
    return EventBatch.from_columns(
        user=np.full(n, f"w{b}"),
        item=np.char.add(f"b{b}-", np.arange(n).astype(str)),
        timestamp=1.7e9 + b + np.arange(n) * 1e-3,
        kind="click",
    )


def main(path: str, n_batches: int) -> None:
    with EventLog(path) as log:
        for b in range(n_batches):
            log.append(batch(b), key=f"batch-{b}", source="writer")
            print(f"ACK {b}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
