"""Hand-written inline SVG charts for `zsplg report`: bars, heat map, line chart.

The report must open on an offline machine and be mailed as one file, so no
charting library is loaded from anywhere: each chart is a small SVG string
with a ``<title>`` tooltip on every mark. Every function returns markup that
is safe to paste into HTML (all text is escaped here), so the page template
may mark it safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
_FONT = 'font-family="system-ui, sans-serif"'


def _num(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high] (1, 2, 5 x 10^k steps)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.6g}"


def bar_chart(labels: Sequence[str], values: Sequence[float | None], title: str,
              max_value: float = 100.0, unit: str = "", css_class: str = "chart-bars") -> str:
    """Horizontal bars, one row per label; ``None`` values read "n/a" (undefined)."""
    row, left, width, right = 20, 150, 420, 60
    top = 28
    height = top + row * len(labels) + 24
    total = left + width + right
    scale = max(max_value, max((v for v in values if v is not None), default=0.0)) or 1.0
    parts = [f'<svg class="chart {escape(css_class)}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {total} {height}" width="{total}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" {_FONT} font-size="12">',
             f'<text x="{left}" y="16" font-weight="600">{escape(title)}</text>']
    for tick in nice_ticks(0.0, scale, 4):
        if tick > scale + 1e-9:
            continue
        x = left + width * tick / scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" '
                     f'y2="{height - 20}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" '
                     f'fill="#666">{_tick_label(tick)}</text>')
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        name = escape(_short(str(label), 22))
        parts.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{name}</text>')
        if value is None:
            parts.append(f'<text x="{left + 4}" y="{y + 14}" fill="#999">n/a'
                         f'<title>{escape(str(label))}: undefined</title></text>')
            continue
        bar = max(width * value / scale, 0.0)
        tip = f"{escape(str(label))}: {_num(value)}{escape(unit)}"
        parts.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{bar:.1f}" '
                     f'height="{row - 6}" '
                     f'fill="#4e79a7"><title>{tip}</title></rect>'
                     f'<text x="{left + bar + 4:.1f}" y="{y + 14}" fill="#333">'
                     f'{_num(value, 1)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _heat_colour(share: float) -> str:
    """White -> deep blue by the share of the ground-truth row (0..1)."""
    share = min(max(share, 0.0), 1.0)
    r = round(255 - share * (255 - 8))
    g = round(255 - share * (255 - 48))
    b = round(255 - share * (255 - 107))
    return f"rgb({r},{g},{b})"


def heatmap(matrix: np.ndarray, row_names: Sequence[str], col_names: Sequence[str],
            title: str) -> str:
    """Confusion matrix as a heat map, each row coloured by its share of that row's pixels."""
    counts = np.asarray(matrix, dtype=np.float64)
    n_rows, n_cols = counts.shape
    cell = int(max(6, min(40, 620 / max(n_cols, 1))))
    show_names = cell >= 10
    left = 130 if show_names else 20
    top = 130 if show_names else 40
    width = max(left + cell * n_cols + 20, 400)  # room for the caption line
    height = top + cell * n_rows + 30
    sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, sums, out=np.zeros_like(counts), where=sums > 0)
    parts = [f'<svg class="chart chart-heatmap" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" {_FONT} font-size="11">',
             f'<text x="4" y="16" font-weight="600" font-size="12">{escape(title)}</text>',
             '<text x="4" y="32" fill="#666">columns: prediction, rows: ground truth, '
             'colour: share of the row</text>']
    if show_names:
        for j, name in enumerate(col_names):
            x = left + j * cell + cell / 2 + 4
            parts.append(f'<text transform="translate({x:.1f},{top - 4}) rotate(-60)">'
                         f'{escape(_short(str(name), 18))}</text>')
        for i, name in enumerate(row_names):
            parts.append(f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4:.1f}" '
                         f'text-anchor="end">{escape(_short(str(name), 18))}</text>')
    for i in range(n_rows):
        for j in range(n_cols):
            share = float(shares[i, j])
            tip = (f"{escape(str(row_names[i]))} \u2192 {escape(str(col_names[j]))}: "
                   f"{int(counts[i, j]):,} px ({100 * share:.1f}% of the row)")
            parts.append(f'<rect class="cell" x="{left + j * cell}" y="{top + i * cell}" '
                         f'width="{cell}" height="{cell}" fill="{_heat_colour(share)}" '
                         f'stroke="#fff" stroke-width="0.5"><title>{tip}</title></rect>')
            if cell >= 22 and share >= 0.005:
                colour = "#fff" if share > 0.5 else "#222"
                parts.append(f'<text x="{left + j * cell + cell / 2:.1f}" '
                             f'y="{top + i * cell + cell / 2 + 3.5:.1f}" text-anchor="middle" '
                             f'font-size="9" fill="{colour}">{round(100 * share)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _downsample(xs: list[float], ys: list[float], limit: int = 1500) -> tuple[list, list]:
    if len(xs) <= limit:
        return xs, ys
    step = math.ceil(len(xs) / limit)
    idx = list(range(0, len(xs), step))
    if idx[-1] != len(xs) - 1:
        idx.append(len(xs) - 1)
    return [xs[i] for i in idx], [ys[i] for i in idx]


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]],
               title: str, x_label: str = "iteration", y_label: str = "",
               css_class: str = "chart-lines") -> str:
    """Lines (x ascending) with axes, round ticks and a legend; None/NaN points are gaps."""
    left, right, top, bottom = 64, 20, 44, 44
    plot_w, plot_h = 560, 220
    width, height = left + plot_w + right, top + plot_h + bottom
    clean = []
    for name, xs, ys in series:
        pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)
               if y is not None and math.isfinite(float(y)) and math.isfinite(float(x))]
        if pts:
            clean.append((name, [p[0] for p in pts], [p[1] for p in pts]))
    all_x = [x for _, xs, _ in clean for x in xs] or [0.0, 1.0]
    all_y = [y for _, _, ys in clean for y in ys] or [0.0, 1.0]
    single = bool(clean) and all(len(xs) == 1 for _, xs, _ in clean)
    x_ticks = nice_ticks(*_padded(min(all_x), max(all_x)), 6)
    y_ticks = nice_ticks(*_padded(min(all_y), max(all_y), 0.25 if single else 0.0), 5)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + plot_w * (x - x0) / ((x1 - x0) or 1.0)

    def py(y: float) -> float:
        return top + plot_h - plot_h * (y - y0) / ((y1 - y0) or 1.0)

    parts = [f'<svg class="chart {escape(css_class)}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}" {_FONT} font-size="11">',
             f'<text x="{left}" y="18" font-weight="600" font-size="12">{escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
             f'stroke="#999"/>']
    for tick in x_ticks:
        parts.append(f'<line x1="{px(tick):.1f}" y1="{top}" x2="{px(tick):.1f}" '
                     f'y2="{top + plot_h}" stroke="#eee"/><text x="{px(tick):.1f}" '
                     f'y="{top + plot_h + 14}" text-anchor="middle" fill="#666">'
                     f'{_tick_label(tick)}</text>')
    for tick in y_ticks:
        parts.append(f'<line x1="{left}" y1="{py(tick):.1f}" x2="{left + plot_w}" '
                     f'y2="{py(tick):.1f}" stroke="#eee"/><text x="{left - 6}" '
                     f'y="{py(tick) + 4:.1f}" text-anchor="end" fill="#666">'
                     f'{_tick_label(tick)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
                 f'{escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" '
                     f'text-anchor="middle">{escape(y_label)}</text>')
    if not clean:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
                     f'text-anchor="middle" fill="#999">no data</text>')
    if single:
        parts.append(f'<text class="chart-note" x="{left + plot_w - 6}" y="{top + 14}" '
                     f'text-anchor="end" fill="#666">one step logged</text>')
    for k, (name, xs, ys) in enumerate(clean):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        if len(xs) == 1:  # a polyline of one point draws nothing: a marker and its value
            x, y = xs[0], ys[0]
            parts.append(f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" '
                         f'fill="{colour}"><title>{escape(name)} @ {_tick_label(x)}: '
                         f'{y:.4g}</title></circle>'
                         f'<text class="point-value" x="{px(x) + 9:.1f}" '
                         f'y="{py(y) + 4:.1f}" fill="{colour}">{y:.4g}</text>')
            parts.append(_legend_entry(left + 140 * k, top, colour, name))
            continue
        xs, ys = _downsample(xs, ys)
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline class="series" fill="none" stroke="{colour}" '
                     f'stroke-width="1.6" points="{points}"><title>{escape(name)}</title>'
                     f'</polyline>')
        if len(xs) <= 60:
            for x, y in zip(xs, ys, strict=True):
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" '
                             f'fill="{colour}"><title>{escape(name)} @ {_tick_label(x)}: '
                             f'{y:.4g}</title></circle>')
        parts.append(_legend_entry(left + 140 * k, top, colour, name))
    parts.append("</svg>")
    return "".join(parts)


def _legend_entry(x: int, top: int, colour: str, name: str) -> str:
    """One legend item, in the row between the title and the plot."""
    return (f'<rect x="{x}" y="{top - 14}" width="12" height="3" fill="{colour}"/>'
            f'<text x="{x + 16}" y="{top - 9}">{escape(_short(name, 20))}</text>')


def _padded(low: float, high: float, margin: float = 0.0) -> tuple[float, float]:
    """The axis range: lone points (one value, or one step per series) sit inside the plot,
    not on its edge, where a marker and its value would be cut off."""
    if high > low:
        pad = (high - low) * margin
        return low - pad, high + pad
    half = abs(low) / 2 or 1.0
    return low - half, high + half
