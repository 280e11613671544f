"""The demo job: the main path of lifelong-rec on embedded data, end to end.

Generate the synthetic shop, clean it, append it to a fresh event log, train matrix
factorisation on the first part of the stream, let it learn the rest incrementally, and show a
few users' top-10 with the history items that contributed most. Then train the sequential
transformer the same way (where PyTorch is installed), announce a brand-new item that nobody
has touched, and show where it lands for a user whose recent taste matches its text and for one
whose taste does not. Last, run protocol P1 on the same stream for MF frozen, retrained and
learning incrementally, and for the session-aware MF learning every event; show what each
gains against frozen and against retraining, and write the report with its plot.
``lifelong-rec demo`` prints what :func:`run_demo` returns (:func:`render`) or its JSON.
"""

from __future__ import annotations

import importlib.util
import shutil
import textwrap
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TypedDict

import numpy as np

from lifelong_rec import __version__
from lifelong_rec.data import describe, synthetic_stream
from lifelong_rec.evaluate import P1Report, prequential, write_report
from lifelong_rec.events import Catalog, EventBatch
from lifelong_rec.explain import explain_decisions
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import (
    Auto,
    Explanation,
    Recommender,
    Wording,
    parse_model,
)
from lifelong_rec.policy import Greedy, serve
from lifelong_rec.store import EventLog

TRAIN_SHARE = 0.8
LEARN_BATCH = 1_000
SHOWN_USERS = 3
VERB = "looked at"  # what a shopper did with a history item, for the reasons' sentences
# P1 rows as (model, strategy), in table order; the first two are the references of the gains.
P1_TABLE = (
    ("mf", "frozen"),
    ("mf", "retrain@10"),
    ("mf", "incremental@block"),
    ("mf", "incremental@row"),
    ("session-mf", "incremental@row"),
    ("auto", "naive@block"),  # the served model; per row it would take minutes here
)
FROZEN, RETRAIN = P1_TABLE[0], P1_TABLE[1]
# The strategies run two at a time, the slowest first (learning every event, session-mf's
# fold-in before mf's), so that both workers finish together: this keeps the demo under half
# a minute on two cores.
P1_START = tuple(sorted(P1_TABLE, key=lambda run: (not run[1].endswith("@row"), run[0] == "mf")))
P1_LEGEND = (
    ("model", "mf: matrix factorisation (ALS); session-mf: the same, but a user's interactions "
     "weigh half as much for every minute they are older than the user's latest one (the "
     "session-aware fold-in, mf(recency_half_life_seconds=60)); auto: the served model, an "
     "online ensemble of popularity, item-kNN, sequential rules, session-mf and mf that "
     "learns which to trust for whom"),
    ("strategy", "frozen: trained on the warm-up only; retrain@10: refit from scratch after "
     "every 10th block; incremental@block: learns each block once it has been scored; "
     "incremental@row: learns every event right after it was scored (both incremental ones "
     "also replay old events and are pulled toward their previous state); naive@block: "
     "learns each block, without replay or pull"),
    ("HR@10", "share of scored events whose item was in the model's top 10 at that moment"),
    ("NDCG@10", "the same, by rank: 1 / log2(rank + 1) in the top 10, else 0 (the headline)"),
    ("NDCG@10 vs", "that NDCG@10 divided by mf frozen's (what learning from the stream adds) "
     "and by mf retrain@10's (against retraining from scratch); above 1× is better"),
    ("update s", "CPU seconds spent learning from the stream (the warm-up fit not counted; CPU "
     "time, which a busy machine does not inflate)"),
    ("update s vs", "those seconds divided by mf retrain@10's; below 1× is cheaper than "
     "retraining"),
    ("unknown users", "share of scored events whose user the model had not learned yet: they "
     "get the popular items"),
    ("forgetting", "ΔNDCG@10 on probes: a sample of the first {blocks}' events that no model "
     "ever learns, scored right after their block and at the end; the end's score minus the "
     "first; below 0 the model has forgotten what it knew of them, 0 for frozen (which never "
     "changes)"),
)  # fmt: skip


class ReasonRow(TypedDict):
    kind: str
    item: str | None
    text: str
    weight: float


class ListedItem(TypedDict):
    item: str
    title: str
    score: float
    method: str
    because: list[ReasonRow]


