"""Axes that stay readable wherever a figure is drawn: the dashboard, the exported report, any width.

Two things broke the Trade-off Map's y-axis in the exported report and on the dashboard:
- the figures set a 10 px left margin and relied on plotly's default template to grow it (`automargin`); a theme
  without that setting (Streamlit's replaces the template) kept the 10 px, so the tick labels were cut off at the
  left edge ("10⁻⁴" showed as "-4") and the axis title was printed over them;
- plotly's own ticks on a log axis are exponents ("10⁻⁴") with unlabelled-looking minor digits ("2", "5"), and a
  log axis spanning less than a decade can get only one or two labels.
So every axis asks for its margin itself, log axes get ticks picked here (at least three, written as plain
decimals), and long axis titles are broken into lines no longer than the plot is tall.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import plotly.graph_objects as go

# mantissas per decade, sparsest first: the first set that gives MIN_TICKS labels in the range is used
# (no 9: it would crowd the next decade's 1 on a short axis)
LOG_TICK_SETS: tuple[tuple[float, ...], ...] = (
    (1,), (1, 3), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 6, 8), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8),
)
MIN_TICKS = 3
MAX_TICKS = 9
TITLE_LINE_CHARS = 34  # an axis title line longer than this may outgrow a short plot


def readable_axes(fig: go.Figure) -> go.Figure:
    """Margins that grow to fit every tick label and axis title, whatever template or theme draws the figure."""
    fig.update_xaxes(automargin=True, title_standoff=10)
    fig.update_yaxes(automargin=True, title_standoff=10)
    return fig


def plain_number(value: float) -> str:
    """A tick label without exponents: 0.0001, 0.02, 1.5, 20, 12,000."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    decimals = max(0, 5 - math.floor(math.log10(abs(value))))  # six significant digits, trailing zeros dropped
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def log_ticks(log_range: Sequence[float]) -> list[float]:
    """Tick values (data units) for a log axis whose range is given in log10 units, in either order.

    At least MIN_TICKS, at most MAX_TICKS: the sparsest of 1, 1-3, 1-2-5, ... that puts MIN_TICKS inside the
    range; a range too narrow for any of them gets evenly spaced ticks, rounded as far as they stay distinct.
    """
    lo, hi = sorted(log_range)
    for mantissas in LOG_TICK_SETS:
        ticks = [m * 10.0**d for d in range(math.floor(lo), math.ceil(hi) + 1) for m in mantissas
                 if lo <= math.log10(m) + d <= hi]
        if len(ticks) >= MIN_TICKS:
            stride = math.ceil(len(ticks) / MAX_TICKS)
            return ticks[::stride]
    even = [10 ** (lo + (hi - lo) * (i + 0.5) / 4) for i in range(4)]
    for digits in range(2, 7):
        rounded = [float(f"{t:.{digits}g}") for t in even]
        if len(set(rounded)) == len(rounded):
            return rounded
    return even


def log_axis(log_range: Sequence[float] | None) -> dict:
    """Settings for a log axis with the ticks of log_ticks, written as plain decimals; {} when there is no range."""
    if log_range is None:
        return {}
    ticks = log_ticks(log_range)
    return {"tickmode": "array", "tickvals": ticks, "ticktext": [plain_number(t) for t in ticks]}


def wrap_title(text: str, width: int = TITLE_LINE_CHARS) -> str:
    """Break an axis title into lines after its commas and before its brackets, so a long one fits a short axis."""
    lines = [""]
    for piece in re.split(r"(?<=, )|(?= \()", text):
        if lines[-1] and len((lines[-1] + piece).rstrip()) > width:
            lines.append("")
        lines[-1] += piece if lines[-1] else piece.lstrip()
    return "<br>".join(line.rstrip() for line in lines)
