"""Line charts as hand-written SVG (no plotting dependency): log or linear axes, markers, a legend."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    dashed: bool = False
    color: str | None = None


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    x_log: bool = True
    y_log: bool = True
    x_ticks: list[float] | None = None
    width: int = 760
    height: int = 460


def _nice_log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks.append(10.0**exp)
    return ticks


def _nice_linear_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    span = hi - lo or 1.0
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks, value = [], start
    while value <= hi + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k" if value < 1e6 else f"{value / 1e6:g}M"
    if value >= 1:
        return f"{value:g}"
    return f"{value:.2g}"


def render(chart: Chart) -> str:
    points = [p for s in chart.series for p in s.points if p[1] is not None and p[1] > 0]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="80"><text x="10" y="40">' \
               f"{escape(chart.title)}: no data</text></svg>\n"
    left, right, top, bottom = 80, 230, 50, 60
    plot_w = chart.width - left - right
    plot_h = chart.height - top - bottom
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    if chart.x_log:
        x_ticks = chart.x_ticks or _nice_log_ticks(min(xs), max(xs))
        x_lo, x_hi = math.log10(min(min(xs), x_ticks[0])), math.log10(max(max(xs), x_ticks[-1]))
    else:
        x_ticks = chart.x_ticks or _nice_linear_ticks(min(xs), max(xs))
        x_lo, x_hi = min(min(xs), x_ticks[0]), max(max(xs), x_ticks[-1])
    if chart.y_log:
        y_ticks = _nice_log_ticks(min(ys), max(ys))
        y_lo, y_hi = math.log10(y_ticks[0]), math.log10(y_ticks[-1])
    else:
        y_ticks = _nice_linear_ticks(0, max(ys) * 1.05)
        y_lo, y_hi = 0.0, y_ticks[-1]

    def sx(x: float) -> float:
        v = math.log10(x) if chart.x_log else x
        return left + (v - x_lo) / ((x_hi - x_lo) or 1) * plot_w

    def sy(y: float) -> float:
        v = math.log10(y) if chart.y_log else y
        return top + plot_h - (v - y_lo) / ((y_hi - y_lo) or 1) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{chart.width}" height="{chart.height}" '
        f'viewBox="0 0 {chart.width} {chart.height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
        f'<rect width="{chart.width}" height="{chart.height}" fill="white"/>',
        f'<text x="{left}" y="28" font-size="15" font-weight="bold">{escape(chart.title)}</text>',
    ]
    for tick in y_ticks:
        y = sy(tick)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
    for tick in x_ticks:
        x = sx(tick)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{_fmt(tick)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{chart.height - 18}" text-anchor="middle">'
               f"{escape(chart.x_label)}</text>")
    out.append(f'<text transform="translate(18,{top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
               f"{escape(chart.y_label)}</text>")
    for index, series in enumerate(chart.series):
        color = series.color or PALETTE[index % len(PALETTE)]
        pts = [(sx(x), sy(y)) for x, y in series.points if y is not None and y > 0]
        if not pts:
            continue
        dash = ' stroke-dasharray="6,4"' if series.dashed else ""
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"/>')
        ly = top + 10 + index * 20
        lx = left + plot_w + 16
        out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<circle cx="{lx + 12}" cy="{ly}" r="3.5" fill="{color}"/>')
        out.append(f'<text x="{lx + 30}" y="{ly + 4}">{escape(series.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
