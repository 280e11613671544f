"""Rewards in [0, 1] from events, for the three domains: clicks, weighted purchases, watch time.

Each function maps every event of a batch to one reward, so a harness can join the rewards to
the decisions that showed the items (by user, item and time) and pass them to ``update``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

import numpy as np

from lifelong_rec.events import KIND_NAMES, EventBatch, Kind, kind_codes
from lifelong_rec.policy.base import check_positive, check_probability

#: default rewards of the purchase funnel: a purchase is worth ten clicks
PURCHASE_WEIGHTS = MappingProxyType({"click": 0.1, "cart": 0.3, "purchase": 1.0})


def click_reward(events: EventBatch, kinds: Iterable[str] = ("click",)) -> np.ndarray:
    """1.0 for an event of one of ``kinds``, 0.0 for every other event (impressions, views...).

    Examples
    --------
    >>> batch = EventBatch.from_columns(["u", "u"], ["a", "b"], [0.0, 1.0], ["click", "impression"])
    >>> click_reward(batch).tolist()
    [1.0, 0.0]

    Returns
    -------
    rewards : array of float64, shape (n,)
    """
    _check_events(events)
    codes = _codes(list(kinds), "kinds")
    return np.isin(events.kind, codes).astype(np.float64)


def purchase_reward(
    events: EventBatch, weights: Mapping[str, float] = PURCHASE_WEIGHTS
) -> np.ndarray:
    """The weight of each event's kind (0 for kinds without one): a weighted purchase funnel.

    Parameters
    ----------
    events : EventBatch
    weights : mapping of kind name to float in [0, 1]
        Default: click 0.1, cart 0.3, purchase 1.0.

    Returns
    -------
    rewards : array of float64, shape (n,)

    Raises
    ------
    ValueError
        Naming ``weights``, for an unknown kind or a weight outside [0, 1].
    """
    _check_events(events)
    per_kind = np.zeros(len(Kind))
    for name, weight in weights.items():
        check_probability(f"weights[{name!r}]", weight)
        per_kind[_codes([name], "weights")[0]] = weight
    return per_kind[events.kind]


def watch_reward(events: EventBatch, cap_seconds: float = 600.0) -> np.ndarray:
    """Watch time as a share of ``cap_seconds``: ``min(seconds, cap) / cap`` for watch events
    (their value is the seconds watched; NaN or negative counts as 0), 0 for other events.

    Returns
    -------
    rewards : array of float64, shape (n,)
    """
    _check_events(events)
    check_positive("cap_seconds", cap_seconds)
    seconds = np.clip(np.nan_to_num(events.value, nan=0.0), 0.0, cap_seconds)
    return np.where(events.kind == Kind.WATCH, seconds / cap_seconds, 0.0)


def _check_events(events: object) -> None:
    if not isinstance(events, EventBatch):
        raise TypeError(f"events must be an EventBatch, not {type(events).__name__}")


def _codes(names: list[str], argument: str) -> np.ndarray:
    codes = kind_codes(np.asarray(names, dtype=str)) if names else np.zeros(0, np.int16)
    if (codes < 0).any():
        bad = str(np.asarray(names)[codes < 0][0])
        raise ValueError(f"{argument}: {bad!r} is not an event kind ({', '.join(KIND_NAMES)})")
    return codes
