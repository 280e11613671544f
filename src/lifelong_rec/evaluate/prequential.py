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
   after it was scored. Update seconds are the time inside the strategy's hooks, as wall-clock
   seconds and as the process's CPU seconds (which a busy machine does not inflate: cost ratios
   are stated on them).
6. Forgetting is measured on answers no strategy ever learns: a seeded sample (``probe_share``)
   of the first interactions of (user, item) pairs in the first tenth of the test rows is held
   out, with every later row of those pairs, before the stream is cut into blocks. Each probe
   is ranked right after its block and again at the end, both times among the same items (all
   but what its user interacts with anywhere in the stream), so a model that does not change
   scores the same twice. Reported: the mean NDCG@k change, end minus right after (negative:
   the model forgot), with a 95 % interval over the probes.
7. Reported: HR@k, NDCG@k, MRR@k (micro averages over scored rows), the per-block series,
   update and warm-up seconds (wall and CPU), peak memory, scored rows, the share of scored
   rows whose user the model did not know, forgetting on the probes, the oracle ceiling, and
   HR@k and NDCG@k on the rows that are the first interaction with their item (cold-start
   items).

Each strategy runs in its own forked process (``workers`` at a time), so that its peak memory
is its own and strategies can run side by side; ``workers=0`` runs them in this process. Given
a ``folder``, each strategy's result is written there as soon as it finishes, a failed
strategy does not stop the others, and a later run with the same folder and data resumes: it
runs only what has no result yet. A strategy that provably learns exactly what another one
does (replay and pull do nothing to a model whose state is exact counts, so its
``incremental@row`` is its ``naive@row``) runs once and is reported under both names.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import resource
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.evaluate.metrics import hits, ndcg, reciprocal_rank, target_ranks
from lifelong_rec.events import EventBatch, IdIndex
from lifelong_rec.lifelong import Strategy
from lifelong_rec.lifelong.strategies import Incremental
from lifelong_rec.models import GrowingSparse, Recommender
from lifelong_rec.models.sparse import segments

StrategyFactory = Callable[[], Strategy]
FORGETTING_SHARE = 0.1  # the probes come from the first tenth of the test rows
PROBE_SHARE = 0.1  # the share of the first interactions there held out as probes


@dataclass(frozen=True, eq=False)
class Stream:
    """A data set prepared for P1: sorted, deduplicated, indexed, cut into blocks."""

    events: EventBatch
    warmup_rows: int
    bounds: np.ndarray  # (blocks + 1,) absolute row offsets of the blocks
    user: np.ndarray  # (n,) dense user index of each row
    item: np.ndarray  # (n,) dense item index of each row
    items: IdIndex  # every item of the data, in order of first appearance (probes' last)
    users: IdIndex  # the same for users
    repeat: np.ndarray  # (n,) the (user, item) pair occurred in an earlier row
    first_row: np.ndarray  # (n_items,) the row where each item first appears
    duplicates_dropped: int
    # held-out probes, never learned: dense user and item index, and the block after which
    # each is first ranked; probe_rows_removed counts them with their pairs' later rows
    probe_user: np.ndarray
    probe_item: np.ndarray
    probe_block: np.ndarray
    probe_rows_removed: int
    fingerprint: str  # of the rows, the probes and the blocks: what a resumed run must match

    @property
    def blocks(self) -> int:
        return len(self.bounds) - 1

    @property
    def n_users(self) -> int:
        return int(self.user.max()) + 1 if len(self.user) else 0


