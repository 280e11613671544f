"""What cleaning reports: the rejected rows with their reasons, and the counts per reason."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REASONS: tuple[str, ...] = (
    "malformed_row",  # not split into the expected columns; a request's row: not an event
    "missing_id",  # user or item empty or absent
    "id_too_long",
    "invalid_id",  # not text, or holds a control or invisible character (events.ids)
    "bad_timestamp",  # not a number and not ISO-8601
    "timestamp_out_of_range",  # before min_time or more than max_future_seconds ahead
    "unknown_kind",
    "bad_value",  # not a number, not finite, or missing where the kind needs one
    "value_out_of_range",
    "bad_propensity",  # not a probability
    "bad_context",  # a context feature that is not finite (or, in a request, badly named)
    "duplicate",  # an exact copy of an earlier accepted row
    "bot_burst",  # the user had more than max_events_per_second events in one second
)


@dataclass(frozen=True, eq=False)
class Rejected:
    """Rows that were kept aside, each with where it came from and why.

    Attributes
    ----------
    source : array of str, shape (n,)
        File (or stream) the row came from.
    line : array of int64, shape (n,)
        Where the row is in that source: the 1-based line of a file, the 0-based index of
        the event in a request's ``events`` (source "http ..."), -1 when unknown.
    reason : array of str, shape (n,)
        One of :data:`REASONS`.
    field : array of str, shape (n,)
        The offending field ("" for whole-row reasons).
    detail : array of str, shape (n,)
        What was wrong, for a person.
    raw : array of str, shape (n,)
        The original row as JSON (or the raw text of a malformed line).
    """

    source: np.ndarray
    line: np.ndarray
    reason: np.ndarray
    field: np.ndarray
    detail: np.ndarray
    raw: np.ndarray

    @classmethod
    def empty(cls) -> Rejected:
        return cls(*(np.array([], dtype=str),) * 6)

    @classmethod
    def concat(cls, parts: Iterable[Rejected]) -> Rejected:
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(
            **{
                name: np.concatenate([getattr(p, name) for p in parts])
                for name in ("source", "line", "reason", "field", "detail", "raw")
            }
        )

    def __post_init__(self) -> None:
        fix = object.__setattr__
        for name in ("source", "reason", "field", "detail", "raw"):
            fix(self, name, np.asarray(getattr(self, name), dtype=str))
        fix(self, "line", np.asarray(self.line, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.reason)

    def counts(self) -> dict[str, int]:
        """Rejected rows per reason, in :data:`REASONS` order, only reasons that occurred."""
        names, counts = np.unique(self.reason, return_counts=True)
        found = dict(zip(names.tolist(), counts.tolist(), strict=True))
        return {reason: found[reason] for reason in REASONS if reason in found}

    def records(self) -> list[dict[str, object]]:
        return [
            {"source": s, "line": int(n), "reason": r, "field": f, "detail": d, "raw": w}
            for s, n, r, f, d, w in zip(
                self.source.tolist(),
                self.line.tolist(),
                self.reason.tolist(),
                self.field.tolist(),
                self.detail.tolist(),
                self.raw.tolist(),
                strict=True,
            )
        ]

    def write_jsonl(self, path: str | Path) -> None:
        """Write one JSON object per rejected row."""
        with open(path, "w", encoding="utf-8") as out:
            for record in self.records():
                out.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class CleaningReport:
    """What cleaning did to one source: rows read, accepted, rejected per reason, collapsed."""

    source: str
    rows_read: int
    accepted: int
    rejected: Mapping[str, int]
    collapsed: int = 0
    examples: Mapping[str, str] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "accepted": self.accepted,
            "rejected_total": self.rejected_total,
            "rejected": dict(self.rejected),
            "collapsed": self.collapsed,
            "examples": dict(self.examples),
        }

    def format(self) -> str:
        """The report as a few aligned lines for a terminal."""
        lines = [
            f"cleaning report: {self.source}",
            f"  rows read   {self.rows_read:>10,}",
            f"  accepted    {self.accepted:>10,}",
            f"  rejected    {self.rejected_total:>10,}",
        ]
        for reason, count in self.rejected.items():
            example = self.examples.get(reason, "")
            lines.append(f"    {reason:<24}{count:>8,}   e.g. {example}")
        if self.collapsed:
            lines.append(
                f"  collapsed   {self.collapsed:>10,}  (repeats merged into earlier events)"
            )
        return "\n".join(lines)
