"""One reward specification: what each event kind is worth to a policy, in [0, 1].

The rules are written once, here, as a :class:`RewardSpec`; the service, the harnesses and the
off-policy evaluation take a spec (one of :data:`REWARD_PRESETS`, or their own) instead of
writing their own numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike

from lifelong_rec.events import KIND_NAMES, EventBatch, Kind, kind_codes
from lifelong_rec.policy.context import check_positive, check_probability


@dataclass(frozen=True)
class RewardSpec:
    """The reward in [0, 1] of one event, from its kind and value.

    Every kind has a weight in [0, 1]. For most kinds the weight is the reward; two kinds
    scale it by their value:

    - ``watch``: ``watch * min(seconds, watch_cap_seconds) / watch_cap_seconds``, the share of
      the cap that was watched (a video), or read: news dwell time is a ``watch`` event whose
      value is the seconds spent on the article, with a short cap (the ``"news"`` preset:
      60 s, a full read).
    - ``rating``: ``rating * min(value / rating_max, 1)``.

    A NaN or negative value counts as 0 (a watch or rating that says nothing); an infinite
    watch time as the cap. Impressions and skips are worth 0 in every preset: they are
    logged, but nothing was gained.

    Each event gets one reward. When several events fall on one shown item (a click, then a
    purchase), the deepest step is the item's reward: take the largest of them, which stays
    in [0, 1], where a sum would not.

    Parameters
    ----------
    view, click, cart, purchase, rating, watch, skip, impression : float in [0, 1]
        The weight of each kind (:data:`~lifelong_rec.events.KIND_NAMES`; a new kind needs a
        field here, or every spec fails to build). The defaults are
        the service's rules: any click is a success (1), a cart 0.3, a purchase 1, a watch
        its share of ten minutes, a rating its share of five stars.
    watch_cap_seconds : float > 0
        Watch (or dwell) time worth the full ``watch`` weight.
    rating_max : float > 0
        The rating worth the full ``rating`` weight.

    Examples
    --------
    >>> spec = RewardSpec(click=0.1, watch=1.0, watch_cap_seconds=600.0)
    >>> spec.rewards(["click", "watch", "watch", "impression"], [None, 300.0, 9e9, None]).tolist()
    [0.1, 0.5, 1.0, 0.0]
    """

    view: float = 0.0
    click: float = 1.0
    cart: float = 0.3
    purchase: float = 1.0
    rating: float = 1.0
    watch: float = 1.0
    skip: float = 0.0
    impression: float = 0.0
    watch_cap_seconds: float = 600.0
    rating_max: float = 5.0

    def __post_init__(self) -> None:
        for name in KIND_NAMES:
            check_probability(f"RewardSpec.{name}", getattr(self, name))
        check_positive("RewardSpec.watch_cap_seconds", self.watch_cap_seconds)
        check_positive("RewardSpec.rating_max", self.rating_max)

    def weights(self) -> dict[str, float]:
        """The weight of each kind, by name, in the order of the kind codes."""
        return {name: float(getattr(self, name)) for name in KIND_NAMES}

    def rewards(self, kinds: ArrayLike, values: ArrayLike | None = None) -> np.ndarray:
        """The reward of each event.

        Parameters
        ----------
        kinds : array of str or int, shape (n,)
            Kind names (``"click"``) or codes (:class:`~lifelong_rec.events.Kind`).
        values : array of float, shape (n,), optional
            Event values, NaN (or None) where an event has none; all NaN when omitted.

        Returns
        -------
        rewards : array of float64, shape (n,), in [0, 1]

        Raises
        ------
        ValueError
            Naming ``kinds`` for a name or code that is not an event kind, or ``values`` for a
            shape that does not fit or a value that is not a number.
        """
        codes = _kind_codes(kinds)
        if values is None:
            numbers = np.full(codes.shape, np.nan)
        else:
            try:
                numbers = np.asarray(values, dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise ValueError(f"values must be numbers or NaN: {error}") from None
            if numbers.shape != codes.shape:
                raise ValueError(f"values: expected shape {codes.shape}, got {numbers.shape}")
        per_kind = np.array(list(self.weights().values()))
        out = per_kind[codes]
        known = np.nan_to_num(numbers, nan=0.0, posinf=np.inf, neginf=0.0)
        watched = codes == Kind.WATCH
        out[watched] *= np.clip(known[watched], 0.0, self.watch_cap_seconds) / (
            self.watch_cap_seconds
        )
        rated = codes == Kind.RATING
        out[rated] *= np.clip(known[rated] / self.rating_max, 0.0, 1.0)
        return out

    def reward(self, kind: str | int, value: float | None = None) -> float:
        """The reward of one event (see :meth:`rewards`).

        >>> reward_spec("ecommerce").reward("cart")
        0.3
        """
        return float(self.rewards([kind], [np.nan if value is None else value])[0])

    def rewards_of(self, events: EventBatch) -> np.ndarray:
        """The reward of every event of a batch, from its kind and value.

        Returns
        -------
        rewards : array of float64, shape (len(events),), in [0, 1]

        Raises
        ------
        TypeError
            If ``events`` is not an :class:`~lifelong_rec.events.EventBatch`.
        """
        if not isinstance(events, EventBatch):
            raise TypeError(f"events must be an EventBatch, not {type(events).__name__}")
        return self.rewards(events.kind, events.value)


#: Named specs for the three domains; every kind is worth something in [0, 1] in each.
#:
#: - ``"ecommerce"``: the purchase funnel, click 0.1 < cart 0.3 < purchase 1.0, a product
#:   rating its share of five stars; watch time is worth nothing.
#: - ``"news"``: a click 0.3, and dwell time (a ``watch`` event, seconds on the article) up
#:   to 1.0 at 60 s; carts, purchases and ratings are worth nothing.
#: - ``"video"``: watch time up to 1.0 at ten minutes, a rating its share of five stars, a
#:   click (a play that may not be watched) 0.1.
REWARD_PRESETS: MappingProxyType[str, RewardSpec] = MappingProxyType(
    {
        "ecommerce": RewardSpec(click=0.1, cart=0.3, purchase=1.0, rating=1.0, watch=0.0),
        "news": RewardSpec(
            click=0.3, cart=0.0, purchase=0.0, rating=0.0, watch=1.0, watch_cap_seconds=60.0
        ),
        "video": RewardSpec(
            click=0.1, cart=0.0, purchase=0.0, rating=1.0, watch=1.0, watch_cap_seconds=600.0
        ),
    }
)


def reward_spec(name: str) -> RewardSpec:
    """The preset named ``name`` in :data:`REWARD_PRESETS`.

    >>> reward_spec("news").watch_cap_seconds
    60.0

    Raises
    ------
    ValueError
        Naming the unknown preset and listing the valid ones.
    """
    spec = REWARD_PRESETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(
            f"unknown reward preset {name!r}; use one of {', '.join(sorted(REWARD_PRESETS))}"
        )
    return spec


def _kind_codes(kinds: ArrayLike) -> np.ndarray:
    """Kind codes, shape (n,), from names or codes; ValueError naming ``kinds`` otherwise."""
    array = np.asarray(kinds)
    if array.ndim != 1:
        raise ValueError(f"kinds: expected shape (n,), got {array.shape}")
    if array.dtype.kind in "USO":
        codes = kind_codes(array.astype(str)).astype(np.intp)
        if (codes < 0).any():
            bad = str(array[codes < 0][0])
            raise ValueError(f"kinds: {bad!r} is not an event kind ({', '.join(KIND_NAMES)})")
        return codes
    if array.dtype.kind not in "iu" and not (array.size == 0 and array.dtype.kind == "f"):
        raise ValueError(f"kinds must be kind names or integer codes, got dtype {array.dtype}")
    codes = array.astype(np.intp)
    if ((codes < 0) | (codes >= len(KIND_NAMES))).any():
        code = int(codes[(codes < 0) | (codes >= len(KIND_NAMES))][0])
        raise ValueError(f"kinds: {code} is not an event kind code (0 to {len(KIND_NAMES) - 1})")
    return codes
