"""Validation, cleaning and normalisation of raw rows into an :class:`EventBatch`.

Nothing is dropped silently: every rejected row is counted under a named reason and kept, with
its source line and original fields, in :class:`Rejected`. A row with several problems is
counted once, under the first reason in :data:`REASONS` order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pandas as pd

from lifelong_rec.data.report import REASONS, CleaningReport, Rejected
from lifelong_rec.events import EventBatch, EventWeights, Kind, kind_codes
from lifelong_rec.events.ids import has_forbidden_characters, id_problem

# Common spellings of kinds in public data sets and trackers.
DEFAULT_KIND_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "addtocart": "cart",
        "add_to_cart": "cart",
        "transaction": "purchase",
        "buy": "purchase",
        "order": "purchase",
        "pageview": "view",
        "page_view": "view",
        "play": "watch",
        "rate": "rating",
    }
)

_SECONDS_PER_UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


@dataclass(frozen=True)
class CleaningConfig:
    """How raw rows are validated and normalised.

    Parameters
    ----------
    weights : EventWeights
        Implicit-feedback weight of each kind.
    default_kind : str
        Kind of rows whose kind is absent or empty.
    kind_aliases : mapping of str to str
        Other names for kinds, for example ``{"like": "click"}``; added to
        :data:`DEFAULT_KIND_ALIASES`.
    time_unit : {"auto", "s", "ms", "us", "ns"}
        Unit of numeric timestamps. "auto" picks it per column from the median magnitude
        (seconds below 1e11, milliseconds below 1e14, microseconds below 1e17). ISO-8601 text
        is always accepted.
    min_time : float
        Earliest accepted timestamp, unix seconds (default 1990-01-01).
    max_future_seconds : float
        How far past ``now`` a timestamp may lie (default one day: clocks drift).
    now : float or None
        The present, unix seconds; None reads the clock. Set it for reproducible cleaning.
    rating_range : (float, float)
        Inclusive bounds of a rating.
    max_watch_seconds : float
        Longest accepted watch time.
    max_events_per_second : int or None
        A user with more events than this within one calendar second is a bot-like burst: all
        of that second's events of that user are rejected. None turns the check off.
    collapse_window : float or None
        If set, repeated events with the same (user, item, kind) less than this many seconds
        apart are merged into the first one: weights add up, the value is the last one's.
    max_id_length : int
        Longest accepted user or item id, in characters. Ids may not hold control or invisible
        characters (see :data:`lifelong_rec.events.ids.FORBIDDEN_ID_RANGES`), whatever the
        config.
    drop_duplicates : bool
        Reject exact copies of earlier rows.
    sort_by_time : bool
        Order accepted events by timestamp (stable: ties keep file order).
    """

    weights: EventWeights = field(default_factory=EventWeights)
    default_kind: str = "view"
    kind_aliases: Mapping[str, str] = field(default_factory=dict)
    time_unit: str = "auto"
    min_time: float = 631_152_000.0
    max_future_seconds: float = 86_400.0
    now: float | None = None
    rating_range: tuple[float, float] = (0.0, 10.0)
    max_watch_seconds: float = 86_400.0
    max_events_per_second: int | None = 20
    collapse_window: float | None = None
    max_id_length: int = 256
    drop_duplicates: bool = True
    sort_by_time: bool = True

    def __post_init__(self) -> None:
        known = {kind.label for kind in Kind}
        if self.default_kind not in known:
            raise ValueError(f"default_kind: {self.default_kind!r} is not one of {sorted(known)}")
        for alias, target in self.kind_aliases.items():
            if target not in known:
                raise ValueError(f"kind_aliases[{alias!r}]: {target!r} is not a known kind")
        if self.time_unit not in ("auto", *_SECONDS_PER_UNIT):
            raise ValueError(f"time_unit: {self.time_unit!r} is not auto, s, ms, us or ns")
        low, high = self.rating_range
        if not low <= high:
            raise ValueError(f"rating_range: {self.rating_range!r} is not (low, high)")
        if self.max_events_per_second is not None and self.max_events_per_second < 1:
            raise ValueError("max_events_per_second must be >= 1 or None")
        if self.collapse_window is not None and self.collapse_window <= 0:
            raise ValueError("collapse_window must be > 0 seconds or None")
        if self.max_id_length < 1:
            raise ValueError("max_id_length must be >= 1")


@dataclass(frozen=True)
class Cleaned:
    """The result of :func:`clean`: the accepted events, the report and the rejected rows."""

    events: EventBatch
    report: CleaningReport
    rejected: Rejected


# ---------------------------------------------------------------------------------- cleaning


def clean(
    frame: pd.DataFrame,
    *,
    source: str | np.ndarray = "",
    lines: np.ndarray | None = None,
    context_columns: Sequence[str] = (),
    config: CleaningConfig | None = None,
    malformed: Rejected | None = None,
    name: str | None = None,
) -> Cleaned:
    """Validate and normalise raw rows.

    Parameters
    ----------
    frame : DataFrame, shape (n, ...)
        Raw rows with canonical column names: ``user``, ``item``, ``timestamp`` (required),
        ``kind``, ``value``, ``policy``, ``model_version``, ``propensity`` (optional), and the
        ``context_columns``. Values may still be text: cleaning parses them.
    source : str or array of str, shape (n,)
        Where the rows came from (one name, or one per row), for the report and the rejected
        rows.
    lines : array of int, shape (n,), optional
        Where each row is in its source: the 1-based line of a file, or the 0-based index of
        an event in a request (``service.ingest``); defaults to 1..n.
    context_columns : sequence of str
        Columns kept as context features: numbers (which must be finite) or text.
    config : CleaningConfig, optional
    malformed : Rejected, optional
        Rows the parser already rejected as malformed; counted in this report.
    name : str, optional
        What the report calls the input; defaults to the source name(s).
    """
    config = config or CleaningConfig()
    frame = frame.reset_index(drop=True)
    n = len(frame)
    lines = np.arange(1, n + 1) if lines is None else np.asarray(lines, dtype=np.int64)
    verdict = _Verdict(n)

    user = _id_column(frame, "user", config, verdict)
    item = _id_column(frame, "item", config, verdict)
    timestamp = _timestamp_column(frame, config, verdict)
    kind = _kind_column(frame, config, verdict)
    value = _value_column(frame, kind, config, verdict)
    propensity = _propensity_column(frame, verdict)
    policy = _text_column(frame, "policy")
    model_version = _text_column(frame, "model_version")
    context = {name: _context_column(frame[name], name, verdict) for name in context_columns}

    parsed = pd.DataFrame(
        {"user": user, "item": item, "timestamp": timestamp, "kind": kind, "value": value}
        | {"policy": policy, "model_version": model_version, "propensity": propensity}
        | {f"context.{name}": values for name, values in context.items()}
    )
    if config.drop_duplicates:
        alive = verdict.alive()
        copies = np.zeros(n, dtype=bool)
        copies[alive] = parsed.loc[alive].duplicated(keep="first").to_numpy()
        verdict.reject(copies, "duplicate", "", "exact copy of an earlier row")
    if config.max_events_per_second is not None:
        _reject_bursts(user, timestamp, config.max_events_per_second, verdict)

    accepted = verdict.alive()
    kinds = kind[accepted].astype(np.uint8)
    events = EventBatch(
        user=user[accepted],
        item=item[accepted],
        timestamp=timestamp[accepted],
        kind=kinds,
        value=value[accepted],
        weight=config.weights.weights(kinds, value[accepted]),
        context={name: values[accepted] for name, values in context.items()},
        policy=policy[accepted],
        model_version=model_version[accepted],
        propensity=propensity[accepted],
    )
    if config.sort_by_time:
        events = events.sorted_by_time()
    collapsed = 0
    if config.collapse_window is not None:
        events, collapsed = collapse_repeats(events, config.collapse_window)

    rejected = Rejected.concat(
        [malformed or Rejected.empty(), verdict.rejected(frame, lines, source)]
    )
    report = CleaningReport(
        source=name or (source if isinstance(source, str) else ", ".join(np.unique(source))),
        rows_read=n + len(malformed or ()),
        accepted=len(events),
        rejected=rejected.counts(),
        collapsed=collapsed,
        examples=_examples(rejected),
    )
    return Cleaned(events=events, report=report, rejected=rejected)


def collapse_repeats(events: EventBatch, window: float) -> tuple[EventBatch, int]:
    """Merge repeated (user, item, kind) events less than ``window`` seconds apart.

    Each run of repeats becomes its first event, with the weights summed and the last value.
    Returns the merged batch (in time order) and how many events were merged away.
    """
    if len(events) < 2:
        return events, 0
    users = pd.factorize(events.user)[0]
    items = pd.factorize(events.item)[0]
    order = np.lexsort((events.timestamp, events.kind, items, users))
    same_key = (
        (users[order][1:] == users[order][:-1])
        & (items[order][1:] == items[order][:-1])
        & (events.kind[order][1:] == events.kind[order][:-1])
    )
    close = np.diff(events.timestamp[order]) < window
    starts = np.flatnonzero(np.concatenate([[True], ~(same_key & close)]))
    if len(starts) == len(events):
        return events, 0
    ends = np.append(starts[1:], len(order)) - 1
    first, last = order[starts], order[ends]
    merged = events.take(first)
    weight = np.add.reduceat(events.weight[order], starts)
    merged = EventBatch(
        user=merged.user,
        item=merged.item,
        timestamp=merged.timestamp,
        kind=merged.kind,
        value=events.value[last],
        weight=weight,
        context=merged.context,
        policy=merged.policy,
        model_version=merged.model_version,
        propensity=merged.propensity,
    )
    time_order = np.argsort(first, kind="stable")  # back to the input's (time) order
    return merged.take(time_order), len(events) - len(starts)


# ---------------------------------------------------------------------------------- helpers


class _Verdict:
    """The first rejection reason of each row ("" while the row is accepted)."""

    def __init__(self, n: int) -> None:
        self.reason = np.full(n, "", dtype=object)
        self.field = np.full(n, "", dtype=object)
        self.detail = np.full(n, "", dtype=object)

    def alive(self) -> np.ndarray:
        return self.reason == ""

    def reject(self, mask: np.ndarray, reason: str, column: str, detail: str | np.ndarray) -> None:
        new = mask & self.alive()
        if not new.any():
            return
        self.reason[new] = reason
        self.field[new] = column
        self.detail[new] = detail[new] if isinstance(detail, np.ndarray) else detail

    def rejected(
        self, frame: pd.DataFrame, lines: np.ndarray, source: str | np.ndarray
    ) -> Rejected:
        rows = np.flatnonzero(~self.alive())
        if len(rows) == 0:
            return Rejected.empty()
        raw = frame.iloc[rows].to_json(orient="records", lines=True, default_handler=str)
        return Rejected(
            source=np.broadcast_to(np.asarray(source, dtype=str), len(frame))[rows],
            line=lines[rows],
            reason=self.reason[rows].astype(str),
            field=self.field[rows].astype(str),
            detail=self.detail[rows].astype(str),
            raw=np.array(raw.splitlines(), dtype=str),
        )


def as_text(series: pd.Series) -> np.ndarray:
    """A column as an array of str, "" for missing cells.

    Not ``series.to_numpy(dtype=str)``: pandas 3 truncates every string to one character
    there when the column has a missing value.
    """
    return series.to_numpy(dtype=object, na_value="").astype(str)


def _present(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(is the cell non-empty, its stripped text), for a column of any type."""
    missing = series.isna().to_numpy()
    if series.dtype.kind == "f":  # ids or values read as floats: 196.0 is the id "196"
        values = series.to_numpy(dtype=np.float64)
        whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**63)
        integers = np.where(whole, values, 0).astype(np.int64).astype(str)
        text = np.where(whole, integers, values.astype(str))
    else:
        text = np.char.strip(as_text(series))
    text = np.where(missing, "", text).astype(str)
    return text != "", text


