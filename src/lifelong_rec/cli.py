"""The ``lifelong-rec`` command line: demo, ingest, evaluate, ope, replay, simulate, stats,
rejected.

A user's mistake (a missing file, a malformed input, a bad option, spec or setting) prints one
line naming the problem and exits with status 2, never a traceback: it is an
:class:`~lifelong_rec.data.InputError`, raised here or by the loaders, or the ``ValueError`` of
a step that parses what the user typed (wrapped in :func:`_user_input`). Anything else is a
bug: its traceback is printed and the status is 1, so it is never taken for the user's fault.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from lifelong_rec import __version__
from lifelong_rec.data import (
    FORMATS,
    REASONS,
    CleaningConfig,
    CleaningReport,
    Dataset,
    InputError,
    describe,
    load,
    synthetic_stream,
)
from lifelong_rec.data.loaders import MOVIELENS_CLEANING, detect_format
from lifelong_rec.demo import render, run_demo
from lifelong_rec.evaluate import (
    markdown_table,
    ope_report,
    prequential,
    replay_report,
    write_report,
)
from lifelong_rec.evaluate.ope import ESTIMATORS, EVALUATIONS, OBD_POLICIES
from lifelong_rec.evaluate.simulate import simulate_report
from lifelong_rec.lifelong import parse_strategy
from lifelong_rec.models import model_names, parse_model, split_specs, with_catalog
from lifelong_rec.policy import parse_policy, policy_names, reward_spec
from lifelong_rec.store import EventLog, is_postgres

if TYPE_CHECKING:  # the service's modules load FastAPI: only `serve` imports them
    from lifelong_rec.service.settings import Settings

EXIT_USAGE = 2
EXIT_INTERNAL = 1
EXIT_STARTUP = 3  # as uvicorn.run: the service did not start
MODEL_NAMES = model_names()  # names only: the classes would import PyTorch on every command
OBD_CAMPAIGNS = ("all", "men", "women")
# What evaluate's cleaning removes unless asked: only rows that are not events (a bad field).
# P1 drops exact duplicates itself and counts them; the bot-burst rule took whole-day-timestamp
# logs for bots and removed their rows silently (issue #19).
EVALUATION_CLEANING = CleaningConfig(max_events_per_second=None, drop_duplicates=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as error:
        print(f"lifelong-rec: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "lifelong-rec: internal error: this is a bug, not a mistake of yours; "
            "please report it with the traceback above",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


T = TypeVar("T")


@contextmanager
def _user_input(option: str) -> Iterator[None]:
    """Take a ``ValueError`` or ``TypeError`` raised inside as the user's mistake in
    ``option``: wrap the step that parses or checks what the user typed, and nothing deeper."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, TypeError) as error:
        raise InputError(f"{option}: {error}") from None


