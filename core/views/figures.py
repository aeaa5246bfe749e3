"""The other figure families: decode speed against the memory-bandwidth limit, and the mixture-of-experts curve.

Records in, go.Figure out, no streamlit. The Trade-off Map is in plots.py; the shared parts in measures.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from core.store.records import VariantRecord
from core.techniques import REFERENCE
from core.views.axes import readable_axes, wrap_title
from core.views.measures import (
    Interval,
    empty_figure,
    error_bars,
    family_colors,
    fmt_value,
    get_metric,
    hover_text,
    is_finite,
    quality_interval,
    require_one_machine,
)

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


# --- mixture of experts: quality against speed as k changes ----------------------------------------

DENSE_NAME = "Dense model"


def moe_curve_figure(records: Sequence[VariantRecord], metric_key: str = "kld_mean",
                     reference_technique: str = REFERENCE) -> go.Figure:
    """One line per expert count E through its k = 1..E points (decode tokens/s on x, quality on y), plus the
    dense reference as a star. MoE records carry experts/top_k in `variant_facts`; others are ignored."""
    metric = get_metric(metric_key)
    moe_records = [r for r in records if r.family == "moe" and r.variant_facts.get("top_k")]
    dense = [r for r in records if r.technique == reference_technique]
    if not moe_records:
        return empty_figure("No mixture-of-experts results yet: convert and measure first.")
    require_one_machine([*moe_records, *dense])
    fig = go.Figure()
    for experts in sorted({r.variant_facts["experts"] for r in moe_records}):
        line = sorted((r for r in moe_records if r.variant_facts["experts"] == experts), key=lambda r: r.variant_facts["top_k"])
        speeds = [Interval(r.decode_tokens_per_s_median, r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90) for r in line]
        ys = [quality_interval(r, metric) for r in line]
        fig.add_trace(go.Scatter(
            x=[iv.value for iv in speeds], y=[iv.value for iv in ys], mode="lines+markers+text",
            name=f"{experts} experts", text=[f"k={r.variant_facts['top_k']}" for r in line], textposition="top center",
            error_x=error_bars(speeds), error_y=error_bars(ys),
            customdata=[_moe_hover(r) for r in line], hovertemplate="%{customdata}<extra></extra>",
        ))
    for r in dense[:1]:
        speed = Interval(r.decode_tokens_per_s_median, r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90)
        fig.add_trace(go.Scatter(
            x=[speed.value], y=[getattr(r, metric.key)], mode="markers+text", name=DENSE_NAME, text=["dense"],
            textposition="bottom center", marker=dict(symbol="star", size=16, color="black"),
            error_x=error_bars([speed]), customdata=[hover_text(r)], hovertemplate="%{customdata}<extra></extra>",
        ))
    fig.update_layout(title=dict(text=f"{metric.label} vs decode speed as experts per token (k) change"),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), height=480,
                      margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title_text="Decode tokens/s, p10–p90 (→ better)")
    fig.update_yaxes(title_text=wrap_title(metric.axis_title),
                     autorange=True if metric.higher_is_better else "reversed")
    if metric.value_format.endswith("%"):
        fig.update_yaxes(tickformat=".0%")
    return readable_axes(fig)


def _moe_hover(record: VariantRecord) -> str:
    facts = record.variant_facts
    extra = (f"Active parameters: {fmt_value(facts.get('active_params', math.nan) / 1e6, '.1f')}M "
             f"({fmt_value(facts.get('active_params_pct', math.nan), '.0f')}% of dense); "
             f"{fmt_value(facts.get('flops_per_token', math.nan) / 1e6, '.0f')} MFLOPs per token")
    return hover_text(record) + "<br>" + extra