def _id_column(
    frame: pd.DataFrame, name: str, config: CleaningConfig, verdict: _Verdict
) -> np.ndarray:
    if name not in frame:
        verdict.reject(np.ones(len(frame), bool), "missing_id", name, f"no {name} column")
        return np.full(len(frame), "", dtype=str)
    present, text = _present(frame[name])
    verdict.reject(~present, "missing_id", name, f"{name} id is empty")
    too_long = np.char.str_len(text) > config.max_id_length
    verdict.reject(too_long, "id_too_long", name, f"{name} id longer than {config.max_id_length}")
    invalid = has_forbidden_characters(text)
    if invalid.any():
        detail = np.full(len(text), "", dtype=object)
        detail[invalid] = [f"{name} id {id_problem(id_)}" for id_ in text[invalid].tolist()]
        verdict.reject(invalid, "invalid_id", name, detail.astype(str))
    return text


def parse_timestamps(series: pd.Series, unit: str = "auto") -> np.ndarray:
    """Unix seconds from numbers (s, ms, us or ns) or ISO-8601 text; NaN where unparseable.

    Parameters
    ----------
    series : Series, shape (n,)
    unit : {"auto", "s", "ms", "us", "ns"}
        Unit of numeric values; "auto" decides per column from the median magnitude.

    Returns
    -------
    seconds : array of float64, shape (n,)
    """
    if pd.api.types.is_datetime64_any_dtype(series):
        return _epoch_seconds(pd.to_datetime(series, utc=True))
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(numbers)
    if unit == "auto":
        magnitude = np.median(np.abs(numbers[finite])) if finite.any() else 0.0
        unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us"
        if magnitude >= 1e17:
            unit = "ns"
    seconds = np.where(finite, numbers * _SECONDS_PER_UNIT[unit], np.nan)
    needs_text = ~finite & series.notna().to_numpy()
    if needs_text.any():
        text = series[needs_text].astype(str).str.strip()
        stamps = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        seconds[needs_text] = _epoch_seconds(stamps)
    return seconds


