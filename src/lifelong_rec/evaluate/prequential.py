"""Protocol P1: prequential lifelong evaluation (../shared/PROTOCOLS.md), every strategy alike.

1. Rows sorted by time (stable), exact duplicates dropped.
2. The first ``warmup`` share of rows trains every strategy before the stream.
3. The rest is cut into ``blocks`` consecutive blocks of equal row count (the last block
   takes the remainder).
4. Each row (u, i) is scored with the strategy's model as it stands at that moment: the rank of
   i among all items the model knows, except the items u interacted with in any earlier row
   (the harness's filter, from the true history, identical for every strategy). Rows whose
   (u, i) pair occurred earlier are fed to the learner but not scored. A user the model does
   not know gets its cold-start fallback; an item it does not know is a miss. Ties count
   against the item (its rank is the number of items scoring at least as high).
5. Block strategies get each block after it was scored; row strategies get every row right
   after it was scored. Update seconds are the wall-clock time inside the strategy's hooks.
6. Reported: HR@k, NDCG@k, MRR@k (micro averages over scored rows), the per-block series,
   update and warm-up seconds, peak memory, scored rows, the share of scored rows whose user
   the model did not know, backward transfer, the oracle ceiling, and HR@k and NDCG@k on the
   rows that are the first interaction with their item (cold-start items).

Each strategy runs in its own forked process (``workers`` at a time), so that its peak memory
is its own and strategies can run side by side; ``workers=0`` runs them in this process.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.evaluate.metrics import hits, ndcg, reciprocal_rank, target_ranks
from lifelong_rec.events import EventBatch, IdIndex
from lifelong_rec.lifelong import Strategy
from lifelong_rec.models import GrowingSparse, Recommender
from lifelong_rec.models.sparse import segments

StrategyFactory = Callable[[], Strategy]
FORGETTING_SHARE = 0.1  # backward transfer is measured on the first tenth of the blocks


@dataclass(frozen=True, eq=False)
class Stream:
    """A data set prepared for P1: sorted, deduplicated, indexed, cut into blocks."""

    events: EventBatch
    warmup_rows: int
    bounds: np.ndarray  # (blocks + 1,) absolute row offsets of the blocks
    user: np.ndarray  # (n,) dense user index of each row
    item: np.ndarray  # (n,) dense item index of each row
    items: IdIndex  # every item of the data, in order of first appearance
    repeat: np.ndarray  # (n,) the (user, item) pair occurred in an earlier row
    first_row: np.ndarray  # (n_items,) the row where each item first appears
    duplicates_dropped: int

    @property
    def blocks(self) -> int:
        return len(self.bounds) - 1

    @property
    def n_users(self) -> int:
        return int(self.user.max()) + 1 if len(self.user) else 0


def prepare(events: EventBatch, warmup: float = 0.5, blocks: int = 500) -> Stream:
    """Sort, deduplicate, index and cut a data set as P1 says."""
    if not 0 < warmup < 1:
        raise ValueError(f"warmup must be between 0 and 1, got {warmup!r}")
    check_positive_ints(blocks=blocks)
    events = events.sorted_by_time()
    keys = np.rec.fromarrays([events.user, events.item, events.timestamp, events.kind,
                              np.nan_to_num(events.value, nan=-1e300)])  # fmt: skip
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(events), dtype=bool)
    keep[first] = True
    dropped = int(len(events) - keep.sum())
    events = events.take(keep)
    n = len(events)
    warmup_rows = int(warmup * n)
    if n - warmup_rows < blocks:
        raise ValueError(f"{n - warmup_rows} test rows cannot make {blocks} blocks")
    size = (n - warmup_rows) // blocks
    bounds = np.append(warmup_rows + size * np.arange(blocks), n)
    users, items = IdIndex(), IdIndex()
    user, item = users.add(events.user), items.add(events.item)
    pair = user * len(items) + item
    repeat = np.ones(n, dtype=bool)
    repeat[np.unique(pair, return_index=True)[1]] = False
    first_row = np.full(len(items), n, dtype=np.int64)
    np.minimum.at(first_row, item, np.arange(n))
    return Stream(events, warmup_rows, bounds, user, item, items, repeat, first_row, dropped)


@dataclass(frozen=True)
class StrategyResult:
    """What one strategy of one model scored under P1."""

    model: str
    strategy: str
    hr: float
    ndcg: float
    mrr: float
    scored_rows: int
    unknown_user_share: float
    update_seconds: float
    warmup_seconds: float
    peak_memory_mib: float
    backward_transfer: dict[str, float]
    drift_detections: int
    new_items: dict[str, float]  # the metrics on rows whose item no earlier row had (cold start)
    per_block: dict[str, list[float]] = field(repr=False)


@dataclass(frozen=True)
class P1Report:
    """Every number of a P1 run, with its parameters."""

    params: dict[str, object]
    data: dict[str, object]
    oracle: dict[str, dict[str, float]]
    results: list[StrategyResult]

    def to_dict(self) -> dict[str, object]:
        return {
            "protocol": "P1",
            "params": self.params,
            "data": self.data,
            "oracle": self.oracle,
            "lifelong": self.lifelong_ratios(),
            "results": [asdict(result) for result in self.results],
        }

    def result(self, model: str, strategy: str) -> StrategyResult | None:
        return next((r for r in self.results if r.model == model and r.strategy == strategy), None)

    def lifelong_ratios(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per model: NDCG@k of each incremental strategy over retrain@1's, and retrain@1's
        update seconds over the incremental strategy's (the lifelong claim of PROTOCOLS.md)."""
        ratios: dict[str, dict[str, dict[str, float]]] = {}
        for result in self.results:
            reference = self.result(result.model, "retrain@1")
            if reference is None or not result.strategy.startswith(("incremental", "naive")):
                continue
            ratios.setdefault(result.model, {})[result.strategy] = {
                "ndcg_vs_retrain@1": _ratio(result.ndcg, reference.ndcg),
                "update_speedup_vs_retrain@1": _ratio(
                    reference.update_seconds, result.update_seconds
                ),
            }
        return ratios


