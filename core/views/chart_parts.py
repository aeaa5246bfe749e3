"""What every chart draws alike: family colours, runtime symbols, hover text, error bars, bubble sizes
and the empty figure. Records in, plotly pieces out, no streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.colors import qualitative

from core.store.records import VariantRecord
from core.views import busy
from core.views.chart_quantities import Interval, decode_ms_per_token, is_finite, kld_rule

MAX_BUBBLE_PX = 30  # diameter of the largest bubble: small enough that 30 variants stay apart
# fixed colours so a family looks the same on every chart and every page
FAMILY_COLORS = {"reference": "#000000", "quantization": "#1f77b4", "gguf": "#d62728", "moe": "#2ca02c",
                 "distillation": "#9467bd", "lora": "#ff7f0e", "speculative": "#8c564b", "depth pruning": "#e377c2",
                 "sparsity": "#17becf"}
RUNTIME_SYMBOLS = {"transformers": "circle", "transformers-compiled": "diamond", "llama.cpp": "square"}
OTHER_SYMBOL = "triangle-up"


def family_colors(records: Sequence[VariantRecord]) -> dict[str, str]:
    families = sorted({r.family for r in records})
    unknown = [f for f in families if f not in FAMILY_COLORS]
    palette = qualitative.Dark24
    return {f: FAMILY_COLORS.get(f) or palette[unknown.index(f) % len(palette)] for f in families}


def runtime_of(record: VariantRecord) -> str:
    return getattr(record, "runtime", None) or "transformers"


def fmt_value(value: float, spec: str) -> str:
    return format(value, spec) if is_finite(value) else "n/a"


def kld_line(record: VariantRecord) -> str:
    """Mean KLD with its tail beside it (p99, and p99.9 where measured) and the rule that scored it."""
    tail = f"p99 {fmt_value(record.kld_p99, '.4f')}"
    if is_finite(record.kld_p999):
        tail += f", p99.9 {fmt_value(record.kld_p999, '.4f')}"
    return f"KL divergence: {fmt_value(record.kld_mean, '.4f')} nats/token ({tail}; {kld_rule(record)} rule)"


def hover_text(record: VariantRecord) -> str:
    ci = record.mc_accuracy_ci95 or [math.nan, math.nan]
    lines = [
        f"<b>{record.label}</b> ({record.technique}, {record.family}, runtime {runtime_of(record)})",
        f"Size held: {fmt_value(record.size_mb, '.1f')} MB; peak memory: {fmt_value(record.peak_mem_mb, '.1f')} MB",
        f"Decode: {fmt_value(record.decode_tokens_per_s_median, '.1f')} tokens/s "
        f"(p10 {fmt_value(record.decode_tokens_per_s_p10, '.1f')}, p90 {fmt_value(record.decode_tokens_per_s_p90, '.1f')})"
        f" = {fmt_value(decode_ms_per_token(record.decode_tokens_per_s_median), '.1f')} ms/token",
        f"Time to first token: {fmt_value(record.ttft_ms_median, '.1f')} ms",
        f"Roofline: {fmt_value(record.roofline_tokens_per_s, '.1f')} tokens/s "
        f"at {fmt_value(record.bandwidth_gb_s, '.1f')} GB/s ({fmt_value(record.roofline_pct, '.0f')}% reached)",
        f"Cost: ${fmt_value(record.usd_per_1m_tokens, '.4f')} per 1M tokens at ${fmt_value(record.usd_per_hour, '.4f')}/h "
        f"({record.hardware_preset})",
        kld_line(record),
        f"Top-1 agreement: {fmt_value(record.top1_agreement, '.1%')}",
        f"Perplexity: {fmt_value(record.perplexity, '.2f')}",
        f"MC accuracy: {fmt_value(record.mc_accuracy, '.1%')} (95% CI {fmt_value(ci[0], '.1%')}–{fmt_value(ci[1], '.1%')}, "
        f"{record.mc_items} items)",
        f"Device: {record.device}, {record.dtype}, {record.threads} threads",
        busy.hover_line(record),
    ]
    return "<br>".join(lines)


def error_bars(intervals: Sequence[Interval]) -> dict | None:
    """Asymmetric plotly error bars, or None where no interval is known."""
    if not any(is_finite(iv.low) and is_finite(iv.high) and (iv.low != iv.high) for iv in intervals):
        return None
    plus = [iv.plus if is_finite(iv.plus) else 0.0 for iv in intervals]
    minus = [iv.minus if is_finite(iv.minus) else 0.0 for iv in intervals]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1)


def bubble_sizeref(records: Sequence[VariantRecord]) -> float:
    # plotly's recipe for sizemode="area": the largest bubble gets MAX_BUBBLE_PX across.
    largest_mb = max((r.size_mb for r in records if is_finite(r.size_mb)), default=1.0)
    return 2.0 * max(largest_mb, 1e-9) / MAX_BUBBLE_PX**2


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig
