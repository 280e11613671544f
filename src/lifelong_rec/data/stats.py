"""Summary statistics of an event stream, for people."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from lifelong_rec.events import KIND_NAMES, EventBatch


@dataclass(frozen=True)
class StreamStats:
    """Counts and shape of an event stream."""

    events: int
    users: int
    items: int
    events_by_kind: dict[str, int]
    first_time: str
    last_time: str
    days: float
    events_per_user_median: float
    events_per_user_max: int
    events_per_item_median: float
    density: float  # distinct (user, item) pairs / (users * items)
    logged_decisions: int  # events with a propensity

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def format(self) -> str:
        kinds = ", ".join(f"{k} {v:,}" for k, v in self.events_by_kind.items())
        return "\n".join(
            [
                "stream statistics",
                f"  events      {self.events:>10,}   ({kinds})",
                f"  users       {self.users:>10,}   events per user: median "
                f"{self.events_per_user_median:g}, max {self.events_per_user_max:,}",
                f"  items       {self.items:>10,}   events per item: median "
                f"{self.events_per_item_median:g}",
                f"  time span   {self.first_time} .. {self.last_time} ({self.days:.1f} days)",
                f"  density     {self.density:>10.4%}   of user-item pairs have an event",
                f"  decisions   {self.logged_decisions:>10,}   logged with a propensity",
            ]
        )


def describe(events: EventBatch) -> StreamStats:
    """Statistics of ``events`` (vectorised; fine for millions of events)."""
    n = len(events)
    users, user_counts = np.unique(events.user, return_counts=True)
    items, item_counts = np.unique(events.item, return_counts=True)
    kinds, kind_counts = np.unique(events.kind, return_counts=True)
    pairs = pd.DataFrame({"u": events.user, "i": events.item}).drop_duplicates()
    first = float(events.timestamp.min()) if n else float("nan")
    last = float(events.timestamp.max()) if n else float("nan")
    return StreamStats(
        events=n,
        users=len(users),
        items=len(items),
        events_by_kind={KIND_NAMES[k]: int(c) for k, c in zip(kinds, kind_counts, strict=True)},
        first_time=_iso(first),
        last_time=_iso(last),
        days=(last - first) / 86_400 if n else 0.0,
        events_per_user_median=float(np.median(user_counts)) if n else 0.0,
        events_per_user_max=int(user_counts.max()) if n else 0,
        events_per_item_median=float(np.median(item_counts)) if n else 0.0,
        density=len(pairs) / (len(users) * len(items)) if n else 0.0,
        logged_decisions=int(np.isfinite(events.propensity).sum()),
    )


def _iso(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "-"
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")
