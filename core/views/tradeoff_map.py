"""The Trade-off Map: records in, the map's figure, its table and its one sentence out. No streamlit here.

The trade-off map puts a cost on x (lower is better) and a quality on y, always drawn so that
better is up and left. For lower-is-better qualities (KL divergence, perplexity) the axis is
reversed rather than the numbers changed, so hover values stay the measured ones. What can be plotted is in
chart_quantities.py, what every chart draws alike in chart_parts.py; the other figures in speed_bars.py and
moe_curve.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from core.store.records import VariantRecord
from core.techniques import REFERENCE
from core.views import busy, quality
from core.views.axes import log_axis, readable_axes, wrap_title
from core.views.chart_parts import (
    OTHER_SYMBOL,
    RUNTIME_SYMBOLS,
    bubble_sizeref,
    empty_figure,
    error_bars,
    family_colors,
    fmt_value,
    hover_text,
    runtime_of,
)
from core.views.chart_quantities import (
    CostAxis,
    Interval,
    QualityMetric,
    get_cost_axis,
    get_metric,
    fmt_nats,
    is_finite,
    latency_interval,
    pareto_front,
    quality_interval,
    require_one_machine,
)

# KL divergence is 0 for the reference and spans 1e-3 (bf16) to several nats: a log axis separates them,
# and this floor, added to every value, puts the reference a decade below the best measured variant
KLD_LOG_FLOOR = 1e-4
LOG_PAD_DECADES = 0.15  # room around the outermost points on a log axis
LABEL_MARGIN_PX = 190  # right margin that holds the frontier's labels
LABEL_SLOT_PX = 22  # vertical room per label; the figure grows when the frontier needs more
FRONTIER_NAME = "Pareto frontier"
BUBBLE_NOTE = "bubble size = MB held"


# --- the trade-off map -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MapAxes:
    """How the map draws its axes: log (default) separates values that span decades; linear shows them as is."""
    log: bool = True

    def y_value(self, value: float, metric: QualityMetric) -> float:
        # only KL divergence is shifted, and only on a log axis, where its zero could not be drawn
        return value + KLD_LOG_FLOOR if self.log and metric.key == "kld_mean" and is_finite(value) else value

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
    unreliable = [busy.is_busy(r) for r in records]  # drawn hollow: where it sits on x is not to be trusted
    return go.Scatter(
        x=[iv.value for iv in xs],
        y=[iv.value for iv in shifted],
        mode="markers",
        name=family,
        legendgroup="family",
        legendgrouptitle=dict(text="colour = family"),
        marker=dict(
            size=[r.size_mb if is_finite(r.size_mb) else 0.0 for r in records],
            sizemode="area",
            sizeref=sizeref,
            sizemin=7,
            color=color,
            symbol=[RUNTIME_SYMBOLS.get(runtime_of(r), OTHER_SYMBOL) + ("-open" if u else "")
                    for r, u in zip(records, unreliable)],
            opacity=[0.5 if u else 0.75 for u in unreliable],
            line=dict(width=[2.5 if u else 1 for u in unreliable], color="DarkSlateGrey"),
        ),
        error_x=error_bars(xs),
        error_y=error_bars(shifted),
        customdata=[hover_text(r) for r in records],
        hovertemplate="%{customdata}<extra></extra>",
    )


def _runtime_legend(records: Sequence[VariantRecord]) -> list[go.Scatter]:
    """Legend-only entries (no points) that say which symbol is which runtime."""
    runtimes = sorted({runtime_of(r) for r in records})
    return [go.Scatter(x=[None], y=[None], mode="markers", name=rt, legendgroup="runtime",
                       legendgrouptitle=dict(text="symbol = runtime"), hoverinfo="skip",
                       marker=dict(symbol=RUNTIME_SYMBOLS.get(rt, OTHER_SYMBOL), size=10, color="grey"))
            for rt in runtimes]


def _busy_legend(records: Sequence[VariantRecord]) -> list[go.Scatter]:
    """A legend-only entry for the hollow markers, when any record was timed on a busy machine."""
    if not busy.busy_records(records):
        return []
    return [go.Scatter(x=[None], y=[None], mode="markers", name=busy.UNRELIABLE, legendgroup="busy",
                       legendgrouptitle=dict(text="hollow"), hoverinfo="skip",
                       marker=dict(symbol="circle-open", size=10, color="grey", line=dict(width=2.5)))]


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
                           text=records[i].label + (" (busy machine)" if busy.is_busy(records[i]) else ""),
                           xanchor="left", showarrow=True, arrowhead=0, arrowwidth=1,
                           arrowcolor="rgba(128, 128, 128, 0.45)", font=dict(size=11)))
    return labels


def _data_range(values: Sequence[float], log: bool) -> list[float] | None:
    """Axis range from the points themselves (not their error bars), so a wide p10–p90 bar cannot stretch it."""
    finite = [v for v in values if is_finite(v) and (v > 0 or not log)]
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
        return empty_figure("No results yet: measure some variants first.")
    require_one_machine(records)
    axes = MapAxes(log=log)
    colors, sizeref = family_colors(records), bubble_sizeref(records)
    fig = go.Figure()
    for family, color in colors.items():
        members = [r for r in records if r.family == family]
        fig.add_trace(_family_trace(members, family, color, metric, axis, sizeref, axes))
    frontier = _frontier_trace(records, metric, axis, axes)
    if frontier is not None:
        fig.add_trace(frontier)
    for trace in [*_runtime_legend(records), *_busy_legend(records)]:
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
    fig.update_xaxes(title_text=wrap_title(axis.axis_title + (", log" if log else "")), type="log" if log else "linear",
                     range=x_range, exponentformat="none", **(log_axis(x_range) if log else {}))
    y_log = axes.y_is_log(metric)
    y_range = _data_range([axes.y_value(getattr(r, metric.key), metric) for r in records], y_log)
    if y_range is not None and not metric.higher_is_better:
        y_range = y_range[::-1]  # reversed: lower (better) values at the top
    fig.update_yaxes(title_text=wrap_title(axes.y_title(metric)), type="log" if y_log else "linear", range=y_range,
                     exponentformat="none", **(log_axis(y_range) if y_log else {}))
    labels = _frontier_labels(records, metric, axis, axes, x_range, y_range, log, y_log)
    fig.update_layout(annotations=labels, height=max(560, 300 + LABEL_SLOT_PX * len(labels)))
    if y_range is None and not metric.higher_is_better:
        fig.update_yaxes(autorange="reversed")
    if metric.value_format.endswith("%"):
        fig.update_yaxes(tickformat=".0%")
    return readable_axes(fig)


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
            "runtime": runtime_of(records[i]),
            "on frontier": i in front,
            "decode ms/token": latency_interval(records[i]).value,
            "USD per 1M tokens": records[i].usd_per_1m_tokens,
            "KLD (nats)": records[i].kld_mean,
            "KLD p99 (nats)": records[i].kld_p99,
            "top-1 agreement": records[i].top1_agreement,
            "perplexity": records[i].perplexity,
            "MC accuracy": records[i].mc_accuracy,
            "MB held": records[i].size_mb,
            **({"my task pass rate": records[i].task_pass_rate} if metric.key == "task_pass_rate" else {}),
        }
        for i in order
    ]


# --- the sentence for a manager --------------------------------------------------------------------


def _newest(records: Sequence[VariantRecord]) -> VariantRecord:
    return max(records, key=lambda r: r.created_at)


def _quality_phrase(variant: VariantRecord, reference: VariantRecord, metric: QualityMetric) -> str:
    if metric.key == "kld_mean":
        return (f"at {fmt_nats(variant.kld_mean)} nats of KL divergence "
                f"(top-1 agreement {fmt_value(variant.top1_agreement, '.0%')})")
    if metric.key == "top1_agreement":
        return (f"while agreeing with {reference.label} on {fmt_value(variant.top1_agreement, '.0%')} of next tokens "
                f"(KL divergence {fmt_nats(variant.kld_mean)} nats)")
    if metric.key == "perplexity":
        return f"at perplexity {fmt_value(variant.perplexity, '.1f')} against {fmt_value(reference.perplexity, '.1f')}"
    if metric.key == "task_pass_rate":  # the user's own task (core/views/task.py)
        return (f"passing {fmt_value(variant.task_pass_rate, '.0%')} of my task's prompts against "
                f"{fmt_value(reference.task_pass_rate, '.0%')}")
    return (f"at {fmt_value(variant.mc_accuracy, '.0%')} multiple-choice accuracy "
            f"against {fmt_value(reference.mc_accuracy, '.0%')}")


def _ratio(numerator: float, denominator: float) -> float:
    ok = is_finite(numerator) and is_finite(denominator) and denominator != 0
    return numerator / denominator if ok else math.nan


def _gain_phrase(variant: VariantRecord, reference: VariantRecord, axis: CostAxis) -> str:
    if axis.key == "latency":
        speedup = _ratio(variant.decode_tokens_per_s_median, reference.decode_tokens_per_s_median)
        return f"decodes {fmt_value(speedup, '.1f')}x faster than {reference.label}"
    share = _ratio(variant.usd_per_1m_tokens, reference.usd_per_1m_tokens)
    return (f"costs {fmt_value(share, '.0%')} of what {reference.label} costs per 1M tokens "
            f"(${fmt_value(variant.usd_per_1m_tokens, '.4f')} against ${fmt_value(reference.usd_per_1m_tokens, '.4f')})")


def _in_sentence(label: str) -> str:
    """'Perplexity' -> 'perplexity', but 'KL divergence' keeps its acronym."""
    first = label.split()[0]
    return label if first.isupper() else label[0].lower() + label[1:]


def what_you_give_up(
    records: Sequence[VariantRecord], metric_key: str, axis_key: str, reference_technique: str = REFERENCE
) -> str:
    """One plain-language sentence: what the best-value frontier variant gains and loses against the reference;
    and which variants, drawn hollow, were timed on a busy machine."""
    text = _give_up(records, metric_key, axis_key, reference_technique)
    unsure = [r.label for r in busy.busy_records(records)]
    if unsure:
        text += (f" Drawn hollow: {', '.join(unsure)}, timed on a busy machine; {'its' if len(unsure) == 1 else 'their'}"
                 f" speed and cost are unreliable, so {busy.AGAIN}.")
    return text


def _give_up(records: Sequence[VariantRecord], metric_key: str, axis_key: str, reference_technique: str) -> str:
    metric, axis = get_metric(metric_key), get_cost_axis(axis_key)
    if not records:
        return "No results yet: measure at least one variant to see what it trades away."
    require_one_machine(records)
    references = [r for r in records if r.technique == reference_technique]
    if not references:
        return (f"There is no {reference_technique} reference result on this machine, so there is nothing "
                "to compare against: measure the reference in the same run.")
    reference = _newest(references)
    if not is_finite(axis.interval(reference).value):
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
    where = f" (on {runtime_of(best)})" if runtime_of(best) != runtime_of(reference) else ""
    text = (f"The {adjective} variant on the frontier, {best.label}{where}, {_gain_phrase(best, reference, axis)} "
            f"{_quality_phrase(best, reference, metric)}, using {fmt_value(memory_share, '.0%')} of its memory. "
            f"Its quality: {quality.scale_words(best.top1_agreement)}.")
    if quality.below_floor(best, quality.DEFAULT_FLOOR_TOP1):  # being on the frontier is not being good enough
        text += (f" That is under the default quality floor ({quality.DEFAULT_FLOOR_TOP1:.0%} top-1 agreement): "
                 "check its answers before choosing it.")
    return text

