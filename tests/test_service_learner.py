"""The background learner driven directly, on a temporary SQLite log (issue #13's faults).

Serving pins and publishes under one lock; the pin survives restarts; a stop finishes the
chunk being learned and persists once, at the offset learned; damaged snapshots are skipped;
writes never share a temporary folder; a pruned snapshot is a KeyError; the serving model is
scored on the events that come next (test then train) and its misses reach the strategy;
policies are saved and restored with the snapshot.

The model is all-time popularity: its history holds, per (user, item), the summed weight of
every event it learned, so "each event learned exactly once" is a comparison of counts.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lifelong_rec.events import EventBatch
from lifelong_rec.models import Popularity, Recommender
from lifelong_rec.policy import LinUCB, Policy
from lifelong_rec.service.learner import (
    Learner,
    OnlineQuality,
    first_sightings,
    next_item_ranks,
)
from lifelong_rec.service.snapshots import DamagedSnapshot, SnapshotStore
from lifelong_rec.store import EventLog

WAIT_SECONDS = 30.0


# ------------------------------------------------------------------------------ helpers


def _events(users: list[str], items: list[str], start: float = 0.0) -> EventBatch:
    """View events (weight 1), one second apart."""
    return EventBatch.from_columns(users, items, 1.7e9 + start + np.arange(len(users)))


def _stream(n: int, seed: int = 0) -> EventBatch:
    rng = np.random.default_rng(seed)
    users = [f"u{u}" for u in rng.integers(0, 40, n)]
    items = [f"i{i}" for i in rng.integers(0, 60, n)]
    return _events(users, items)


def _append(db: Path, events: EventBatch) -> None:
    with EventLog(db) as log:
        log.append(events)


def _learner(folder: Path, kind: type[Learner] = Learner, **settings: object) -> Learner:
    options: dict[str, object] = {
        "strategy": "naive@block",
        "publish_seconds": 0.0,
        "persist_seconds": 3600.0,  # persisted at stop only, unless a test says otherwise
        "learn_batch": 1_000,
        "keep_snapshots": 50,
        "learn_chunk": 200,
    }
    options |= settings
    return kind(
        db=str(folder / "events.db"),
        store=SnapshotStore(folder / "snapshots"),
        factory=lambda: Popularity(half_life_days=None),
        **options,  # type: ignore[arg-type]
    )


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _learn_all(folder: Path, **settings: object) -> Learner:
    """A learner's life: start, learn the whole log, publish it, stop (persisting)."""
    learner = _learner(folder, **settings)
    learner.start()
    end = learner.log.end_offset
    _wait(lambda: learner.latest.offset == end and learner.caught_up.is_set(), "catching up")
    learner.stop()
    assert learner.error is None, learner.error
    return learner


def _counts(model: Recommender) -> dict[tuple[str, str], float]:
    """The summed weight per (user, item) the model has learned."""
    history = model.history_.tocsr().tocoo()
    users, items = model.users_.ids(history.row), model.items_.ids(history.col)
    return {(str(u), str(i)): float(w) for u, i, w in zip(users, items, history.data, strict=True)}


def _log_counts(db: Path, stop: int | None = None) -> dict[tuple[str, str], float]:
    with EventLog(db) as log:
        events = log.read(0, stop, positive=True)
    counts: dict[tuple[str, str], float] = {}
    for user, item, weight in zip(events.user, events.item, events.weight, strict=True):
        counts[(str(user), str(item))] = counts.get((str(user), str(item)), 0.0) + float(weight)
    return counts


class _SlowPinRead(Learner):
    """A learner whose every read of ``pinned`` yields the thread for a moment: it widens
    the window between a publish's look at the pin and its swap of the serving snapshot,
    so that an unlocked publish loses the race to a rollback often, not once in a blue moon.
    """

    @property  # type: ignore[override]
    def pinned(self) -> bool:
        value = self.__dict__["_pinned_for_test"]
        time.sleep(0.0002)
        return value

    @pinned.setter
    def pinned(self, value: bool) -> None:
        self.__dict__["_pinned_for_test"] = value


# ------------------------------------------------------------------------------ pinning


