"""Replay evaluation (Li et al., WSDM 2011) of a learning policy over a uniform-random log.

:func:`replay` runs a learning policy over a uniform-random log in time order; a row counts
when the policy picks the logged item, and only counted rows reach the policy's ``update``.
The policies' model scores are each item's running click rate over the counted rows. On
OBD about one row in n_items counts (125-300 rows, so 0-3 clicks): the replay estimates
there have intervals wider than any difference between the policies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, SupportsFloat, cast

import numpy as np

from lifelong_rec.evaluate.ope.estimators import BanditLog, _one_hot
from lifelong_rec.evaluate.ope.obd import _read_obd
from lifelong_rec.events import Catalog, EventBatch

if TYPE_CHECKING:
    from lifelong_rec.policy import Policy


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay` measured.

    Attributes
    ----------
    value : float
        Mean reward over the counted rows (NaN when none counted).
    counted : int
        Rows where the policy chose the logged item.
    rows : int
        Rows replayed.
    rewards : float
        Sum of rewards over the counted rows.
    """

    value: float
    counted: int
    rows: int
    rewards: float


def replay(
    policy: Policy,
    events: EventBatch,
    items: Sequence[str] | np.ndarray | Catalog,
    *,
    item_features: np.ndarray | None = None,
    running_scores: bool = True,
    batch_size: int = 1,
) -> ReplayResult:
    """Replay evaluation (Li et al., WSDM 2011) of a learning policy over a uniform log.

    The rows are taken in time order. For each row the policy picks one item from ``items``
    (the first position of its slate; make it with ``k=1``), given the row's user features:
    the one-hot position, then the log's contexts. When the pick is the logged item the row
    counts and the policy learns its reward through ``update(decisions, rewards)`` (NaN for
    the batch's other rows); other rows are skipped, as if they never happened. The estimate
    is the mean reward over counted rows, unbiased when the log's policy is uniform random.

    Parameters
    ----------
    policy : Policy
        ``decide(users, candidates, scores, user_features, item_features)`` returns decisions
        whose ``slates`` are (n, k) item ids; ``update(decisions, rewards)`` takes (n, k).
    events : EventBatch
        The uniform-random log.
    items : sequence of str or Catalog
        The candidates, the same for every row.
    item_features : array, shape (n_items, d), optional
    running_scores : bool
        Give the policy, as model scores, each item's click rate over the counted rows so far
        (the Beta(1, 1) posterior mean ``(clicks + 1) / (shown + 2)``, the prior of the Thompson
        policy): what greedy and epsilon-greedy follow, and a feature of the linear policies.
        When False, the scores are zeros.
    batch_size : int
        Rows per decision call and update: 1 is the paper's method; larger batches model a
        policy that is updated in batches and run faster.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    events = events.sorted_by_time()
    log = BanditLog.from_events(events, items)
    candidates, m = log.items, log.n_actions
    assert candidates is not None  # BanditLog fills in the items it is not given
    features = np.hstack([np.eye(log.n_positions)[log.positions], log.contexts])
    shown, clicks = np.zeros(m), np.zeros(m)
    counted, total = 0, 0.0
    for start in range(0, len(log), batch_size):
        rows = np.arange(start, min(start + batch_size, len(log)))
        rates = (clicks + 1.0) / (shown + 2.0) if running_scores else np.zeros(m)
        decisions = policy.decide(
            events.user[rows],
            candidates,
            scores=np.broadcast_to(rates, (len(rows), m)),
            user_features=features[rows],
            item_features=item_features,
        )
        slates = np.asarray(decisions.slates)
        match = slates[:, 0] == candidates[log.actions[rows]]
        if not match.any():
            continue
        matched = rows[match]
        rewards = np.full(slates.shape, np.nan)
        rewards[match, 0] = log.rewards[matched]
        policy.update(decisions, rewards)
        np.add.at(shown, log.actions[matched], 1.0)
        np.add.at(clicks, log.actions[matched], log.rewards[matched])
        counted += len(matched)
        total += float(log.rewards[matched].sum())
    return ReplayResult(
        value=total / counted if counted else math.nan,
        counted=counted,
        rows=len(log),
        rewards=total,
    )


def replay_report(
    log_path: str | Path,
    campaign: str = "all",
    policy_spec: str = "linucb",
    *,
    batch_size: int = 1,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, object]:
    """P3 replay of ``policy_spec`` over OBD's random log, next to the logged policies' rates.

    Parameters
    ----------
    log_path : path
        The OBD folder that holds ``random/<campaign>`` (and ``bts/<campaign>`` for comparison).
    policy_spec : str
        As :func:`lifelong_rec.policy.parse_policy` reads it; ``k=1``, ``seed`` and, for the
        policies that have it, ``propensity_draws=1`` unless the spec sets them.
    batch_size : int
        See :func:`replay`.

    Returns
    -------
    dict
        JSON-ready: the replay estimate with a Wilson interval over the counted rows (which
        treats them as independent), the counted rows, and each logged policy's click rate
        with its Wilson interval.
    """
    from lifelong_rec.policy import parse_policy  # evaluate stays importable without policy

    events, catalog = _read_obd(log_path, "random", campaign)
    try:  # replay never reads propensities: skip their Monte-Carlo draws where a policy has them
        policy = parse_policy(policy_spec, k=1, seed=seed, propensity_draws=1)
    except ValueError:
        policy = parse_policy(policy_spec, k=1, seed=seed)
    result = replay(
        policy,
        events,
        catalog,
        item_features=_item_features(catalog),
        batch_size=batch_size,
    )
    logged = {"random": (float(events.value.sum()), len(events))}
    if (Path(log_path) / "bts" / campaign).is_dir():
        bts, _ = _read_obd(log_path, "bts", campaign)
        logged["bts"] = (float(bts.value.sum()), len(bts))
    return {
        "protocol": "P3-replay",
        "campaign": campaign,
        "policy": policy_spec,
        "estimate": result.value,
        "interval": wilson_interval(result.rewards, result.counted, level),
        "counted_rows": result.counted,
        "rows": result.rows,
        "clicks": result.rewards,
        "batch_size": batch_size,
        "seed": seed,
        "logged": {
            name: {
                "click_rate": clicks / rows,
                "interval": wilson_interval(clicks, rows, level),
                "rows": rows,
            }
            for name, (clicks, rows) in logged.items()
        },
    }


def wilson_interval(successes: float, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate; (NaN, NaN) without trials.

    >>> [round(x, 4) for x in wilson_interval(0, 100)]
    [0.0, 0.037]
    """
    if trials <= 0:
        return math.nan, math.nan
    from scipy.stats import norm

    z = float(norm.ppf((1 + level) / 2))
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials**2)) / (1 + z * z / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


def _item_features(catalog: Catalog) -> np.ndarray:
    """One-hot item categories and numeric attributes, shape (n_items, d)."""
    names = sorted({name for attrs in catalog.attributes for name in attrs})
    numeric = np.array(
        # read_obd's catalogs hold numbers only (item_feature_0)
        [
            [float(cast(SupportsFloat, attrs.get(name, 0.0))) for name in names]
            for attrs in catalog.attributes
        ]
    ).reshape(len(catalog), len(names))
    width = max((len(c) for c in catalog.categories), default=0)
    columns = [
        _one_hot(np.array([c[j] if j < len(c) else "" for c in catalog.categories]))
        for j in range(width)
    ]
    return np.hstack([numeric, *columns]) if len(catalog) else np.zeros((0, 0))
