"""``POST /events``: one input contract with files, accepted row by row.

A request's events go through the rules ``lifelong-rec ingest`` applies to the rows of a file
(:func:`lifelong_rec.data.cleaning.clean`): ISO-8601 times, kind aliases (``addtocart``), the
same rejection reasons. Each row is judged alone:

- The body as a whole is refused only for what no row can fix: invalid JSON, not an object,
  ``events`` not a list or empty, unknown top-level keys, a bad ``key`` (422), and more events
  than ``max_batch`` (413, checked before a single row is validated).
- A row that fails, whether the row schema (:class:`~lifelong_rec.service.schemas.EventIn`:
  not an object, a missing or non-text id, an unknown field, a bad context) or cleaning, is
  quarantined (:meth:`EventLog.quarantine`) and listed in the answer with its ``index``, the
  0-based position of the event in the request's ``events`` (0 for a single event). The
  quarantine keeps the row under the same number as its ``line``, with the request's source
  (``"http"``, or ``"http key=<key>"`` for a keyed batch) and the row as sent.
- The other rows are appended together, durably, under the batch's key.
- A retried key (the log has it already) appends, quarantines and counts nothing again; it
  answers with ``duplicate`` true, the first append's offset and count, and the rejections of
  the rows as sent. The key is recorded even when every row was rejected, so that such a
  retry is recognised too.

Numeric timestamps are Unix seconds (``time_unit="s"``): a file's unit is guessed per column,
but a request's rows are few and the API states its unit. A milliseconds timestamp is then
rejected as out of range, not guessed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from lifelong_rec.data.cleaning import Cleaned, CleaningConfig, clean
from lifelong_rec.data.report import REASONS, Rejected
from lifelong_rec.events.ids import id_problem
from lifelong_rec.service.errors import ClientError, Invalid
from lifelong_rec.service.metrics import Metrics
from lifelong_rec.service.schemas import EventIn, Id
from lifelong_rec.store import EventLog

if TYPE_CHECKING:  # psycopg is imported only for a PostgreSQL db
    from lifelong_rec.store import PostgresEventLog

SOURCE = "http"
HTTP_CLEANING = CleaningConfig(time_unit="s")
_BATCH_KEYS = frozenset({"events", "key"})
_SHOWN_LENGTH = 80
_KEY = TypeAdapter(Id)


@dataclass(frozen=True)
class Ingested:
    """What an ingestion did: the rows accepted and rejected, where they went, whether the
    batch's key had been seen before."""

    accepted: int
    rejections: list[dict[str, object]]
    first_offset: int | None
    duplicate: bool


class TooManyEvents(ClientError):
    """More events in one request than ``max_batch`` (413)."""

    status = 413


@dataclass(frozen=True)
class Batch:
    """A request body whose shape was checked; its rows are JSON values, not yet validated."""

    rows: list[Any]
    key: str | None


# ------------------------------------------------------------------------------ the body


def read_body(body: bytes, max_batch: int) -> Batch:
    """The rows and key of a ``POST /events`` body: one event, or ``{"events": [...], "key"}``.

    Only the body's shape is checked here, and the number of events before anything else:
    an oversized batch costs its JSON parse, never a validation of each row.

    Raises
    ------
    TooManyEvents
        More than ``max_batch`` events (413).
    Invalid
        A body no row of which can be read (422), naming the field.
    """
    if not body.strip():
        raise Invalid('an event, or {"events": [...]}, is required', "body")
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError as error:
        raise Invalid(f"invalid JSON at character {error.pos}: {error.msg}", "body") from None
    except UnicodeDecodeError:
        raise Invalid("not UTF-8 text", "body") from None
    except RecursionError:
        raise Invalid("JSON nested too deeply", "body") from None
    if not isinstance(parsed, dict):
        raise Invalid(f'an event, or {{"events": [...]}}, not a JSON {_json_type(parsed)}', "body")
    if "events" not in parsed:  # one event: a bad one is a rejected row, not a bad body
        return Batch(rows=[parsed], key=None)
    events = parsed["events"]
    if not isinstance(events, list):
        raise Invalid(f"a list of events, not a JSON {_json_type(events)}", "events")
    if len(events) > max_batch:
        raise TooManyEvents(f"{len(events)} events, over the batch limit of {max_batch}", "events")
    if not events:
        raise Invalid("at least one event is required", "events")
    unknown = sorted(set(parsed) - _BATCH_KEYS)
    if unknown:
        raise Invalid(f"{_shown(unknown[0])} is not a batch field (events, key)", "body")
    return Batch(rows=events, key=_batch_key(parsed.get("key")))


