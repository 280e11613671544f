"""Crash safety of the service: ``lifelong-rec serve`` killed with SIGKILL at random moments,
while a client posts keyed batches, loses no acknowledged event and appends none twice; each
restart restores the newest snapshot and leaves no partial one behind, and after the last the
learner catches up with the log, having learned every event exactly once.

The client is an ordinary one: a batch counts as acknowledged when its POST returned 200, and
a batch whose POST failed (the server died under it) is sent again, with the same key, once
the server is back; after each restart it also resends its last acknowledged batch. Each kill
comes a seeded random delay after the server wrote its first snapshot of that life, and every
other one as soon as the next snapshot write has begun. Where a kill lands (inside an append,
after it but before the answer, between two, during a snapshot write) varies with the machine;
every check holds wherever it lands.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_process import ServeProcess

from lifelong_rec.data import synthetic_stream
from lifelong_rec.events import kind_names
from lifelong_rec.service.snapshots import SnapshotInfo, SnapshotStore
from lifelong_rec.store import EventLog

N_BATCHES = 300
BATCH = 100
KILLS = 5
SEED = 11
STARTUP_SECONDS = 60.0  # generous: the server imports numpy, pandas, fastapi, ...
CATCH_UP_SECONDS = 15.0


def _batches() -> list[list[dict[str, object]]]:
    """``N_BATCHES`` batches of ``BATCH`` events from the synthetic shop, as JSON rows."""
    events = synthetic_stream(n_users=300, n_items=200, n_events=32_000, seed=SEED).events
    assert len(events) >= N_BATCHES * BATCH
    rows = events.take(slice(0, N_BATCHES * BATCH)).to_records()
    return [rows[b * BATCH : (b + 1) * BATCH] for b in range(N_BATCHES)]


def _serve(db: Path, life: int) -> ServeProcess:
    """The server on ``db``, snapshots every 0.2 s, no token."""
    env = {
        "LIFELONG_REC_PUBLISH_SECONDS": "0.1",
        "LIFELONG_REC_PERSIST_SECONDS": "0.2",
        "LIFELONG_REC_KEEP_SNAPSHOTS": "1000",  # every snapshot stays for the checks
    }
    return ServeProcess(db, env, db.with_name(f"server-{life}.log"))


def _post(client: httpx.Client, url: str, events: list[dict], key: str) -> dict | None:
    """POST a keyed batch: the answer when acknowledged, None when the server died under it."""
    try:
        response = client.post(url + "/events", json={"events": events, "key": key})
    except httpx.TransportError:
        return None
    assert response.status_code == 200, response.text
    return response.json()


def _newest(snapshots: Path) -> SnapshotInfo | None:
    """The newest whole snapshot on disk, read without ``SnapshotStore`` (whose constructor
    removes partial snapshots: the very thing the test looks for)."""
    manifests = sorted(snapshots.glob("v[0-9]*/snapshot.json"))
    return SnapshotInfo(**json.loads(manifests[-1].read_text())) if manifests else None


def _kill_later(
    server: ServeProcess, snapshots: Path, after: int, delay: float, in_write: bool
) -> None:
    """SIGKILL the server ``delay`` seconds after it has written a snapshot newer than
    ``after``, so that every kill has a snapshot of its own life to restore; ``in_write``,
    then as soon as it starts writing the next one (a partial snapshot to clean up)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and server.process.poll() is None:
        newest = _newest(snapshots)
        if newest is not None and newest.version > after:
            break
        time.sleep(0.02)
    time.sleep(delay)
    while in_write and time.monotonic() < deadline and server.process.poll() is None:
        if any(snapshots.glob(f".tmp-*-{server.process.pid}")):
            break
        time.sleep(0.001)
    server.process.kill()