def prequential(
    events: EventBatch,
    strategies: Mapping[tuple[str, str], StrategyFactory],
    warmup: float = 0.5,
    blocks: int = 500,
    k: int = 10,
    workers: int = 1,
    progress: bool = True,
    tensorboard: str | Path | None = None,
) -> P1Report:
    """Run protocol P1 for every (model name, strategy name) -> strategy factory.

    Parameters
    ----------
    events : EventBatch
    strategies : mapping of (model name, strategy name) to a callable making the strategy
    warmup : float
        Share of rows every strategy trains on before the stream.
    blocks : int
    k : int
    workers : int
        Strategies run at once, each in a forked process; 0 runs them here, one by one.
    progress : bool
        A progress bar per strategy, on standard error.
    tensorboard : path, optional
        Write each strategy's per-block metrics there, live, for TensorBoard.
    """
    check_positive_ints(k=k)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    stream = prepare(events, warmup, blocks)
    jobs = [(position, names, factory) for position, (names, factory) in
            enumerate(strategies.items())]  # fmt: skip
    run = lambda job: _run_strategy(stream, job[1], job[2], k, job[0], progress, tensorboard)  # noqa: E731
    outcomes = [run(job) for job in jobs] if workers == 0 else _in_processes(jobs, run, workers)
    scored = ~stream.repeat[stream.warmup_rows :]
    return P1Report(
        params={"warmup": warmup, "blocks": blocks, "k": k},
        data={
            "rows": len(stream.events) + stream.duplicates_dropped,
            "duplicates_dropped": stream.duplicates_dropped,
            "warmup_rows": stream.warmup_rows,
            "test_rows": len(stream.events) - stream.warmup_rows,
            "scored_rows": int(scored.sum()),
            "users": stream.n_users,
            "items": len(stream.items),
        },
        oracle=_oracle(stream),
        results=outcomes,
    )


