"""The demo job: the main path of lifelong-rec on embedded data, end to end.

Generate the synthetic shop, clean it, append it to a fresh event log, train matrix
factorisation on the first part of the stream, let it learn the rest incrementally, and show a
few users' top-10 with the history items that contributed most. Then train the sequential
transformer the same way (where PyTorch is installed), announce a brand-new item that nobody
has touched, and show where it lands for a user whose recent taste matches its text and for one
whose taste does not. Last, run protocol P1 on the same stream for a frozen, a retrained and
two incrementally learning MF models, and write the report with its plot. ``lifelong-rec demo``
prints what :func:`run_demo` returns (:func:`render`) or its JSON.
"""

from __future__ import annotations

import importlib.util
import time
from functools import partial
from pathlib import Path

import numpy as np

from lifelong_rec import __version__
from lifelong_rec.data import describe, synthetic_stream
from lifelong_rec.evaluate import markdown_table, prequential, write_report
from lifelong_rec.events import Catalog, EventBatch
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import Explanation, MatrixFactorization, Recommender, Wording
from lifelong_rec.store import EventLog

TRAIN_SHARE = 0.8
LEARN_BATCH = 1_000
SHOWN_USERS = 3
VERB = "looked at"  # what a shopper did with a history item, for the reasons' sentences
P1_STRATEGIES = ("frozen", "retrain@10", "incremental@block", "incremental@row")


def run_demo(
    db: Path,
    n_users: int = 1_000,
    n_items: int = 600,
    n_events: int = 40_000,
    seed: int = 0,
    blocks: int = 100,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, object]:
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
    with EventLog(db) as log:
        log.append(data.events, source=data.name)
        log.upsert_catalog(data.catalog)
        log.quarantine(data.rejected)
        log_stats = log.stats()
        events = log.read()  # the model learns from what the log holds

    cut = int(TRAIN_SHARE * len(events))
    model = MatrixFactorization(seed=seed)
    fit_seconds, learn_seconds = _fit_then_learn(model, events, cut)

    # the most active users of the last day: whose lists the stream has just changed
    recent = events.take(events.timestamp > events.timestamp[-1] - 86_400)
    names, counts = np.unique(recent.user, return_counts=True)
    shown = names[np.argsort(-counts, kind="stable")[:SHOWN_USERS]]
    recommendations = model.recommend(
        shown, k=10, explain=True, reasons=2, wording=Wording(data.catalog, VERB)
    )
    lists = []
    for row, user in enumerate(shown.tolist()):
        entries = [
            {"item": e.item, "title": _title(data.catalog, e.item), "score": e.score,
             "method": e.method, "because": _reasons(e)}
            for e in recommendations.explanations[row]
        ]  # fmt: skip
        lists.append({"user": user, "history": int(model.history_size_[
            model.users_.lookup([user])[0]]), "top10": entries})  # fmt: skip
    deep = _cold_start_demo(events, data.catalog, cut, names[np.argsort(-counts)].tolist(), seed)
    p1 = prequential(
        events,
        {("mf", spec): partial(parse_strategy, spec, partial(MatrixFactorization, seed=seed))
         for spec in P1_STRATEGIES},
        blocks=blocks,
        workers=workers,
        progress=progress,
    )  # fmt: skip
    files = write_report(p1, Path(db).parent, title="P1 on the synthetic shop (demo)")
    p1_summary = p1.to_dict()
    for result in p1_summary["results"]:
        result.pop("per_block")
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
        "p1_text": markdown_table(p1),
        "p1_files": {name: str(path) for name, path in files.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }


def render(result: dict[str, object]) -> str:
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
        f"matrix factorisation (ALS): fit on the first {model['fit_events']:,} events in "
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
        "model up to date?",
        "",
        result["p1_text"],
        "",
        f"report and plot: {', '.join(result['p1_files'].values())}",
        "",
        f"done in {result['seconds']:.1f} s",
    ]
    return "\n".join(lines)


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
) -> dict[str, object] | None:
    """The transformer learns the stream like MF did; then a new item of the latest category
    of the most ``active`` user is announced, and ranked for that user and for the most active
    user whose latest category is another."""
    if importlib.util.find_spec("torch") is None:
        return None
    from lifelong_rec.models import SequentialTransformer

    model = SequentialTransformer(max_len=20, dim=32, epochs=5, seed=seed, device="cpu")
    model.add_items(catalog)
    fit_seconds, learn_seconds = _fit_then_learn(model, events, cut)

    users, last = np.unique(events.user[::-1], return_index=True)  # each user's latest event
    latest = dict(zip(users.tolist(), events.item[::-1][last].tolist(), strict=True))
    user = active[0]
    category = _category(catalog, latest[user])
    other = next(u for u in active if _category(catalog, latest[u]) != category)
    row = next(r for r, c in enumerate(catalog.categories) if c[:1] == (category,))
    new = {"item": "new-arrival", "title": f"New {catalog.title[row].split(' ', 1)[1]}",
           "categories": (category,)}  # fmt: skip
    new["text"] = f"{new['title']}. Just in: the newest addition to our {category} range."
    model.add_items(Catalog.from_records([new]))
    ranks = {}
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


def _render_cold_start(deep: dict[str, object] | None) -> list[str]:
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


def _reasons(explanation: Explanation) -> list[dict[str, object]]:
    return [
        {"kind": r.kind, "item": r.item, "text": r.text, "weight": r.weight}
        for r in explanation.reasons
    ]


def _category(catalog: Catalog, item: str) -> str:
    row = int(np.flatnonzero(catalog.item == item)[0])
    return catalog.categories[row][0] if catalog.categories[row] else ""


def _title(catalog: Catalog, item: str) -> str:
    return str(catalog.titles_of([item])[0])