def prepare(
    events: EventBatch,
    warmup: float = 0.5,
    blocks: int = 500,
    probe_share: float = PROBE_SHARE,
    seed: int = 0,
) -> Stream:
    """Sort, deduplicate, hold out the probes, index and cut a data set as P1 says."""
    if not 0 < warmup < 1:
        raise ValueError(f"warmup must be between 0 and 1, got {warmup!r}")
    if not 0 <= probe_share < 1:
        raise ValueError(f"probe_share must be in [0, 1), got {probe_share!r}")
    check_positive_ints(blocks=blocks)
    events = events.sorted_by_time()
    keys = np.rec.fromarrays([events.user, events.item, events.timestamp, events.kind,
                              np.nan_to_num(events.value, nan=-1e300)])  # fmt: skip
    _, first = np.unique(keys, return_index=True)
    keep = np.zeros(len(events), dtype=bool)
    keep[first] = True
    dropped = int(len(events) - keep.sum())
    events = events.take(keep)
    # the probes: a sample of the pairs' first rows in the first tenth of the test rows
    warmup_rows = int(warmup * len(events))
    early = warmup_rows + int(FORGETTING_SHARE * (len(events) - warmup_rows))
    pair = _pairs(events.user, events.item)
    first_of_pair = np.zeros(len(events), dtype=bool)
    first_of_pair[np.unique(pair, return_index=True)[1]] = True
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(first_of_pair[warmup_rows:early]) + warmup_rows
    chosen = chosen[rng.random(len(chosen)) < probe_share]
    held = np.isin(pair, pair[chosen])
    probes, events = events.take(chosen), events.take(~held)
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
    # a probe's block: the one its time falls in among the rows left (a probe-only user or
    # item is indexed after the stream's, unknown to every model)
    probe_user, probe_item = users.add(probes.user), items.add(probes.item)
    first_row = np.concatenate([first_row, np.full(len(items) - len(first_row), n)])
    position = np.searchsorted(events.timestamp, probes.timestamp, side="right")
    probe_block = np.maximum(np.searchsorted(bounds, position, side="right") - 1, 0)
    fingerprint = hashlib.sha256()
    for column in (events.user, events.item, probes.user, probes.item):
        fingerprint.update("\x1f".join(map(str, column.tolist())).encode())
    for array in (events.timestamp, events.weight, bounds, probe_block):
        fingerprint.update(np.ascontiguousarray(array).tobytes())
    return Stream(events, warmup_rows, bounds, user, item, items, users, repeat, first_row, dropped,
                  probe_user, probe_item, probe_block, int(held.sum()),
                  fingerprint.hexdigest()[:16])  # fmt: skip


