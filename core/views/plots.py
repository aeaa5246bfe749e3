"""Pure plotly figure builders: records in, go.Figure out. No streamlit here, so figures are testable.

The trade-off map puts a cost on x (lower is better) and a quality on y, always drawn so that
better is up and left. For lower-is-better qualities (KL divergence, perplexity) the axis is
reversed rather than the numbers changed, so hover values stay the measured ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.colors import qualitative

from core.store.records import VariantRecord

MAX_BUBBLE_PX = 30  # diameter of the largest bubble: small enough that 30 variants stay apart
# KL divergence is 0 for the reference and spans 1e-3 (bf16) to several nats: a log axis separates them,
# and this floor, added to every value, puts the reference a decade below the best measured variant
KLD_LOG_FLOOR = 1e-4
LOG_PAD_DECADES = 0.15  # room around the outermost points on a log axis
LABEL_MARGIN_PX = 190  # right margin that holds the frontier's labels
LABEL_SLOT_PX = 22  # vertical room per label; the figure grows when the frontier needs more
# fixed colours so a family looks the same on every chart and every page
FAMILY_COLORS = {"reference": "#000000", "quantization": "#1f77b4", "gguf": "#d62728", "moe": "#2ca02c",
                 "distillation": "#9467bd", "lora": "#ff7f0e", "speculative": "#8c564b"}
RUNTIME_SYMBOLS = {"transformers": "circle", "transformers-compiled": "diamond", "llama.cpp": "square"}
OTHER_SYMBOL = "triangle-up"
FRONTIER_NAME = "Pareto frontier"
ROOFLINE_NAME = "Memory-bandwidth limit"
BUBBLE_NOTE = "bubble size = MB held"


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


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def decode_ms_per_token(tokens_per_s: float) -> float:
    """Decode latency per token; NaN where the speed is unknown or zero."""
    return 1000.0 / tokens_per_s if _finite(tokens_per_s) and tokens_per_s > 0 else math.nan


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
    scale = record.usd_per_1m_tokens / latency.value if _finite(latency.value) and latency.value > 0 else math.nan
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
    candidates = [i for i, (x, y) in enumerate(points) if _finite(x) and _finite(y)]
    front = [
        i for i in candidates
        if not any(_dominates(points[j], points[i], higher_is_better) for j in candidates if j != i)
    ]
    quality_sign = -1 if higher_is_better else 1  # best quality first among equal x
    return sorted(front, key=lambda i: (points[i][0], quality_sign * points[i][1], i))


# --- shared helpers --------------------------------------------------------------------------------


def _require_one_machine(records: Sequence[VariantRecord]) -> None:
    machines = sorted({r.hardware for r in records})
    if len(machines) > 1:
        raise ValueError(
            f"records come from {len(machines)} machines ({machines}); their speeds are not comparable, "
            "so plot one machine at a time"
        )


def _family_colors(records: Sequence[VariantRecord]) -> dict[str, str]:
    families = sorted({r.family for r in records})
    unknown = [f for f in families if f not in FAMILY_COLORS]
    palette = qualitative.Dark24
    return {f: FAMILY_COLORS.get(f) or palette[unknown.index(f) % len(palette)] for f in families}


def _runtime(record: VariantRecord) -> str:
    return getattr(record, "runtime", None) or "transformers"


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if _finite(value) else "n/a"


def _hover_text(record: VariantRecord) -> str:
    ci = record.mc_accuracy_ci95 or [math.nan, math.nan]
    lines = [
        f"<b>{record.label}</b> ({record.technique}, {record.family}, runtime {_runtime(record)})",
        f"Size held: {_fmt(record.size_mb, '.1f')} MB; peak memory: {_fmt(record.peak_mem_mb, '.1f')} MB",
        f"Decode: {_fmt(record.decode_tokens_per_s_median, '.1f')} tokens/s "
        f"(p10 {_fmt(record.decode_tokens_per_s_p10, '.1f')}, p90 {_fmt(record.decode_tokens_per_s_p90, '.1f')})"
        f" = {_fmt(decode_ms_per_token(record.decode_tokens_per_s_median), '.1f')} ms/token",
        f"Time to first token: {_fmt(record.ttft_ms_median, '.1f')} ms",
        f"Roofline: {_fmt(record.roofline_tokens_per_s, '.1f')} tokens/s "
        f"at {_fmt(record.bandwidth_gb_s, '.1f')} GB/s ({_fmt(record.roofline_pct, '.0f')}% reached)",
        f"Cost: ${_fmt(record.usd_per_1m_tokens, '.4f')} per 1M tokens at ${_fmt(record.usd_per_hour, '.4f')}/h "
        f"({record.hardware_preset})",
        f"KL divergence: {_fmt(record.kld_mean, '.4f')} nats/token (p99 {_fmt(record.kld_p99, '.4f')})",
        f"Top-1 agreement: {_fmt(record.top1_agreement, '.1%')}",
        f"Perplexity: {_fmt(record.perplexity, '.2f')}",
        f"MC accuracy: {_fmt(record.mc_accuracy, '.1%')} (95% CI {_fmt(ci[0], '.1%')}–{_fmt(ci[1], '.1%')}, "
        f"{record.mc_items} items)",
        f"Device: {record.device}, {record.dtype}, {record.threads} threads",
    ]
    return "<br>".join(lines)


def _error_bars(intervals: Sequence[Interval]) -> dict | None:
    """Asymmetric plotly error bars, or None where no interval is known."""
    if not any(_finite(iv.low) and _finite(iv.high) and (iv.low != iv.high) for iv in intervals):
        return None
    plus = [iv.plus if _finite(iv.plus) else 0.0 for iv in intervals]
    minus = [iv.minus if _finite(iv.minus) else 0.0 for iv in intervals]
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1)


def _bubble_sizeref(records: Sequence[VariantRecord]) -> float:
    # plotly's recipe for sizemode="area": the largest bubble gets MAX_BUBBLE_PX across.
    largest_mb = max((r.size_mb for r in records if _finite(r.size_mb)), default=1.0)
    return 2.0 * max(largest_mb, 1e-9) / MAX_BUBBLE_PX**2


def _empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


# --- the trade-off map -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MapAxes:
    """How the map draws its axes: log (default) separates values that span decades; linear shows them as is."""
    log: bool = True

    def y_value(self, value: float, metric: QualityMetric) -> float:
        # only KL divergence is shifted, and only on a log axis, where its zero could not be drawn
        return value + KLD_LOG_FLOOR if self.log and metric.key == "kld_mean" and _finite(value) else value

    def y_is_log(self, metric: QualityMetric) -> bool:
        return self.log and metric.key in ("kld_mean", "perplexity")

    def y_title(self, metric: QualityMetric) -> str:
        if self.log and metric.key == "kld_mean":
            return f"KLD + {KLD_LOG_FLOOR:g} floor, nats/token, log (↑ better)"
        return metric.axis_title + (", log" if self.y_is_log(metric) else "")


def _frontier_indices(records: Sequence[VariantRecord], metric: QualityMetric, axis: CostAxis) -> list[int]:
    points = [(axis.interval(r).value, getattr(r, metric.key)) for r in records]
    return pareto_front(points, metric.higher_is_better)  # any monotone axis scaling keeps the same front


def _family_trace(
    records: Sequence[VariantRecord], family: str, color: str, metric: QualityMetric, axis: CostAxis, sizeref: float,
    axes: MapAxes,
) -> go.Scatter:
    """One family's bubbles, without text: labels go to the frontier only (see _frontier_labels).

    Every point keeps its full hover text, and the page lists every point in a table.
    """
    xs = [axis.interval(r) for r in records]
    ys = [quality_interval(r, metric) for r in records]
    shifted = [Interval(*(axes.y_value(v, metric) for v in (iv.value, iv.low, iv.high))) for iv in ys]
    return go.Scatter(
        x=[iv.value for iv in xs],
        y=[iv.value for iv in shifted],
        mode="markers",
        name=family,
        legendgroup="family",
        legendgrouptitle=dict(text="colour = family"),
        marker=dict(
            size=[r.size_mb if _finite(r.size_mb) else 0.0 for r in records],
            sizemode="area",
            sizeref=sizeref,
            sizemin=7,
            color=color,
            symbol=[RUNTIME_SYMBOLS.get(_runtime(r), OTHER_SYMBOL) for r in records],
            opacity=0.75,
            line=dict(width=1, color="DarkSlateGrey"),
        ),
        error_x=_error_bars(xs),
        error_y=_error_bars(shifted),
        customdata=[_hover_text(r) for r in records],
        hovertemplate="%{customdata}<extra></extra>",
    )


def _runtime_legend(records: Sequence[VariantRecord]) -> list[go.Scatter]:
    """Legend-only entries (no points) that say which symbol is which runtime."""
    runtimes = sorted({_runtime(r) for r in records})
    return [go.Scatter(x=[None], y=[None], mode="markers", name=rt, legendgroup="runtime",
                       legendgrouptitle=dict(text="symbol = runtime"), hoverinfo="skip",
                       marker=dict(symbol=RUNTIME_SYMBOLS.get(rt, OTHER_SYMBOL), size=10, color="grey"))
            for rt in runtimes]


def _frontier_trace(records: Sequence[VariantRecord], metric: QualityMetric, axis: CostAxis,
                    axes: MapAxes) -> go.Scatter | None:
    front = _frontier_indices(records, metric, axis)
    if not front:
        return None
    return go.Scatter(
        x=[axis.interval(records[i]).value for i in front],
        y=[axes.y_value(getattr(records[i], metric.key), metric) for i in front],
        mode="lines",
        name=FRONTIER_NAME,
        line=dict(dash="dash", color="grey", width=1.5),
        hoverinfo="skip",
    )


def _frontier_labels(records: Sequence[VariantRecord], metric: QualityMetric, axis: CostAxis, axes: MapAxes,
                     x_range: list[float] | None, y_range: list[float] | None, x_log: bool,
                     y_log: bool) -> list[dict]:
    """One label per frontier point, in a column right of the plot with an arrow to its point.

    Labels placed next to their points overlap as soon as two frontier points are close; in a
    column, the labels sit in evenly spaced slots (in the same top-to-bottom order as their points,
    so arrows do not cross), so they cannot overlap however the points lie.
    """
    front = _frontier_indices(records, metric, axis)
    if not front or x_range is None or y_range is None:
        return []
    to_x = (lambda v: math.log10(v)) if x_log else (lambda v: v)  # annotations on a log axis take log10
    to_y = (lambda v: math.log10(v)) if y_log else (lambda v: v)
    points = [(to_x(axis.interval(records[i]).value), to_y(axes.y_value(getattr(records[i], metric.key), metric)), i)
              for i in front]
    top, bottom = y_range[1], y_range[0]  # y_range runs bottom -> top of the screen, reversed or not
    points.sort(key=lambda p: (p[1] - bottom) / (top - bottom) if top != bottom else 0.0, reverse=True)
    n = len(points)
    x_text = x_range[1] + 0.02 * (x_range[1] - x_range[0])  # just right of the plot area
    labels = []
    for slot, (x, y, i) in enumerate(points):
        y_text = top - (slot + 0.5) * (top - bottom) / n  # slot 0 at the top of the screen
        labels.append(dict(x=x, y=y, xref="x", yref="y", ax=x_text, ay=y_text, axref="x", ayref="y",
                           text=records[i].label, xanchor="left", showarrow=True, arrowhead=0, arrowwidth=1,
                           arrowcolor="rgba(128, 128, 128, 0.45)", font=dict(size=11)))
    return labels


def _data_range(values: Sequence[float], log: bool) -> list[float] | None:
    """Axis range from the points themselves (not their error bars), so a wide p10–p90 bar cannot stretch it."""
    finite = [v for v in values if _finite(v) and (v > 0 or not log)]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
        return [lo - LOG_PAD_DECADES, hi + LOG_PAD_DECADES]
    pad = 0.08 * (hi - lo) or 0.1 * abs(hi) or 1.0
    return [lo - pad, hi + pad]


def tradeoff_figure(records: Sequence[VariantRecord], metric_key: str, axis_key: str, log: bool = True) -> go.Figure:
    """Bubble map of quality (y, better up) against speed or cost (x, better left), with the frontier.

    log=True draws latency/cost and KL divergence (plus KLD_LOG_FLOOR) or perplexity on log axes, so a
    0.6 tok/s outlier or a 0.001-nat variant does not squeeze the rest into one corner. Colour is the
    family, symbol the runtime, bubble area the MB held; only Pareto-frontier points are labelled.
    """
    metric, axis = get_metric(metric_key), get_cost_axis(axis_key)
    if not records:
        return _empty_figure("No results yet: measure some variants first.")
    _require_one_machine(records)
    axes = MapAxes(log=log)
    colors, sizeref = _family_colors(records), _bubble_sizeref(records)
    fig = go.Figure()
    for family, color in colors.items():
        members = [r for r in records if r.family == family]
        fig.add_trace(_family_trace(members, family, color, metric, axis, sizeref, axes))
    frontier = _frontier_trace(records, metric, axis, axes)
    if frontier is not None:
        fig.add_trace(frontier)
    for trace in _runtime_legend(records):
        fig.add_trace(trace)
    fig.update_layout(
        title=dict(text=f"{metric.label} vs {axis.label.lower()}"),
        # below the plot, so the bubbles keep the full width of a half-page column
        legend=dict(title=dict(text=f"{BUBBLE_NOTE}:"), orientation="h", yanchor="top", y=-0.22, x=0),
        hovermode="closest",
        margin=dict(l=10, r=LABEL_MARGIN_PX, t=50, b=10),
    )
    xs = [axis.interval(r).value for r in records]
    x_range = _data_range(xs, log)
    fig.update_xaxes(title_text=axis.axis_title + (", log" if log else ""), type="log" if log else "linear",
                     range=x_range, exponentformat="power")
    y_log = axes.y_is_log(metric)
    y_range = _data_range([axes.y_value(getattr(r, metric.key), metric) for r in records], y_log)
    if y_range is not None and not metric.higher_is_better:
        y_range = y_range[::-1]  # reversed: lower (better) values at the top
    fig.update_yaxes(title_text=axes.y_title(metric), type="log" if y_log else "linear", range=y_range,
                     exponentformat="power")
    labels = _frontier_labels(records, metric, axis, axes, x_range, y_range, log, y_log)
    fig.update_layout(annotations=labels, height=max(560, 300 + LABEL_SLOT_PX * len(labels)))
    if y_range is None and not metric.higher_is_better:
        fig.update_yaxes(autorange="reversed")
    if metric.value_format.endswith("%"):
        fig.update_yaxes(tickformat=".0%")
    return fig


def map_rows(records: Sequence[VariantRecord], metric_key: str, axis_key: str) -> list[dict]:
    """Every point of the map as a row (raw numbers, units in the names), frontier points first."""
    metric, axis = get_metric(metric_key), get_cost_axis(axis_key)
    front = _frontier_indices(records, metric, axis)
    order = front + [i for i in range(len(records)) if i not in front]
    return [
        {
            "variant": records[i].label,
            "technique": records[i].technique,
            "family": records[i].family,
            "runtime": _runtime(records[i]),
            "on frontier": i in front,
            "decode ms/token": latency_interval(records[i]).value,
            "USD per 1M tokens": records[i].usd_per_1m_tokens,
            "KLD (nats)": records[i].kld_mean,
            "top-1 agreement": records[i].top1_agreement,
            "perplexity": records[i].perplexity,
            "MC accuracy": records[i].mc_accuracy,
            "MB held": records[i].size_mb,
        }
        for i in order
    ]


# --- the sentence for a manager --------------------------------------------------------------------


def _newest(records: Sequence[VariantRecord]) -> VariantRecord:
    return max(records, key=lambda r: r.created_at)


def _quality_phrase(variant: VariantRecord, reference: VariantRecord, metric: QualityMetric) -> str:
    if metric.key == "kld_mean":
        return (f"at {_fmt(variant.kld_mean, '.2f')} nats of KL divergence "
                f"(top-1 agreement {_fmt(variant.top1_agreement, '.0%')})")
    if metric.key == "top1_agreement":
        return (f"while agreeing with {reference.label} on {_fmt(variant.top1_agreement, '.0%')} of next tokens "
                f"(KL divergence {_fmt(variant.kld_mean, '.2f')} nats)")
    if metric.key == "perplexity":
        return f"at perplexity {_fmt(variant.perplexity, '.1f')} against {_fmt(reference.perplexity, '.1f')}"
    return (f"at {_fmt(variant.mc_accuracy, '.0%')} multiple-choice accuracy "
            f"against {_fmt(reference.mc_accuracy, '.0%')}")


def _ratio(numerator: float, denominator: float) -> float:
    ok = _finite(numerator) and _finite(denominator) and denominator != 0
    return numerator / denominator if ok else math.nan


def _gain_phrase(variant: VariantRecord, reference: VariantRecord, axis: CostAxis) -> str:
    if axis.key == "latency":
        speedup = _ratio(variant.decode_tokens_per_s_median, reference.decode_tokens_per_s_median)
        return f"decodes {_fmt(speedup, '.1f')}x faster than {reference.label}"
    share = _ratio(variant.usd_per_1m_tokens, reference.usd_per_1m_tokens)
    return (f"costs {_fmt(share, '.0%')} of what {reference.label} costs per 1M tokens "
            f"(${_fmt(variant.usd_per_1m_tokens, '.4f')} against ${_fmt(reference.usd_per_1m_tokens, '.4f')})")


def _in_sentence(label: str) -> str:
    """'Perplexity' -> 'perplexity', but 'KL divergence' keeps its acronym."""
    first = label.split()[0]
    return label if first.isupper() else label[0].lower() + label[1:]


def what_you_give_up(
    records: Sequence[VariantRecord], metric_key: str, axis_key: str, reference_technique: str = "fp32"
) -> str:
    """One plain-language sentence: what the best-value frontier variant gains and loses against the reference."""
    metric, axis = get_metric(metric_key), get_cost_axis(axis_key)
    if not records:
        return "No results yet: measure at least one variant to see what it trades away."
    _require_one_machine(records)
    references = [r for r in records if r.technique == reference_technique]
    if not references:
        return (f"There is no {reference_technique} reference result on this machine, so there is nothing "
                "to compare against: measure the reference in the same run.")
    reference = _newest(references)
    if not _finite(axis.interval(reference).value):
        return f"{reference.label} has no {axis.label.lower()} measurement, so there is nothing to compare against."
    others = [r for r in records if r.technique != reference_technique]
    if not others:
        return f"Only {reference.label} has been measured, so there is nothing to compare it with yet."
    points = [(axis.interval(r).value, getattr(r, metric.key)) for r in records]
    front = [records[i] for i in pareto_front(points, metric.higher_is_better)]
    best = next((r for r in front if r.technique != reference_technique), None)
    adjective = "fastest" if axis.key == "latency" else "cheapest"
    if best is None:
        return f"No variant beats {reference.label}: it is already the {adjective} and the best on {_in_sentence(metric.label)}."
    if axis.interval(best).value >= axis.interval(reference).value:
        return (f"No variant is {'faster' if axis.key == 'latency' else 'cheaper'} than {reference.label}; "
                f"the best alternative on the frontier, {best.label}, only trades {_in_sentence(metric.label)}.")
    memory_share = _ratio(best.size_mb, reference.size_mb)
    where = f" (on {_runtime(best)})" if _runtime(best) != _runtime(reference) else ""
    return (f"The {adjective} variant on the frontier, {best.label}{where}, {_gain_phrase(best, reference, axis)} "
            f"{_quality_phrase(best, reference, metric)}, using {_fmt(memory_share, '.0%')} of its memory.")


# --- speed against the physical limit --------------------------------------------------------------


def speed_bars_figure(records: Sequence[VariantRecord]) -> go.Figure:
    """Decode tokens/s per variant (median, p10–p90 bars) next to the memory-bandwidth roofline."""
    if not records:
        return _empty_figure("No results yet: measure some variants first.")
    _require_one_machine(records)
    labels = [r.label for r in records]
    speeds = [
        Interval(r.decode_tokens_per_s_median, r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90) for r in records
    ]
    # Computed from the two speeds shown, so the label always matches the bars.
    pct_of_limit = [
        100 * r.decode_tokens_per_s_median / r.roofline_tokens_per_s
        if _finite(r.roofline_tokens_per_s) and r.roofline_tokens_per_s > 0 else math.nan
        for r in records
    ]
    colors = _family_colors(records)
    fig = go.Figure()
    fig.add_trace(go.Bar(
        x=labels,
        y=[iv.value for iv in speeds],
        name="Measured decode speed (median)",
        marker_color=[colors[r.family] for r in records],
        error_y=_error_bars(speeds),
        text=[f"{_fmt(p, '.0f')}% of limit" for p in pct_of_limit],
        textposition="inside",
        customdata=[_hover_text(r) for r in records],
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
    fig.update_layout(title=dict(text="Decode speed against the memory-bandwidth limit"), bargap=0.35)
    fig.update_yaxes(title_text="Decode speed (tokens/s, median with p10–p90; ↑ better)", rangemode="tozero")
    fig.update_xaxes(title_text="Variant")
    return fig


# --- mixture of experts: quality against speed as k changes ----------------------------------------

DENSE_NAME = "Dense model"


def moe_curve_figure(records: Sequence[VariantRecord], metric_key: str = "kld_mean",
                     reference_technique: str = "fp32") -> go.Figure:
    """One line per expert count E through its k = 1..E points (decode tokens/s on x, quality on y), plus the
    dense reference as a star. MoE records carry experts/top_k in `variant_facts`; others are ignored."""
    metric = get_metric(metric_key)
    moe_records = [r for r in records if r.family == "moe" and r.variant_facts.get("top_k")]
    dense = [r for r in records if r.technique == reference_technique]
    if not moe_records:
        return _empty_figure("No mixture-of-experts results yet: convert and measure first.")
    _require_one_machine([*moe_records, *dense])
    fig = go.Figure()
    for experts in sorted({r.variant_facts["experts"] for r in moe_records}):
        line = sorted((r for r in moe_records if r.variant_facts["experts"] == experts), key=lambda r: r.variant_facts["top_k"])
        speeds = [Interval(r.decode_tokens_per_s_median, r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90) for r in line]
        ys = [quality_interval(r, metric) for r in line]
        fig.add_trace(go.Scatter(
            x=[iv.value for iv in speeds], y=[iv.value for iv in ys], mode="lines+markers+text",
            name=f"{experts} experts", text=[f"k={r.variant_facts['top_k']}" for r in line], textposition="top center",
            error_x=_error_bars(speeds), error_y=_error_bars(ys),
            customdata=[_moe_hover(r) for r in line], hovertemplate="%{customdata}<extra></extra>",
        ))
    for r in dense[:1]:
        speed = Interval(r.decode_tokens_per_s_median, r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90)
        fig.add_trace(go.Scatter(
            x=[speed.value], y=[getattr(r, metric.key)], mode="markers+text", name=DENSE_NAME, text=["dense"],
            textposition="bottom center", marker=dict(symbol="star", size=16, color="black"),
            error_x=_error_bars([speed]), customdata=[_hover_text(r)], hovertemplate="%{customdata}<extra></extra>",
        ))
    fig.update_layout(title=dict(text=f"{metric.label} vs decode speed as experts per token (k) change"),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), height=480,
                      margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title_text="Decode tokens/s, p10–p90 (→ better)")
    fig.update_yaxes(title_text=metric.axis_title, autorange=True if metric.higher_is_better else "reversed")
    if metric.value_format.endswith("%"):
        fig.update_yaxes(tickformat=".0%")
    return fig


def _moe_hover(record: VariantRecord) -> str:
    facts = record.variant_facts
    extra = (f"Active parameters: {_fmt(facts.get('active_params', math.nan) / 1e6, '.1f')}M "
             f"({_fmt(facts.get('active_params_pct', math.nan), '.0f')}% of dense); "
             f"{_fmt(facts.get('flops_per_token', math.nan) / 1e6, '.0f')} MFLOPs per token")
    return _hover_text(record) + "<br>" + extra
