"""The distributed trainer (lifelong_rec.train): gloo processes on this machine train what one
process trains with the doubled batch; a run killed mid-epoch resumes to the parameters of an
uninterrupted one; the data order depends on the shards, not on the processes; and
`lifelong-rec train --nproc 2` publishes a snapshot the service loads.

Models are tiny (max_len 8, dim 16, one layer, no dropout) and every process runs one thread.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lifelong_rec.cli import main  # noqa: E402
from lifelong_rec.events import EventBatch  # noqa: E402
from lifelong_rec.models import parse_model  # noqa: E402
from lifelong_rec.service.snapshots import SnapshotStore  # noqa: E402
from lifelong_rec.store import EventLog  # noqa: E402
from lifelong_rec.train import (  # noqa: E402
    ShardedWindows,
    TrainPlan,
    launch,
    newest_checkpoint,
    train,
)

T0 = 1.7e9
SPEC = (
    "transformer(max_len=8, dim=16, layers=1, heads=2, dropout=0.0, id_dropout=0.0, "
    "epochs=3, batch_size=8, text_encoder=None, device='cpu', learning_rate=0.01)"
)
# 40 users x 14 events: 2 windows each, 2 shards of 40 windows, 5 steps of 8 per epoch
STEPS_PER_EPOCH = 5


def _cycles() -> EventBatch:
    """Users walking a cycle of 20 items from random starts, one item a minute."""
    rng = np.random.default_rng(0)
    users, items, times = [], [], []
    for user in range(40):
        start = int(rng.integers(20))
        for step in range(14):
            users.append(f"u{user}")
            items.append(f"i{(start + step) % 20}")
            times.append(T0 + 60 * step + user)
    return EventBatch.from_columns(users, items, times, kind="click")


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "events.db"
    with EventLog(path) as log:
        log.append(_cycles())
    return str(path)


def _plan(db: str, folder: Path, **overrides: object) -> TrainPlan:
    params = {"model": SPEC, "db": db, "shards": 2, "checkpoints": str(folder / "checkpoints"),
              "checkpoint_every": 4, "threads": 1}  # fmt: skip
    return TrainPlan(**(params | overrides))  # type: ignore[arg-type]


def _parameters(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.net_.named_parameters()}


# ------------------------------------------------------------------------------ equivalence


@pytest.mark.parametrize("loss", ["softmax", "sampled"])
def test_two_gloo_processes_train_what_one_process_does_with_the_doubled_batch(
    db, tmp_path, capfd, loss
):
    """2 processes x 1 shard x 8 windows against 1 process x 2 shards x 8 windows: the same
    windows at every step, the gradients averaged by DDP against computed at once.

    Tolerance: every parameter within 1e-6, but the attention's key bias. Its gradient is
    zero in exact arithmetic (a softmax does not move when every key score shifts by the same
    amount), so what it gets is rounding noise, which differs with the order of the sums, and
    Adam turns any noise into steps of up to the learning rate: it is held within one step's
    size times the steps taken.

    The sampled softmax (4 uniform negatives, in-batch negatives, log-Q) too: each process
    takes every process's targets as in-batch negatives, and the uniform draws alike."""
    spec = SPEC
    if loss == "sampled":
        spec = SPEC.replace("epochs=3", "epochs=3, loss='sampled', negatives=4")
    snapshots = tmp_path / "snapshots"
    launch(_plan(db, tmp_path / "two", snapshots=str(snapshots), model=spec), nproc=2)
    store = SnapshotStore(snapshots)
    assert store.versions() == [1]
    two, info = store.load(1)
    assert info.offset == 560
    one = train(_plan(db, tmp_path / "one", model=spec)).model

    untrained = parse_model(SPEC)[1]()
    with EventLog(db) as log:
        untrained.start_fit(log.read(0))
    steps = 3 * STEPS_PER_EPOCH
    assert int(one.steps_[0]) == int(two.steps_[0]) == steps
    dim = one.dim
    for name, value in _parameters(one).items():
        other = _parameters(two)[name]
        if name.endswith("qkv.bias"):
            keys = slice(dim, 2 * dim)
            torch.testing.assert_close(other[:dim], value[:dim], rtol=0, atol=1e-6)
            torch.testing.assert_close(other[2 * dim :], value[2 * dim :], rtol=0, atol=1e-6)
            assert float((other[keys] - value[keys]).abs().max()) <= 0.01 * steps
            continue
        torch.testing.assert_close(other, value, rtol=0, atol=1e-6, msg=name)
    # the runs trained: the parameters moved well beyond the tolerance
    moved = (one.net_.item_embedding - untrained.net_.item_embedding).detach()
    assert float(moved.abs().max()) > 0.05
    # rank 0 reports its run on standard error; the checkpoints went with the publication
    assert not (tmp_path / "two" / "checkpoints").exists()
    report = re.search(r"lifelong-rec train: (\{.*\})", capfd.readouterr().err)
    assert report is not None
    two_log = json.loads(report.group(1))["training_log"]
    assert [e["loss"] for e in two_log] == pytest.approx([e["loss"] for e in one.training_log_])
    np.testing.assert_allclose(two.score_all(["u1", "u2"]), one.score_all(["u1", "u2"]), atol=1e-4)


