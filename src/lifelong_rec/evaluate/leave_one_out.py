"""Protocol P2: chronological leave-one-out with full ranking (../shared/PROTOCOLS.md).

1. Per user, the positive rows (``weight > 0``) sorted by time with a stable sort (ties keep
   input order): the last one is the test interaction, the one before it the validation
   interaction, the rest is training. Users with fewer than ``min_interactions`` positive rows
   are not evaluated; all their rows are training rows.
2. Each model is fitted on the training rows, then ranks every evaluated user's validation
   item (reported apart: for early stopping and tuning only), then learns the validation rows
   (as RecBole's test sequences include the validation item), then ranks the test item.
3. A target is ranked among all items the model knows, except the user's training items and,
   for the test, the validation item: the harness's exclusion, taken from the split, the same
   for every model. Ties count against the target (its rank is the number of items scoring at
   least as high); an item the model does not know is a miss.
4. Reported per model: HR@k, NDCG@k and MRR@k averaged over evaluated users, for the test and
   the validation items, with the wall-clock seconds of the fit and of the validation update
   and the peak memory of the process.

Decisions the protocol text leaves open, taken here:

- Rows of weight <= 0 (skips, impressions) are not interactions. An evaluated user's such rows
  that come before the validation interaction are training rows; those at or after it are
  dropped, since they would tell the model about the held-out moments
  (:attr:`LeaveOneOutSplit.rows_dropped`).
- Exact duplicate rows stay; each counts as an interaction.
- The target itself is never excluded, even when the user had it before (a repeat
  consumption): the exclusion removes the other items the user already had.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from lifelong_rec.checks import check_positive_ints
from lifelong_rec.evaluate.metrics import hits, ndcg, reciprocal_rank, target_ranks
from lifelong_rec.events import EventBatch
from lifelong_rec.models import Recommender

ModelFactory = Callable[[], Recommender]
SCORE_BLOCK = 16_000_000  # scores ranked per block of users: at most this many floats
_TRAIN, _VALIDATION, _TEST, _DROPPED = 0, 1, 2, 3  # the role of each row in the split


# ------------------------------------------------------------------------------ the split


@dataclass(frozen=True, eq=False)
class LeaveOneOutSplit:
    """A data set cut for P2. Every batch is in time order (stable).

    Attributes
    ----------
    train : EventBatch
        Every row of users left out, and each evaluated user's rows before their validation
        interaction.
    validation, test : EventBatch
        One row per evaluated user: their second-to-last and last positive interaction.
    users_left_out : int
        Users with fewer than ``min_interactions`` positive rows (in ``train`` only).
    rows_dropped : int
        Rows of weight <= 0 of evaluated users at or after their validation interaction.
    """

    train: EventBatch
    validation: EventBatch
    test: EventBatch
    users_left_out: int
    rows_dropped: int

    @property
    def evaluated_users(self) -> int:
        return len(self.test)


def leave_one_out_split(events: EventBatch, min_interactions: int = 3) -> LeaveOneOutSplit:
    """Cut ``events`` into training, validation and test rows, per user, by time.

    Parameters
    ----------
    events : EventBatch
    min_interactions : int
        Positive rows a user needs to be evaluated; at least 3 (one each for training,
        validation and test).

    Returns
    -------
    LeaveOneOutSplit

    Examples
    --------
    >>> events = EventBatch.from_columns(
    ...     ["u", "u", "u", "v"], ["a", "b", "c", "a"], [1.0, 2.0, 3.0, 4.0]
    ... )
    >>> split = leave_one_out_split(events)
    >>> split.train.item.tolist(), split.validation.item.tolist(), split.test.item.tolist()
    (['a', 'a'], ['b'], ['c'])
    >>> split.users_left_out
    1
    """
    if not isinstance(events, EventBatch):
        raise TypeError(f"events must be an EventBatch, not {type(events).__name__}")
    check_positive_ints(min_interactions=min_interactions)
    if min_interactions < 3:
        raise ValueError(
            "min_interactions must be at least 3 (training, validation and test each need "
            f"one), got {min_interactions!r}"
        )
    events = events.sorted_by_time()
    n = len(events)
    users, user = np.unique(events.user, return_inverse=True)
    # Per user in time order: the stream is time-sorted, so a stable sort by user keeps ties
    # in input order.
    order = np.argsort(user, kind="stable")
    positive = (events.weight > 0)[order]
    owner = user[order]
    totals = np.bincount(user, weights=events.weight > 0, minlength=len(users)).astype(np.int64)
    group_start = np.searchsorted(owner, owner)
    running = np.cumsum(positive)
    before_group = np.where(group_start > 0, running[group_start - 1], 0)
    after = totals[owner] - (running - before_group)  # positive rows of the user after this one
    evaluated = totals[owner] >= min_interactions
    role = np.full(n, _TRAIN, dtype=np.int8)
    role[evaluated & positive & (after == 0)] = _TEST
    role[evaluated & positive & (after == 1)] = _VALIDATION
    role[evaluated & ~positive & (after < 2)] = _DROPPED
    by_row = np.empty(n, dtype=np.int8)
    by_row[order] = role
    return LeaveOneOutSplit(
        train=events.take(by_row == _TRAIN),
        validation=events.take(by_row == _VALIDATION),
        test=events.take(by_row == _TEST),
        users_left_out=int(np.sum(totals < min_interactions)),
        rows_dropped=int(np.sum(by_row == _DROPPED)),
    )


# ------------------------------------------------------------------------------ the report


@dataclass(frozen=True)
class P2Result:
    """What one model scored under P2.

    ``hr``, ``ndcg`` and ``mrr`` are the test numbers, the ones to publish; the ``valid_``
    numbers are for early stopping and tuning only. ``peak_memory_mib`` is the peak resident
    memory of the process so far (models run one after another in the same process).
    """

    model: str
    hr: float
    ndcg: float
    mrr: float
    valid_hr: float
    valid_ndcg: float
    valid_mrr: float
    train_seconds: float
    update_seconds: float
    peak_memory_mib: float
    unknown_test_items: int  # evaluated users whose test item the model did not know


@dataclass(frozen=True)
class P2Report:
    """Every number of a P2 run, with its parameters."""

    params: dict[str, object]
    data: dict[str, object]
    results: list[P2Result]

    def to_dict(self) -> dict[str, object]:
        return {
            "protocol": "P2",
            "params": self.params,
            "data": self.data,
            "results": [asdict(result) for result in self.results],
        }

    def result(self, model: str) -> P2Result | None:
        return next((r for r in self.results if r.model == model), None)

    def markdown_table(self) -> str:
        """One row per model, in run order, and a line describing the data."""
        k = self.params["k"]
        lines = [
            f"| model | HR@{k} | NDCG@{k} | MRR@{k} | valid HR@{k} | valid NDCG@{k} "
            f"| valid MRR@{k} | train s | update s | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            lines.append(
                f"| {r.model} | {r.hr:.4f} | {r.ndcg:.4f} | {r.mrr:.4f} | {r.valid_hr:.4f} "
                f"| {r.valid_ndcg:.4f} | {r.valid_mrr:.4f} | {r.train_seconds:.2f} "
                f"| {r.update_seconds:.2f} | {r.peak_memory_mib:.0f} |"
            )
        data = self.data
        lines += [
            "",
            f"P2: {data['rows']:,} rows, {data['users']:,} users, {data['items']:,} items; "
            f"{data['evaluated_users']:,} users evaluated, {data['users_left_out']:,} left out "
            f"(< {self.params['min_interactions']} interactions); full ranking, training "
            "items excluded.",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------ the protocol


def leave_one_out(
    events: EventBatch,
    models: Mapping[str, ModelFactory],
    k: int = 10,
    min_interactions: int = 3,
    progress: bool = False,
) -> P2Report:
    """Run protocol P2 for every model name -> factory making an untrained model.

    Parameters
    ----------
    events : EventBatch
    models : mapping of str to a callable returning a new Recommender
    k : int
        Cut-off of HR@k, NDCG@k and MRR@k.
    min_interactions : int
        Positive rows a user needs to be evaluated (at least 3).
    progress : bool
        A progress bar over the models, on standard error.

    Returns
    -------
    P2Report

    Raises
    ------
    ValueError
        Naming the parameter, if ``k`` or ``min_interactions`` is out of range, ``models`` is
        empty, or no user has ``min_interactions`` interactions.
    """
    check_positive_ints(k=k)
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must map at least one name to a model factory")
    split = leave_one_out_split(events, min_interactions)
    if split.evaluated_users == 0:
        raise ValueError(f"no user has min_interactions={min_interactions} positive rows")
    targets = _targets(split, events)
    results = [
        _run_model(name, factory, split, targets, k)
        for name, factory in _bar(models.items(), progress)
    ]
    return P2Report(
        params={"k": k, "min_interactions": min_interactions},
        data={
            "rows": len(events),
            "users": len(np.unique(events.user)),
            "items": len(targets.items),
            "evaluated_users": split.evaluated_users,
            "users_left_out": split.users_left_out,
            "train_rows": len(split.train),
            "rows_dropped": split.rows_dropped,
        },
        results=results,
    )


@dataclass(frozen=True, eq=False)
class _Targets:
    """The evaluated users, their two targets and their training items, as dense indexes."""

    users: np.ndarray  # (n_users,) external ids of the evaluated users, sorted
    items: np.ndarray  # (n_items,) external ids of every item of the data, sorted
    validation: np.ndarray  # (n_users,) data item index of each user's validation item
    test: np.ndarray  # (n_users,) data item index of each user's test item
    indptr: np.ndarray  # (n_users + 1,) CSR of each user's training items
    indices: np.ndarray  # data item indexes

    def excluded(self, lo: int, hi: int, also: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(position in lo..hi-1, data item) pairs to exclude: the training items of users
        lo..hi-1, and ``also[lo:hi]`` (one more item per user) when given."""
        lengths = np.diff(self.indptr[lo : hi + 1])
        owner = np.repeat(np.arange(hi - lo), lengths)
        items = self.indices[self.indptr[lo] : self.indptr[hi]]
        if also is not None:
            owner = np.concatenate([owner, np.arange(hi - lo)])
            items = np.concatenate([items, also[lo:hi]])
        return owner, items