def _batch_key(key: object) -> str | None:
    if key is None:
        return None
    try:
        return _KEY.validate_python(key)
    except ValidationError as error:
        problem = error.errors()[0]
        if problem["type"] == "string_pattern_mismatch" and isinstance(key, str):
            raise Invalid(str(id_problem(key)), "key") from None
        raise Invalid(problem["msg"], "key") from None


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null", dict: "object"}
    return names.get(type(value), "number")


# ------------------------------------------------------------------------------ the rows


def ingest(
    log: EventLog | PostgresEventLog,
    metrics: Metrics,
    rows: Sequence[Any],
    key: str | None,
    *,
    config: CleaningConfig = HTTP_CLEANING,
) -> Ingested:
    """Check and clean ``rows``, append the good ones durably, quarantine the others.

    Parameters
    ----------
    log : EventLog or PostgresEventLog
    metrics : Metrics
        ``events_ingested`` and ``events_rejected`` count each row once: not again for a
        retried key.
    rows : sequence of JSON values, shape (n,)
        The request's events as sent (see :func:`read_body`).
    key : str or None
        The batch's idempotency key.
    config : CleaningConfig
        The cleaning rules; files get the same ones, with the time unit guessed.

    Returns
    -------
    Ingested
        ``accepted`` events (for a retried key: as many as its first append), the
        ``rejections`` in row order, each ``{"index", "field", "reason", "detail"}``.
    """
    source = SOURCE if key is None else f"{SOURCE} key={key}"
    valid, rejected = _check_rows(rows, source)
    cleaned = _clean(valid, source, config)
    rejected = _sorted(Rejected.concat([rejected, _as_sent(cleaned.rejected, rows)]))
    appended = None
    if len(cleaned.events) or key is not None:  # a key is kept even for an empty append
        appended = log.append(cleaned.events, key=key, source=SOURCE)
    duplicate = appended is not None and appended.duplicate
    if not duplicate:
        # After the append: a crash in between loses the quarantined rows, never an event.
        log.quarantine(rejected)
        metrics.events.inc(len(cleaned.events))
        for reason, count in rejected.counts().items():
            metrics.rejected.labels(reason).inc(count)
    accepted = appended.count if appended is not None else 0
    return Ingested(
        accepted=accepted,
        rejections=[
            {"index": line, "field": field, "reason": reason, "detail": detail}
            for line, field, reason, detail in zip(
                rejected.line.tolist(),
                rejected.field.tolist(),
                rejected.reason.tolist(),
                rejected.detail.tolist(),
                strict=True,
            )
        ],
        first_offset=appended.first_offset if appended is not None and accepted else None,
        duplicate=duplicate,
    )


def _check_rows(rows: Sequence[Any], source: str) -> tuple[list[tuple[int, EventIn]], Rejected]:
    """The rows that pass the row schema, with their index; the others, rejected."""
    valid: list[tuple[int, EventIn]] = []
    failed: list[tuple[int, str, str, str]] = []
    for index, row in enumerate(rows):
        try:
            valid.append((index, EventIn.model_validate(row)))
        except ValidationError as error:
            failed.append((index, *_first_problem(error.errors(include_url=False))))
    if not failed:
        return valid, Rejected.empty()
    indexes, fields, reasons, details = zip(*failed, strict=True)
    return valid, Rejected(
        source=np.full(len(failed), source),
        line=np.array(indexes, dtype=np.int64),
        reason=np.array(reasons),
        field=np.array(fields),
        detail=np.array(details),
        raw=np.array([_raw(rows[index]) for index in indexes]),
    )


def _first_problem(errors: list[ErrorDetails]) -> tuple[str, str, str]:
    """(field, reason, detail) of a row's problems: the first in REASONS order, as cleaning
    counts a row with several problems once."""
    problems = [_problem(error) for error in errors]
    return min(problems, key=lambda problem: REASONS.index(problem[1]))