class UserList(TypedDict):
    user: str
    history: int
    top10: list[ListedItem]


class ModelRun(TypedDict):
    name: str
    fit_events: int
    fit_seconds: float
    learned_events: int
    learn_batches: int
    learn_seconds: float
    learn_events_per_second: int


class NewItemRank(TypedDict):
    category: str
    rank: int


class ColdStart(TypedDict):
    model: str
    fit_seconds: float
    learn_seconds: float
    items: int
    new_item: dict[str, object]
    ranks: dict[str, NewItemRank]
    method: str
    because: list[ReasonRow]


class P1Row(TypedDict):
    """One row of the demo's P1 table; the ratios are None where the reference is 0."""

    model: str
    strategy: str
    hr: float
    ndcg: float
    ndcg_vs_frozen: float | None  # over mf frozen's NDCG@10
    ndcg_vs_retrain: float | None  # over mf retrain@10's NDCG@10
    update_cpu_seconds: float
    update_cpu_seconds_vs_retrain: float | None  # over mf retrain@10's update CPU seconds
    warmup_seconds: float
    unknown_users: float
    forgetting: float  # backward transfer: NDCG@10 of the final model minus that at the time


class DemoResult(TypedDict):
    version: str
    seed: int
    db: str
    report: dict[str, object]
    report_text: str
    stream: dict[str, object]
    stream_text: str
    log: dict[str, object]
    model: ModelRun
    recommendations: list[UserList]
    transformer: ColdStart | None
    p1: dict[str, object]
    p1_rows: list[P1Row]
    p1_text: str
    p1_files: dict[str, str]
    seconds: float


