"""The Overview page: the log's totals and rates, the quarantine by reason, the learner's lag
and freshness, the serving model, and each serving model's online quality over time."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter

from lifelong_rec.service.ui.charts import Series, bar_chart, line_chart
from lifelong_rec.service.ui.history import Sample

if TYPE_CHECKING:
    from lifelong_rec.service.engine import Engine
    from lifelong_rec.store import EventLog
    from lifelong_rec.store.postgres import PostgresEventLog

__all__ = ["RATE_SECONDS", "overview"]

#: the window of the "now" rates, in seconds
RATE_SECONDS = 30.0


def overview(
    engine: Engine, log: EventLog | PostgresEventLog, samples: Sequence[Sample]
) -> dict[str, object]:
    """What the Overview page shows, read now from ``engine``, its event ``log`` (the
    dashboard's own connection) and the dashboard's ``samples``."""
    learner = engine.learner
    models = engine.models()
    serving, latest = learner.current, learner.latest
    stats = log.stats()
    rejected = log.rejected_counts()
    now = time.time()
    metrics = engine.metrics
    live = engine.live
    return {
        "models": models,
        "stats": stats,
        "lag": learner.lag,
        "serving_age": None if serving.model is None else now - serving.published_at,
        "newest_version": latest.version if latest.model is not None else None,
        "rates": _rates(samples, now),
        "served": {
            "decisions": _total(metrics.decisions),
            "reward": _total(metrics.reward),
            "unlogged": _total(metrics.unlogged),
            "explain_timeouts": _total(metrics.explain_timeouts),
            "events_posted": _total(metrics.events),
        },
        "experiment": None if live is None else live.experiment.name,
        "rejected_chart": bar_chart(
            list(rejected),
            list(rejected.values()),
            label="rejected rows by reason",
            empty="no row was rejected",
            colour="#dc2626",
        ),
        "rejected_total": sum(rejected.values()),
        "charts": _charts(samples),
        "sampled_since": samples[0].at if samples else None,
    }


def _rates(samples: Sequence[Sample], now: float) -> dict[str, float]:
    """Events appended per second by kind over the last RATE_SECONDS, and in all."""
    recent = [s for s in samples if s.seconds > 0 and s.at >= now - RATE_SECONDS]
    span = sum(s.seconds for s in recent)
    if not span:
        return {}
    totals: dict[str, float] = {}
    for sample in recent:
        for kind, count in sample.appended.items():
            totals[kind] = totals.get(kind, 0.0) + count
    rates = {kind: count / span for kind, count in sorted(totals.items())}
    rates["all kinds"] = sum(totals.values()) / span
    return rates


def _charts(samples: Sequence[Sample]) -> dict[str, object]:
    timed = [s for s in samples if s.seconds > 0]
    at = [s.at for s in timed]
    kinds = sorted({kind for s in timed for kind in s.appended})
    models = sorted({model for s in samples for model in s.quality})
    pairs = list(itertools.pairwise(samples))

    def quality(metric: str) -> list[Series]:
        return [
            Series(
                model,
                [s.at for s in samples],
                [
                    s.quality[model][metric] if s.quality.get(model, {}).get("scored") else None
                    for s in samples
                ],
            )
            for model in models
        ]

    return {
        "events": line_chart(
            [
                Series(kind, at, [s.appended.get(kind, 0.0) / s.seconds for s in timed])
                for kind in kinds
            ]
            or [Series("all kinds", at, [0.0] * len(at))],
            label="events appended per second, by kind",
        ),
        "hr": line_chart(
            quality("recent_hr_at_10"), label="online HR@10 (recent) per serving model"
        ),
        "ndcg": line_chart(
            quality("recent_ndcg_at_10"), label="online NDCG@10 (recent) per serving model"
        ),
        "learning": line_chart(
            [
                Series(
                    "learned per second",
                    [b.at for _, b in pairs],
                    [(b.learned - a.learned) / (b.at - a.at) for a, b in pairs],
                ),
                Series(
                    "appended per second",
                    [b.at for _, b in pairs],
                    [(b.log_end - a.log_end) / (b.at - a.at) for a, b in pairs],
                ),
            ],
            label="events learned and appended per second",
        ),
        "lag": line_chart(
            [
                Series(
                    "lag (events)",
                    [s.at for s in samples],
                    [float(s.log_end - s.learned) for s in samples],
                )
            ],
            label="learner lag in events",
            integer=True,
        ),
    }


def _total(counter: Counter) -> float:
    """A counter's total over all its labels."""
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
