"""Distributed training of the sequential transformer: DistributedDataParallel over processes
and machines, checkpoints that resume, and the trained model published as a snapshot.

``lifelong-rec train --model transformer --db events.db --nproc 2`` starts ``nproc``
processes per machine through torchrun's elastic launcher (:func:`launch`); each runs
:func:`train` on its rank. The gloo backend on CPUs, NCCL on GPUs (one GPU per process).

Data. Every process reads the event log up to the same offset (rank 0 reads the log's end
and sends it to the others) and builds the same model from it: the same ids, histories and
sequences, so the item table and the published model agree everywhere. The training windows
(:meth:`SequentialTransformer.start_fit`) are cut into ``shards`` by user (``user index %
shards``); a process trains on its shards only (shard ``s`` goes to rank ``s % world``).

Order. An epoch's order is a function of the seed, the epoch and the shard alone: each shard's
windows are permuted by a generator seeded with ``(seed, epoch, shard)``, and step ``k`` takes
``batch_size`` windows from every shard (a shorter shard starts over from its beginning, as
torch's DistributedSampler pads). So the data order does not depend on the number of
processes: one process with two shards trains on the same windows as two processes with one
shard each, step for step, and a run can resume with another number of processes.

A step. Each process computes the loss of its windows summed over their targets and divided
by (targets of every process) / (processes), so that the mean DistributedDataParallel takes
of the gradients is the gradient of the whole step's mean loss: two processes take the steps
of one process with the doubled batch (up to the order of float additions). With the sampled
softmax, the in-batch negatives are the targets of every process's batch (gathered) and the
uniform ones are drawn alike everywhere (seeded by the step), so this holds for it too. The
sampled softmax's id table is not DistributedDataParallel's: its optimiser
(:class:`~lifelong_rec.models.sequential_net.LazyAdam`) updates the rows a step touched, and
the processes all-gather their touched rows and those rows' gradients and average them
(so a step's communication, too, does not grow with the catalogue). Dropout is seeded by the
seed, the step and the rank.

Checkpoints. Every ``checkpoint_every`` steps and at the end of every epoch, rank 0 writes
the model (network, optimiser moments, sequences, as ``Recommender.save`` writes it: JSON and
npz, no pickle) and ``trainer.json`` (epoch, step, the log offset trained to, the plan) into a
new folder ``step-<n>`` under ``checkpoints``, renamed into place whole, and deletes the older
ones. A run finds the newest whole checkpoint there and goes on from it: the same model, the
same optimiser state, the same data position, so a run killed at any point ends with the
parameters of an uninterrupted one (same seed, same number of processes). On several
machines the folder must be shared by all of them.

Publishing. At the end, rank 0 saves the model as a new snapshot version in the store the
service's learner uses (the folder beside an SQLite log, or PostgreSQL under the model spec),
with the log offset it learned up to: ``serve`` and API replicas load it, and a learner that
starts from it learns the log from that offset on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.models import Recommender, parse_model, with_catalog
from lifelong_rec.models.sequential import SequentialTransformer
from lifelong_rec.store import is_postgres, open_log

__all__ = [
    "Checkpoint",
    "ShardedWindows",
    "TrainPlan",
    "Trained",
    "launch",
    "newest_checkpoint",
    "publish",
    "save_checkpoint",
    "train",
    "worker_main",
]

CHECKPOINT_FORMAT_VERSION = 1
_CHECKPOINT = "step-"
_RANK_SEED = 7_919  # each rank's random stream is shifted by this much per rank


@dataclass(frozen=True)
class TrainPlan:
    """What a distributed training run does; saved in every checkpoint.

    Parameters
    ----------
    model : str
        A transformer spec (``parse_model``), e.g. ``transformer(epochs=20)``: its epochs,
        batch size (per shard and step), loss and seed are the run's.
    db : str
        The event log: an SQLite path or a PostgreSQL URL.
    schema : str
        The log's PostgreSQL schema.
    shards : int
        User shards; at least the number of processes. Fixes the data order (see the module).
    checkpoints : str or None
        The checkpoint folder (None: no checkpoints).
    checkpoint_every : int
        Steps between checkpoints (and one at the end of every epoch).
    snapshots : str or None
        The snapshot folder of an SQLite log (PostgreSQL keeps them in the database); None
        publishes nothing.
    snapshot_name : str
        The name snapshots go by in PostgreSQL (the service's model spec).
    threads : int or None
        PyTorch threads per process on the CPU (None: cores / processes per machine).
    timeout_seconds : float
        How long a process waits for the others at a collective before it fails.
    """

    model: str
    db: str
    schema: str = "public"
    shards: int = 1
    checkpoints: str | None = None
    checkpoint_every: int = 100
    snapshots: str | None = None
    snapshot_name: str = ""
    threads: int | None = None
    timeout_seconds: float = 600.0

    def __post_init__(self) -> None:
        check_positive_ints(shards=self.shards, checkpoint_every=self.checkpoint_every)
        if self.threads is not None:
            check_positive_ints(threads=self.threads)
        if not self.timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be > 0, got {self.timeout_seconds!r}")
        _, factory = parse_model(self.model)
        if not isinstance(factory(), SequentialTransformer):
            raise ValueError(
                f"model {self.model!r}: distributed training is for the sequential "
                "transformer (a 'transformer' spec)"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainPlan:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Checkpoint:
    """Where a run stands: ``epoch`` (0-based) and ``step`` (within it) of the next step,
    the optimiser steps taken, the log offset the run trains to, the per-epoch log, and the
    current epoch's summed loss, targets and seconds so far."""

    path: Path
    epoch: int
    step: int
    global_step: int
    log_end: int
    training_log: list[dict[str, float]]
    epoch_loss: float = 0.0
    epoch_targets: int = 0
    epoch_seconds: float = 0.0


@dataclass(frozen=True, eq=False)
class Trained:
    """What :func:`train` returns: the trained ``model`` and the log ``offset`` (exclusive)
    it learned up to."""

    model: SequentialTransformer
    offset: int


# ------------------------------------------------------------------------------ the data order


class ShardedWindows:
    """The training windows cut into user shards, and the order they are trained in.

    Parameters
    ----------
    windows : array of int64, shape (n, max_len + 1)
    users : array of int64, shape (n,)
        The user index of each window.
    shards, batch_size, seed : int
    """

    def __init__(
        self, windows: np.ndarray, users: np.ndarray, shards: int, batch_size: int, seed: int
    ) -> None:
        self.windows = windows
        self.shard_rows = [np.flatnonzero(users % shards == s) for s in range(shards)]
        self.batch_size = batch_size
        self.seed = seed
        longest = max((len(rows) for rows in self.shard_rows), default=0)
        self.steps_per_epoch = -(-longest // batch_size)  # ceil

    def order(self, epoch: int, shard: int) -> np.ndarray:
        rows = self.shard_rows[shard]
        return rows[np.random.default_rng([self.seed, epoch, shard]).permutation(len(rows))]

    def batch(self, order: np.ndarray, step: int) -> np.ndarray:
        """Step ``step``'s windows of a shard in ``order`` (a shorter shard starts over)."""
        if not len(order):
            return self.windows[:0]
        positions = (step * self.batch_size + np.arange(self.batch_size)) % len(order)
        if len(order) < self.batch_size:  # a shard smaller than a batch: each window once
            positions = np.arange(len(order))
        return self.windows[order[positions]]


# ------------------------------------------------------------------------------ training


class _Objective(nn.Module):
    """The model's batch loss as a module, so DistributedDataParallel wraps its network: the
    gradients of the network's parameters are averaged over the processes in ``backward``."""

    def __init__(self, model: SequentialTransformer) -> None:
        super().__init__()
        self.net = model.net_
        self.model = [model]  # in a list: not a submodule, not a parameter

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, divide_by: float
    ) -> torch.Tensor:
        return self.model[0]._loss(inputs, targets, valid, divide_by)


def train(
    plan: TrainPlan,
    rank: int = 0,
    world: int = 1,
    local_rank: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> Trained:
    """Train ``plan``'s model on this process's shards, from the newest checkpoint if any.

    With ``world > 1`` the default process group must be initialised (:func:`worker_main`
    does it). ``on_step(global_step)`` is called after every optimiser step (and after the
    checkpoint it may write). Every rank returns the trained model; rank 0's is the one
    :func:`worker_main` publishes.
    """
    if plan.shards < world:
        raise ValueError(f"shards ({plan.shards}) must be at least the processes ({world})")
    if world > 1 and not dist.is_initialized():
        raise RuntimeError("train with world > 1 needs the default process group initialised")
    cuda = world > 1 and dist.get_backend() == "nccl"
    threads = torch.get_num_threads()
    if not cuda and plan.threads is not None:
        torch.set_num_threads(plan.threads)
    try:
        return _train(plan, rank, world, local_rank, on_step, cuda)
    finally:
        torch.set_num_threads(threads)  # the caller's, when it trains in its own process


def _train(
    plan: TrainPlan,
    rank: int,
    world: int,
    local_rank: int,
    on_step: Callable[[int], None] | None,
    cuda: bool,
) -> Trained:
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    checkpoint = newest_checkpoint(plan.checkpoints) if plan.checkpoints else None
    if checkpoint is not None:
        _check_same_run(plan, checkpoint)
    model, data, log_end = _build(plan, world, checkpoint, device if cuda else None)
    windows = data.windows
    if not ((windows[:, :-1] > 0) & (windows[:, 1:] > 0)).any():
        raise ValueError(
            f"nothing to train on: the log up to offset {log_end} has no user with two "
            "positive events"
        )
    epoch, step = (checkpoint.epoch, checkpoint.step) if checkpoint else (0, 0)
    if checkpoint is not None:
        model.training_log_ = list(checkpoint.training_log)
    objective: nn.Module = _Objective(model)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective,
            device_ids=[local_rank] if cuda else None,
            forward_sync_buffers=False,  # the buffers (text, flags) agree on every rank
        )
        # in-batch negatives from every process's batch, as one process has them
        model._gather_targets = partial(_gather, world=world)
        # the sampled softmax's id rows: LazyAdam's gradient, outside DDP (see the module)
        model._reduce_rows = partial(_reduce_rows, world=world)
    mine = range(rank, plan.shards, world)
    while epoch < model.epochs:
        orders = {shard: data.order(epoch, shard) for shard in mine}
        started, total, targets = time.perf_counter(), 0.0, 0
        if checkpoint is not None and step:  # the epoch's sums up to the checkpoint
            started -= checkpoint.epoch_seconds
            total = checkpoint.epoch_loss if rank == 0 else 0.0
            targets = checkpoint.epoch_targets
        while step < data.steps_per_epoch:
            windows = np.concatenate([data.batch(orders[shard], step) for shard in mine])
            local = int(((windows[:, :-1] > 0) & (windows[:, 1:] > 0)).sum())
            count = int(_sum(local, world, device))
            step += 1
            if count:
                divide_by = count / world
                forward = partial(objective, divide_by=divide_by)
                loss, _ = model.train_step(windows, forward, seed_offset=rank * _RANK_SEED)
                total += float(loss) * divide_by  # this process's summed loss
                targets += count
            last = step == data.steps_per_epoch
            if last:
                seconds = time.perf_counter() - started
                model.training_log_.append({
                    "epoch": epoch + 1,
                    "loss": _sum(total, world, device) / max(targets, 1),
                    "seconds": seconds,
                    "targets_per_second": targets / seconds if seconds else 0.0,
                })  # fmt: skip
                epoch, step = epoch + 1, 0
            global_step = int(model.steps_[0])
            if plan.checkpoints and (last or global_step % plan.checkpoint_every == 0):
                # the epoch's summed loss so far (every rank knows a checkpoint is due),
                # carried on by rank 0 alone
                total = 0.0 if last else _sum(total, world, device)
                sums = (total, targets, time.perf_counter() - started)
                if rank == 0:
                    save_checkpoint(plan, model, epoch, step, log_end, sums)
                total = total if rank == 0 else 0.0
            if on_step is not None:
                on_step(global_step)
            if last:
                break  # the next epoch, with its own order
    model._gather_targets = model._reduce_rows = None  # the process group ends with the run
    model.net_.eval()
    model._changed()
    return Trained(model, log_end)


def _build(
    plan: TrainPlan, world: int, checkpoint: Checkpoint | None, device: torch.device | None
) -> tuple[SequentialTransformer, ShardedWindows, int]:
    """The model as ``start_fit`` makes it from the log (then restored from the
    checkpoint), the sharded windows, and the log offset trained to. ``device``: where the
    model lives, when not where its spec says (a GPU per process)."""
    collective = device or torch.device("cpu")
    log = open_log(plan.db, schema=plan.schema)
    try:
        log_end = checkpoint.log_end if checkpoint else int(log.end_offset)
        if world > 1:  # the log may grow while the processes start: rank 0's end holds
            end = torch.tensor([log_end], dtype=torch.int64, device=collective)
            dist.broadcast(end, src=0)
            log_end = int(end[0])
        events = log.read(0, log_end, positive=True)
        catalog = log.catalog()
    finally:
        log.close()
    _, factory = parse_model(plan.model)
    if device is not None:
        params: dict[str, Any] = factory().get_params() | {"device": str(device)}
        factory = partial(SequentialTransformer, **params)
    model = with_catalog(factory, catalog)()
    assert isinstance(model, SequentialTransformer)  # TrainPlan checked the spec
    windows, users = model.start_fit(events)
    if world > 1:  # every process must have built the same tables
        sizes = torch.tensor([len(model.users_), len(model.items_)], device=collective)
        low, high = sizes.clone(), sizes.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(
                f"the processes read different logs: users and items from {low.tolist()} to "
                f"{high.tolist()} (did the catalogue change while they started?)"
            )
    if checkpoint is not None:
        _restore(model, checkpoint)
    data = ShardedWindows(windows, users, plan.shards, model.batch_size, model.seed)
    return model, data, log_end


def _gather(values: torch.Tensor, world: int) -> torch.Tensor:
    """Every process's ``values`` (1-d, any length), concatenated in rank order."""
    return torch.cat(_gather_parts(values, world))


def _gather_parts(values: torch.Tensor, world: int) -> list[torch.Tensor]:
    """Every process's ``values`` (any length along the first axis, the same other axes),
    in rank order."""
    size = torch.tensor([len(values)], device=values.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    padded = values.new_zeros(longest, *values.shape[1:])
    padded[: len(values)] = values
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [part[: int(s)] for part, s in zip(gathered, sizes, strict=True)]


def _reduce_rows(
    rows: torch.Tensor, gradient: torch.Tensor, world: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A sampled step's id-table gradient, as DistributedDataParallel would average it, at
    the cost of the rows touched rather than of the table: the union of every process's
    ``rows`` (distinct, sorted; shape (k,)) and, per row, the sum of the processes' gradients
    (shape (k, dim)) divided by their number. Added in rank order, so that every process
    gets the same numbers and their tables stay equal."""
    every_rows = _gather_parts(rows, world)
    every_gradient = _gather_parts(gradient, world)
    union = torch.unique(torch.cat(every_rows))
    total = gradient.new_zeros(len(union), gradient.shape[1])
    for part_rows, part_gradient in zip(every_rows, every_gradient, strict=True):
        # distinct rows within a part: no two writes to one row, so also exact on a GPU
        total.index_add_(0, torch.searchsorted(union, part_rows), part_gradient)
    return union, total / world


def _sum(value: float, world: int, device: torch.device) -> float:
    """``value`` summed over the processes (itself with one)."""
    if world == 1:
        return float(value)
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor[0])


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(
    plan: TrainPlan,
    model: SequentialTransformer,
    epoch: int,
    step: int,
    log_end: int,
    sums: tuple[float, int, float] = (0.0, 0, 0.0),
) -> Path:
    """Write a checkpoint (whole, then renamed into place) and delete the older ones.
    ``sums``: the current epoch's summed loss, targets and seconds so far."""
    assert plan.checkpoints is not None
    folder = Path(plan.checkpoints)
    folder.mkdir(parents=True, exist_ok=True)
    global_step = int(model.steps_[0])
    final = folder / f"{_CHECKPOINT}{global_step:09d}"
    temporary = folder / f".tmp-{uuid.uuid4().hex}"
    model.save(temporary)
    state = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "epoch": epoch,
        "step": step,
        "global_step": global_step,
        "log_end": log_end,
        "training_log": model.training_log_,
        "epoch_sums": {"loss": sums[0], "targets": sums[1], "seconds": sums[2]},
        "plan": asdict(plan),
    }
    (temporary / "trainer.json").write_text(json.dumps(state), encoding="utf-8")
    if final.exists():  # written by a run that was killed after it: the same state
        shutil.rmtree(final)
    os.replace(temporary, final)
    for old in folder.glob(f"{_CHECKPOINT}*"):
        if old != final and old.name < final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def newest_checkpoint(folder: str | Path | None) -> Checkpoint | None:
    """The newest whole checkpoint under ``folder``, or None."""
    if folder is None or not Path(folder).is_dir():
        return None
    for path in sorted(Path(folder).glob(f"{_CHECKPOINT}*"), reverse=True):
        try:
            state = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"{path}: checkpoint format {state.get('format_version')!r} is not the "
                f"supported {CHECKPOINT_FORMAT_VERSION}"
            )
        sums = state["epoch_sums"]
        return Checkpoint(path, int(state["epoch"]), int(state["step"]),
                          int(state["global_step"]), int(state["log_end"]),
                          list(state["training_log"]), float(sums["loss"]),
                          int(sums["targets"]), float(sums["seconds"]))  # fmt: skip
    return None


def _check_same_run(plan: TrainPlan, checkpoint: Checkpoint) -> None:
    """A checkpoint resumes only the run that wrote it: the same model, shards and log."""
    saved = json.loads((checkpoint.path / "trainer.json").read_text(encoding="utf-8"))["plan"]
    for name in ("model", "shards", "schema"):
        if saved[name] != getattr(plan, name):
            raise ValueError(
                f"{checkpoint.path.parent}: the checkpoint is of a run with {name}="
                f"{saved[name]!r}, not {getattr(plan, name)!r}: remove it, or name another "
                "checkpoint folder"
            )


def _restore(model: SequentialTransformer, checkpoint: Checkpoint) -> None:
    """Put the checkpoint's network, optimiser moments and step count into ``model``, built
    afresh from the same log."""
    manifest = json.loads((checkpoint.path / "manifest.json").read_text(encoding="utf-8"))
    if len(manifest["items"]) != len(model.items_) or len(manifest["users"]) != len(model.users_):
        raise ValueError(
            f"{checkpoint.path}: the checkpoint knows {len(manifest['users'])} users and "
            f"{len(manifest['items'])} items, the log up to offset {checkpoint.log_end} gives "
            f"{len(model.users_)} and {len(model.items_)}"
        )
    with np.load(checkpoint.path / "arrays.npz", allow_pickle=False) as stored:
        arrays = {
            name.removeprefix("model."): stored[name]
            for name in stored.files
            if name.startswith("model.")
        }
    model._set_state(arrays)


# ------------------------------------------------------------------------------ publishing


def publish(plan: TrainPlan, model: Recommender, offset: int) -> int | None:
    """Save ``model`` as the next snapshot version in the service's store; its version
    (None when the plan names no store)."""
    from lifelong_rec.service.stores import open_snapshots  # the service's, only to publish

    if plan.snapshots is None and not is_postgres(plan.db):
        return None
    store = open_snapshots(
        plan.db,
        folder=None if plan.snapshots is None else Path(plan.snapshots),
        name=plan.snapshot_name or plan.model,
        schema=plan.schema,
    )
    try:
        for _ in range(10):  # another writer may take a version meanwhile: take the next
            version = max(store.versions(), default=0) + 1
            try:
                store.save(model, version, offset)
            except FileExistsError:
                continue
            return version
        raise RuntimeError("could not find a free snapshot version in 10 tries")
    finally:
        store.close()


# ------------------------------------------------------------------------------ processes


def worker_main(argv: Sequence[str] | None = None) -> int:
    """A process of a run started by torchrun's elastic launcher: reads its rank from the
    environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the process group, trains, and on
    rank 0 publishes."""
    parser = argparse.ArgumentParser(prog="python -m lifelong_rec.train")
    parser.add_argument("plan", help="the TrainPlan as JSON")
    args = parser.parse_args(argv)
    plan = TrainPlan.from_json(args.plan)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if plan.threads is None:
        plan = replace(plan, threads=max(1, (os.cpu_count() or 1) // local_world))
    if world > 1:
        from datetime import timedelta

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=plan.timeout_seconds))
    try:
        trained = train(plan, rank, world, local_rank)
        if rank == 0:
            version = publish(plan, trained.model, trained.offset)
            if plan.checkpoints and version is not None:  # done: the next run starts afresh
                shutil.rmtree(plan.checkpoints, ignore_errors=True)
            summary = {"published_version": version, "offset": trained.offset,
                       "training_log": trained.model.training_log_}  # fmt: skip
            print(f"lifelong-rec train: {json.dumps(summary)}", file=sys.stderr, flush=True)
        if world > 1:
            # every process leaves the group together: a gloo process tearing down while a
            # peer still works (rank 0 publishing) aborted ("terminate called without an
            # active exception") in about half of the runs of a 2-process test
            dist.barrier()
    finally:
        if world > 1:
            dist.destroy_process_group()
    return 0


def launch(
    plan: TrainPlan,
    nproc: int,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    run_id: str | None = None,
    max_restarts: int = 0,
) -> None:
    """Run ``plan`` on ``nproc`` processes on each of ``nnodes`` machines through torchrun's
    elastic launcher (``torch.distributed.launcher.elastic_launch``), this machine's share.

    One machine needs no endpoint (a free local port, as ``torchrun --standalone``); several
    run this with the same ``rdzv_endpoint`` (host:port of one of them) and ``run_id``. A
    process that fails restarts the whole group up to ``max_restarts`` times, each restart
    resuming from the newest checkpoint.

    Raises
    ------
    torch.distributed.elastic.multiprocessing.errors.ChildFailedError
        If a process failed (its error is in the launcher's report).
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    check_positive_ints(nproc=nproc, nnodes=nnodes)
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError("nnodes > 1 needs a rendezvous endpoint (host:port) on every machine")
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=nproc,
        run_id=run_id or (f"lifelong-rec-{uuid.uuid4().hex[:12]}" if nnodes == 1 else ""),
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint or "localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
    )
    if not config.run_id:
        raise ValueError("nnodes > 1 needs a run id shared by every machine")
    elastic_launch(config, entrypoint=sys.executable)("-m", "lifelong_rec.train", plan.to_json())


if __name__ == "__main__":
    raise SystemExit(worker_main())