def _pairs(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """A dense code per (user, item) pair of raw ids."""
    user = np.unique(users, return_inverse=True)[1]
    item = np.unique(items, return_inverse=True)[1]
    return user.astype(np.int64) * (int(item.max(initial=0)) + 1) + item


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
    update_seconds: float  # wall clock
    update_cpu_seconds: float  # the process's CPU time (every thread's)
    warmup_seconds: float
    warmup_cpu_seconds: float
    peak_memory_mib: float
    backward_transfer: dict[str, float]  # forgetting on the held-out probes (see the module)
    drift_detections: int
    new_items: dict[str, float]  # the metrics on rows whose item no earlier row had (cold start)
    per_block: dict[str, list[float]] = field(repr=False)
    same_as: str | None = None  # the strategy whose run this is, where learning is identical


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
        update CPU seconds over the incremental strategy's (the lifelong claim of
        PROTOCOLS.md; the wall-clock ratio beside it)."""
        ratios: dict[str, dict[str, dict[str, float]]] = {}
        for result in self.results:
            reference = self.result(result.model, "retrain@1")
            if reference is None or not result.strategy.startswith(("incremental", "naive")):
                continue
            ratios.setdefault(result.model, {})[result.strategy] = {
                "ndcg_vs_retrain@1": _ratio(result.ndcg, reference.ndcg),
                "update_speedup_vs_retrain@1": _ratio(
                    reference.update_cpu_seconds, result.update_cpu_seconds
                ),
                "update_wall_speedup_vs_retrain@1": _ratio(
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
    folder: str | Path | None = None,
    probe_share: float = PROBE_SHARE,
    seed: int = 0,
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
        A progress bar per strategy, and one for the whole run, on standard error.
    tensorboard : path, optional
        Write each strategy's per-block metrics there, live, for TensorBoard.
    folder : path, optional
        Write each strategy's result to ``folder/strategies/`` as soon as it finishes, and
        take the results already there (from a run on the same rows, probes and blocks)
        instead of running those strategies again.
    probe_share : float
        The share of the early first interactions held out to measure forgetting.
    seed : int
        Seeds the choice of the probes.

    Raises
    ------
    RuntimeError
        When a strategy failed, after every other one has finished (and, given a folder,
        been written): it names the failed ones with their errors.
    """
    check_positive_ints(k=k)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    stream = prepare(events, warmup, blocks, probe_share, seed)
    store = _ResultStore(folder, stream, k) if folder is not None else None
    names = list(strategies)
    done: dict[tuple[str, str], StrategyResult] = store.finished(names) if store else {}
    same = _identical(strategies, [n for n in names if n not in done], names)
    jobs = [(position, name, strategies[name]) for position, name in enumerate(names)
            if name not in done and name not in same]  # fmt: skip
    run = lambda job: _run_strategy(stream, job[1], job[2], k, job[0], progress, tensorboard)  # noqa: E731
    overall = _bar(progress and len(jobs) > 1, len(jobs), "P1 strategies", len(names), "strategy")

    def finished(result: StrategyResult) -> None:
        done[(result.model, result.strategy)] = result
        if store is not None:
            store.write(result)
        overall.update(1)

    failures = _run_jobs(jobs, run, workers, finished)
    overall.close()
    for name, reference in same.items():
        if reference in done:
            finished_as = replace(done[reference], strategy=name[1], same_as=reference[1])
            done[name] = finished_as
            if store is not None:
                store.write(finished_as)
    if failures:
        raise RuntimeError("P1: " + "; ".join(f"strategy {n} failed:\n{e}" for n, e in failures))
    scored = ~stream.repeat[stream.warmup_rows :]
    return P1Report(
        params={
            "warmup": warmup,
            "blocks": blocks,
            "k": k,
            "probe_share": probe_share,
            "seed": seed,
        },
        data={
            "rows": len(stream.events) + stream.duplicates_dropped + stream.probe_rows_removed,
            "duplicates_dropped": stream.duplicates_dropped,
            "probe_rows": len(stream.probe_user),
            "probe_rows_removed": stream.probe_rows_removed,
            "warmup_rows": stream.warmup_rows,
            "test_rows": len(stream.events) - stream.warmup_rows,
            "scored_rows": int(scored.sum()),
            "users": stream.n_users,
            "items": len(stream.items),
            "fingerprint": stream.fingerprint,
        },
        oracle=_oracle(stream),
        results=[done[name] for name in names],
    )


def _identical(
    strategies: Mapping[tuple[str, str], StrategyFactory],
    pending: list[tuple[str, str]],
    names: list[tuple[str, str]],
) -> dict[tuple[str, str], tuple[str, str]]:
    """Pending strategies that learn exactly what another requested one (of ``names``, run
    or to run) does -> that one: an incremental strategy of a model whose replay and pull do
    nothing (its class keeps the base class's no-op hooks) is the naive strategy of the same
    cadence."""
    same = {}
    for model, spec in pending:
        try:
            strategy = strategies[(model, spec)]()
        except Exception:  # it fails again as a job, reported with the others
            continue
        naive = (model, f"naive@{strategy.cadence}")
        if not isinstance(strategy, Incremental) or strategy.naive or naive not in names:
            continue
        kind = type(strategy.factory())
        if all(getattr(kind, hook) is getattr(Recommender, hook)
               for hook in ("replay", "_replay", "anchor", "_anchor")):  # fmt: skip
            same[(model, spec)] = naive
    return same