def _parsed(option: str, parse: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``parse(*args, **kwargs)``, its ``ValueError`` or ``TypeError`` the user's mistake in
    ``option``."""
    with _user_input(option):
        return parse(*args, **kwargs)


def _at_least(minimum: int, **options: int) -> None:
    """Check integer options, named as their flags without dashes (``batch_size=...``)."""
    for name, value in options.items():
        if value < minimum:
            raise InputError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lifelong-rec",
        description="Recommender systems that never stop learning.",
    )
    parser.add_argument("--version", action="version", version=f"lifelong-rec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run the main job on the built-in synthetic stream (no data needed)"
    )
    demo.add_argument(
        "--db",
        type=Path,
        default=Path("demo-out/events.db"),
        help="event log to create afresh (default: %(default)s)",
    )
    demo.add_argument("--users", type=int, default=1_000)
    demo.add_argument("--items", type=int, default=600)
    demo.add_argument("--events", type=int, default=40_000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--blocks", type=int, default=100, help="P1 blocks (default: %(default)s)")
    demo.add_argument("--workers", type=int, default=2, help="P1 strategies run at once")
    demo.add_argument("--json", action="store_true", help="print the results as JSON")
    demo.set_defaults(run=_demo)

    ingest = commands.add_parser(
        "ingest", help="validate, clean and append a file or folder to the event log"
    )
    ingest.add_argument("path", type=Path)
    ingest.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="input format (default: detected from the path)",
    )
    ingest.add_argument("--db", type=Path, required=True, help="the event log (SQLite file)")
    ingest.add_argument(
        "--map",
        dest="mapping",
        default=None,
        metavar="FIELD=COLUMN,...",
        help="columns of csv/parquet/jsonl, e.g. user=userId,item=movieId,"
        "time=timestamp,value=rating,kind=event,context.device=device",
    )
    ingest.add_argument("--encoding", default="utf-8", help="text encoding (default: utf-8)")
    _add_cleaning_options(ingest, burst_default="default 20; off for movielens")
    ingest.add_argument(
        "--collapse-window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="merge repeated (user, item, kind) events closer than this",
    )
    ingest.add_argument(
        "--quarantine",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write rejected rows to this JSON Lines file",
    )
    ingest.add_argument(
        "--batch-size",
        type=int,
        default=50_000,
        help="events per atomic append (default: %(default)s)",
    )
    ingest.add_argument(
        "--force", action="store_true", help="append even if this exact file was ingested before"
    )
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.set_defaults(run=_ingest)

    evaluate = commands.add_parser(
        "evaluate", help="run an evaluation protocol (P1: prequential) and write its report"
    )
    evaluate.add_argument("--protocol", choices=("p1",), default="p1")
    evaluate.add_argument(
        "--data",
        required=True,
        metavar="FORMAT:PATH",
        help="e.g. movielens:../shared/datasets/ml-100k, csv:events.csv (with --map), "
        "or synthetic for the built-in stream",
    )
    evaluate.add_argument("--map", dest="mapping", default=None, metavar="FIELD=COLUMN,...")
    _add_cleaning_options(evaluate, burst_default="default: off")
    evaluate.add_argument(
        "--models",
        default="auto,pop,session-itemknn,sequential-rules,session-mf,mf",
        help="comma-separated (default: the ensemble auto and each of its candidates): "
        + ", ".join(MODEL_NAMES)
        + "; with parameters as mf(factors=32,recency_half_life_seconds=60)",
    )
    evaluate.add_argument(
        "--strategies",
        default="frozen,retrain@10,incremental@block,incremental@row",
        help="comma-separated: frozen, retrain@N, incremental@block, incremental@row, "
        "naive@block, naive@row",
    )
    evaluate.add_argument("--warmup", type=float, default=0.5, help="warm-up share of rows")
    evaluate.add_argument("--blocks", type=int, default=500)
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument(
        "--workers", type=int, default=1, help="strategies run at once (0: in this process)"
    )
    evaluate.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for p1.json/md/png, rejected.jsonl and each strategy's result as it "
        "finishes (a rerun with the same data and blocks resumes)",
    )
    evaluate.add_argument(
        "--tensorboard", type=Path, default=None, metavar="DIR",
        help="also write per-block metrics for TensorBoard (needs the tensorboard extra)",
    )  # fmt: skip
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(run=_evaluate)

    ope = commands.add_parser(
        "ope", help="P3: estimate one OBD policy's click rate from the other policy's log"
    )
    _add_obd_log(ope)
    ope.add_argument(
        "--behavior",
        choices=OBD_POLICIES,
        default="random",
        help="the policy whose log the estimate uses (default: %(default)s)",
    )
    ope.add_argument(
        "--evaluation",
        choices=EVALUATIONS,
        default="bts",
        help="the evaluated policy; bts-logged: BTS as its log showed it (default: %(default)s)",
    )
    ope.add_argument(
        "--estimators",
        default=",".join(ESTIMATORS),
        help="comma-separated: " + ", ".join(ESTIMATORS) + " (default: all)",
    )
    ope.add_argument(
        "--bootstrap",
        type=int,
        default=1_000,
        help="resamples for the intervals (default: %(default)s)",
    )
    ope.add_argument("--seed", type=int, default=0)
    ope.add_argument("--json", action="store_true", help="print the report as JSON")
    ope.set_defaults(run=_ope)

    replay = commands.add_parser(
        "replay", help="P3: replay a learning policy over OBD's uniform-random log"
    )
    _add_obd_log(replay)
    replay.add_argument(
        "--policy",
        default="linucb",
        help="one of " + ", ".join(policy_names()) + "; with parameters as "
        "epsilon(epsilon=0.1) (default: %(default)s)",
    )
    replay.add_argument("--seed", type=int, default=0)
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    replay.set_defaults(run=_replay)

    simulate = commands.add_parser(
        "simulate", help="P4: A/B test policies over MF scores in a simulated drifting world"
    )
    simulate.add_argument(
        "--policies",
        default="greedy,epsilon,linucb,thompson",
        help="comma-separated policy specs, the first the baseline: "
        + ", ".join([*policy_names(), "oracle"])
        + " (default: %(default)s)",
    )
    simulate.add_argument("--rounds", type=int, default=2_000)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument(
        "--out", type=Path, default=Path("p4-out"), help="folder for p4.json, p4.md, p4.png"
    )
    simulate.add_argument("--json", action="store_true", help="print the report as JSON")
    simulate.set_defaults(run=_simulate)

    stats = commands.add_parser("stats", help="what the event log holds")
    stats.add_argument("--db", type=Path, required=True)
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(run=_stats)

    rejected = commands.add_parser("rejected", help="rows kept aside by cleaning, with reasons")
    rejected.add_argument("--db", type=Path, required=True)
    rejected.add_argument("--reason", default=None)
    rejected.add_argument("--limit", type=int, default=20)
    rejected.set_defaults(run=_rejected)

    serve = commands.add_parser(
        "serve",
        help="the HTTP service: ingestion, recommendations, feedback, experiments, metrics",
        description="Serve over HTTP with a background learner. Other settings (token, "
        "cadences, limits) come from LIFELONG_REC_* variables; see lifelong_rec.service.Settings.",
    )
    serve.add_argument(
        "--db",
        default="events.db",
        help="the event log: an SQLite file, or postgresql://user@host:5432/dbname",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default=None, help="model spec (default: auto)")
    serve.add_argument("--strategy", default=None, help="update strategy (default: naive@block)")
    serve.add_argument("--policy", default=None, help="exploration policy spec (default: none)")
    serve.add_argument(
        "--snapshots", type=Path, default=None,
        help="SQLite: the snapshot folder (default: <db>.snapshots); PostgreSQL keeps them in "
        "the database",
    )  # fmt: skip
    serve.add_argument(
        "--role", choices=("all", "api"), default=None,
        help="all (default): serve and learn in this process; api: a replica on PostgreSQL "
        "that serves what `lifelong-rec learn` processes publish",
    )  # fmt: skip
    serve.add_argument("--db-schema", default=None, help="PostgreSQL schema (default: public)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(run=_serve)

    learn = commands.add_parser(
        "learn",
        help="one learner process for one model, on PostgreSQL, beside `serve --role api`",
        description="Follow the PostgreSQL event log for one model and publish its snapshots "
        "to the database, where API replicas load them. One learner per model runs at a time: "
        "a second one waits for the lease and takes over when the first dies.",
    )
    learn.add_argument("--db", required=True, help="postgresql://user@host:5432/dbname")
    learn.add_argument("--db-schema", default=None, help="PostgreSQL schema (default: public)")
    learn.add_argument("--model", default=None, help="model spec (default: auto)")
    learn.add_argument("--strategy", default=None, help="update strategy (default: naive@block)")
    learn.add_argument(
        "--policy", default=None,
        help="the replicas' exploration policy spec, taught here from their feedback",
    )  # fmt: skip
    learn.add_argument(
        "--arm", action="store_true",
        help="learn the model as an experiment arm's (apart from the service's own)",
    )  # fmt: skip
    learn.add_argument("--log-level", default="info")
    learn.set_defaults(run=_learn)

    train = commands.add_parser(
        "train",
        help="train the transformer on the event log over processes and machines, and "
        "publish it as a snapshot",
        description="Train the sequential transformer from scratch on the event log with "
        "PyTorch DistributedDataParallel (gloo on CPUs, NCCL on GPUs), started through "
        "torchrun's elastic launcher, checkpointing as it goes (a rerun resumes), and publish "
        "the model as a snapshot where `serve` and `learn` load it. On several machines, run "
        "it on each with the same --nnodes, --rdzv-endpoint and --run-id, and a shared "
        "--checkpoints folder.",
    )
    train.add_argument(
        "--db", required=True,
        help="the event log: an SQLite file, or postgresql://user@host:5432/dbname",
    )  # fmt: skip
    train.add_argument("--db-schema", default=None, help="PostgreSQL schema (default: public)")
    train.add_argument(
        "--model", default="transformer",
        help="a transformer spec, e.g. transformer(epochs=20, loss=sampled) (default: "
        "%(default)s); it names the snapshots, as serve's --model does",
    )  # fmt: skip
    train.add_argument("--nproc", type=int, default=1, help="processes on this machine")
    train.add_argument("--nnodes", type=int, default=1, help="machines (default: 1)")
    train.add_argument(
        "--rdzv-endpoint", default=None, metavar="HOST:PORT",
        help="with --nnodes > 1: where the machines meet (one of them)",
    )  # fmt: skip
    train.add_argument("--run-id", default=None, help="with --nnodes > 1: the same on each")
    train.add_argument(
        "--shards", type=int, default=None,
        help="user shards; fix the data order (default: all processes, nproc x nnodes)",
    )  # fmt: skip
    train.add_argument(
        "--checkpoints", type=Path, default=None,
        help="checkpoint folder (default: <db>.checkpoints beside an SQLite log; needed "
        "with PostgreSQL)",
    )  # fmt: skip
    train.add_argument("--checkpoint-every", type=int, default=100, help="steps (default: 100)")
    train.add_argument(
        "--max-restarts", type=int, default=0,
        help="restarts of the processes after a failure, each from the newest checkpoint",
    )  # fmt: skip
    train.add_argument(
        "--snapshots", type=Path, default=None,
        help="SQLite: the snapshot folder (default: <db>.snapshots, as serve's)",
    )  # fmt: skip
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(run=_train)

    db = commands.add_parser("db", help="the database's schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser(
        "upgrade",
        help="apply the missing migrations (each process also does at start)",
    )
    upgrade.add_argument("--db", required=True, help="postgresql://user@host:5432/dbname")
    upgrade.add_argument("--db-schema", default="public")
    upgrade.set_defaults(run=_db_upgrade)
    return parser


def _add_cleaning_options(command: argparse.ArgumentParser, burst_default: str) -> None:
    """The options of ``ingest`` and ``evaluate`` that say how a file's rows are read and
    cleaned; ``burst_default`` says what the bot-burst rule does without its option."""
    command.add_argument("--delimiter", default=None, help="csv delimiter (default: sniffed)")
    command.add_argument(
        "--kind",
        dest="default_kind",
        default=None,
        metavar="KIND",
        help="kind of rows without one (default: view)",
    )
    command.add_argument("--time-unit", default="auto", choices=("auto", "s", "ms", "us", "ns"))
    command.add_argument(
        "--max-events-per-second",
        type=int,
        default=None,
        metavar="N",
        help=f"reject a user's events in any second with more than N ({burst_default}; "
        "0 turns it off)",
    )


def _add_obd_log(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--log",
        required=True,
        metavar="obd:PATH",
        help="the Open Bandit Dataset folder holding random/ and bts/, "
        "e.g. obd:../shared/datasets/obd",
    )
    command.add_argument("--campaign", choices=OBD_CAMPAIGNS, default="all")


# ------------------------------------------------------------------------------ commands


def _demo(args: argparse.Namespace) -> int:
    _at_least(1, users=args.users, items=args.items, events=args.events, blocks=args.blocks)
    _at_least(0, workers=args.workers)
    result = run_demo(
        args.db, args.users, args.items, args.events, args.seed, blocks=args.blocks,
        workers=args.workers, progress=not args.json,
    )  # fmt: skip
    if args.json:
        _print_json({k: v for k, v in result.items() if not k.endswith("_text")})
    else:
        print(render(result))
    return 0


def _ingest(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    _at_least(1, batch_size=args.batch_size)
    _parent_folder(args.db, "--db")
    format = args.format or detect_format(args.path)
    base = MOVIELENS_CLEANING if format == "movielens" else CleaningConfig()
    config = _parsed(
        "cleaning options", _cleaning_config, args, base, collapse_window=args.collapse_window
    )
    data = load(
        args.path,
        format,
        mapping=args.mapping,
        delimiter=args.delimiter,
        encoding=args.encoding,
        config=config,
    )
    loaded = time.perf_counter() - started
    fingerprint = None if args.force else _fingerprint(args.path)
    appended = duplicates = 0
    with EventLog(args.db) as log:
        for number, first in enumerate(range(0, len(data.events), args.batch_size)):
            chunk = data.events.take(slice(first, first + args.batch_size))
            key = None if fingerprint is None else f"{fingerprint}:{number}"
            result = log.append(chunk, key=key, source=str(args.path))
            duplicates += result.count if result.duplicate else 0
            appended += 0 if result.duplicate else result.count
        already = duplicates > 0 and appended == 0
        if not already:
            log.upsert_catalog(data.catalog)
            log.quarantine(data.rejected)
        if args.quarantine is not None:
            data.rejected.write_jsonl(args.quarantine)
        log_stats = log.stats()
    seconds = time.perf_counter() - started
    if args.json:
        _print_json(
            {
                "report": data.report.to_dict(),
                "appended": appended,
                "already_in_log": duplicates,
                "catalog_items": len(data.catalog),
                "log": log_stats,
                "load_seconds": loaded,
                "seconds": seconds,
            }
        )
        return 0
    print(data.report.format())
    if already:
        print(
            f"already ingested: all {duplicates:,} events of this file are in the log "
            "(use --force to append them again)"
        )
    else:
        print(
            f"appended {appended:,} events to {args.db} "
            f"(log now {log_stats['events']:,} events, {log_stats['users']:,} users, "
            f"{log_stats['items']:,} items); catalog: {len(data.catalog):,} items"
        )
    if len(data.rejected):
        where = f" and {args.quarantine}" if args.quarantine else ""
        print(
            f"rejected rows kept in the log's quarantine table{where}; "
            f"see them with: lifelong-rec rejected --db {args.db}"
        )
    print(f"done in {seconds:.2f} s")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if not 0 < args.warmup < 1:
        raise InputError(f"--warmup must be between 0 and 1, got {args.warmup}")
    _at_least(1, blocks=args.blocks, k=args.k)
    _at_least(0, workers=args.workers)
    parsed = [_parsed("--models", parse_model, spec) for spec in split_specs(args.models)]
    if not parsed:
        raise InputError("--models: none given")
    specs = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not specs:
        raise InputError("--strategies: none given")
    for spec in specs:
        _parsed("--strategies", parse_strategy, spec, parsed[0][1])  # validates the spec early
    config = _parsed("cleaning options", _cleaning_config, args, EVALUATION_CLEANING)
    data, name = _evaluation_data(args, config)
    events, catalog = data.events, data.catalog
    test_rows = len(events) - int(args.warmup * len(events))
    if test_rows < args.blocks:
        rejected = data.report.rejected_total
        counts = ", ".join(f"{count:,} {reason}" for reason, count in data.report.rejected.items())
        why = f" ({rejected:,} of {data.report.rows_read:,} rows rejected: {counts})"
        raise InputError(
            f"--blocks {args.blocks}: the data has {test_rows} rows after warm-up"
            + (why if rejected else "")
        )
    # models that read item text (the transformer) know the catalogue from the start
    models = [(label, with_catalog(factory, catalog)) for label, factory in parsed]
    strategies = {
        (label, spec): partial(parse_strategy, spec, factory)
        for label, factory in models
        for spec in specs
    }
    started = time.perf_counter()
    report = prequential(
        events,
        strategies,
        warmup=args.warmup,
        blocks=args.blocks,
        k=args.k,
        workers=args.workers,
        progress=not args.no_progress,
        tensorboard=args.tensorboard,
        folder=args.out,  # each strategy's result as it finishes: a rerun resumes
    )
    removed = _removed_rows(data.report, cast(int, report.data["duplicates_dropped"]))
    report = replace(
        report,
        params={**report.params, "max_events_per_second": config.max_events_per_second},
        data={**report.data, "rows_read": data.report.rows_read, "removed": removed},
    )
    paths = write_report(report, args.out, title=f"P1 on {name}")
    paths["rejected"] = args.out / "rejected.jsonl"
    data.rejected.write_jsonl(paths["rejected"])  # always: a stale file would mislead
    if args.json:
        print(paths["json"].read_text(), end="")
        return 0
    print(markdown_table(report))
    print(f"\nwrote {', '.join(map(str, paths.values()))} "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    return 0


def _evaluation_data(args: argparse.Namespace, config: CleaningConfig) -> tuple[Dataset, str]:
    """The data of ``--data FORMAT:PATH`` (or ``synthetic``), cleaned by ``config``, and its
    name for the report's title."""
    if args.data == "synthetic":
        # generated rows have no clock that drifts: no timestamp lies in the future
        return synthetic_stream(config=replace(config, now=math.inf)), "the synthetic shop"
    format, separator, path = args.data.partition(":")
    if not separator or format not in FORMATS or not path:
        raise InputError(
            f"--data {args.data!r}: use FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}"
        )
    data = load(path, format, mapping=args.mapping, delimiter=args.delimiter, config=config)
    return data, f"{Path(path).name} ({format})"


def _removed_rows(report: CleaningReport, duplicates: int) -> dict[str, int]:
    """Rows removed before scoring, per reason: those cleaning rejected, and the exact
    ``duplicates`` that P1 dropped (under "duplicate"); reasons in :data:`REASONS` order."""
    counts = dict(report.rejected)
    if duplicates:
        counts["duplicate"] = counts.get("duplicate", 0) + duplicates
    order = {reason: position for position, reason in enumerate(REASONS)}
    return dict(sorted(counts.items(), key=lambda count: order.get(count[0], len(order))))


def _ope(args: argparse.Namespace) -> int:
    _at_least(1, bootstrap=args.bootstrap)
    estimators = [name.strip() for name in args.estimators.split(",") if name.strip()]
    if not estimators:
        raise InputError("--estimators: none given")
    for name in estimators:
        if name not in ESTIMATORS:
            raise InputError(f"--estimators: {name!r} is not one of {', '.join(ESTIMATORS)}")
    evaluated = args.evaluation.split("-")[0]  # bts-logged reads the bts log
    folder = _obd_folder(args.log, args.campaign, {args.behavior, evaluated})
    report: dict[str, Any] = ope_report(
        folder, args.campaign, args.behavior, args.evaluation, estimators, args.bootstrap, args.seed
    )
    if args.json:
        _print_json(report)
        return 0
    level = f"{report['level'] * 100:g} %"
    print(
        f"P3 on OBD campaign {report['campaign']!r}: the {report['evaluation']} policy's click "
        f"rate estimated from the {report['behavior']} log ({report['behavior_rows']:,} rows, "
        f"click rate {report['behavior_click_rate']:.4f})"
    )
    print(
        f"truth: {report['truth']:.4f} {_interval(report['truth_interval'])}, the mean click "
        f"of the {evaluated} log ({report['truth_rows']:,} rows)"
    )
    print(f"evaluated distribution: {report['distribution']['method']}")
    rows = [("estimator", "estimate", "truth", f"relative error [{level} interval]")]
    rows += [
        (
            row["estimator"],
            f"{row['estimate']:.5f}",
            f"{report['truth']:.5f}",
            f"{row['relative_error']:.3f} {_interval(row['relative_error_interval'], 3)}",
        )
        for row in report["estimates"]
    ]
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print(
        f"{report['bootstrap']:,} bootstrap resamples, seed {report['seed']}; largest importance "
        f"weight {report['max_weight']:.3g}, effective rows {report['effective_rows']:,.0f}"
    )
    return 0


def _replay(args: argparse.Namespace) -> int:
    _parsed("--policy", parse_policy, args.policy, k=1)  # validates it before the log is read
    folder = _obd_folder(args.log, args.campaign, {"random"})
    report: dict[str, Any] = replay_report(folder, args.campaign, args.policy, seed=args.seed)
    if args.json:
        _print_json(report)
        return 0
    print(
        f"P3 replay (Li et al., 2011) of {report['policy']!r} over the random log of OBD "
        f"campaign {report['campaign']!r}, seed {report['seed']}"
    )
    print(
        f"counted rows: {report['counted_rows']:,} of {report['rows']:,} "
        f"(those where the policy picked the logged item), clicks: {report['clicks']:g}"
    )
    print(
        f"replay click rate: {report['estimate']:.4f} {_interval(report['interval'])} "
        "(95 % Wilson interval)"
    )
    print("logged policies' click rates:")
    for name, logged in report["logged"].items():
        print(
            f"  {name:<7} {logged['click_rate']:.4f} {_interval(logged['interval'])} "
            f"({logged['rows']:,} rows)"
        )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    specs = split_specs(args.policies)
    if not specs:
        raise InputError("--policies: none given")
    for spec in specs:
        if spec != "oracle":  # validates every spec before the simulation starts
            _parsed("--policies", parse_policy, spec)
    _at_least(1, rounds=args.rounds)
    report: dict[str, Any] = simulate_report(specs, args.rounds, args.out, seed=args.seed)
    if args.json:
        _print_json(report)
        return 0
    print(f"P4: {len(specs)} policies share the traffic by user hash, {args.rounds:,} rounds, "
          f"seed {args.seed}")  # fmt: skip
    print(report["markdown"])
    print(f"\nwrote {', '.join(map(str, report['paths'].values()))}")
    return 0


def _obd_folder(spec: str, campaign: str, policies: set[str]) -> Path:
    """The folder of ``obd:PATH``, checked to hold ``<policy>/<campaign>`` for each policy."""
    format, separator, path = spec.partition(":")
    if format != "obd" or not separator or not path:
        raise InputError(
            f"--log {spec!r}: use obd:PATH, PATH being the OBD folder holding random/ and bts/"
        )
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"--log {spec!r}: no such folder")
    for policy in sorted(policies):
        if not (folder / policy / campaign).is_dir():
            raise InputError(
                f"--log {spec!r}: {policy}/{campaign} not found in it; "
                "PATH is the OBD folder holding random/ and bts/"
            )
    return folder


def _interval(bounds: Sequence[float], digits: int = 4) -> str:
    low, high = bounds
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lifelong_rec.service.app import server_config

    options = {"db": args.db, "model": args.model, "strategy": args.strategy,
               "policy": args.policy, "snapshots": args.snapshots, "role": args.role,
               "db_schema": args.db_schema}  # fmt: skip
    settings = _service_settings({k: v for k, v in options.items() if v is not None})
    _parsed("--host", settings.check_exposure, args.host)
    if not is_postgres(settings.db):
        _parent_folder(Path(settings.db), "--db")
    # the specs fail here in one line, not in the server's startup with a traceback
    _, factory = _parsed("--model", parse_model, settings.model)
    _parsed("--strategy", parse_strategy, settings.strategy, factory)
    if settings.policy is not None:
        _parsed("--policy", parse_policy, settings.policy, k=1)
    _parsed("LIFELONG_REC_REWARDS", reward_spec, settings.rewards)
    server = uvicorn.Server(server_config(settings, args.host, args.port, args.log_level))
    server.run()
    return 0 if server.started else EXIT_STARTUP


def _learn(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from lifelong_rec.service.worker import learner_name, run_learner

    options = {"db": args.db, "model": args.model, "strategy": args.strategy,
               "policy": args.policy, "db_schema": args.db_schema}  # fmt: skip
    settings = _service_settings({k: v for k, v in options.items() if v is not None})
    if not is_postgres(settings.db):
        raise InputError(
            f"--db {settings.db}: a learner process needs PostgreSQL (postgresql://...); "
            "with SQLite, `lifelong-rec serve` learns in its own process"
        )
    _, factory = _parsed("--model", parse_model, settings.model)
    _parsed("--strategy", parse_strategy, settings.strategy, factory)
    if settings.policy is not None:
        _parsed("--policy", parse_policy, settings.policy, k=1)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):  # a clean stop persists, then returns
        signal.signal(number, lambda *_: stop.set())
    run_learner(settings, stop, name=learner_name(settings.model, args.arm))
    return 0


def _train(args: argparse.Namespace) -> int:
    _at_least(1, nproc=args.nproc, nnodes=args.nnodes, checkpoint_every=args.checkpoint_every)
    _at_least(0, max_restarts=args.max_restarts)
    if args.shards is not None:
        _at_least(args.nproc * args.nnodes, shards=args.shards)
    if args.nnodes > 1 and not (args.rdzv_endpoint and args.run_id):
        raise InputError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT and --run-id")
    options = {"db": args.db, "model": args.model, "snapshots": args.snapshots,
               "db_schema": args.db_schema}  # fmt: skip
    settings = _service_settings({k: v for k, v in options.items() if v is not None})
    postgres = is_postgres(settings.db)
    if not postgres and not Path(settings.db).is_file():
        raise InputError("no such event log", path=Path(settings.db))
    checkpoints = args.checkpoints
    if checkpoints is None:
        if postgres:
            raise InputError("--checkpoints: a folder is needed with PostgreSQL")
        checkpoints = Path(f"{settings.db}.checkpoints")
    from lifelong_rec.service.stores import open_snapshots
    from lifelong_rec.service.worker import learner_name
    from lifelong_rec.train import TrainPlan, launch

    plan = _parsed(
        "--model", TrainPlan, model=settings.model, db=settings.db, schema=settings.db_schema,
        shards=args.shards or args.nproc * args.nnodes, checkpoints=str(checkpoints),
        checkpoint_every=args.checkpoint_every,
        snapshots=None if postgres else str(settings.snapshots),
        snapshot_name=learner_name(settings.model),
    )  # fmt: skip
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    started = time.perf_counter()
    try:
        launch(plan, args.nproc, args.nnodes, args.rdzv_endpoint, args.run_id, args.max_restarts)
    except ChildFailedError as error:
        print(f"lifelong-rec: training failed: {error}", file=sys.stderr)
        return EXIT_INTERNAL
    name = learner_name(settings.model)
    store = open_snapshots(
        settings.db, folder=settings.snapshots, name=name, schema=settings.db_schema
    )
    try:
        newest = store.newest()
    finally:
        store.close()
    result = {"model": settings.model, "processes": args.nproc * args.nnodes,
              "shards": plan.shards, "seconds": round(time.perf_counter() - started, 1),
              "snapshot": None if newest is None else newest.to_dict(),
              "snapshots": "database" if postgres else str(settings.snapshots)}  # fmt: skip
    if args.json:
        _print_json(result)
    elif newest is not None:
        print(
            f"published snapshot {newest.version} of {settings.model} (learned up to log "
            f"offset {newest.offset:,}) in {result['seconds']} s to {result['snapshots']}"
        )
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    if not is_postgres(args.db):
        raise InputError(
            f"--db {args.db}: an SQLite file is upgraded when it is opened; this command is "
            "for PostgreSQL (postgresql://...)"
        )
    from lifelong_rec.service.stores import upgrade
    from lifelong_rec.store.postgres import SchemaVersionError

    try:
        versions = _parsed("--db-schema", upgrade, args.db, args.db_schema)
    except SchemaVersionError as error:
        raise InputError(str(error)) from None
    _print_json({"db_schema": args.db_schema, **versions})
    return 0


def _service_settings(options: dict[str, object]) -> Settings:
    """The service's settings from ``options`` and the ``LIFELONG_REC_*`` variables, their
    problems in one line (without the values: one may be the token)."""
    from pydantic import ValidationError

    from lifelong_rec.service.settings import ENV_PREFIX, Settings

    try:
        return Settings(**options)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for problem in error.errors(include_input=False, include_url=False):
            message = problem["msg"].removeprefix("Value error, ")
            if problem["loc"]:
                name = str(problem["loc"][0])
                flag = f"--{name} or " if name in options else ""
                message = f"setting {name} ({flag}{ENV_PREFIX}{name.upper()}): {message}"
            problems.append(message)
        raise InputError("; ".join(problems)) from None


def _parent_folder(path: Path, option: str) -> None:
    """Check that the folder ``path`` would be created in exists."""
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: no such folder {path.parent}")


def _stats(args: argparse.Namespace) -> int:
    if not args.db.is_file():
        raise InputError("no such event log", path=args.db)
    with EventLog(args.db) as log:
        log_stats: dict[str, Any] = log.stats()
        stream = describe(log.read(0))
        rejected = log.rejected_counts()
    if args.json:
        _print_json({"log": log_stats, "stream": stream.to_dict(), "rejected": rejected})
        return 0
    print(
        f"event log {args.db}: {log_stats['batches']:,} appends, "
        f"{log_stats['quarantined']:,} rows in quarantine {rejected or ''}"
    )
    print(stream.format())
    for name, offset in log_stats["consumers"].items():
        print(f"  consumer {name}: at offset {offset:,} of {log_stats['events']:,}")
    return 0