# ------------------------------------------------------------------------------ machines


def test_two_machines_train_what_one_process_does_with_two_shards(db, tmp_path):
    """Two launchers, as two machines would start (`lifelong-rec train --nnodes 2 --nproc 1`
    with one rendezvous endpoint and run id, and one checkpoint folder), here both on this
    machine: they meet, train as ranks 0 and 1, and rank 0 publishes the parameters one
    process trains with the two shards (the tolerance of the equivalence test above)."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "lifelong_rec", "train", "--db", db, "--model", SPEC,
            "--nnodes", "2", "--nproc", "1", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--run-id", "two-machines", "--checkpoints", str(tmp_path / "shared"),
            "--json"]  # fmt: skip
    machines = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]  # fmt: skip
    outputs = []
    try:
        for machine in machines:
            outputs.append(machine.communicate(timeout=120))
    finally:
        for machine in machines:
            machine.kill()
    for machine, (out, err) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, err[-3000:]
        result = json.loads(out)
        assert result["processes"] == 2 and result["shards"] == 2
        assert result["snapshot"]["version"] == 1 and result["snapshot"]["offset"] == 560
    assert sum("lifelong-rec train: {" in err for _, err in outputs) == 1  # rank 0 alone
    assert not (tmp_path / "shared").exists()  # published: the checkpoints went
    two, _ = SnapshotStore(f"{db}.snapshots").load(1)
    one = train(_plan(db, tmp_path / "one")).model
    assert int(one.steps_[0]) == int(two.steps_[0]) == 3 * STEPS_PER_EPOCH
    dim = one.dim
    for name, value in _parameters(one).items():
        other = _parameters(two)[name]
        if name.endswith("qkv.bias"):  # the key bias: see the equivalence test
            keys = slice(dim, 2 * dim)
            torch.testing.assert_close(other[:dim], value[:dim], rtol=0, atol=1e-6)
            torch.testing.assert_close(other[2 * dim :], value[2 * dim :], rtol=0, atol=1e-6)
            assert float((other[keys] - value[keys]).abs().max()) <= 0.01 * 3 * STEPS_PER_EPOCH
            continue
        torch.testing.assert_close(other, value, rtol=0, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------ resuming

KILLED_RUN = """
import os, signal, sys
from lifelong_rec.train import TrainPlan, train

def kill(step):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)