# ------------------------------------------------------------------------------ one strategy


def _run_strategy(
    stream: Stream,
    names: tuple[str, str],
    factory: StrategyFactory,
    k: int,
    position: int,
    progress: bool,
    tensorboard: str | Path | None,
) -> StrategyResult:
    strategy = factory()
    events, n = stream.events, len(stream.events)
    writer = _writer(tensorboard, names)
    started = time.perf_counter()
    strategy.warm_up(events.take(slice(0, stream.warmup_rows)))
    warmup_seconds = time.perf_counter() - started

    history = _true_history(stream, stream.warmup_rows)
    columns = _ItemColumns(stream)
    ranks = np.full(n, np.inf)
    unknown = np.zeros(n, dtype=bool)
    block_update = np.zeros(stream.blocks)
    bar = _bar(progress, stream.blocks, f"{names[0]} {names[1]}", position)
    for b in range(stream.blocks):
        lo, hi = int(stream.bounds[b]), int(stream.bounds[b + 1])
        block = events.take(slice(lo, hi))
        update = 0.0
        if strategy.cadence == "row":
            for row in range(lo, hi):
                if not stream.repeat[row]:
                    ranked = _rank_rows(strategy.trained, stream, history, row, row + 1, columns)
                    ranks[row], unknown[row] = ranked[0][0], ranked[1][0]
                history.add(stream.user[row : row + 1], stream.item[row : row + 1], np.ones(1))
                event = block.take(slice(row - lo, row - lo + 1))  # the harness's work, untimed
                tick = time.perf_counter()
                strategy.observe(event)
                update += time.perf_counter() - tick
        else:
            ranks[lo:hi], unknown[lo:hi] = _rank_rows(
                strategy.trained, stream, history, lo, hi, columns
            )
            history.add(stream.user[lo:hi], stream.item[lo:hi], np.ones(hi - lo))
        served = ~stream.repeat[lo:hi]
        tick = time.perf_counter()
        strategy.end_block(block, 1.0 - hits(ranks[lo:hi][served], k))
        update += time.perf_counter() - tick
        block_update[b] = update
        if writer is not None:
            _write_block(writer, b, ranks[lo:hi][served], k, update)
        bar.update(1)
    bar.close()
    if writer is not None:
        writer.close()

    test = np.arange(stream.warmup_rows, n)
    scored = test[~stream.repeat[test]]
    drift = getattr(strategy, "drift", None)
    return StrategyResult(
        model=names[0],
        strategy=names[1],
        hr=_mean(hits(ranks[scored], k)),
        ndcg=_mean(ndcg(ranks[scored], k)),
        mrr=_mean(reciprocal_rank(ranks[scored], k)),
        scored_rows=len(scored),
        unknown_user_share=_mean(unknown[scored].astype(np.float64)),
        update_seconds=float(block_update.sum()),
        warmup_seconds=warmup_seconds,
        peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        backward_transfer=_backward_transfer(strategy.trained, stream, ranks, k, columns),
        drift_detections=drift.detections if drift is not None else 0,
        new_items=_new_items(stream, ranks, scored, k),
        per_block=_per_block(stream, ranks, k) | {"update_seconds": block_update.tolist()},
    )


def _true_history(stream: Stream, until: int) -> GrowingSparse:
    """Every (user, item) pair of the rows before ``until``: the harness's filter."""
    history = GrowingSparse((stream.n_users, len(stream.items)), "max", np.float32)
    history.add(stream.user[:until], stream.item[:until], np.ones(until, dtype=np.float32))
    return history


