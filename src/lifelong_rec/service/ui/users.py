"""The Users page: a user's history as a timeline (their events and the lists they were
served, from the event log), and how their list changed since their latest events.

The log has no index by user, so a user's events are found by reading it backwards in
chunks, the newest :data:`USER_SCAN` offsets at most, on the dashboard's own log connection:
the page says how far it looked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong_rec.events import KIND_NAMES
from lifelong_rec.service.ui.charts import strip_chart

if TYPE_CHECKING:
    from markupsafe import Markup

    from lifelong_rec.store import EventLog
    from lifelong_rec.store.postgres import PostgresEventLog

__all__ = [
    "HISTORY_EVENTS",
    "USER_SCAN",
    "Entry",
    "UserHistory",
    "list_change",
    "timeline_chart",
    "user_history",
]

#: the newest log offsets searched for a user's events
USER_SCAN = 500_000
#: log offsets read at once while searching
SCAN_CHUNK = 50_000
#: the most events of one user kept (the newest)
HISTORY_EVENTS = 1_000


@dataclass(frozen=True)
class Entry:
    """One line of the timeline: an event, or a list the user was served (its impressions
    merged, ``items`` in the order shown)."""

    at: float
    kind: str  # an event kind, or "served" for a list
    item: str = ""
    value: float | None = None
    offset: int = 0
    model_version: str = ""
    policy: str = ""
    items: tuple[str, ...] = ()
    explored: tuple[bool, ...] = ()
    propensities: tuple[float, ...] = ()


@dataclass(frozen=True)
class UserHistory:
    """The user's timeline, newest first; ``scanned`` log offsets were searched (all of the
    log when ``complete``) and ``events`` matched (at most :data:`HISTORY_EVENTS` kept)."""

    entries: list[Entry] = field(default_factory=list)
    scanned: int = 0
    complete: bool = True
    events: int = 0


def user_history(log: EventLog | PostgresEventLog, user: str) -> UserHistory:
    """``user``'s newest events in ``log``, as a timeline (see the module)."""
    end = log.end_offset
    floor = max(0, end - USER_SCAN)
    stop, parts = end, []
    found = 0
    while stop > floor and found < HISTORY_EVENTS:
        start = max(floor, stop - SCAN_CHUNK)
        batch = log.read(start, stop)
        rows = np.flatnonzero(batch.user == user)
        if len(rows):
            parts.append((start, batch, rows))
            found += len(rows)
        stop = start
    events: list[Entry] = []
    served: dict[tuple[float, str, str], list[tuple[float, str, bool, float]]] = {}
    for start, batch, rows in parts:
        position = batch.context.get("position")
        explored = batch.context.get("explored")
        for row in rows.tolist():
            kind = KIND_NAMES[int(batch.kind[row])]
            if kind == "impression":  # one shown item of a served list
                key = (
                    float(batch.timestamp[row]),
                    str(batch.model_version[row]),
                    str(batch.policy[row]),
                )
                served.setdefault(key, []).append(
                    (
                        float(position[row]) if position is not None else float(row),
                        str(batch.item[row]),
                        bool(explored is not None and explored[row] == 1.0),
                        float(batch.propensity[row]),
                    )
                )
                continue
            value = float(batch.value[row])
            events.append(
                Entry(
                    at=float(batch.timestamp[row]),
                    kind=kind,
                    item=str(batch.item[row]),
                    value=value if math.isfinite(value) else None,
                    offset=start + row,
                )
            )
    for (at, version, policy), shown in served.items():
        shown.sort()
        events.append(
            Entry(
                at=at,
                kind="served",
                model_version=version,
                policy=policy,
                items=tuple(item for _, item, _, _ in shown),
                explored=tuple(flag for _, _, flag, _ in shown),
                propensities=tuple(p for _, _, _, p in shown),
            )
        )
    events.sort(key=lambda entry: (entry.at, entry.offset), reverse=True)
    return UserHistory(events, end - stop, stop == 0, found)


def list_change(history: UserHistory, now: Sequence[str]) -> dict[str, Any] | None:
    """How the user's list ``now`` differs from the last list they were served before their
    latest event; None when no list was served to them before it (in the part searched)."""
    latest = next((e for e in history.entries if e.kind != "served"), None)
    before = next(
        (
            e
            for e in history.entries
            if e.kind == "served" and (latest is None or e.at <= latest.at)
        ),
        None,
    )
    if before is None:
        return None
    earlier = {item: rank for rank, item in enumerate(before.items, 1)}
    moves = []
    for rank, item in enumerate(now, 1):
        moves.append({"item": item, "rank": rank, "was": earlier.get(item)})
    return {
        "served": before,
        "latest_event": latest,
        "moves": moves,
        "left": [item for item in before.items if item not in set(now)],
        "entered": sum(1 for move in moves if move["was"] is None),
    }


def timeline_chart(history: UserHistory) -> Markup:
    """The user's own events over time, one row per kind (the lists they were served are
    in the timeline: drawn here, months of history would shrink to a dot beside them)."""
    return strip_chart(
        [(entry.at, entry.kind) for entry in history.entries if entry.kind != "served"],
        label="the user's events over time (UTC)",
        empty="no event of this user in the part of the log searched",
    )
