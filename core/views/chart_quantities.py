"""What a chart can plot: the quality measures and cost axes, each record's interval on them (the error
bars), the Pareto frontier, and the check that records come from one machine. Records in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.store.records import VariantRecord


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


# The user's own task (core/views/task.py): offered where a task run measured the variants; its records carry it.
TASK_PASS_RATE = QualityMetric("task_pass_rate", "My task: pass rate", True, "My task's pass rate, 95% CI (↑ better)",
                               ("task_pass_rate_ci95",), ".1%")


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


KLD_SIGNIFICANT = 2  # digits a KL divergence is shown with: 0.0035 and 1.2 alike, never "0.00"


def fmt_nats(value: float) -> str:
    """A KL divergence (nats) with two significant digits and no exponent, for sentences and tables alike:
    0.0035 -> "0.0035", 0.12 -> "0.12", 2.345 -> "2.3", 0 -> "0"; "n/a" when it was not measured."""
    if not is_finite(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = max(0, KLD_SIGNIFICANT - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


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
    if metric_key == TASK_PASS_RATE.key:
        return TASK_PASS_RATE
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


# --- records of one machine ------------------------------------------------------------------------


def require_one_machine(records: Sequence[VariantRecord]) -> None:
    machines = sorted({r.hardware for r in records})
    if len(machines) > 1:
        raise ValueError(
            f"records come from {len(machines)} machines ({machines}); their speeds are not comparable, "
            "so plot one machine at a time"
        )


def kld_rule(record: VariantRecord) -> str:
    """Which positions produced the record's text-quality numbers; records from before the choice scored all."""
    return (record.settings or {}).get("kld_rule", "every-position")