class _ResultStore:
    """Each strategy's result as one JSON file, stamped with what it was measured on."""

    def __init__(self, folder: str | Path, stream: Stream, k: int) -> None:
        self.folder = Path(folder) / "strategies"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stamp = {"fingerprint": stream.fingerprint, "k": k}

    def _path(self, name: tuple[str, str]) -> Path:
        slug = hashlib.sha256("\x1f".join(name).encode()).hexdigest()[:12]
        return self.folder / f"{slug}.json"

    def write(self, result: StrategyResult) -> None:
        path = self._path((result.model, result.strategy))
        payload = self.stamp | {"result": _json_safe(asdict(result))}
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(payload))
        partial.replace(path)  # whole or absent, never half written

    def finished(self, names: list[tuple[str, str]]) -> dict[tuple[str, str], StrategyResult]:
        found = {}
        for name in names:
            path = self._path(name)
            if not path.is_file():
                continue
            payload = json.loads(path.read_text())
            if {key: payload.get(key) for key in self.stamp} != self.stamp:
                continue  # measured on other rows, probes or blocks: run again
            fields = _from_json(payload["result"])
            assert isinstance(fields, dict)
            found[name] = StrategyResult(**fields)
        return found


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _from_json(value: object) -> object:
    if isinstance(value, dict):
        if value.keys() == {"float"}:
            return float(value["float"])
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


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
    clock = _Clock()
    with clock:
        strategy.warm_up(events.take(slice(0, stream.warmup_rows)))
    warmup_seconds, warmup_cpu = clock.wall, clock.cpu

    history = _true_history(stream, stream.warmup_rows)
    everything = _true_history(stream, n)  # what the probes are ranked without
    columns = _ItemColumns(stream)
    ranks = np.full(n, np.inf)
    probe_after = np.full(len(stream.probe_user), np.inf)
    unknown = np.zeros(n, dtype=bool)
    block_update = np.zeros((stream.blocks, 2))  # wall, CPU
    bar = _bar(progress, stream.blocks, f"{names[0]} {names[1]}", position)
    for b in range(stream.blocks):
        lo, hi = int(stream.bounds[b]), int(stream.bounds[b + 1])
        block = events.take(slice(lo, hi))
        clock = _Clock()
        if strategy.cadence == "row":
            for row in range(lo, hi):
                if not stream.repeat[row]:
                    ranked = _rank_rows(strategy.trained, stream, history, row, row + 1, columns)
                    ranks[row], unknown[row] = ranked[0][0], ranked[1][0]
                history.add(stream.user[row : row + 1], stream.item[row : row + 1], np.ones(1))
                event = block.take(slice(row - lo, row - lo + 1))  # the harness's work, untimed
                with clock:
                    strategy.observe(event)
        else:
            ranks[lo:hi], unknown[lo:hi] = _rank_rows(
                strategy.trained, stream, history, lo, hi, columns
            )
            history.add(stream.user[lo:hi], stream.item[lo:hi], np.ones(hi - lo))
        served = ~stream.repeat[lo:hi]
        with clock:
            strategy.end_block(block, 1.0 - hits(ranks[lo:hi][served], k))
        block_update[b] = clock.wall, clock.cpu
        probes = np.flatnonzero(stream.probe_block == b)
        if len(probes):  # right after their block
            probe_after[probes] = _rank_probes(strategy.trained, stream, everything, probes,
                                               columns)  # fmt: skip
        if writer is not None:
            _write_block(writer, b, ranks[lo:hi][served], k, clock.wall)
        bar.update(1)
    bar.close()
    if writer is not None:
        writer.close()

    test = np.arange(stream.warmup_rows, n)
    scored = test[~stream.repeat[test]]
    drift = getattr(strategy, "drift", None)
    probes = np.arange(len(stream.probe_user))
    probe_end = _rank_probes(strategy.trained, stream, everything, probes, columns)
    return StrategyResult(
        model=names[0],
        strategy=names[1],
        hr=_mean(hits(ranks[scored], k)),
        ndcg=_mean(ndcg(ranks[scored], k)),
        mrr=_mean(reciprocal_rank(ranks[scored], k)),
        scored_rows=len(scored),
        unknown_user_share=_mean(unknown[scored].astype(np.float64)),
        update_seconds=float(block_update[:, 0].sum()),
        update_cpu_seconds=float(block_update[:, 1].sum()),
        warmup_seconds=warmup_seconds,
        warmup_cpu_seconds=warmup_cpu,
        peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        backward_transfer=_forgetting(stream, probe_after, probe_end, k),
        drift_detections=drift.detections if drift is not None else 0,
        new_items=_new_items(stream, ranks, scored, k),
        per_block=_per_block(stream, ranks, k)
        | {
            "update_seconds": block_update[:, 0].tolist(),
            "update_cpu_seconds": block_update[:, 1].tolist(),
        },
    )