def test_a_publish_during_a_pin_never_moves_the_serving_snapshot(tmp_path):
    # Issue #13: activate (a request thread) and _publish (the learner thread) swapped
    # current/latest/pinned without a lock, so a publish could overwrite a rollback.
    _append(tmp_path / "events.db", _stream(300))
    _learn_all(tmp_path)  # snapshot 1 on disk
    learner = _learner(tmp_path, _SlowPinRead)
    learner.start()
    learner.stop(persist=False)  # the test's threads play the learner's from here
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            learner._dirty = True
            learner._publish()

    publisher = threading.Thread(target=hammer)
    publisher.start()
    try:
        moved = []
        rounds, deadline = 0, time.monotonic() + 60
        # Enough rounds, and enough publishes among them, however busy the machine is.
        while (rounds < 150 or learner.latest.version <= 60) and time.monotonic() < deadline:
            rounds += 1
            learner.activate(None)
            learner.activate(1)
            for _ in range(5):
                if learner.current.version != 1:
                    moved.append(learner.current.version)
        latest = learner.latest.version
    finally:
        stop.set()
        publisher.join()
    assert not moved, f"a publish replaced the pinned snapshot 1 with {moved[:5]}"
    assert learner.pinned and learner.current.version == 1
    assert latest > 50, "the publisher hardly ran: the test proved nothing"
    learner.activate(None)
    assert not learner.pinned and learner.current is learner.latest


def test_the_pin_survives_a_restart_and_its_release_too(tmp_path):
    # Issue #13: a rollback was forgotten at restart (the pin lived in memory only).
    db = tmp_path / "events.db"
    _append(db, _stream(300, seed=1))
    _learn_all(tmp_path)  # v1
    _append(db, _stream(300, seed=2))
    _learn_all(tmp_path)  # v2, learned the second part

    learner = _learner(tmp_path)
    learner.start()
    assert learner.activate(1).version == 1
    learner.stop()

    learner = _learner(tmp_path)
    learner.start()
    try:
        assert learner.pinned and learner.current.version == 1
        assert learner.latest.version == 2  # it learns on from the newest, serving the pin
        assert learner.offset >= 600
        _append(db, _stream(100, seed=3))
        learner.wake()
        _wait(lambda: learner.latest.offset == 700, "learning the new events")
        assert learner.current.version == 1, "a publish moved the restored pin"
        learner.activate(None)
    finally:
        learner.stop()

    learner = _learner(tmp_path)
    learner.start()
    learner.stop(persist=False)
    assert not learner.pinned and learner.current is learner.latest
    assert learner.current.version == 3


def test_a_pin_to_a_missing_snapshot_follows_the_newest_with_a_warning(tmp_path, caplog):
    db = tmp_path / "events.db"
    _append(db, _stream(200, seed=1))
    _learn_all(tmp_path)
    _append(db, _stream(200, seed=2))
    _learn_all(tmp_path)
    store = SnapshotStore(tmp_path / "snapshots")
    store.write_pin(1)
    shutil.rmtree(tmp_path / "snapshots" / "v000001")
    learner = _learner(tmp_path)
    with caplog.at_level(logging.WARNING, "lifelong_rec.service"):
        learner.start()
    learner.stop(persist=False)
    assert "pinned to snapshot 1" in caplog.text
    assert not learner.pinned and learner.current.version == 2
    assert store.read_pin() is None


# ------------------------------------------------------------------------------ stopping