def _epoch_seconds(stamps: pd.Series) -> np.ndarray:
    """Unix seconds of tz-aware timestamps, NaN for NaT, whatever their resolution."""
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def _timestamp_column(frame: pd.DataFrame, config: CleaningConfig, verdict: _Verdict) -> np.ndarray:
    if "timestamp" not in frame:
        verdict.reject(np.ones(len(frame), bool), "bad_timestamp", "timestamp", "no timestamp")
        return np.full(len(frame), np.nan)
    seconds = parse_timestamps(frame["timestamp"], config.time_unit)
    bad = ~np.isfinite(seconds)
    shown = as_text(frame["timestamp"])
    verdict.reject(
        bad,
        "bad_timestamp",
        "timestamp",
        np.char.add(np.char.add("cannot read '", shown), "' as unix time or ISO-8601"),
    )
    now = time.time() if config.now is None else config.now
    early = seconds < config.min_time
    late = seconds > now + config.max_future_seconds
    verdict.reject(early, "timestamp_out_of_range", "timestamp", "before min_time (1990)")
    verdict.reject(late, "timestamp_out_of_range", "timestamp", "more than a day in the future")
    return seconds


def _kind_column(frame: pd.DataFrame, config: CleaningConfig, verdict: _Verdict) -> np.ndarray:
    n = len(frame)
    if "kind" not in frame:
        return np.full(n, Kind[config.default_kind.upper()].value, dtype=np.int16)
    present, text = _present(frame["kind"])
    names = np.char.lower(np.where(present, text, config.default_kind))
    aliases = {**DEFAULT_KIND_ALIASES, **config.kind_aliases}
    if aliases:
        names = as_text(pd.Series(names).replace(aliases))
    codes = kind_codes(names)
    unknown = codes < 0
    if unknown.any():
        detail = np.char.add(np.char.add("'", text), "' is not a known event kind")
        verdict.reject(unknown, "unknown_kind", "kind", detail)
    return np.where(unknown, 0, codes).astype(np.int16)