def _problem(error: ErrorDetails) -> tuple[str, str, str]:
    """One schema error as (field, reason, detail), in cleaning's words."""
    loc, kind, message = error["loc"], error["type"], error["msg"]
    if not loc:
        return "", "malformed_row", f"an event is a JSON object, not a {_json_type(error['input'])}"
    name = str(loc[0])
    if kind == "extra_forbidden":
        return _escaped(name), "malformed_row", f"{_shown(name)} is not an event field"
    if name in ("user", "item"):
        return name, *_id_problem(name, kind, error["input"])
    if name == "context":
        field = "context" if len(loc) == 1 else f"context.{_escaped(str(loc[1]))}"
        if kind == "string_pattern_mismatch":
            message = "a context name is letters, digits, '_', '.' or '-'"
        elif kind == "finite_number":  # as cleaning says it of a file's context column
            message = f"context {_shown(str(loc[1]))} is not finite"
        return field, "bad_context", message
    reason = {"timestamp": "bad_timestamp", "kind": "unknown_kind", "value": "bad_value"}[name]
    if name == "timestamp":
        message = "not a number of seconds or ISO-8601 text"
    return name, reason, message


def _id_problem(name: str, kind: str, value: object) -> tuple[str, str]:
    if kind == "missing":
        return "missing_id", f"no {name} id"
    if kind == "string_too_short":
        return "missing_id", f"{name} id is empty"
    if kind == "string_too_long":
        return "id_too_long", f"{name} id longer than {HTTP_CLEANING.max_id_length}"
    if kind == "string_pattern_mismatch" and isinstance(value, str):
        return "invalid_id", f"{name} id {id_problem(value)}"
    if kind == "string_unicode":
        return "invalid_id", f"{name} id holds a lone surrogate (invalid UTF-16)"
    return "invalid_id", f"{name} id must be a JSON string, not a {_json_type(value)}"


def _clean(valid: list[tuple[int, EventIn]], source: str, config: CleaningConfig) -> Cleaned:
    """The rows that passed the schema, cleaned as the rows of a file are."""
    now = time.time()
    events = [event for _, event in valid]
    frame = pd.DataFrame(
        {
            "user": [event.user for event in events],
            "item": [event.item for event in events],
            "timestamp": pd.Series(
                [now if event.timestamp is None else event.timestamp for event in events],
                dtype=object,
            ),
            "kind": pd.Series([event.kind for event in events], dtype=object),
            "value": [np.nan if event.value is None else event.value for event in events],
        }
    )
    contexts = sorted({name for event in events for name in (event.context or {})})
    for name in contexts:
        frame[name] = [(event.context or {}).get(name, np.nan) for event in events]
    lines = np.array([index for index, _ in valid], dtype=np.int64)
    return clean(
        frame,
        source=source,
        lines=lines,
        context_columns=contexts,
        config=config,
        name="POST /events",
    )


def _as_sent(rejected: Rejected, rows: Sequence[Any]) -> Rejected:
    """Cleaning's rejected rows with the rows as the client sent them (not as parsed)."""
    if not len(rejected):
        return rejected
    raw = np.array([_raw(rows[index]) for index in rejected.line.tolist()])
    return Rejected(
        rejected.source, rejected.line, rejected.reason, rejected.field, rejected.detail, raw
    )


def _sorted(rejected: Rejected) -> Rejected:
    """Rejected rows in request order."""
    order = np.argsort(rejected.line, kind="stable")
    columns = ("source", "line", "reason", "field", "detail", "raw")
    return Rejected(*(getattr(rejected, name)[order] for name in columns))


def _raw(row: object) -> str:
    """A row as JSON text for the quarantine: ASCII, so lone surrogates cannot reach SQLite."""
    try:
        return json.dumps(row, ensure_ascii=True)
    except (ValueError, TypeError, RecursionError):
        return _shown(repr(row))


def _escaped(text: str) -> str:
    """``text`` with control, invisible and surrogate characters escaped as Python writes
    them (``\\u200b``), shortened: safe in a log line, in JSON and in SQLite."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:_SHOWN_LENGTH])
    return shown + ("..." if len(text) > _SHOWN_LENGTH else "")


def _shown(text: str) -> str:
    return f"'{_escaped(text)}'"