def test_stop_during_a_long_learn_persists_once_what_was_learned(tmp_path, monkeypatch):
    # Issue #13: stop joined with a 60 s timeout, then learned, published and persisted on
    # the caller's thread while the learner thread still trained: two snapshots both claimed
    # offset 100,000, each fitted on half the events; 50,000 events were never learned.
    db = tmp_path / "events.db"
    _append(db, _stream(6_000))
    slow = threading.Event()
    slow.set()
    learn = Popularity._learn

    def slow_learn(self: Popularity, events: object) -> None:
        if slow.is_set():
            time.sleep(0.05)
        learn(self, events)

    monkeypatch.setattr(Popularity, "_learn", slow_learn)
    learner = _learner(tmp_path, learn_batch=6_000, learn_chunk=100, publish_seconds=3600.0)
    learner.start()
    _wait(lambda: learner.offset >= 500, "the first chunks")
    learner.stop()
    assert not learner._thread.is_alive()
    assert learner.error is None, learner.error
    learned = learner.offset
    assert 500 <= learned < 6_000 and learned % 100 == 0, learned
    store = SnapshotStore(tmp_path / "snapshots")
    assert store.versions() == [1], "not exactly one snapshot at stop"
    model, info = store.load(1)
    assert info.offset == learned
    assert _counts(model) == _log_counts(db, learned), "the snapshot is not what was learned"
    with EventLog(db) as log:
        assert log.committed("learner") == learned

    slow.clear()  # the next life learns the rest
    _learn_all(tmp_path, learn_batch=6_000, learn_chunk=100)
    model, info = store.load(store.versions()[-1])
    assert info.offset == 6_000
    assert _counts(model) == _log_counts(db), "an event was learned twice or never"


def test_stop_without_persist_writes_nothing(tmp_path):
    _append(tmp_path / "events.db", _stream(300))
    learner = _learner(tmp_path)
    learner.start()
    _wait(lambda: learner.caught_up.is_set(), "catching up")
    learner.stop(persist=False)
    assert SnapshotStore(tmp_path / "snapshots").versions() == []


# ------------------------------------------------------------------------------ damage


def _two_snapshots(tmp_path: Path) -> tuple[Path, SnapshotStore]:
    db = tmp_path / "events.db"
    _append(db, _stream(300, seed=1))
    _learn_all(tmp_path)
    _append(db, _stream(300, seed=2))
    _learn_all(tmp_path)
    store = SnapshotStore(tmp_path / "snapshots")
    assert store.versions() == [1, 2]
    return db, store


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_json(path: Path) -> None:
    path.write_text('{"version": 2, "offs', encoding="utf-8")


DAMAGE = [  # (file in the snapshot, what is done to it)
    ("arrays.npz", _truncate),
    ("arrays.npz", Path.unlink),
    ("manifest.json", _bad_json),
    ("manifest.json", lambda p: p.write_text('{"format_version": 1, "model": "Nope"}')),
    ("snapshot.json", _bad_json),
    ("snapshot.json", Path.unlink),
]


@pytest.mark.parametrize(("name", "damage"), DAMAGE)
def test_a_damaged_snapshot_is_a_damaged_snapshot_error(tmp_path, name, damage):
    _, store = _two_snapshots(tmp_path)
    damage(tmp_path / "snapshots" / "v000002" / name)
    with pytest.raises(DamagedSnapshot, match="snapshot 2 is damaged") as caught:
        store.load(2)
    assert caught.value.version == 2
    assert not isinstance(caught.value, KeyError)
    assert store.load(1)[1].version == 1


def test_a_truncated_newest_snapshot_is_skipped_and_the_older_one_loads(tmp_path, caplog):
    # Issue #13: a truncated newest snapshot stopped the server from starting (exit 3).
    db, store = _two_snapshots(tmp_path)
    _truncate(tmp_path / "snapshots" / "v000002" / "arrays.npz")
    learner = _learner(tmp_path)
    with caplog.at_level(logging.WARNING, "lifelong_rec.service"):
        learner.start()
        learner.stop(persist=False)  # whatever it learned: the restored state is checked
    assert "snapshot 2 is damaged" in caplog.text
    assert learner.error is None, learner.error
    _, older = store.load(1)
    # It restored snapshot 1 and replays from its offset: a fresh life, as it ends, holds
    # every event once, in a version above the damaged one (never written over).
    _learn_all(tmp_path)
    versions = store.versions()
    assert versions[-1] == 3, versions
    model, info = store.load(3)
    assert info.offset == 600 > older.offset
    assert _counts(model) == _log_counts(db)


