"""Crash safety: a writer killed with SIGKILL at random moments loses no acknowledged batch,
duplicates none, and never leaves part of a batch in the log."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from log_writer import batch_size

WRITER = Path(__file__).with_name("log_writer.py")
N_BATCHES = 400


def _run_writer(db: Path, kill_after_ack: int | None, rng: np.random.Generator) -> set[int]:
    """Run the writer; the batches it acknowledged.

    With ``kill_after_ack``, SIGKILL it a random few milliseconds after it acknowledged that
    batch: the kill then lands at a random point of a later append (or between two).
    """
    process = subprocess.Popen(
        [sys.executable, str(WRITER), str(db), str(N_BATCHES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: set[int] = set()
    if kill_after_ack is None:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        lines = out.splitlines()
    else:
        for line in process.stdout:
            acked.add(int(line.split()[1]))
            if kill_after_ack in acked:
                break
        time.sleep(float(rng.uniform(0, 0.01)))
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
        assert process.returncode == -signal.SIGKILL
        lines = out.split("\n")[:-1]  # a line cut by the kill has no newline yet
    return acked | {int(line.split()[1]) for line in lines if line.startswith("ACK ")}


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "events.db"
    rng = np.random.default_rng(7)
    acknowledged: set[int] = set()
    for kill_after in sorted(rng.choice(np.arange(10, N_BATCHES - 10), size=6, replace=False)):
        acked = _run_writer(db, int(kill_after), rng)
        assert kill_after in acked
        acknowledged |= acked
        _check_log(db, must_hold=acknowledged)
    assert _run_writer(db, None, rng) == set(range(N_BATCHES))
    _check_log(db, must_hold=set(range(N_BATCHES)))


def _check_log(db: Path, must_hold: set[int]) -> None:
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        batches = con.execute("SELECT key, id, first_offset, count FROM batches").fetchall()
        keys = [key for key, *_ in batches]
        assert len(keys) == len(set(keys)), "a batch was appended twice"
        in_log = {int(key.removeprefix("batch-")) for key in keys}
        assert must_hold <= in_log, f"acknowledged batches missing: {sorted(must_hold - in_log)}"
        for key, batch_id, first, count in batches:
            b = int(key.removeprefix("batch-"))
            rows = con.execute(
                "SELECT MIN(seq), MAX(seq), COUNT(*), COUNT(DISTINCT user) FROM events "
                "WHERE batch = ?",
                (batch_id,),
            ).fetchone()
            assert count == batch_size(b) and rows == (first, first + count - 1, count, 1), (
                f"batch {b} is partial or misplaced: {rows}"
            )
        (events, last) = con.execute("SELECT COUNT(*), MAX(seq) FROM events").fetchone()
        assert events == sum(count for *_, count in batches)
        assert last is None or last == events - 1, "offsets have gaps"