class _ItemColumns:
    """Each data item's column in a model's scores (-1 if unknown to it), recomputed only when
    the model or its number of items changes, not for every scored row."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._model: Recommender | None = None  # held, so a new model is never mistaken for it
        self._n_items = -1
        self._position = np.zeros(0, dtype=np.int64)

    def __call__(self, model: Recommender) -> np.ndarray:
        if model is not self._model or len(model.items_) != self._n_items:
            self._position = model.items_.lookup(self.stream.items.to_array())
            self._model, self._n_items = model, len(model.items_)
        return self._position


def _rank_rows(
    model: Recommender,
    stream: Stream,
    history: GrowingSparse,
    lo: int,
    hi: int,
    columns: _ItemColumns,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of rows lo..hi-1 under a model that does not change in between.

    Excluded for row r: the items of its user in the true history at ``lo`` and in the rows
    lo..r-1. Returns (ranks, user unknown to the model), shape (hi - lo,) each; repeated
    pairs get rank inf and are ignored by the caller.
    """
    rows = np.arange(lo, hi)[~stream.repeat[lo:hi]]
    ranks = np.full(hi - lo, np.inf)
    unknown = np.zeros(hi - lo, dtype=bool)
    if len(rows) == 0:
        return ranks, unknown
    user_ids = stream.events.user[rows]
    unknown[rows - lo] = model.users_.lookup(user_ids) < 0
    scores = model.score_all(user_ids)
    position = columns(model)  # data item -> model column
    owner, excluded = _exclusions(stream, history, rows, lo)
    target = position[stream.item[rows]]
    ranks[rows - lo] = target_ranks(scores, owner, position[excluded], target)
    return ranks, unknown


