"""Histograms as SVG: the geometry, computed here, as a list of elements a template writes out.

A histogram (:class:`exokiratory.core.histograms.Histogram`) becomes bars (or one bar per value
for a few categories), the axis with its range, the thresholds as dashed red lines labelled on
their flagged side (the arrow points to it), and a foot line with counts. Every number is
formatted here, so the template (``macros.html.j2``, ``histogram``) only escapes and writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from exokiratory.core.histograms import Histogram, Threshold

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 300, 150, 8, 30, 22
PLOT_W, PLOT_H = WIDTH - 2 * LEFT, HEIGHT - BOTTOM - TOP
BAR = "#5b7fce"
RED = "#c62828"


@dataclass
class Element:
    """One SVG element: tag, attributes in order, an optional ``<title>`` and text."""

    tag: str
    attrs: list[tuple[str, str]]
    title: str = ""
    text: str = ""


@dataclass
class Chart:
    width: int
    height: int
    elements: list[Element] = field(default_factory=list)


def _text(x: object, y: object, text: str, size: int = 10, *extra: tuple[str, str]) -> Element:
    return Element(
        "text", [("x", str(x)), ("y", str(y)), ("font-size", str(size)), *extra], "", text
    )


def histogram_chart(h: Histogram) -> Chart:
    chart = Chart(WIDTH, HEIGHT)
    title = h.column + (" (log x)" if h.log_x else "")
    chart.elements.append(_text(LEFT, 14, title, 12, ("font-weight", "600")))
    if h.categories is not None:
        chart.elements += _category_bars(h.categories)
    elif h.counts:
        chart.elements += _bars(h)
        for i, t in enumerate(h.thresholds):
            chart.elements += _threshold(h, t, i)
    else:
        chart.elements.append(_text(LEFT, 60, h.note or "no data", 11))
    chart.elements.append(_text(LEFT, HEIGHT - 4, _foot(h), 10, ("fill", "#5d6677")))
    return chart


def _rect(x: float, y: float, w: float, h: float, title: str) -> Element:
    attrs = [("x", f"{x:.1f}"), ("y", f"{y:.1f}"), ("width", f"{w:.1f}"), ("height", f"{h:.1f}")]
    return Element("rect", [*attrs, ("fill", BAR)], title)


def _category_bars(categories: list[tuple[str, int]]) -> list[Element]:
    out = []
    top_n = max((c for _, c in categories), default=1) or 1
    bw = PLOT_W / max(1, len(categories))
    for i, (label, c) in enumerate(categories):
        bh = PLOT_H * c / top_n
        x = LEFT + i * bw
        out.append(_rect(x + 1, TOP + PLOT_H - bh, max(1.0, bw - 2), bh, f"{label}: {c}"))
        if len(categories) <= 8:
            anchor = ("text-anchor", "middle")
            out.append(_text(f"{x + bw / 2:.1f}", TOP + PLOT_H + 12, label, 10, anchor))
    return out


def _bars(h: Histogram) -> list[Element]:
    out = []
    peak = max(h.counts) or 1
    bw = PLOT_W / len(h.counts)
    for i, c in enumerate(h.counts):
        if not c:
            continue
        bh = max(1.0, PLOT_H * c / peak)
        lo, hi = h.edges[i], h.edges[i + 1]
        out.append(
            _rect(
                LEFT + i * bw,
                TOP + PLOT_H - bh,
                max(0.5, bw - 0.6),
                bh,
                f"{lo:.4g} .. {hi:.4g}: {c}",
            )
        )
    y = str(TOP + PLOT_H)
    axis = [("x1", str(LEFT)), ("y1", y), ("x2", str(LEFT + PLOT_W)), ("y2", y), ("stroke", "#888")]
    out.append(Element("line", axis))
    out.append(_text(LEFT, TOP + PLOT_H + 12, f"{h.edges[0]:.3g}"))
    out.append(
        _text(LEFT + PLOT_W, TOP + PLOT_H + 12, f"{h.edges[-1]:.3g}", 10, ("text-anchor", "end"))
    )
    return out


def _threshold(h: Histogram, t: Threshold, i: int) -> list[Element]:
    lo, hi = h.edges[0], h.edges[-1]
    if h.log_x:
        if t.value <= 0:
            return []
        frac = (math.log(t.value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        frac = (t.value - lo) / (hi - lo) if hi > lo else 0.5
    x = LEFT + min(1.0, max(0.0, frac)) * PLOT_W
    arrow = "\u2190" if t.side == "below" else "\u2192"
    label = f"{t.label.removeprefix('is_')} {t.value:.3g}"
    # the label goes on the flagged side unless it would leave the plot
    room = (x - LEFT) if t.side == "below" else (LEFT + PLOT_W - x)
    right = t.side == "above" if room > 6 * len(label) else t.side == "below"
    text = f"{label} {arrow}" if t.side == "below" else f"{arrow} {label}"
    line = [
        ("class", "threshold"),
        ("x1", f"{x:.1f}"),
        ("y1", str(TOP - 4)),
        ("x2", f"{x:.1f}"),
        ("y2", str(TOP + PLOT_H)),
        ("stroke", RED),
        ("stroke-width", "1.6"),
        ("stroke-dasharray", "4 2"),
    ]
    anchor = ("text-anchor", "start" if right else "end")
    return [
        Element("line", line, f"{t.label} threshold {t.value:.4g}"),
        _text(f"{x + (3 if right else -3):.1f}", TOP + 6 + 11 * i, text, 10, ("fill", RED), anchor),
    ]


def _foot(h: Histogram) -> str:
    foot = f"n={h.n:,}"
    if h.n_missing:
        foot += f", missing {h.n_missing:,}"
    if h.under or h.over:
        foot += f", outside axis {h.under:,} below / {h.over:,} above"
    return foot