train(TrainPlan.from_json(sys.argv[1]), on_step=kill)
"""


def test_a_run_killed_mid_epoch_resumes_to_the_parameters_of_an_uninterrupted_one(db, tmp_path):
    """Checkpoints every 4 steps and at the end of each 5-step epoch; the process is killed
    (SIGKILL) after step 9, in the second epoch, so the newest checkpoint is step 8 (the
    second epoch's third step) and step 9 is lost: the resumed run redoes it and ends bit
    for bit where an uninterrupted run ends."""
    uninterrupted = train(_plan(db, tmp_path / "whole")).model
    plan = _plan(db, tmp_path / "killed")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, plan.to_json(), "9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    checkpoint = newest_checkpoint(plan.checkpoints)
    assert checkpoint is not None
    assert (checkpoint.global_step, checkpoint.epoch, checkpoint.step) == (8, 1, 3)
    assert len(checkpoint.training_log) == 1
    assert sorted(path.name for path in Path(plan.checkpoints).iterdir()) == ["step-000000008"]

    resumed = train(plan).model
    assert int(resumed.steps_[0]) == int(uninterrupted.steps_[0]) == 3 * STEPS_PER_EPOCH
    for name, value in _parameters(uninterrupted).items():
        assert torch.equal(_parameters(resumed)[name], value), name
    for name, moments in uninterrupted.optimizer_.state_dict()["state"].items():
        for key, value in moments.items():
            assert torch.equal(resumed.optimizer_.state_dict()["state"][name][key], value)
    assert [e["loss"] for e in resumed.training_log_] == pytest.approx(
        [e["loss"] for e in uninterrupted.training_log_], rel=1e-6
    )
    np.testing.assert_array_equal(resumed.sequences_, uninterrupted.sequences_)

    # a finished run's checkpoint is the end: running again takes no step
    again = train(plan).model
    assert int(again.steps_[0]) == 3 * STEPS_PER_EPOCH


# ------------------------------------------------------------------------------ the data order


def test_the_data_order_depends_on_the_shards_not_on_the_processes():
    rng = np.random.default_rng(1)
    users = np.sort(rng.integers(0, 30, size=101))
    windows = np.arange(101)[:, None] * np.ones((1, 3), dtype=np.int64)
    data = ShardedWindows(windows, users, shards=4, batch_size=8, seed=5)
    assert data.steps_per_epoch == -(-max(len(rows) for rows in data.shard_rows) // 8)
    # each shard holds whole users; together they hold every window once
    owners = [set(users[rows]) for rows in data.shard_rows]
    assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1 :])
    assert sorted(np.concatenate(data.shard_rows)) == list(range(101))
    for epoch in range(2):
        orders = [data.order(epoch, shard) for shard in range(4)]
        seen = set()
        for step in range(data.steps_per_epoch):
            one_process = np.concatenate([data.batch(order, step) for order in orders])
            per_rank = [  # 2 processes: rank r takes shards r, r + 2
                np.concatenate([data.batch(orders[shard], step) for shard in range(r, 4, 2)])
                for r in range(2)
            ]
            assert sorted(one_process[:, 0]) == sorted(np.concatenate(per_rank)[:, 0])
            seen |= set(one_process[:, 0].tolist())
        assert seen == set(range(101))  # every window at least once an epoch
    assert not np.array_equal(data.order(0, 0), data.order(1, 0))  # a new order each epoch


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "mf"}, "distributed training is for the sequential transformer"),
        ({"model": "transformer(dim=3)"}, "dim must be a multiple of heads"),
        ({"shards": 0}, "shards must be a positive integer"),
        ({"checkpoint_every": 0}, "checkpoint_every must be a positive integer"),
        ({"threads": 0}, "threads must be a positive integer"),
    ],
)
def test_bad_plans_name_the_problem(db, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _plan(db, tmp_path, **overrides)


def test_more_processes_than_shards_is_refused(db, tmp_path):
    with pytest.raises(ValueError, match=r"shards \(1\) must be at least the processes \(2\)"):
        train(_plan(db, tmp_path, shards=1), world=2)


# ------------------------------------------------------------------------------ the command


def test_the_train_command_publishes_a_snapshot_the_service_learner_starts_from(
    db, tmp_path, capsys
):
    from lifelong_rec.service.learner import Learner

    argv = ["train", "--db", db, "--model", SPEC, "--nproc", "2", "--checkpoint-every", "4"]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["processes"] == 2 and result["shards"] == 2
    assert result["snapshot"]["version"] == 1 and result["snapshot"]["offset"] == 560
    assert not Path(f"{db}.checkpoints").exists()  # the run is done: a rerun starts afresh
    store = SnapshotStore(f"{db}.snapshots")
    model, _ = store.load(1)
    assert int(model.steps_[0]) == 3 * STEPS_PER_EPOCH and len(model.users_) == 40
    assert len(model.recommend(["u3", "someone-new"], k=5).items[0]) == 5

    # the log grows; a second run trains on all of it, with one process, as version 2
    with EventLog(db) as log:
        log.append(EventBatch.from_columns(["u0", "u41"], ["i3", "i4"], [T0 + 1e5, T0 + 1e5]))
    assert main([*argv[:-4], "--nproc", "1"]) == 0
    assert "published snapshot 2" in capsys.readouterr().out
    assert store.newest().offset == 562

    # the service's learner starts from the newest snapshot and learns the log from its offset
    learner = Learner(db, SnapshotStore(f"{db}.snapshots"), lambda: parse_model(SPEC)[1](),
                      "naive@block", publish_seconds=60, persist_seconds=60, learn_batch=100,
                      keep_snapshots=5)  # fmt: skip
    learner.start()
    try:
        assert learner.current.version == 2 and learner.offset == 562
        assert "u41" in learner.current.model.users_
    finally:
        learner.stop(persist=False)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--nproc", "0"], "--nproc must be >= 1, got 0"),
        (["--nnodes", "0"], "--nnodes must be >= 1, got 0"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1, got 0"),
        (["--nproc", "2", "--shards", "1"], "--shards must be >= 2, got 1"),
        (["--nnodes", "2"], "--nnodes > 1 needs --rdzv-endpoint HOST:PORT and --run-id"),
        (["--model", "mf"], "--model: model 'mf': distributed training is for the sequential"),
        (["--model", "transformr"], "--model: .*transformr"),
        (["--model", "transformer(dim=3)"], "--model: dim must be a multiple of heads"),
    ],
)
def test_bad_train_options_name_the_option(db, capsys, arguments, message):
    assert main(["train", "--db", db, *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lifelong-rec: error: ")
    assert len(error.strip().splitlines()) == 1
    assert re.search(message, error), error


def test_train_needs_an_existing_log(tmp_path, capsys):
    assert main(["train", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no such event log" in capsys.readouterr().err


# ------------------------------------------------------------------------------ delegation


def _wait(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _sequence_learner(db: str, folder: Path, **seconds: float):
    """The service's learner of the test model with sequence updates only (its weights are
    what it adopts, exactly), its snapshots in ``folder``, at the given cadences."""
    from lifelong_rec.service.learner import Learner

    spec = SPEC.replace("epochs=3", "epochs=3, update_steps=0")
    return Learner(db, SnapshotStore(folder), parse_model(spec)[1], "naive@block",
                   learn_batch=1_000, keep_snapshots=10, **seconds)  # fmt: skip


def test_the_learner_adopts_the_trainers_network_and_keeps_the_events_since(db, tmp_path):
    """The service's learner (sequence updates only, so its weights are the adopted ones
    exactly) follows the log; the trainer trains on it and publishes into the learner's
    store; an event arrives that the trainer never saw. The learner adopts the trained
    network, keeps the new event in the user's sequence and the new item's own row, and
    publishes and persists the result as versions after the trainer's."""
    from lifelong_rec.train import publish

    folder = tmp_path / "snapshots"
    learner = _sequence_learner(db, folder, publish_seconds=0.05, persist_seconds=0.05,
                                trained_poll_seconds=0.05)  # fmt: skip
    learner.start()
    try:
        _wait(lambda: learner.offset == 560 and learner._persisted_version >= 1)
        own = learner.current.model
        plan = _plan(db, tmp_path, snapshots=str(folder))
        trained = train(plan)
        with EventLog(db) as log:  # after the trainer read the log
            log.append(EventBatch.from_columns(["u0", "u0"], ["i5", "i-new"], [T0 + 1e5] * 2))
        version = publish(plan, trained.model, trained.offset)
        learner.wake()
        _wait(lambda: learner.adopted is not None and learner.offset == 562)
        _wait(lambda: learner.current.version > version and learner._persisted_version > version)
    finally:
        learner.stop()
    assert learner.error is None
    assert learner.adopted.version == version and learner.adopted.offset == 560
    served = learner.current.model
    new_item = int(served.items_.lookup(["i-new"])[0])
    assert served.sequences_[served.users_.lookup(["u0"])[0], -2:].tolist() == [
        int(served.items_.lookup(["i5"])[0]) + 1, new_item + 1,
    ]  # fmt: skip
    theirs = trained.model
    for name, value in _parameters(theirs).items():
        if name != "item_embedding":
            assert torch.equal(_parameters(served)[name], value), name
    known = theirs.items_.ids(np.arange(len(theirs.items_)))
    rows = torch.as_tensor(served.items_.lookup(known) + 1)
    assert torch.equal(
        served.net_.item_embedding[rows], theirs.net_.item_embedding[1 : len(known) + 1]
    )
    assert new_item >= len(known)  # the trainer never saw it: its row is the learner's own
    assert not torch.equal(
        served.net_.item_embedding[1 : len(known) + 1], own.net_.item_embedding[1 : len(known) + 1]
    )
    # on disk: the learner's versions, the trainer's, then the learner's with the adopted network
    store = SnapshotStore(folder)
    assert version in store.versions() and store.versions()[-1] > version
    persisted, info = store.load(store.versions()[-1])
    assert info.offset == 562
    np.testing.assert_allclose(persisted.score_all(["u0"]), served.score_all(["u0"]), rtol=1e-6)