def _rejected(args: argparse.Namespace) -> int:
    if not args.db.is_file():
        raise InputError("no such event log", path=args.db)
    with EventLog(args.db) as log:
        rows = log.rejected(reason=args.reason, limit=args.limit)
    for record in rows.records():
        print(f"{record['source']}:{record['line']}: {record['reason']}: {record['detail']}")
        print(f"    {record['raw']}")
    if not len(rows):
        print("no rejected rows")
    return 0


# ------------------------------------------------------------------------------ helpers


def _cleaning_config(
    args: argparse.Namespace, base: CleaningConfig, collapse_window: float | None = None
) -> CleaningConfig:
    """``base`` with the options of :func:`_add_cleaning_options` applied."""
    burst = base.max_events_per_second
    if args.max_events_per_second is not None:
        burst = args.max_events_per_second or None  # 0 turns the check off
    return replace(
        base,
        default_kind=args.default_kind or base.default_kind,
        time_unit=args.time_unit,
        max_events_per_second=burst,
        collapse_window=collapse_window,
    )


def _fingerprint(path: Path) -> str:
    """Identifies the exact file(s) ingested: path, size and modification time of each."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        status = file.stat()
        digest.update(f"{file.resolve()}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _remove_log(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _print_json(payload: dict[str, object]) -> None:
    print(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
