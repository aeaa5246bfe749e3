"""The numbers a decision sentence rests on, each with its interval, and where and when they were measured.

A `Headline` compares one variant with the reference: speed-up, memory share, cost per token, top-1 agreement and
multiple-choice accuracy, every one an `Estimate` with its interval. It names the records it used (when, from the CLI
or the dashboard, which run) and, when an older measurement of the same variant gave a speed-up outside the new one's
interval, says so: this machine's speed drifts, and a silent change of a headline misleads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from core.measure import cost, intervals
from core.measure.intervals import Estimate
from core.store.records import VariantRecord
from core.views import quality
from core.views.chart_quantities import fmt_nats


@dataclass(frozen=True)
class Headline:
    variant: VariantRecord
    reference: VariantRecord | None  # the reference the speed-up is against (same run as the variant where possible)
    speedup: Estimate  # decode tok/s of the variant / of the reference
    memory_share: float  # bytes held / the reference's
    usd_per_1m_tokens: Estimate
    top1_agreement: Estimate
    mc_accuracy: Estimate
    reference_mc_accuracy: Estimate
    sources: tuple[str, ...]  # one line per record used
    moved: str | None  # words when an older measurement disagrees beyond the interval


def fmt(est: Estimate, spec: str, unit: str = "", prefix: str = "") -> str:
    """'7.60x (6.91–8.12x)', '95.7% (95.0–96.4%)', '$0.41 ($0.38–$0.45)'; the value alone where no interval is known."""
    if not math.isfinite(est.value):
        return "n/a"
    text = f"{prefix}{format(est.value, spec)}{unit}"
    if math.isfinite(est.low) and math.isfinite(est.high):
        text += f" ({prefix}{format(est.low, spec)}–{prefix}{format(est.high, spec)}{unit})"
    return text


def where_measured(record: VariantRecord) -> str:
    """'GGUF Q8_0: 2026-12-05 01:49 UTC from the CLI, run 3f2a9c1e, 5 timed runs'."""
    launched = record.settings.get("launched_from", "cli")
    origin = "the CLI" if launched == "cli" else f"the {launched}"
    runs = len(record.decode_tokens_per_s_samples) or record.settings.get("repeats", "?")
    return (f"{record.label}: {record.created_at[:16].replace('T', ' ')} UTC from {origin}, "
            f"run {record.run_id[:8]}, {runs} timed runs")


def speed_estimate(record: VariantRecord) -> Estimate:
    samples = record.decode_tokens_per_s_samples or [record.decode_tokens_per_s_median]
    return intervals.median_of(samples)


def cost_estimate(record: VariantRecord) -> Estimate:
    """$ per 1M tokens at the record's price: price / speed, so its interval is the speed's, inverted."""
    if not record.usd_per_hour > 0:
        return Estimate(0.0, 0.0, 0.0, "free hardware")
    per_million = record.usd_per_hour / cost.SECONDS_PER_HOUR * cost.TOKENS_PER_MILLION
    return speed_estimate(record).inverted(per_million)


def speedup(variant: VariantRecord, reference: VariantRecord) -> Estimate:
    return intervals.ratio_of_medians(variant.decode_tokens_per_s_samples or [variant.decode_tokens_per_s_median],
                                      reference.decode_tokens_per_s_samples or [reference.decode_tokens_per_s_median])


def mc_estimate(record: VariantRecord) -> Estimate:
    ci = record.mc_accuracy_ci95 or [math.nan, math.nan]
    return Estimate(record.mc_accuracy, ci[0], ci[1], f"95% bootstrap over {record.mc_items} questions")


def top1_estimate(record: VariantRecord) -> Estimate:
    return intervals.share(record.top1_agreement, int(record.settings.get("ppl_tokens") or 0))


def same_run_reference(variant: VariantRecord, reference: VariantRecord | None,
                       history: Sequence[VariantRecord]) -> VariantRecord | None:
    """The reference measured in the variant's own run if there is one (same process, same minutes), else the
    newest one given."""
    if reference is None:
        return None
    same = [r for r in history if r.technique == reference.technique and r.run_id == variant.run_id
            and r.hardware == variant.hardware]
    return same[0] if same else reference


def _previous(variant: VariantRecord, history: Sequence[VariantRecord]) -> VariantRecord | None:
    older = [r for r in history if r.technique == variant.technique and r.hardware == variant.hardware
             and r.model == variant.model and r.created_at < variant.created_at]
    return max(older, key=lambda r: r.created_at, default=None)


def moved_note(variant: VariantRecord, now: Estimate, reference: VariantRecord,
               history: Sequence[VariantRecord]) -> str | None:
    """Words when the newest speed-up lies outside the interval of the one measured before it."""
    previous = _previous(variant, history)
    if previous is None or not now.known:
        return None
    before = speedup(previous, same_run_reference(previous, reference, history))
    if not before.known or before.contains(now.value):
        return None
    return (f"This speed-up moved: the measurement before it ({previous.created_at[:16].replace('T', ' ')} UTC) gave "
            f"{fmt(before, '.2f', 'x')}, and the newest, {now.value:.2f}x, lies outside that range. This machine's "
            "speed drifts; the Trade-off Map shows both runs.")


def headline(variant: VariantRecord, reference: VariantRecord | None,
             history: Sequence[VariantRecord] = ()) -> Headline:
    """`history`: every record of this model on this machine (newest first), for the same-run reference and
    the moved note; empty is fine."""
    ref = same_run_reference(variant, reference, history)
    nan = Estimate(math.nan, math.nan, math.nan, "no reference")
    up = speedup(variant, ref) if ref is not None else nan
    sources = tuple(where_measured(r) for r in ([variant] + ([ref] if ref is not None and ref is not variant else [])))
    return Headline(
        variant=variant, reference=ref, speedup=up,
        memory_share=variant.size_mb / ref.size_mb if ref is not None and ref.size_mb > 0 else math.nan,
        usd_per_1m_tokens=cost_estimate(variant), top1_agreement=top1_estimate(variant),
        mc_accuracy=mc_estimate(variant), reference_mc_accuracy=mc_estimate(ref) if ref is not None else nan,
        sources=sources,
        moved=moved_note(variant, up, ref, history) if ref is not None and ref is not variant else None)


def trade_sentence(h: Headline) -> str:
    """What the variant trades against the reference, every number with its interval and its scale in words."""
    v, ref = h.variant, h.reference
    if ref is None:
        return "There is no reference measurement on this machine to compare with."
    if v.technique == ref.technique:
        return (f"It is the reference itself, so nothing is given up in quality; it decodes at "
                f"{fmt(speed_estimate(v), '.1f', ' tok/s')} and costs "
                f"{fmt(h.usd_per_1m_tokens, '.4f', prefix='$')} per 1M tokens.")
    return (f"Against {ref.label} it decodes at {fmt(h.speedup, '.2f', 'x')} the speed and holds "
            f"{h.memory_share:.0%} of the memory; it costs {fmt(h.usd_per_1m_tokens, '.4f', prefix='$')} "
            "per 1M tokens. "
            f"Quality: top-1 agreement {fmt(h.top1_agreement, '.1%')}, {quality.scale_words(v.top1_agreement)}; "
            f"KL divergence {fmt_nats(v.kld_mean)} nats; perplexity {v.perplexity:.1f} against {ref.perplexity:.1f}; "
            f"multiple-choice accuracy {fmt(h.mc_accuracy, '.0%')} against {fmt(h.reference_mc_accuracy, '.0%')}.")