def test_a_learner_whose_version_number_the_trainer_took_adopts_it_and_persists_the_next(
    db, tmp_path
):
    """The learner has published version 1 in memory, not yet on disk; the trainer saves its
    model as version 1 first. The learner's persist finds the number taken: it adopts the
    trainer's snapshot and persists its own as version 2 instead of failing."""
    folder = tmp_path / "snapshots"
    learner = _sequence_learner(db, folder, publish_seconds=0.01, persist_seconds=3_600,
                                trained_poll_seconds=3_600)  # fmt: skip
    learner.start()
    try:
        _wait(lambda: learner.latest.version == 1 and learner.latest.offset == 560)
        trained = train(_plan(db, tmp_path)).model
        SnapshotStore(folder).save(trained, 1, 560)
    finally:
        learner.stop()  # persists: version 1 is taken
    assert learner.error is None
    assert learner.adopted is not None and learner.adopted.version == 1
    store = SnapshotStore(folder)
    assert store.versions() == [1, 2]
    persisted, _ = store.load(2)
    for name, value in _parameters(trained).items():
        assert torch.equal(_parameters(persisted)[name], value), name


def test_a_log_without_a_sequence_is_refused(tmp_path):
    path = tmp_path / "events.db"
    with EventLog(path) as log:  # every user has one event: no next item to predict
        log.append(EventBatch.from_columns(["a", "b"], ["x", "y"], [T0, T0], kind="click"))
    with pytest.raises(ValueError, match="nothing to train on: the log up to offset 2"):
        train(_plan(str(path), tmp_path))
    empty = tmp_path / "empty.db"
    EventLog(empty).close()
    with pytest.raises(ValueError, match="nothing to train on: the log up to offset 0"):
        train(_plan(str(empty), tmp_path))