def _targets(split: LeaveOneOutSplit, events: EventBatch) -> _Targets:
    items = np.unique(events.item)
    test = split.test.take(np.argsort(split.test.user, kind="stable"))
    validation = split.validation.take(np.argsort(split.validation.user, kind="stable"))
    train = split.train
    # each positive training row of an evaluated user, grouped by user (left-out users' rows
    # are not found among the test users)
    position = np.minimum(np.searchsorted(test.user, train.user), len(test) - 1)
    mine = (test.user[position] == train.user) & (train.weight > 0)
    order = np.argsort(position[mine], kind="stable")
    return _Targets(
        users=test.user,
        items=items,
        validation=np.searchsorted(items, validation.item),
        test=np.searchsorted(items, test.item),
        indptr=np.searchsorted(position[mine][order], np.arange(len(test) + 1)),
        indices=np.searchsorted(items, train.item[mine][order]),
    )


def _run_model(
    name: str, factory: ModelFactory, split: LeaveOneOutSplit, targets: _Targets, k: int
) -> P2Result:
    model = factory()
    started = time.perf_counter()
    model.fit(split.train)
    train_seconds = time.perf_counter() - started
    valid = _ranks(model, targets, targets.validation, also=None)
    started = time.perf_counter()
    model.learn(split.validation)
    update_seconds = time.perf_counter() - started
    test = _ranks(model, targets, targets.test, also=targets.validation)
    return P2Result(
        model=name,
        hr=_mean(hits(test, k)),
        ndcg=_mean(ndcg(test, k)),
        mrr=_mean(reciprocal_rank(test, k)),
        valid_hr=_mean(hits(valid, k)),
        valid_ndcg=_mean(ndcg(valid, k)),
        valid_mrr=_mean(reciprocal_rank(valid, k)),
        train_seconds=train_seconds,
        update_seconds=update_seconds,
        peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        unknown_test_items=int(np.sum(model.items_.lookup(targets.items[targets.test]) < 0)),
    )


def _ranks(
    model: Recommender, targets: _Targets, target: np.ndarray, also: np.ndarray | None
) -> np.ndarray:
    """Rank of each evaluated user's ``target`` item (data item indexes, shape (n_users,))
    among all items the model knows, minus the exclusions; inf for items it does not know."""
    column = model.items_.lookup(targets.items)  # data item -> model column, -1 if unknown
    n_users = len(targets.users)
    ranks = np.full(n_users, np.inf)
    block = max(1, SCORE_BLOCK // max(len(model.items_), 1))
    for lo in range(0, n_users, block):
        hi = min(lo + block, n_users)
        scores = model.score_all(targets.users[lo:hi])  # a new array: ours to mask
        owner, excluded = targets.excluded(lo, hi, also)
        ranks[lo:hi] = target_ranks(scores, owner, column[excluded], column[target[lo:hi]])
    return ranks


def _bar(models: Iterable, enabled: bool) -> Iterable:
    from tqdm import tqdm

    return tqdm(models, desc="P2", unit="model", disable=not enabled)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
