"""Argument checks shared by every package: one message for one mistake."""

from __future__ import annotations

import numpy as np


def check_positive_ints(**values: object) -> None:
    """Raise ValueError naming the first argument that is not an integer >= 1.

    Booleans are not integers here (``True`` as a block count is a mistake).

    >>> check_positive_ints(k=10, blocks=500)
    >>> check_positive_ints(k=0)
    Traceback (most recent call last):
    ...
    ValueError: k must be a positive integer, got 0
    """
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_positive_ints_or_none(**values: object) -> None:
    """:func:`check_positive_ints` for arguments where None means "no limit".

    >>> check_positive_ints_or_none(history_length=None)
    >>> check_positive_ints_or_none(history_length=0)
    Traceback (most recent call last):
    ...
    ValueError: history_length must be a positive integer or None, got 0
    """
    for name, value in values.items():
        if value is not None:
            try:
                check_positive_ints(**{name: value})
            except ValueError:
                raise ValueError(
                    f"{name} must be a positive integer or None, got {value!r}"
                ) from None


def check_decays(**values: object) -> None:
    """Raise ValueError naming the first argument that is not a factor in (0, 1] (a weight
    multiplied in per step back: 1 keeps every step alike).

    >>> check_decays(recency_decay=0.5)
    >>> check_decays(recency_decay=0)
    Traceback (most recent call last):
    ...
    ValueError: recency_decay must be in (0, 1], got 0
    """
    for name, value in values.items():
        is_number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
        if not (is_number and 0 < value <= 1):  # type: ignore[operator]
            raise ValueError(f"{name} must be in (0, 1], got {value!r}")
