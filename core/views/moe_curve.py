"""The mixture-of-experts curve: quality against decode speed as the experts run per token (k)
change, beside the dense model. Records in, go.Figure out, no streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go

from core.store.records import VariantRecord
from core.techniques import REFERENCE
from core.views.axes import readable_axes, wrap_title
from core.views.chart_parts import empty_figure, error_bars, fmt_value, hover_text
from core.views.chart_quantities import Interval, get_metric, quality_interval, require_one_machine
from core.views.tables import moe_work_pct


# --- mixture of experts: quality against speed as k changes ----------------------------------------

DENSE_NAME = "Dense model"


def _shape(record: VariantRecord) -> tuple[int, int, bool]:
    facts = record.variant_facts
    return facts["experts"], facts.get("shared_experts", 0), bool(facts.get("healed"))


def moe_curve_figure(records: Sequence[VariantRecord], metric_key: str = "kld_mean",
                     reference_technique: str = REFERENCE) -> go.Figure:
    """One line per expert count E and shared experts through its k points (decode tokens/s on x, quality on y; each
    point labelled with the share of MLP neurons a token runs), plus the dense reference as a star. MoE records carry experts/top_k in `variant_facts`; others are ignored."""
    metric = get_metric(metric_key)
    moe_records = [r for r in records if r.family == "moe" and r.variant_facts.get("top_k")]
    dense = [r for r in records if r.technique == reference_technique]
    if not moe_records:
        return empty_figure("No mixture-of-experts results yet: convert and measure first.")
    require_one_machine([*moe_records, *dense])
    fig = go.Figure()
    for experts, shared, healed in sorted({_shape(r) for r in moe_records}):
        line = sorted((r for r in moe_records if _shape(r) == (experts, shared, healed)),
                      key=lambda r: r.variant_facts["top_k"])
        speeds = [Interval(r.decode_tokens_per_s_median, r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90) for r in line]
        ys = [quality_interval(r, metric) for r in line]
        fig.add_trace(go.Scatter(
            x=[iv.value for iv in speeds], y=[iv.value for iv in ys], mode="lines+markers+text",
            name=f"{experts} experts" + (f", {shared} shared (always on)" if shared else "")
            + (", experts healed by distillation" if healed else ""),
            text=[f"k={r.variant_facts['top_k']} · {moe_work_pct(r.variant_facts):.0f}%" for r in line],
            textposition="top center",
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
    fig.update_layout(title=dict(text=f"{metric.label} vs decode speed as the share of MLP work per token changes"),
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
