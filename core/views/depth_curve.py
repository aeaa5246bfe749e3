"""The Distill page's curves: what removing layers costs before any training (chosen by measured redundancy, and
evenly spread beside it), and what healing with the teacher's distributions wins back per minute of training.

Records in, figures, rows and sentences out; no streamlit. Pruned variants are the `depth pruning` family
(core/techniques/depth.py); healed students are distillation records whose facts carry the run's heal curve.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from core.store.records import VariantRecord
from core.techniques import REFERENCE
from core.views.axes import readable_axes, wrap_title
from core.views.chart_parts import empty_figure, error_bars
from core.views.chart_quantities import get_metric, quality_interval

PRUNED_FAMILY = "depth pruning"
CHOICE_NAMES = {"redundancy": "by measured redundancy", "spread": "evenly spread (the seed's recipe)"}
CHOICE_COLORS = {"redundancy": "#1f77b4", "spread": "#d62728"}
SWEEP_FRACTIONS = (0.93, 0.8, 0.67, 0.5, 0.33)  # shares of the teacher's layers a depth sweep keeps


def sweep_depths(teacher_layers: int) -> list[int]:
    """The depths a sweep measures for a teacher of `teacher_layers` layers: 28, 24, 20, 15, 10 of 30."""
    return sorted({min(teacher_layers - 1, max(1, round(f * teacher_layers))) for f in SWEEP_FRACTIONS}, reverse=True)


def _newest_per_key(records: Sequence[VariantRecord]) -> list[VariantRecord]:
    """One record per technique, the newest, from the machine of the newest record (speeds compare within one)."""
    if not records:
        return []
    ordered = sorted(records, key=lambda r: r.created_at, reverse=True)
    machine = ordered[0].hardware
    newest: dict[str, VariantRecord] = {}
    for r in ordered:
        if r.hardware == machine:
            newest.setdefault(r.technique, r)
    return list(newest.values())


def pruned_records(records: Sequence[VariantRecord]) -> tuple[list[VariantRecord], VariantRecord | None]:
    """(pruned variants, the reference they are compared with): newest per key, one machine."""
    chosen = _newest_per_key([r for r in records if r.family == PRUNED_FAMILY or r.technique == REFERENCE])
    pruned = [r for r in chosen if r.family == PRUNED_FAMILY and r.variant_facts.get("layer_choice")]
    reference = next((r for r in chosen if r.technique == REFERENCE), None)
    return sorted(pruned, key=lambda r: -len(r.variant_facts["kept_layers"])), reference


def _layers(record: VariantRecord) -> int:
    return len(record.variant_facts["kept_layers"])


def _speedup(record: VariantRecord, reference: VariantRecord | None) -> float | None:
    if reference is None or reference.hardware != record.hardware or not reference.decode_tokens_per_s_median:
        return None
    return record.decode_tokens_per_s_median / reference.decode_tokens_per_s_median


def depth_curve_figure(records: Sequence[VariantRecord], metric_key: str = "kld_mean",
                       healed: Sequence[VariantRecord] = ()) -> go.Figure:
    """Quality against layers kept: one line per layer choice, the full model as a star, healed students as
    diamonds. Hover says each point's measured decode speed-up."""
    metric = get_metric(metric_key)
    pruned, reference = pruned_records(records)
    if not pruned:
        return empty_figure("No pruned variants measured yet: press Measure the depth sweep.")
    fig = go.Figure()
    for choice, name in CHOICE_NAMES.items():
        line = [r for r in pruned if r.variant_facts["layer_choice"] == choice]
        if not line:
            continue
        ys = [quality_interval(r, metric) for r in line]
        fig.add_trace(go.Scatter(
            x=[_layers(r) for r in line], y=[iv.value for iv in ys], error_y=error_bars(ys), mode="lines+markers",
            name=name, line=dict(color=CHOICE_COLORS[choice]), hovertemplate="%{customdata}<extra></extra>",
            customdata=[_hover(r, reference, metric) for r in line]))
    if reference is not None and pruned:
        teacher_layers = pruned[0].variant_facts["teacher_layers"]
        fig.add_trace(go.Scatter(x=[teacher_layers], y=[getattr(reference, metric.key)], mode="markers",
                                 name="full model", marker=dict(symbol="star", size=15, color="black")))
    for r in healed:
        fig.add_trace(go.Scatter(
            x=[r.variant_facts["distillation"]["student_layers"]], y=[getattr(r, metric.key)], mode="markers",
            name=f"healed: {r.label}", marker=dict(symbol="diamond", size=12),
            hovertemplate="%{customdata}<extra></extra>", customdata=[_hover(r, reference, metric)]))
    fig.update_layout(title=dict(text=f"{metric.label} as layers are removed, before any training"), height=440,
                      legend=dict(orientation="h", yanchor="top", y=-0.2, x=0), margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title_text="Decoder layers kept", autorange="reversed")
    fig.update_yaxes(title_text=wrap_title(metric.axis_title), autorange=True if metric.higher_is_better else "reversed")
    if metric.value_format.endswith("%"):
        fig.update_yaxes(tickformat=".0%")
    return readable_axes(fig)