def test_all_snapshots_damaged_starts_fresh_and_replays_the_log(tmp_path, caplog):
    db, store = _two_snapshots(tmp_path)
    _truncate(tmp_path / "snapshots" / "v000001" / "arrays.npz")
    _bad_json(tmp_path / "snapshots" / "v000002" / "snapshot.json")
    learner = _learner(tmp_path)
    with caplog.at_level(logging.WARNING, "lifelong_rec.service"):
        learner.start()
        try:
            assert learner.restored_policies == {}
            _wait(lambda: learner.latest.offset == 600, "replaying the log")
        finally:
            learner.stop()
    assert "starting fresh" in caplog.text
    model, info = store.load(store.versions()[-1])
    assert info.version == 3 and info.offset == 600
    assert _counts(model) == _log_counts(db), "the replay did not learn each event once"


# ------------------------------------------------------------------------------ the store


class _MeetingModel:
    """Saves a real model, but only once the other writer is saving too."""

    def __init__(self, model: Recommender, barrier: threading.Barrier, paths: list[Path]):
        self.model, self.barrier, self.paths = model, barrier, paths

    def save(self, path: Path) -> None:
        self.paths.append(Path(path))
        self.barrier.wait(timeout=10)
        self.model.save(path)

    def __repr__(self) -> str:
        return repr(self.model)