def _value_column(
    frame: pd.DataFrame, kind: np.ndarray, config: CleaningConfig, verdict: _Verdict
) -> np.ndarray:
    n = len(frame)
    rated = kind == Kind.RATING
    watched = kind == Kind.WATCH
    if "value" not in frame:
        values = np.full(n, np.nan)
        verdict.reject(rated | watched, "bad_value", "value", "this kind needs a value")
        return values
    present, text = _present(frame["value"])
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=np.float64)
    values = np.where(present, values, np.nan)
    unreadable = present & ~np.isfinite(values)
    verdict.reject(
        unreadable,
        "bad_value",
        "value",
        np.char.add(np.char.add("'", text), "' is not a finite number"),
    )
    verdict.reject(~present & (rated | watched), "bad_value", "value", "this kind needs a value")
    low, high = config.rating_range
    verdict.reject(
        rated & ((values < low) | (values > high)),
        "value_out_of_range",
        "value",
        f"rating outside [{low:g}, {high:g}]",
    )
    verdict.reject(
        watched & (values > config.max_watch_seconds),
        "value_out_of_range",
        "value",
        f"watch time above {config.max_watch_seconds:g} s",
    )
    verdict.reject(~rated & (values < 0), "value_out_of_range", "value", "negative value")
    return values