def run_demo(
    db: Path,
    n_users: int = 1_000,
    n_items: int = 600,
    n_events: int = 40_000,
    seed: int = 0,
    blocks: int = 100,
    workers: int = 2,
    progress: bool = True,
) -> DemoResult:
    """Run the demo; returns every number and list it shows (JSON-serialisable).

    The P1 report (p1.json, p1.md, p1.png) is written next to the event log ``db``.
    """
    started = time.perf_counter()
    data = synthetic_stream(
        n_users=n_users,
        n_items=n_items,
        n_events=n_events,
        dirty_fraction=0.01,  # so the cleaning report has something to show
        seed=seed,
    )
    for suffix in ("", "-wal", "-shm"):  # a fresh log every run
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    # and no snapshots that `lifelong-rec serve` made from the previous log (its default folder)
    shutil.rmtree(f"{db}.snapshots", ignore_errors=True)
    with EventLog(db) as log:
        log.append(data.events, source=data.name)
        log.upsert_catalog(data.catalog)
        log.quarantine(data.rejected)
        log_stats = log.stats()
        events = log.read()  # the model learns from what the log holds

    cut = int(TRAIN_SHARE * len(events))
    model = Auto(seed=seed).add_items(data.catalog)  # as the service hands it the catalogue
    fit_seconds, learn_seconds = _fit_then_learn(model, events, cut)

    # the most active users of the last day: whose lists the stream has just changed
    recent = events.take(events.timestamp > events.timestamp[-1] - 86_400)
    names, counts = np.unique(recent.user, return_counts=True)
    shown = names[np.argsort(-counts, kind="stable")[:SHOWN_USERS]]
    # Served as the service serves them (lifelong_rec.policy.serve: the model's own ranking
    # here), explained as the service explains them.
    decisions, _, _, _ = serve(model, Greedy(), shown, 10).joined()
    explained = explain_decisions(model, decisions, top=2, wording=Wording(data.catalog, VERB))
    lists: list[UserList] = []
    for row, user in enumerate(decisions.users.tolist()):
        entries: list[ListedItem] = [
            {"item": e.item, "title": _title(data.catalog, e.item), "score": e.score,
             "method": e.method, "because": _reasons(e)}
            for e in explained[row]
        ]  # fmt: skip
        lists.append({"user": user, "history": int(model.history_size_[
            model.users_.lookup([user])[0]]), "top10": entries})  # fmt: skip
    deep = _cold_start_demo(events, data.catalog, cut, names[np.argsort(-counts)].tolist(), seed)
    p1 = prequential(
        events,
        {run: partial(parse_strategy, run[1], parse_model(f"{run[0]}(seed={seed})")[1])
         for run in P1_START},
        blocks=blocks,
        workers=workers,
        progress=progress,
    )  # fmt: skip
    files = write_report(p1, Path(db).parent, title="P1 on the synthetic shop (demo)")
    p1_summary = p1.to_dict()  # without the per-block series (they are in p1.json)
    p1_summary["results"] = [
        {key: value for key, value in asdict(result).items() if key != "per_block"}
        for result in p1.results
    ]
    p1_rows = _p1_rows(p1)
    return {
        "version": __version__,
        "seed": seed,
        "db": str(db),
        "report": data.report.to_dict(),
        "report_text": data.report.format(),
        "stream": describe(data.events).to_dict(),
        "stream_text": describe(data.events).format(),
        "log": log_stats,
        "model": {
            "name": repr(model),
            "fit_events": cut,
            "fit_seconds": round(fit_seconds, 3),
            "learned_events": len(events) - cut,
            "learn_batches": -(-(len(events) - cut) // LEARN_BATCH),
            "learn_seconds": round(learn_seconds, 3),
            "learn_events_per_second": round((len(events) - cut) / max(learn_seconds, 1e-9)),
        },
        "recommendations": lists,
        "transformer": deep,
        "p1": p1_summary,
        "p1_rows": p1_rows,
        "p1_text": "\n".join(_render_p1(p1, p1_rows)),
        "p1_files": {name: str(path) for name, path in files.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }


def render(result: DemoResult) -> str:
    """The demo's result as text for a terminal."""
    log, model = result["log"], result["model"]
    lines = [
        f"lifelong-rec {result['version']} demo: a synthetic shop, "
        f"{result['stream']['users']:,} active users, {log['items']:,} items, "
        f"seed {result['seed']}",
        "",
        result["report_text"],
        "",
        result["stream_text"],
        "",
        f"event log {result['db']}: {log['events']:,} events, {log['users']:,} users, "
        f"{log['items']:,} items ({log['items_with_metadata']:,} with titles), "
        f"{log['quarantined']:,} rows in quarantine",
        "",
        "auto, the online ensemble of popularity, session item-kNN, sequential rules, session MF "
        "and MF weighted per "
        f"situation: fit on the first {model['fit_events']:,} events in "
        f"{model['fit_seconds']:.2f} s, then learned the last {model['learned_events']:,} "
        f"incrementally in {model['learn_batches']} batches "
        f"({model['learn_events_per_second']:,} events/s)",
    ]
    for entry in result["recommendations"]:
        lines += ["", f"top-10 for {entry['user']} ({entry['history']} items in history):"]
        for rank, item in enumerate(entry["top10"], start=1):
            lines.append(f"  {rank:>2}. {item['title']:<28} [{item['item']}] {item['score']:6.3f}")
            lines += [f"        {r['text']} ({r['weight']:+.3f})" for r in item["because"]]
    lines += _render_cold_start(result["transformer"])
    lines += [
        "",
        "protocol P1 (prequential) on the same stream: how good is each way of keeping the "
        "model up to date, and what does it cost?",
        "",
        result["p1_text"],
        "",
        f"every column and the per-block series: {', '.join(result['p1_files'].values())}",
        "",
        f"done in {result['seconds']:.1f} s",
    ]
    return "\n".join(lines + _what_next(result["db"]))


def _p1_rows(p1: P1Report) -> list[P1Row]:
    """The demo's P1 rows in table order, with the gains against mf frozen and retrain@10."""
    frozen, retrain = p1.result(*FROZEN), p1.result(*RETRAIN)
    assert frozen is not None and retrain is not None  # both are in P1_TABLE
    rows: list[P1Row] = []
    for model, strategy in P1_TABLE:
        result = p1.result(model, strategy)
        assert result is not None  # every run of P1_TABLE was run
        rows.append({
            "model": model,
            "strategy": strategy,
            "hr": result.hr,
            "ndcg": result.ndcg,
            "ndcg_vs_frozen": _ratio(result.ndcg, frozen.ndcg),
            "ndcg_vs_retrain": _ratio(result.ndcg, retrain.ndcg),
            "update_cpu_seconds": result.update_cpu_seconds,
            "update_cpu_seconds_vs_retrain": _ratio(
                result.update_cpu_seconds, retrain.update_cpu_seconds
            ),
            "warmup_seconds": result.warmup_seconds,
            "unknown_users": result.unknown_user_share,
            "forgetting": result.backward_transfer["delta"],
        })  # fmt: skip
    return rows


def _render_p1(p1: P1Report, rows: list[P1Row]) -> list[str]:
    """The P1 table with a line per column saying what it means, the ceiling, and the best
    row's gains in words."""
    k, data = p1.params["k"], p1.data
    header = ("model", "strategy", f"HR@{k}", f"NDCG@{k}", "frozen", "retrain@10", "update s",
              "retrain@10", "unknown users", "forgetting")  # fmt: skip
    cells = [
        (row["model"], row["strategy"], f"{row['hr']:.4f}", f"{row['ndcg']:.4f}",
         _times(row["ndcg_vs_frozen"]), _times(row["ndcg_vs_retrain"]),
         f"{row['update_cpu_seconds']:.1f}", _times(row["update_cpu_seconds_vs_retrain"]),
         f"{row['unknown_users']:.1%}", f"{row['forgetting']:+.4f}")
        for row in rows
    ]  # fmt: skip
    widths = [max(len(text) for text in column) for column in zip(header, *cells, strict=True)]
    starts = np.concatenate([[0], np.cumsum(np.add(widths, 2))]).tolist()
    groups = [" " * starts[4] + f"NDCG@{k} vs".ljust(starts[7] - starts[4]) + "update s vs"]
    lines = groups + [_aligned(header, widths)] + [_aligned(line, widths) for line in cells]
    first = int(p1.results[0].backward_transfer["blocks"]) if p1.results else 0
    first_blocks = f"{first} block" + "s" * (first != 1)
    lines.append("")
    for name, meaning in P1_LEGEND:
        lines += _wrap(f"{name:<15}{meaning.format(blocks=first_blocks)}", indent=15)
    oracle = p1.oracle
    best = max(rows[2:], key=lambda row: row["ndcg"])
    notes = (
        f"ceiling: an oracle that ranks each event's item first, unless nobody had touched the "
        f"item yet, scores NDCG@{k} {oracle['row']['ndcg']:.4f} ({oracle['block']['ndcg']:.4f} "
        "updated per block)",
        f"P1 on this stream: {data['rows']:,} events, the first {p1.params['warmup']:.0%} to warm "
        f"up, the rest scored as they arrive in {p1.params['blocks']} blocks "
        f"({data['scored_rows']:,} scored; a repeated user-item pair is learned, not scored)",
        f"best incremental: {best['model']} {best['strategy']}, NDCG@{k} "
        f"{_times(best['ndcg_vs_frozen'])} mf frozen's and {_times(best['ndcg_vs_retrain'])} "
        "mf retrain@10's, for "
        f"{_times(best['update_cpu_seconds_vs_retrain'])} retrain@10's update CPU seconds (a "
        f"refit of this small stream takes {rows[1]['warmup_seconds']:.1f} s)",
    )
    lines.append("")
    for note in notes:
        lines += _wrap(note, indent=2)
    return lines


def _what_next(db: str) -> list[str]:
    """What to try after the demo: serve its log, ingest your own data, run P1 on MovieLens."""
    return [
        "",
        "what next (each step is in the README):",
        "  . .venv/bin/activate  # after make demo: puts lifelong-rec on the PATH",
        "  # serve the log the demo made (or: make serve), then open http://127.0.0.1:8000/docs",
        f"  lifelong-rec serve --db {db}",
        "  # your own data: a CSV file with user, item and time columns",
        "  lifelong-rec ingest events.csv --format csv --db mine.db "
        "--map user=user_id,item=item_id,time=timestamp",
        "  # P1 on MovieLens 100K (its ml-100k folder, from grouplens.org)",
        "  lifelong-rec evaluate --protocol p1 --data movielens:ml-100k --models mf,session-mf "
        "--out p1-ml-100k",
    ]


def _wrap(text: str, indent: int) -> list[str]:
    """``text`` in lines of at most 100 characters, the later ones indented."""
    return textwrap.wrap(text, width=100, subsequent_indent=" " * indent, break_on_hyphens=False)


def _aligned(cells: tuple[str, ...], widths: list[int]) -> str:
    """Text columns left-aligned, numbers right-aligned, two spaces apart."""
    return "  ".join(
        text.ljust(width) if column < 2 else text.rjust(width)
        for column, (text, width) in enumerate(zip(cells, widths, strict=True))
    ).rstrip()


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference > 0 else None


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}×"


def _fit_then_learn(model: Recommender, events: EventBatch, cut: int) -> tuple[float, float]:
    """Fit on the events before ``cut``, learn the rest in batches; (fit, learn) seconds."""
    started = time.perf_counter()
    model.fit(events.take(slice(0, cut)))
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(cut, len(events), LEARN_BATCH):
        model.learn(events.take(slice(start, start + LEARN_BATCH)))
    return fit_seconds, time.perf_counter() - started


def _cold_start_demo(
    events: EventBatch, catalog: Catalog, cut: int, active: list[str], seed: int
) -> ColdStart | None:
    """The transformer learns the stream like MF did; then a new item of the latest category
    of the most ``active`` user is announced, and ranked for that user and for the most active
    user whose latest category is another."""
    if importlib.util.find_spec("torch") is None:
        return None
    from lifelong_rec.models.sequential import SequentialTransformer  # imports torch: here

    model = SequentialTransformer(max_len=20, dim=32, epochs=5, seed=seed, device="cpu")
    model.add_items(catalog)
    fit_seconds, learn_seconds = _fit_then_learn(model, events, cut)

    users, last = np.unique(events.user[::-1], return_index=True)  # each user's latest event
    latest = dict(zip(users.tolist(), events.item[::-1][last].tolist(), strict=True))
    user = active[0]
    category = _category(catalog, latest[user])
    other = next(u for u in active if _category(catalog, latest[u]) != category)
    row = next(r for r, c in enumerate(catalog.categories) if c[:1] == (category,))
    title = f"New {catalog.title[row].split(' ', 1)[1]}"
    new: dict[str, object] = {
        "item": "new-arrival",
        "title": title,
        "categories": (category,),
        "text": f"{title}. Just in: the newest addition to our {category} range.",
    }
    model.add_items(Catalog.from_records([new]))
    ranks: dict[str, NewItemRank] = {}
    for who in (user, other):
        scores = model.score_all([who])[0]
        column = int(model.items_.lookup(["new-arrival"])[0])
        ranks[who] = {"category": _category(catalog, latest[who]),
                      "rank": int((scores > scores[column]).sum()) + 1}  # fmt: skip
    explanation = model.explain(user, "new-arrival", top=3, wording=Wording(catalog, VERB))
    return {
        "model": repr(model),
        "fit_seconds": round(fit_seconds, 2),
        "learn_seconds": round(learn_seconds, 2),
        "items": len(model.items_),
        "new_item": new,
        "ranks": ranks,
        "method": explanation.method,
        "because": _reasons(explanation),
    }


def _render_cold_start(deep: ColdStart | None) -> list[str]:
    if deep is None:
        return ["", "(the sequential transformer needs PyTorch: pip install 'lifelong-rec[deep]')"]
    lines = [
        "",
        f"sequential transformer (ids + title text): fit in {deep['fit_seconds']:.1f} s, "
        f"learned the rest in {deep['learn_seconds']:.1f} s",
        f"a brand-new item nobody has touched yet: {deep['new_item']['title']!r} "
        f"[{deep['new_item']['item']}]",
    ]
    for user, where in deep["ranks"].items():
        lines.append(
            f"  rank {where['rank']:>3} of {deep['items']} for {user} "
            f"(latest interest: {where['category']})"
        )
    lines.append(f"  for {next(iter(deep['ranks']))}, by {deep['method']}:")
    lines += [f"    {r['text']} ({r['weight']:+.3f})" for r in deep["because"]]
    return lines


def _reasons(explanation: Explanation) -> list[ReasonRow]:
    return [
        {"kind": r.kind, "item": r.item, "text": r.text, "weight": r.weight}
        for r in explanation.reasons
    ]


def _category(catalog: Catalog, item: str) -> str:
    row = int(np.flatnonzero(catalog.item == item)[0])
    return catalog.categories[row][0] if catalog.categories[row] else ""


def _title(catalog: Catalog, item: str) -> str:
    return str(catalog.titles_of([item])[0])