def test_two_concurrent_saves_of_one_version_never_share_a_temporary_folder(tmp_path):
    # Issue #13: temporary folders were named .tmp-<version>-<pid>: two learners of one
    # process saving the same version wrote into one folder.
    barrier, paths = threading.Barrier(2), []
    stores = [SnapshotStore(tmp_path), SnapshotStore(tmp_path)]
    models = [Popularity().fit(_events(["a"], [f"item-{n}"])) for n in range(2)]
    outcomes: list[object] = [None, None]

    def save(n: int) -> None:
        try:
            outcomes[n] = stores[n].save(_MeetingModel(models[n], barrier, paths), 7, n)
        except FileExistsError as error:
            outcomes[n] = error

    threads = [threading.Thread(target=save, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 2, paths
    assert all(path.name.startswith(".tmp-7-") for path in paths)
    assert sorted(type(o).__name__ for o in outcomes) == ["FileExistsError", "SnapshotInfo"]
    winner = next(n for n in range(2) if not isinstance(outcomes[n], FileExistsError))
    model, info = stores[0].load(7)
    assert info.offset == winner
    assert model.items_.ids(np.arange(1)).tolist() == [f"item-{winner}"]
    assert not list(tmp_path.glob(".tmp-*")), "a temporary folder was left behind"


def test_a_new_store_removes_crashed_writes_but_not_this_process_s(tmp_path):
    crashed = tmp_path / ".tmp-3-0a1b-4242424242"
    crashed.mkdir()
    trash = tmp_path / ".trash-0a1b-4242424242"
    trash.mkdir()
    ours = tmp_path / f".tmp-3-0a1b-{os.getpid()}"
    ours.mkdir()
    SnapshotStore(tmp_path)
    assert not crashed.exists() and not trash.exists()
    assert ours.exists(), "a store removed another store's write in progress"


def test_activating_a_pruned_snapshot_is_a_key_error(tmp_path, monkeypatch):
    # Issue #13: activating a snapshot while it was pruned answered 500.
    _, store = _two_snapshots(tmp_path)
    learner = _learner(tmp_path)
    learner.start()
    learner.stop(persist=False)
    store.prune(keep=1)
    assert store.versions() == [2]
    with pytest.raises(KeyError, match="no snapshot 1"):
        learner.activate(1)
    assert not learner.pinned and learner.current.version == 2

    # Pruned in the middle of the load: still a KeyError, not a damaged snapshot.
    _append(tmp_path / "events.db", _stream(50, seed=5))
    _learn_all(tmp_path)  # v3
    load = Recommender.load.__func__  # type: ignore[attr-defined]

    def load_while_pruned(cls: type, path: Path) -> Recommender:
        store.prune(keep=1, protect={3})
        return load(cls, path)

    monkeypatch.setattr(Recommender, "load", classmethod(load_while_pruned))
    with pytest.raises(KeyError, match="no snapshot 2"):
        learner.activate(2)


def test_prune_keeps_the_pinned_and_the_serving_snapshots(tmp_path):
    db, store = _two_snapshots(tmp_path)
    learner = _learner(tmp_path, keep_snapshots=1, persist_seconds=0.0)
    learner.start()
    try:
        learner.activate(1)
        for seed in (3, 4):
            _append(db, _stream(50, seed=seed))
            learner.wake()
            end = 600 + 50 * (seed - 2)
            _wait(lambda end=end: learner.store.newest().offset == end, "a persisted snapshot")
        assert 1 in store.versions(), "the pinned snapshot was pruned"
        assert 2 not in store.versions(), "prune kept more than asked"
        assert learner.current.version == 1
    finally:
        learner.stop()


def test_policy_names_must_be_safe_folder_names(tmp_path):
    store = SnapshotStore(tmp_path)
    model = Popularity().fit(_events(["a"], ["b"]))
    for name in ["../escape", ".hidden", "a/b", "", "x" * 101]:
        with pytest.raises(ValueError, match="policy name"):
            store.save(model, 1, 0, policies={name: LinUCB(k=1)})
    assert store.versions() == []


# ------------------------------------------------------------------------------ policies


def test_policies_are_saved_with_the_snapshot_and_restored(tmp_path):
    _append(tmp_path / "events.db", _stream(200))
    live = {"default": LinUCB(k=2, alpha=0.5), "arm-b.1": LinUCB(k=1, seed=3)}
    calls = []

    def copies() -> dict[str, Policy]:
        calls.append(1)
        return {name: policy.clone() for name, policy in live.items()}

    _learn_all(tmp_path, policies=copies)
    assert calls, "the policies were never asked for"
    learner = _learner(tmp_path)
    learner.start()
    learner.stop(persist=False)
    restored = learner.restored_policies
    assert sorted(restored) == ["arm-b.1", "default"]
    for name, policy in live.items():
        assert type(restored[name]) is type(policy)
        assert restored[name].get_params() == policy.get_params()


def test_a_learner_without_snapshots_restores_no_policies(tmp_path):
    learner = _learner(tmp_path)
    learner.start()
    learner.stop(persist=False)
    assert learner.restored_policies == {}
    assert learner.current.model is None


# ------------------------------------------------------------------------------ quality


def _serve_phase_one(tmp_path: Path, **settings: object) -> Learner:
    """A learner that has learned and published 50 users viewing "a" (and 10 "b")."""
    _append(
        tmp_path / "events.db", _events([f"old{u}" for u in range(60)], ["a"] * 50 + ["b"] * 10)
    )
    learner = _learner(tmp_path, **settings)
    learner.start()
    _wait(lambda: learner.current.offset == 60, "the first publish")
    return learner


def _errors_of(learner: Learner) -> list[np.ndarray]:
    """Spy on the errors the learner hands its strategy."""
    received: list[np.ndarray] = []
    end_block = learner.strategy.end_block

    def spy(block: EventBatch, errors: np.ndarray) -> None:
        received.append(np.asarray(errors).copy())
        end_block(block, errors)

    learner.strategy.end_block = spy  # type: ignore[method-assign]
    return received


def test_a_model_that_ranks_the_next_item_first_scores_hr_1(tmp_path):
    learner = _serve_phase_one(tmp_path, learn_chunk=20)
    received = _errors_of(learner)
    try:
        # New users, each viewing "a": popularity's first item for anyone who has not seen it.
        _append(tmp_path / "events.db", _events([f"new{u}" for u in range(100)], ["a"] * 100, 60))
        learner.wake()
        _wait(lambda: learner.quality.scored == 100, "scoring")
    finally:
        learner.stop()
    assert learner.quality == OnlineQuality(100, 1.0, 1.0, 1.0, 1.0)
    assert np.concatenate(received).tolist() == [0.0] * 100


def test_a_model_that_never_ranks_the_next_item_scores_hr_0_and_its_misses_reach_the_strategy(
    tmp_path,
):
    # Issue #13: the strategy was fed zeros, so drift consolidation never fired.
    learner = _serve_phase_one(tmp_path, learn_chunk=20)
    received = _errors_of(learner)
    try:
        # Each new user views an item nobody has seen: a miss for any model.
        _append(tmp_path / "events.db", _events([f"new{u}" for u in range(100)],
                                                [f"fresh{u}" for u in range(100)], 60))  # fmt: skip
        learner.wake()
        _wait(lambda: learner.quality.scored == 100, "scoring")
    finally:
        learner.stop()
    assert learner.quality == OnlineQuality(100, 0.0, 0.0, 0.0, 0.0)
    errors = np.concatenate(received)
    assert errors.tolist() == [1.0] * 100


def test_repeats_are_not_scored_and_the_sample_is_capped(tmp_path):
    learner = _serve_phase_one(tmp_path, learn_chunk=50, quality_sample=10)
    received = _errors_of(learner)
    try:
        # 40 repeats of pairs the model learned, then 100 first sightings in 2 chunks of 50
        # log offsets (the first holds 40 repeats + 10 new, the second 50 new).
        repeats = _events([f"old{u}" for u in range(40)], ["a"] * 40, 60)
        new = _events([f"new{u}" for u in range(60)], ["a"] * 60, 100)
        _append(tmp_path / "events.db", EventBatch.concat([repeats, new]))  # one read: 2 chunks
        learner.wake()
        _wait(lambda: learner.offset == 160, "learning")
    finally:
        learner.stop()
    # chunk 60-110: 40 repeats (not scored), 10 new (all scored); chunk 110-160: 50 new,
    # a sample of 10 scored.
    assert [len(errors) for errors in received] == [10, 10]
    assert learner.quality.scored == 20


def test_drift_is_detected_when_the_hits_turn_to_misses(tmp_path):
    # Issue #13: with zeros for errors the drift detector never saw a shift.
    learner = _serve_phase_one(tmp_path, strategy="incremental@block", learn_chunk=50)
    received = _errors_of(learner)
    db = tmp_path / "events.db"
    try:
        _append(db, _events([f"new{u}" for u in range(400)], ["a"] * 400, 60))
        learner.wake()
        _wait(lambda: learner.quality.scored == 400, "the hits")
        assert learner.strategy.drift.detections == 0
        _append(db, _events([f"later{u}" for u in range(400)],
                            [f"fresh{u}" for u in range(400)], 460))  # fmt: skip
        learner.wake()
        _wait(lambda: learner.quality.scored == 800, "the misses")
    finally:
        learner.stop()
    errors = np.concatenate(received)
    assert errors[:400].sum() == 0 and errors[400:].sum() == 400
    assert learner.strategy.drift.detections >= 1, "the shift went unnoticed"
    quality = learner.quality
    assert quality.hr_at_10 == pytest.approx(0.5)
    assert quality.recent_hr_at_10 < 0.5, "the recent window does not follow the shift"


# ------------------------------------------------------------------------------ the scorer


class _FixedTops:
    """A duck-typed model: ``recommend`` answers fixed top lists; nothing is seen."""

    def __init__(self, tops: dict[str, list[str]]) -> None:
        self.tops = tops
        self.calls = 0

    def recommend(self, users: np.ndarray, k: int = 10) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(
            items=np.array([(self.tops[u] + [""] * k)[:k] for u in users], dtype=str)
        )


def test_next_item_ranks_reads_the_rank_from_one_recommend_call():
    model = _FixedTops({"u": ["x", "y", "z"], "v": ["y"]})
    ranks = next_item_ranks(model, np.array(["u", "u", "v", "v", "u"]),  # type: ignore[arg-type]
                            np.array(["x", "z", "y", "x", "w"]), k=10)  # fmt: skip
    assert ranks.tolist() == [1.0, 3.0, 1.0, np.inf, np.inf]
    assert model.calls == 1


def test_first_sightings_leaves_out_learned_pairs_and_repeats_in_the_batch():
    model = Popularity().fit(_events(["u", "v"], ["a", "b"]))
    users = np.array(["u", "u", "u", "v", "w", "w"])
    items = np.array(["a", "b", "b", "a", "a", "a"])
    assert first_sightings(model, users, items).tolist() == [False, True, False, True, True, False]