class _Clock:
    """Wall-clock and CPU seconds summed over the ``with`` blocks it times."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> None:
        self._started = (time.perf_counter(), time.process_time())

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._started[0]
        self.cpu += time.process_time() - self._started[1]


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
    owner, before = _seen_by(history, stream.user[rows])
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


def _seen_by(history: GrowingSparse, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``users``, item) for every item of each user in ``history`` (a user may
    repeat)."""
    seen = history.row_block(users)
    return np.repeat(np.arange(len(users)), np.diff(seen.indptr)), seen.indices


def _rank_probes(
    model: Recommender,
    stream: Stream,
    everything: GrowingSparse,
    probes: np.ndarray,
    columns: _ItemColumns,
) -> np.ndarray:
    """Ranks of probes ``probes`` under ``model``, each among every item but those its user
    interacts with anywhere in the stream (the same items at any time)."""
    users = stream.probe_user[probes]
    known = users < everything.shape[0]  # a probe-only user is unknown to the model
    ranks = np.full(len(probes), np.inf)
    if not known.any():
        return ranks
    users = users[known]
    owner, excluded = _seen_by(everything, users)
    scores = model.score_all(stream.users.ids(users))
    position = columns(model)
    target = position[stream.probe_item[probes[known]]]
    ranks[known] = target_ranks(scores, owner, position[excluded], target)
    return ranks


def _forgetting(stream: Stream, after: np.ndarray, end: np.ndarray, k: int) -> dict[str, float]:
    """NDCG@k of the probes at the end minus right after their block (negative: the model
    forgot), with a normal 95 % interval over the probes."""
    change = ndcg(end, k) - ndcg(after, k)
    n = len(change)
    half = 1.96 * float(np.std(change, ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    delta = _mean(change)
    return {
        "probes": n,
        "blocks": int(stream.probe_block.max(initial=-1)) + 1,
        "ndcg_after": _mean(ndcg(after, k)),
        "ndcg_end": _mean(ndcg(end, k)),
        "hr_after": _mean(hits(after, k)),
        "hr_end": _mean(hits(end, k)),
        "delta": delta,
        "ci95_low": delta - half,
        "ci95_high": delta + half,
    }


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


def _run_jobs(
    jobs: list, run: Callable, workers: int, finished: Callable[[StrategyResult], None]
) -> list[tuple[tuple[str, str], str]]:
    """Run every job (here, or in forked processes ``workers`` at a time), handing each result
    to ``finished`` as it comes; a failure does not stop the others. Returns the failures:
    (names, error)."""
    failures = []
    if workers == 0:
        for job in jobs:
            try:
                result = run(job)
            except Exception:  # the others still run; the caller raises with every failure
                failures.append((job[1], traceback.format_exc()))
                continue
            finished(result)
        return failures
    context = multiprocessing.get_context("fork")
    pending = list(jobs)
    running: dict[int, tuple[BaseProcess, Connection, tuple[str, str]]] = {}
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(run, job, sender), daemon=True)
            process.start()
            sender.close()
            running[job[0]] = (process, receiver, job[1])
        ready = multiprocessing.connection.wait([r for _, r, _ in running.values()])
        for index, (child, receiver, names) in list(running.items()):
            if receiver not in ready:
                continue
            try:
                ok, payload = receiver.recv()
            except EOFError:  # the process died without a word (killed, out of memory)
                ok, payload = False, "its process died"
            child.join()
            del running[index]
            if ok:
                finished(payload)
            else:
                code = f" (exit code {child.exitcode})" if child.exitcode else ""
                failures.append((names, f"{payload}{code}"))
    return failures


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


def _bar(enabled: bool, total: int, label: str, position: int, unit: str = "block"):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit=unit, position=position, disable=not enabled,
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
