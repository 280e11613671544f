"""Charts drawn on the server as inline SVG: lines over time, horizontal bars, intervals
around zero, and a strip of events over time.

No script and no style attribute in them (the pages' Content-Security-Policy allows neither
inline): colours are presentation attributes, the rest is ``ui.css`` by class name. Each
function returns markup ready for a template; every text in it is escaped here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["PALETTE", "Series", "bar_chart", "interval_chart", "line_chart", "strip_chart"]

#: series colours, in order (distinguishable, and readable on white)
PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")

_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 26, 26  # the plot's margins, in pixels


@dataclass(frozen=True)
class Series:
    """One line: ``y[j]`` at ``x[j]`` (Unix seconds on a time chart); None leaves a gap."""

    name: str
    x: Sequence[float]
    y: Sequence[float | None]


def line_chart(
    series: Sequence[Series],
    *,
    label: str,
    width: int = 560,
    height: int = 210,
    y_format: str | None = None,
    time_axis: bool = True,
    integer: bool = False,
    empty: str = "no data yet",
) -> Markup:
    """Lines over a shared x axis (time in UTC, or plain numbers), y from 0 up (in whole
    numbers if ``integer``); ``y_format`` formats the y ticks (None: as many decimals as
    their step needs, thousands separated)."""
    points = [(x, y) for s in series for x, y in zip(s.x, s.y, strict=True) if _finite(y)]
    if not points:
        return _empty(label, width, empty)
    xs = [x for x, _ in points]
    low_x, high_x = min(xs), max(xs)
    if high_x == low_x:
        low_x, high_x = low_x - 1, high_x + 1
    top = max(y for _, y in points if y is not None)
    bottom = min(0.0, *(y for _, y in points if y is not None))
    y_ticks = _nice_ticks(bottom, top if top > bottom else bottom + 1, integer=integer)
    low_y, high_y = y_ticks[0], y_ticks[-1]
    shown = y_format or _tick_format(y_ticks[1] - y_ticks[0])
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - low_x) / (high_x - low_x) * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - (y - low_y) / (high_y - low_y) * plot_h

    parts = [_open(label, width, height)]
    for tick in y_ticks:
        y = py(tick)
        parts.append(
            f'<line class="gridline" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y:.1f}" '
            f'y2="{y:.1f}"/><text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(shown.format(tick))}</text>'
        )
    whole = all(float(x).is_integer() for x in xs)  # versions, counts: no 2.5
    parts.append(_x_labels(_x_ticks(low_x, high_x, time_axis, whole), px, height - 8))
    parts.append(
        f'<line class="axis" x1="{_LEFT}" x2="{width - _RIGHT}" '
        f'y1="{_TOP + plot_h}" y2="{_TOP + plot_h}"/>'
    )
    for number, one in enumerate(series):
        colour = PALETTE[number % len(PALETTE)]
        for run in _runs(one):
            coordinates = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            if len(run) == 1:
                x, y = run[0]
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>')
            else:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{coordinates}"/>'
                )
    parts.append(_legend([s.name for s in series], width))
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    label: str,
    width: int = 560,
    value_format: str = "{:,.0f}",
    empty: str = "nothing to show",
    colour: str = PALETTE[0],
) -> Markup:
    """One horizontal bar per label, its value written after it."""
    if not labels:
        return _empty(label, width, empty)
    row, name_w, value_w = 22, 170, 80
    height = row * len(labels) + 8
    top = max(max(values), 1e-12)
    parts = [_open(label, width, height)]
    for number, (name, value) in enumerate(zip(labels, values, strict=True)):
        y = 4 + number * row
        length = max(0.0, value) / top * (width - name_w - value_w - 10)
        parts.append(
            f'<text class="label" x="{name_w - 8}" y="{y + 15}" text-anchor="end">'
            f"{escape(_shorten(name, 26))}<title>{escape(name)}</title></text>"
            f'<rect x="{name_w}" y="{y + 3}" width="{length:.1f}" height="{row - 8}" '
            f'rx="2" fill="{colour}"/>'
            f'<text class="value" x="{name_w + length + 6:.1f}" y="{y + 15}">'
            f"{escape(value_format.format(value))}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def interval_chart(
    rows: Sequence[tuple[str, float, float, float]],
    *,
    label: str,
    width: int = 560,
    unit: str = "",
) -> Markup:
    """Each row's estimate (a dot) and interval (a bar) of a difference, around a zero line:
    rows are (name, estimate, low, high); ``unit`` follows the ticks' numbers."""
    if not rows:
        return _empty(label, width, "no arm has a difference yet")
    row, name_w = 26, 150
    height = row * len(rows) + 30
    extent = max(max(abs(low), abs(high)) for _, _, low, high in rows) or 1.0
    ticks = _nice_ticks(-extent, extent)
    low_x, high_x = ticks[0], ticks[-1]
    plot_w = width - name_w - _RIGHT

    def px(x: float) -> float:
        return name_w + (x - low_x) / (high_x - low_x) * plot_w

    parts = [_open(label, width, height)]
    for tick in ticks:
        parts.append(
            f'<line class="gridline" x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="4" '
            f'y2="{height - 22}"/><text class="tick" x="{px(tick):.1f}" '
            f'y="{height - 8}" text-anchor="middle">{tick:+.3g}{escape(unit)}</text>'
        )
    parts.append(
        f'<line class="axis" x1="{px(0):.1f}" x2="{px(0):.1f}" y1="4" y2="{height - 22}"/>'
    )
    for number, (name, estimate, low, high) in enumerate(rows):
        y = 6 + number * row + row / 2
        colour = PALETTE[(number + 1) % len(PALETTE)]
        parts.append(
            f'<text class="label" x="{name_w - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_shorten(name, 20))}</text>"
            f'<line x1="{px(low):.1f}" x2="{px(high):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="4" stroke-linecap="round"/>'
            f'<circle cx="{px(estimate):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def strip_chart(
    points: Sequence[tuple[float, str]], *, label: str, width: int = 900, empty: str = "no events"
) -> Markup:
    """Events over time, one row per kind: ``points`` are (Unix seconds, kind)."""
    if not points:
        return _empty(label, width, empty)
    kinds = sorted({kind for _, kind in points})
    row, name_w = 22, 90
    height = row * len(kinds) + 30
    low_x, high_x = min(t for t, _ in points), max(t for t, _ in points)
    if high_x == low_x:
        low_x, high_x = low_x - 3600, high_x + 3600
    plot_w = width - name_w - _RIGHT

    def px(x: float) -> float:
        return name_w + (x - low_x) / (high_x - low_x) * plot_w

    parts = [_open(label, width, height)]
    for number, kind in enumerate(kinds):
        y = 6 + number * row + row / 2
        parts.append(
            f'<text class="label" x="{name_w - 8}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(kind)}</text><line class="gridline" '
            f'x1="{name_w}" x2="{width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
    for when, kind in points:
        number = kinds.index(kind)
        y = 6 + number * row + row / 2
        colour = PALETTE[number % len(PALETTE)]
        parts.append(
            f'<circle cx="{px(when):.1f}" cy="{y:.1f}" r="4" fill="{colour}" fill-opacity="0.55"/>'
        )
    parts.append(_x_labels(_x_ticks(low_x, high_x, True), px, height - 8))
    parts.append("</svg>")
    return Markup("".join(parts))


# ---------------------------------------------------------------------- helpers


def _open(label: str, width: int, height: int) -> str:
    return (
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}">'
    )


