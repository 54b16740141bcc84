"""The fleet's findings over time as a stacked bar chart, drawn in SVG by the server:
this module works out the rectangles, the template only writes them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date

# Bottom to top: the most severe on top, where the eye lands.
STACK = ("unknown", "low", "medium", "high", "critical")


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    severity: str
    title: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    highest: int
    labels: list[tuple[float, str]]  # x, text: today and every week before it


def stacked_bars(
    series: list[tuple[date, Counter[str]]], width: int = 720, height: int = 180
) -> Chart:
    """One bar per day, split by severity, scaled to the highest day."""
    highest = max((sum(c.values()) for _d, c in series), default=0)
    slot = width / max(len(series), 1)
    bars: list[Bar] = []
    for n, (day, counts) in enumerate(series):
        y = float(height)
        for severity in STACK:
            value = counts.get(severity, 0)
            if not value or not highest:
                continue
            h = value / highest * height
            y -= h
            title = f"{day.isoformat()}: {value} {severity}"
            bars.append(Bar(n * slot + 1, y, max(slot - 2, 1), h, severity, title))
    last = len(series) - 1
    labels = [  # today, and every week before it
        (n * slot + slot / 2, day.strftime("%b %d"))
        for n, (day, _c) in enumerate(series)
        if (last - n) % 7 == 0
    ]
    return Chart(width, height, bars, highest, labels)