def _plant_partial_snapshot(folder: Path) -> Path:
    """A snapshot folder as a kill in the middle of ``SnapshotStore.save`` leaves it."""
    partial = folder / ".tmp-999999-4242"
    partial.mkdir(parents=True)
    (partial / "manifest.json").write_text('{"format_version": 1, "model": "Matri')
    return partial


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_restores_snapshots(tmp_path):
    db = tmp_path / "events.db"
    snapshots = tmp_path / "events.db.snapshots"
    batches = _batches()
    rng = np.random.default_rng(SEED)
    kill_after = rng.uniform(0.0, 0.6, size=KILLS)  # seconds after the life's first snapshot
    answers: dict[int, list[dict]] = {b: [] for b in range(N_BATCHES)}  # acknowledged POSTs
    pending = list(range(N_BATCHES))
    restored = 0
    with httpx.Client(timeout=30.0) as client:
        for life in range(KILLS + 1):
            newest = _newest(snapshots)
            planted = _plant_partial_snapshot(snapshots)
            server = _serve(db, life)
            try:
                server.wait_healthy(STARTUP_SECONDS)
                assert not planted.exists(), "a partial snapshot survived the restart"
                own = f"-{server.process.pid}"  # the new server's own write, in progress
                stale = [p for p in snapshots.glob(".tmp-*") if not p.name.endswith(own)]
                assert not stale, f"a partial snapshot survived the restart: {stale}"
                models = client.get(server.url + "/models").json()
                if newest is not None:  # the snapshot is restored before the first request
                    restored += 1
                    assert models["serving_version"] is not None, models
                    version = int(models["serving_version"].rsplit("-v", 1)[1])
                    assert version >= newest.version, (models, newest)
                    assert models["learner_offset"] >= newest.offset, (models, newest)
                    assert newest.version in [s["version"] for s in models["snapshots"]]
                last = (pending[0] if pending else N_BATCHES) - 1  # acknowledged last
                if life > 0 and last >= 0:
                    # The client resends its last acknowledged batch, as one unsure whether
                    # the acknowledgement was durable would: the key makes it a no-op.
                    again = _post(client, server.url, batches[last], key=f"batch-{last}")
                    assert again["duplicate"], again
                    assert again["first_offset"] == answers[last][0]["first_offset"], again
                killer = None
                if life < KILLS:
                    after = 0 if newest is None else newest.version
                    in_write = life % 2 == 1  # every other kill aims at a snapshot write
                    killer = threading.Thread(
                        target=_kill_later,
                        args=(server, snapshots, after, kill_after[life], in_write),
                    )
                    killer.start()
                while pending:
                    b = pending[0]
                    answer = _post(client, server.url, batches[b], key=f"batch-{b}")
                    if answer is None:
                        break  # killed under this POST: sent again after the restart
                    assert answer["accepted"] == BATCH and not answer["rejections"], answer
                    answers[b].append(answer)
                    pending.pop(0)
                if killer is not None:
                    killer.join()
                    assert server.process.wait(timeout=30) == -signal.SIGKILL
                    assert "Traceback" not in server.log.read_text(), server.log.read_text()
            except BaseException:
                server.process.kill()
                raise
        # The last life: nothing more is killed; the learner catches up with the whole log.
        try:
            assert not pending, f"batches never acknowledged: {pending}"
            deadline = time.monotonic() + CATCH_UP_SECONDS
            while time.monotonic() < deadline:
                ready = client.get(server.url + "/readyz")
                models = client.get(server.url + "/models").json()
                if ready.status_code == 200 and models["learner_offset"] == models["log_end"]:
                    break
                time.sleep(0.05)
            assert ready.status_code == 200, ready.text
            assert models["learner_offset"] == models["log_end"] == N_BATCHES * BATCH, models
        finally:
            server.process.send_signal(signal.SIGTERM)  # a clean stop persists the newest
            server.process.wait(timeout=60)
    # uvicorn shuts down, then exits by the signal it caught
    assert server.process.returncode in (0, -signal.SIGTERM), server.log.read_text()
    assert "Traceback" not in server.log.read_text(), server.log.read_text()
    assert restored == KILLS, "a restart found no snapshot to restore"
    _check_log(db, batches, answers)
    _check_learned_once(db, snapshots)


def _check_log(db: Path, batches: list[list[dict]], answers: dict[int, list[dict]]) -> None:
    """Every batch in the log exactly once, whole, in place, with the events that were sent."""
    with EventLog(db) as log:
        rows = log.batches()
        assert rows["source"].eq("http").all(), rows["source"].unique()
        assert rows["key"].notna().all(), "a batch was appended without its key"
        keys = rows["key"].tolist()
        assert len(keys) == len(set(keys)), "a batch was appended twice"
        assert sorted(keys) == sorted(f"batch-{b}" for b in range(N_BATCHES))
        assert (rows["count"] == BATCH).all(), "a batch was appended in part"
        starts = np.sort(rows["first_offset"].to_numpy())
        assert starts.tolist() == list(range(0, N_BATCHES * BATCH, BATCH)), "offsets overlap"
        assert log.end_offset == N_BATCHES * BATCH
        events = log.read()
    kinds = kind_names(events.kind)
    for key, first in zip(rows["key"], rows["first_offset"], strict=True):
        b = int(key.removeprefix("batch-"))
        # One acknowledgement, with the batch's offsets; a retry of a batch that was appended
        # before the kill (its answer lost) is acknowledged as a duplicate.
        (answer,) = answers[b]
        assert answer["first_offset"] == first, (b, answer, first)
        sent = batches[b]
        stored = slice(first, first + BATCH)
        assert events.user[stored].tolist() == [e["user"] for e in sent]
        assert events.item[stored].tolist() == [e["item"] for e in sent]
        assert kinds[stored].tolist() == [e["kind"] for e in sent]
        assert events.timestamp[stored].tolist() == [e["timestamp"] for e in sent]
        values = np.array([e.get("value", np.nan) for e in sent])
        np.testing.assert_array_equal(events.value[stored], values)


def _check_learned_once(db: Path, snapshots: Path) -> None:
    """The snapshot written at the clean stop holds each (user, item) weight of the log once:
    a restored snapshot plus the replay after it counted no event twice and skipped none."""
    assert not list(snapshots.glob(".tmp-*"))
    store = SnapshotStore(snapshots)
    model, info = store.load(store.newest().version)
    with EventLog(db) as log:
        assert info.offset == log.end_offset
        events = log.read()
    positive = events.weight > 0
    expected: dict[tuple[str, str], float] = {}
    for user, item, weight in zip(
        events.user[positive], events.item[positive], events.weight[positive], strict=True
    ):
        key = (str(user), str(item))
        expected[key] = expected.get(key, 0.0) + float(weight)
    history = model.history_.tocsr().tocoo()
    users = model.users_.ids(history.row)
    items = model.items_.ids(history.col)
    learned = {
        (str(u), str(i)): float(w) for u, i, w in zip(users, items, history.data, strict=True)
    }
    assert learned == expected
