"""Decode speed per variant against the memory-bandwidth limit (the roofline): records in, go.Figure
out, no streamlit. The Trade-off Map is in tradeoff_map.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from core.store.records import VariantRecord
from core.views.axes import readable_axes, wrap_title
from core.views.chart_parts import empty_figure, error_bars, family_colors, fmt_value, hover_text
from core.views.chart_quantities import Interval, is_finite, require_one_machine

ROOFLINE_NAME = "Memory-bandwidth limit"


# --- speed against the physical limit --------------------------------------------------------------


def speed_bars_figure(records: Sequence[VariantRecord]) -> go.Figure:
    """Decode tokens/s per variant (median, p10–p90 bars) next to the memory-bandwidth roofline."""
    if not records:
        return empty_figure("No results yet: measure some variants first.")
    require_one_machine(records)
    labels = [r.label for r in records]
    speeds = [
        Interval(r.decode_tokens_per_s_median, r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90) for r in records
    ]
    # Computed from the two speeds shown, so the label always matches the bars.
    pct_of_limit = [
        100 * r.decode_tokens_per_s_median / r.roofline_tokens_per_s
        if is_finite(r.roofline_tokens_per_s) and r.roofline_tokens_per_s > 0 else math.nan
        for r in records
    ]
    colors = family_colors(records)
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=labels,
        y=[iv.value for iv in speeds],
        name="Measured decode speed (median)",
        marker_color=[colors[r.family] for r in records],
        error_y=error_bars(speeds),
        text=[f"{fmt_value(p, '.0f')}% of limit" for p in pct_of_limit],
        textposition="inside",
        customdata=[hover_text(r) for r in records],
        hovertemplate="%{customdata}<extra></extra>",
    ))
    fig.add_trace(go.Scatter(
        x=labels,
        y=[r.roofline_tokens_per_s for r in records],
        mode="markers",
        name=f"{ROOFLINE_NAME} (bandwidth / bytes read per token)",
        marker=dict(symbol="line-ew-open", size=36, line=dict(width=3, color="black")),
        hovertemplate="%{x}: limit %{y:.1f} tokens/s<extra></extra>",
    ))
    # the legend under the whole figure (container), so it takes no width from the bars on a narrow page
    fig.update_layout(title=dict(text="Decode speed against the memory-bandwidth limit"), bargap=0.35, height=520,
                      legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0},
                      margin={"l": 10, "r": 10, "t": 60, "b": 10})
    # level text, mid-bar: plotly shrinks it to fit, and it stays clear of the whisker and the limit at the top
    fig.update_traces(textangle=0, insidetextanchor="middle", selector={"type": "bar"})
    fig.update_yaxes(title_text=wrap_title("Decode speed, tokens/s (median, p10–p90 bars; ↑ better)"),
                     rangemode="tozero")
    fig.update_xaxes(title_text="Variant")
    return readable_axes(fig)