@pytest.mark.postgres
def test_train_reads_a_postgres_log_and_publishes_where_api_replicas_read(
    postgres_url, postgres_schema, tmp_path, capsys
):
    from lifelong_rec.service.snapshots import PostgresSnapshotStore
    from lifelong_rec.store import open_log

    with open_log(postgres_url, schema=postgres_schema) as log:
        log.append(_cycles())
    argv = ["train", "--db", postgres_url, "--db-schema", postgres_schema, "--model", SPEC,
            "--nproc", "2", "--json"]  # fmt: skip
    assert main(argv) == 2  # a checkpoint folder must be named: no folder beside a database
    assert "--checkpoints: a folder is needed with PostgreSQL" in capsys.readouterr().err
    assert main([*argv, "--checkpoints", str(tmp_path / "checkpoints")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["snapshots"] == "database" and result["snapshot"]["offset"] == 560
    store = PostgresSnapshotStore(postgres_url, postgres_schema, SPEC)  # the replicas' name
    try:
        model, info = store.load(result["snapshot"]["version"])
    finally:
        store.close()
    assert info.offset == 560 and int(model.steps_[0]) == 3 * STEPS_PER_EPOCH


def test_the_service_hands_its_learner_the_trainers_poll(tmp_path, monkeypatch):
    """``LIFELONG_REC_TRAINED_POLL_SECONDS`` (``Settings.trained_poll_seconds``) reaches the
    service's learner; a poll of 0 is refused, naming the setting."""
    from fastapi.testclient import TestClient
    from pydantic import ValidationError

    from lifelong_rec.service import Settings, create_app

    monkeypatch.setenv("LIFELONG_REC_TRAINED_POLL_SECONDS", "2.5")
    app = create_app(Settings(db=tmp_path / "events.db", model="pop"))
    with TestClient(app):
        assert app.state.engine.learner.trained_poll_seconds == 2.5
    with pytest.raises(ValidationError, match="trained_poll_seconds"):
        Settings(db=tmp_path / "events.db", trained_poll_seconds=0)
