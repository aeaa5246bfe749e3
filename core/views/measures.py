"""What the lab's charts plot, and the parts every chart shares: records in, numbers and plotly pieces out.

The quality measures and cost axes a chart can use, their intervals (error bars), the Pareto frontier, and the
drawing helpers (family colours, runtime symbols, hover text, error bars, the empty figure). No streamlit here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.colors import qualitative

from core.store.records import VariantRecord
from core.views import busy

MAX_BUBBLE_PX = 30  # diameter of the largest bubble: small enough that 30 variants stay apart
# fixed colours so a family looks the same on every chart and every page
FAMILY_COLORS = {"reference": "#000000", "quantization": "#1f77b4", "gguf": "#d62728", "moe": "#2ca02c",
                 "distillation": "#9467bd", "lora": "#ff7f0e", "speculative": "#8c564b"}
RUNTIME_SYMBOLS = {"transformers": "circle", "transformers-compiled": "diamond", "llama.cpp": "square"}
OTHER_SYMBOL = "triangle-up"


# --- what can be plotted ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityMetric:
    key: str  # VariantRecord field
    label: str
    higher_is_better: bool
    axis_title: str
    error_fields: tuple[str, ...] | None  # field(s) holding a [low, high] interval; None: no error bars
    value_format: str = ".3f"  # d3/Python format spec for hover and sentences


QUALITY_METRICS: dict[str, QualityMetric] = {
    m.key: m
    for m in (
        QualityMetric(
            "kld_mean", "KL divergence", False,
            "KLD vs reference, nats/token (axis reversed: ↑ better)", None,
        ),
        QualityMetric(
            "top1_agreement", "Top-1 agreement", True,
            "Top-1 agreement with reference (↑ better)", None, ".1%",
        ),
        QualityMetric(
            "perplexity", "Perplexity", False,
            "Perplexity (axis reversed: ↑ better)", None, ".2f",
        ),
        QualityMetric(
            "mc_accuracy", "Multiple-choice accuracy", True,
            "MC accuracy, 95% CI (↑ better)", ("mc_accuracy_ci95",), ".1%",
        ),
    )
}


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    @property
    def minus(self) -> float:
        return self.value - self.low

    @property
    def plus(self) -> float:
        return self.high - self.value


def is_finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def decode_ms_per_token(tokens_per_s: float) -> float:
    """Decode latency per token; NaN where the speed is unknown or zero."""
    return 1000.0 / tokens_per_s if is_finite(tokens_per_s) and tokens_per_s > 0 else math.nan


def latency_interval(record: VariantRecord) -> Interval:
    # The p90 speed is the fast end, so it gives the low latency: the bars are asymmetric.
    return Interval(
        value=decode_ms_per_token(record.decode_tokens_per_s_median),
        low=decode_ms_per_token(record.decode_tokens_per_s_p90),
        high=decode_ms_per_token(record.decode_tokens_per_s_p10),
    )


def cost_interval(record: VariantRecord) -> Interval:
    # Cost per token is proportional to 1 / speed, so it has the same relative spread as latency.
    latency = latency_interval(record)
    scale = record.usd_per_1m_tokens / latency.value if is_finite(latency.value) and latency.value > 0 else math.nan
    return Interval(record.usd_per_1m_tokens, latency.low * scale, latency.high * scale)


@dataclass(frozen=True)
class CostAxis:
    key: str
    label: str
    axis_title: str
    unit: str
    interval: Callable[[VariantRecord], Interval]
    value_format: str


COST_AXES: dict[str, CostAxis] = {
    a.key: a
    for a in (
        CostAxis(
            "latency", "Decode latency", "Decode latency, ms/token, p10–p90 (← better)",
            "ms/token", latency_interval, ".1f",
        ),
        CostAxis(
            "cost", "Cost", "USD per 1M generated tokens (← better)",
            "USD per 1M tokens", cost_interval, ".4f",
        ),
    )
}


def get_metric(metric_key: str) -> QualityMetric:
    if metric_key not in QUALITY_METRICS:
        raise ValueError(f"unknown quality metric {metric_key!r}; choose one of {list(QUALITY_METRICS)}")
    return QUALITY_METRICS[metric_key]


def get_cost_axis(axis_key: str) -> CostAxis:
    if axis_key not in COST_AXES:
        raise ValueError(f"unknown cost axis {axis_key!r}; choose one of {list(COST_AXES)}")
    return COST_AXES[axis_key]


def quality_interval(record: VariantRecord, metric: QualityMetric) -> Interval:
    value = getattr(record, metric.key)
    if not metric.error_fields:
        return Interval(value, value, value)
    if len(metric.error_fields) == 1:  # one field holding [low, high]
        bounds = getattr(record, metric.error_fields[0]) or [math.nan, math.nan]
        low, high = bounds[0], bounds[1]
    else:  # two fields: low, high
        low, high = (getattr(record, name) for name in metric.error_fields[:2])
    return Interval(value, low, high)


# --- the Pareto frontier ---------------------------------------------------------------------------


def _dominates(a: tuple[float, float], b: tuple[float, float], higher_is_better: bool) -> bool:
    """a is at least as good as b on both axes and strictly better on one (x is a cost)."""
    y_better_or_equal = a[1] >= b[1] if higher_is_better else a[1] <= b[1]
    y_strictly_better = a[1] > b[1] if higher_is_better else a[1] < b[1]
    return a[0] <= b[0] and y_better_or_equal and (a[0] < b[0] or y_strictly_better)


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the non-dominated points, sorted by x (cost, lower is better) then by quality.

    Points with a non-finite coordinate cannot be compared and are left out. Exact duplicates do not
    dominate each other, so both stay on the front.
    """
    candidates = [i for i, (x, y) in enumerate(points) if is_finite(x) and is_finite(y)]
    front = [
        i for i in candidates
        if not any(_dominates(points[j], points[i], higher_is_better) for j in candidates if j != i)
    ]
    quality_sign = -1 if higher_is_better else 1  # best quality first among equal x
    return sorted(front, key=lambda i: (points[i][0], quality_sign * points[i][1], i))


# --- shared helpers --------------------------------------------------------------------------------


def require_one_machine(records: Sequence[VariantRecord]) -> None:
    machines = sorted({r.hardware for r in records})
    if len(machines) > 1:
        raise ValueError(
            f"records come from {len(machines)} machines ({machines}); their speeds are not comparable, "
            "so plot one machine at a time"
        )


def family_colors(records: Sequence[VariantRecord]) -> dict[str, str]:
    families = sorted({r.family for r in records})
    unknown = [f for f in families if f not in FAMILY_COLORS]
    palette = qualitative.Dark24
    return {f: FAMILY_COLORS.get(f) or palette[unknown.index(f) % len(palette)] for f in families}


def runtime_of(record: VariantRecord) -> str:
    return getattr(record, "runtime", None) or "transformers"


def fmt_value(value: float, spec: str) -> str:
    return format(value, spec) if is_finite(value) else "n/a"


def kld_rule(record: VariantRecord) -> str:
    """Which positions produced the record's text-quality numbers; records from before the choice scored all."""
    return (record.settings or {}).get("kld_rule", "every-position")


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