def _exclusions(
    stream: Stream, history: GrowingSparse, rows: np.ndarray, lo: int
) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``rows``, data item) pairs to exclude: history at ``lo`` + rows since."""
    users = stream.user[rows]
    unique, inverse = np.unique(users, return_inverse=True)
    seen = history.rows(unique)
    lengths = np.diff(seen.indptr)[inverse]
    owner = np.repeat(np.arange(len(rows)), lengths)
    before = seen.indices[segments(seen.indptr[inverse], lengths)]
    # earlier rows of the same user inside this block
    span = np.arange(lo, int(rows.max()) + 1)
    order = np.lexsort((span, stream.user[span]))
    sorted_users = stream.user[span][order]
    group_start = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    starts = np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
    earlier_count = np.arange(len(order)) - starts  # rows of the same user before this one
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))
    at = where[rows - lo]
    counts = earlier_count[at]
    earlier = span[order[segments(starts[at], counts)]]
    owner = np.concatenate([owner, np.repeat(np.arange(len(rows)), counts)])
    return owner, np.concatenate([before, stream.item[earlier]])


def _backward_transfer(
    model: Recommender, stream: Stream, ranks: np.ndarray, k: int, columns: _ItemColumns
) -> dict[str, float]:
    """NDCG@k of the final model on the first tenth of the blocks, against the NDCG@k those
    rows got at the time (negative: the model forgot)."""
    last = max(1, round(FORGETTING_SHARE * stream.blocks))
    history = _true_history(stream, stream.warmup_rows)
    now = np.full(len(stream.events), np.inf)
    for b in range(last):
        lo, hi = int(stream.bounds[b]), int(stream.bounds[b + 1])
        now[lo:hi] = _rank_rows(model, stream, history, lo, hi, columns)[0]
        history.add(stream.user[lo:hi], stream.item[lo:hi], np.ones(hi - lo))
    rows = np.arange(stream.warmup_rows, int(stream.bounds[last]))
    rows = rows[~stream.repeat[rows]]
    then, later = _mean(ndcg(ranks[rows], k)), _mean(ndcg(now[rows], k))
    return {"blocks": last, "ndcg_then": then, "ndcg_now": later, "delta": later - then}


def _new_items(stream: Stream, ranks: np.ndarray, scored: np.ndarray, k: int) -> dict[str, float]:
    """HR@k and NDCG@k over the scored rows that are the first interaction with their item:
    what a model can do for an item nobody has touched yet (from its content, if it reads
    any; a pure collaborative model misses them all)."""
    rows = scored[stream.first_row[stream.item[scored]] == scored]
    return {
        "rows": len(rows),
        "hr": _mean(hits(ranks[rows], k)),
        "ndcg": _mean(ndcg(ranks[rows], k)),
    }


def _per_block(stream: Stream, ranks: np.ndarray, k: int) -> dict[str, list[float]]:
    hr, gain = [], []
    for b in range(stream.blocks):
        lo, hi = int(stream.bounds[b]), int(stream.bounds[b + 1])
        served = ranks[lo:hi][~stream.repeat[lo:hi]]
        hr.append(_mean(hits(served, k)))
        gain.append(_mean(ndcg(served, k)))
    return {"hr": hr, "ndcg": gain}


def _oracle(stream: Stream) -> dict[str, dict[str, float]]:
    """The ceiling: rank 1 for every scored row whose item the system had seen by the last
    update (block start for block cadence, the previous row for row cadence), else a miss."""
    rows = np.arange(stream.warmup_rows, len(stream.events))
    rows = rows[~stream.repeat[rows]]
    block_start = stream.bounds[np.searchsorted(stream.bounds, rows, side="right") - 1]
    first = stream.first_row[stream.item[rows]]
    known_at_block = _mean((first < block_start).astype(np.float64))
    known_at_row = _mean((first < rows).astype(np.float64))
    return {
        "block": {"hr": known_at_block, "ndcg": known_at_block},
        "row": {"hr": known_at_row, "ndcg": known_at_row},
    }


# ------------------------------------------------------------------------------ plumbing


def _in_processes(jobs: list, run: Callable, workers: int) -> list[StrategyResult]:
    """Run each job in a forked process, ``workers`` at a time; results in job order."""
    context = multiprocessing.get_context("fork")
    results: dict[int, StrategyResult] = {}
    pending = list(jobs)
    running: dict[int, tuple[BaseProcess, Connection]] = {}
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(run, job, sender), daemon=True)
            process.start()
            sender.close()
            running[job[0]] = (process, receiver)
        ready = multiprocessing.connection.wait([r for _, r in running.values()])
        for index, (child, receiver) in list(running.items()):
            if receiver in ready:
                ok, payload = receiver.recv()
                child.join()
                del running[index]
                if not ok:
                    raise RuntimeError(f"strategy {jobs[index][1]} failed:\n{payload}")
                results[index] = payload
    return [results[index] for index in range(len(jobs))]


def _child(run: Callable, job: tuple, sender) -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one BLAS thread per process: the processes share the cores
    if "torch" in sys.modules:  # and one for PyTorch's own pool
        sys.modules["torch"].set_num_threads(1)
    try:
        sender.send((True, run(job)))
    except BaseException:  # report any failure to the parent instead of dying silently
        sender.send((False, traceback.format_exc()))
    finally:
        sender.close()


def _bar(enabled: bool, total: int, label: str, position: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="block", position=position, disable=not enabled,
                leave=True, mininterval=1.0)  # fmt: skip


def _writer(folder: str | Path | None, names: tuple[str, str]):
    if folder is None:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise RuntimeError(
            "--tensorboard needs the tensorboard extra: pip install 'lifelong-rec[tensorboard]'"
        ) from error
    return SummaryWriter(str(Path(folder) / f"{names[0]}-{names[1].replace('@', '-at-')}"))


def _write_block(writer, block: int, ranks: np.ndarray, k: int, update_seconds: float) -> None:
    writer.add_scalar(f"hr@{k}", _mean(hits(ranks, k)), block)
    writer.add_scalar(f"ndcg@{k}", _mean(ndcg(ranks, k)), block)
    writer.add_scalar("update_seconds", update_seconds, block)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")
