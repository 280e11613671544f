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


def _run_writer(db: Path, kill_after: float | None) -> set[int]:
    """Run the writer (killing it after ``kill_after`` seconds); the batches it acknowledged."""
    process = subprocess.Popen(
        [sys.executable, str(WRITER), str(db), str(N_BATCHES)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if kill_after is None:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
    else:
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate(timeout=30)
    complete_lines = out.split("\n")[:-1]  # a line cut by the kill has no newline yet
    return {int(line.split()[1]) for line in complete_lines if line.startswith("ACK ")}


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    db = tmp_path / "events.db"
    rng = np.random.default_rng(7)
    acknowledged: set[int] = set()
    killed_mid_stream = 0
    for _ in range(6):
        acked = _run_writer(db, kill_after=float(rng.uniform(0.4, 1.2)))
        killed_mid_stream += 0 < len(acked) < N_BATCHES
        acknowledged |= acked
        _check_log(db, must_hold=acknowledged)
    assert killed_mid_stream >= 2, "the kills should land while batches are being written"
    assert _run_writer(db, kill_after=None) == set(range(N_BATCHES))
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
