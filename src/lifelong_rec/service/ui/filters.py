"""How the dashboard's templates write numbers, times and links (Jinja2 filters)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from urllib.parse import quote

__all__ = [
    "FILTERS", "ago", "clock", "day", "decimal", "number", "percent", "pvalue", "query", "signed",
    "when",
]  # fmt: skip


def when(seconds: float | None) -> str:
    """Unix seconds as a UTC date and time."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def day(seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(seconds))


def ago(seconds: float | None) -> str:
    """A duration for people.

    Examples
    --------
    >>> [ago(s) for s in (0.42, 12, 200, 18_720, 260_000)]
    ['0.4 s', '12 s', '3 min', '5.2 h', '3 days']
    """
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5_400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86_400:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 86_400:.0f} days"


def number(value: float | None, digits: int = 0) -> str:
    """Thousands separated; — for None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,.{digits}f}"


def decimal(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 3) -> str:
    """With its sign; a change that rounds to nothing has none.

    Examples
    --------
    >>> signed(0.25), signed(-0.0001), signed(1200, 0)
    ('+0.250', '0.000', '+1,200')
    """
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{value:+,.{digits}f}"
    return text[1:] if not text.strip("+-0.,") else text


def percent(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}%}"


def pvalue(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def query(text: object) -> str:
    """``text`` quoted for a URL's query string."""
    return quote(str(text), safe="")


FILTERS: dict[str, Callable[..., str]] = {
    "when": when,
    "day": day,
    "clock": clock,
    "ago": ago,
    "number": number,
    "decimal": decimal,
    "signed": signed,
    "percent": percent,
    "pvalue": pvalue,
    "query": query,
}