def _hover(record: VariantRecord, reference: VariantRecord | None, metric) -> str:
    speed = _speedup(record, reference)
    faster = f"{speed:.2f}x the full model's decode speed" if speed else "no full-model speed from this machine"
    return (f"<b>{record.label}</b><br>{metric.label}: {format(getattr(record, metric.key), metric.value_format)}"
            f"<br>{record.decode_tokens_per_s_median:.1f} tokens/s ({faster})<br>{record.hardware}")


def depth_rows(records: Sequence[VariantRecord]) -> list[dict]:
    """The sweep as a table: per depth, each choice's KL divergence, MC accuracy and measured speed-up."""
    pruned, reference = pruned_records(records)
    rows = []
    for r in pruned:
        speed = _speedup(r, reference)
        low, high = r.mc_accuracy_ci95 or [float("nan")] * 2
        rows.append({"layers kept": _layers(r), "chosen": CHOICE_NAMES[r.variant_facts["layer_choice"]],
                     "KLD nats": r.kld_mean, "top-1 agreement": r.top1_agreement, "MC accuracy": r.mc_accuracy,
                     "MC 95% interval": f"{low:.0%}–{high:.0%}", "decode tok/s": r.decode_tokens_per_s_median,
                     "speed-up": speed if speed is not None else float("nan")})
    return rows


DEPTH_FORMATS = {"KLD nats": "%.3f", "top-1 agreement": "%.1%", "MC accuracy": "%.1%", "decode tok/s": "%.1f",
                 "speed-up": "%.2fx"}


def redundancy_wins(records: Sequence[VariantRecord]) -> str | None:
    """One sentence: at how many measured depths the redundancy choice had the lower KL divergence."""
    pruned, _ = pruned_records(records)
    by = {(_layers(r), r.variant_facts["layer_choice"]): r.kld_mean for r in pruned}
    depths = sorted({n for n, c in by if (n, "redundancy") in by and (n, "spread") in by}, reverse=True)
    if not depths:
        return None
    wins = [n for n in depths if by[(n, "redundancy")] < by[(n, "spread")]]
    pairs = ", ".join(f"{n}: {by[(n, 'redundancy')]:.2f} vs {by[(n, 'spread')]:.2f}" for n in depths)
    return (f"Layers chosen by measured redundancy gave the lower KL divergence at {len(wins)} of {len(depths)} "
            f"depths (layers kept: redundancy vs spread, nats) — {pairs}.")


# --- healing: held-out quality against minutes of training ---------------------------------------------------------


def healed_records(records: Sequence[VariantRecord]) -> list[VariantRecord]:
    """Distilled students whose run kept a heal curve, newest first."""
    return [r for r in sorted(records, key=lambda r: r.created_at, reverse=True)
            if r.family == "distillation" and r.variant_facts.get("distillation", {}).get("heal_curve")]


def heal_curve_figure(records: Sequence[VariantRecord], limit: int = 4) -> go.Figure:
    """Held-out KL divergence against minutes of training, one line per healed student (the newest `limit`)."""
    healed = healed_records(records)[:limit]
    if not healed:
        return empty_figure("No healed student yet: distill one with a budget in minutes.")
    fig = go.Figure()
    for r in healed:
        points = r.variant_facts["distillation"]["heal_curve"]
        fig.add_trace(go.Scatter(x=[p["train_minutes"] for p in points], y=[p["heldout_kld_nats"] for p in points],
                                 mode="lines+markers", name=r.label,
                                 text=[f"step {p['step']}, top-1 {p['heldout_top1']:.0%}" for p in points],
                                 hovertemplate="%{x:.1f} min: %{y:.3f} nats (%{text})<extra></extra>"))
    fig.update_layout(title=dict(text="Healing: held-out KL divergence from the teacher per minute of training"),
                      height=380, legend=dict(orientation="h", yanchor="top", y=-0.25, x=0),
                      margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title_text="Minutes of training on this machine (0 = pruned, untrained)")
    fig.update_yaxes(title_text="Held-out KL divergence, nats/token (↓ better)", rangemode="tozero")
    return readable_axes(fig)


SEED_CLAIM = (
    "The seed's figure, \"DistilBERT is 60% faster and keeps 97% of BERT's performance\", is real but was bought with "
    "about 90 hours on 8 V100 GPUs of training on a large corpus, and the 97% is measured after fine-tuning on each "
    "task. Here the budget is minutes on a laptop CPU. What decides the outcome at that budget is which layers go "
    "(measured redundancy loses far less than an even spread, at every depth above) and how much text the healing "
    "sees: the heal curve shows what each minute bought here, and where it flattens.")
