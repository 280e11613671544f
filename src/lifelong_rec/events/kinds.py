"""Event kinds and the implicit-feedback weight each kind carries."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Kind(IntEnum):
    """What a user did. Stored as a small integer code in batches and in the event log."""

    VIEW = 0
    CLICK = 1
    CART = 2
    PURCHASE = 3
    RATING = 4
    WATCH = 5
    SKIP = 6
    IMPRESSION = 7

    @property
    def label(self) -> str:
        return self.name.lower()


KIND_NAMES: tuple[str, ...] = tuple(kind.label for kind in Kind)

# Sorted names and their codes, so string kinds map to codes with one vectorised searchsorted.
_SORTED_NAMES = np.array(sorted(KIND_NAMES))
_SORTED_CODES = np.array([Kind[name.upper()].value for name in _SORTED_NAMES], dtype=np.uint8)


def kind_codes(names: np.ndarray) -> np.ndarray:
    """Map kind names to codes.

    Parameters
    ----------
    names : array of str, shape (n,)
        Lower-case kind names.

    Returns
    -------
    codes : array of int16, shape (n,)
        The kind code of each name, or -1 where the name is not a known kind.
    """
    names = np.asarray(names, dtype=str)
    position = np.searchsorted(_SORTED_NAMES, names)
    position = np.minimum(position, len(_SORTED_NAMES) - 1)
    known = _SORTED_NAMES[position] == names
    return np.where(known, _SORTED_CODES[position].astype(np.int16), np.int16(-1))


def kind_names(codes: np.ndarray) -> np.ndarray:
    """Map kind codes back to their names, shape preserved."""
    return np.asarray(KIND_NAMES)[np.asarray(codes, dtype=np.intp)]


@dataclass(frozen=True)
class EventWeights:
    """How strongly each kind of event says "this user likes this item".

    The weight of an event is a function of its kind and value, computed for a whole batch at
    once by :meth:`weights`:

    - view, click, cart, purchase, skip, impression: a constant per kind. Skips and
      impressions weigh 0: they are kept in the log (exploration and off-policy evaluation need
      them) but are not positive feedback.
    - rating: ``rating * value`` (so a 4-star rating weighs 4 with the default factor 1).
    - watch: ``watch * (1 - exp(-seconds / watch_saturation_seconds))``: the first minutes of
      watching say much more than the hundredth; the weight saturates at ``watch``.

    Examples
    --------
    >>> import numpy as np
    >>> w = EventWeights(purchase=10.0)
    >>> w.weights(np.array([Kind.VIEW, Kind.PURCHASE]), np.array([np.nan, 20.0])).tolist()
    [1.0, 10.0]
    """

    view: float = 1.0
    click: float = 2.0
    cart: float = 3.0
    purchase: float = 5.0
    rating: float = 1.0
    watch: float = 4.0
    skip: float = 0.0
    impression: float = 0.0
    watch_saturation_seconds: float = 300.0

    def __post_init__(self) -> None:
        for name in (*KIND_NAMES, "watch_saturation_seconds"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"EventWeights.{name} must be finite and >= 0, got {value!r}")
        if self.watch_saturation_seconds == 0:
            raise ValueError("EventWeights.watch_saturation_seconds must be > 0")

    def weights(self, kinds: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Implicit-feedback weights.

        Parameters
        ----------
        kinds : array of int, shape (n,)
            Kind codes.
        values : array of float, shape (n,)
            Event values (NaN where an event has none).

        Returns
        -------
        weights : array of float32, shape (n,)
        """
        kinds = np.asarray(kinds, dtype=np.intp)
        values = np.asarray(values, dtype=np.float64)
        per_kind = np.array([getattr(self, name) for name in KIND_NAMES], dtype=np.float64)
        weights = per_kind[kinds]
        rated = kinds == Kind.RATING
        weights[rated] *= np.nan_to_num(values[rated])
        watched = kinds == Kind.WATCH
        seconds = np.nan_to_num(values[watched])
        weights[watched] *= -np.expm1(-seconds / self.watch_saturation_seconds)
        return weights.astype(np.float32)