def _empty(label: str, width: int, text: str) -> Markup:
    return Markup(
        f'{_open(label, width, 40)}<text class="empty" x="{width / 2:.0f}" y="24" '
        f'text-anchor="middle">{escape(text)}</text></svg>'
    )


def _legend(names: Sequence[str], width: int) -> str:
    parts, x = [], _LEFT
    for number, name in enumerate(names):
        colour = PALETTE[number % len(PALETTE)]
        shown = _shorten(name, 40)
        parts.append(
            f'<rect x="{x}" y="6" width="12" height="12" rx="2" fill="{colour}"/>'
            f'<text class="legend" x="{x + 16}" y="16">{escape(shown)}</text>'
        )
        x += 30 + 7 * len(shown)
        if x > width - 60:
            break
    return "".join(parts)


def _runs(series: Series) -> list[list[tuple[float, float]]]:
    """The series' points split where y is missing."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(series.x, series.y, strict=True):
        if _finite(y):
            runs[-1].append((x, float(y)))  # type: ignore[arg-type]
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _nice_ticks(low: float, high: float, count: int = 4, integer: bool = False) -> list[float]:
    """Round tick values covering [low, high]: 1, 2 or 5 times a power of ten apart (whole
    numbers at least 1 apart if ``integer``)."""
    span = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(span))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= span)
    if integer:
        step = max(1.0, math.ceil(step))
    ticks = [math.floor(low / step) * step]
    while ticks[-1] < high - step * 1e-9 or len(ticks) < 2:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _tick_format(step: float) -> str:
    """A format showing ticks ``step`` apart without noise: 1,000 / 0.5 / 0.02."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    return f"{{:,.{decimals}f}}"


def _x_ticks(
    low: float, high: float, time_axis: bool, integer: bool = False
) -> list[tuple[float, str]]:
    """About five ticks on the x axis: times of day (UTC) for a span under two days, dates
    beyond, plain numbers on a number axis (whole ones if ``integer``)."""
    if not time_axis:
        numbers = _nice_ticks(low, high, integer=integer)
        return [(tick, f"{tick:g}") for tick in numbers if low <= tick <= high]
    span = high - low
    shape = "%H:%M:%S" if span < 600 else "%H:%M" if span < 2 * 86_400 else "%Y-%m-%d"
    ticks: list[tuple[float, str]] = []
    for tick in (low + span * j / 4 for j in range(5)):
        text = time.strftime(shape, time.gmtime(tick))
        if not ticks or ticks[-1][1] != text:  # a short span repeats the same second
            ticks.append((tick, text))
    return ticks


def _x_labels(ticks: list[tuple[float, str]], px: Callable[[float], float], y: float) -> str:
    """The x axis's labels; the last one ends at its tick, so the chart's edge never cuts it."""
    return "".join(
        f'<text class="tick" x="{px(tick):.1f}" y="{y:.0f}" '
        f'text-anchor="{"end" if number == len(ticks) - 1 else "middle"}">{escape(text)}</text>'
        for number, (tick, text) in enumerate(ticks)
    )


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"