def _propensity_column(frame: pd.DataFrame, verdict: _Verdict) -> np.ndarray:
    if "propensity" not in frame:
        return np.full(len(frame), np.nan)
    present, text = _present(frame["propensity"])
    values = pd.to_numeric(frame["propensity"], errors="coerce").to_numpy(dtype=np.float64)
    values = np.where(present, values, np.nan)
    bad = present & ~((values >= 0) & (values <= 1))
    verdict.reject(
        bad,
        "bad_propensity",
        "propensity",
        np.char.add(np.char.add("'", text), "' is not a probability in [0, 1]"),
    )
    return values


def _text_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), "", dtype=str)
    return _present(frame[name])[1]


def _context_column(series: pd.Series, name: str, verdict: _Verdict) -> np.ndarray:
    """A context feature: numbers, or text when some present cell is not a number. An infinite
    number is rejected: the log stores context as JSON, where it became null."""
    if series.dtype.kind in "biu":
        return series.to_numpy()
    if series.dtype.kind == "f":
        numbers = series.to_numpy(dtype=np.float64)
    else:
        parsed = pd.to_numeric(series, errors="coerce")
        if parsed.notna().sum() != series.notna().sum():  # some present cell is text
            return _present(series)[1]
        numbers = parsed.to_numpy(dtype=np.float64)
    verdict.reject(np.isinf(numbers), "bad_context", name, f"context {name!r} is not finite")
    return numbers


def _reject_bursts(user: np.ndarray, timestamp: np.ndarray, limit: int, verdict: _Verdict) -> None:
    alive = verdict.alive() & np.isfinite(timestamp)
    rows = np.flatnonzero(alive)
    if len(rows) == 0:
        return
    seconds = np.floor(timestamp[rows]).astype(np.int64)
    keys = pd.DataFrame({"user": user[rows], "second": seconds})
    sizes = keys.groupby(["user", "second"], sort=False)["second"].transform("size").to_numpy()
    burst = np.zeros(len(user), dtype=bool)
    burst[rows] = sizes > limit
    detail = np.full(len(user), "", dtype=object)
    detail[rows] = np.char.add(sizes.astype(str), f" events in one second (limit {limit})")
    verdict.reject(burst, "bot_burst", "user", detail.astype(str))


def _examples(rejected: Rejected) -> dict[str, str]:
    examples = {}
    reasons, first = np.unique(rejected.reason, return_index=True)
    for reason, row in zip(reasons.tolist(), first.tolist(), strict=True):
        where = f"line {rejected.line[row]}" if rejected.line[row] >= 0 else "row"
        examples[reason] = f"{where}: {rejected.detail[row]}"
    return {r: examples[r] for r in REASONS if r in examples}
