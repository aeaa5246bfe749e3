"""Budget recommender: constraints in, the best variant that meets them out, with the reason in plain words.

Pure: records (one model, one machine, priced at the page's hardware price) and a `Constraints` go in; a
`Recommendation` comes out. When nothing meets every constraint it says which one to relax and by how much:
the smallest relaxation of a single constraint that admits a variant, or, when no single one does, every
change the closest variant needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from core.measure import fit, intervals, memory
from core.measure.intervals import Estimate
from core.store.records import VariantRecord
from core.techniques import REFERENCE
from core.views import busy, quality
from core.views.chart_quantities import decode_ms_per_token
from core.views.headline import (
    Headline,
    cost_estimate,
    fmt as fmt_estimate,
    headline as make_headline,
    mc_estimate,
    speed_estimate,
    top1_estimate,
    trade_sentence,
)

Objective = Literal["cheapest", "fastest", "best_quality"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)


@dataclass(frozen=True)
class Constraints:
    max_ms_per_token: float | None = None  # decode latency per token
    max_ttft_ms: float | None = None  # time to first token
    max_usd_per_1m_tokens: float | None = None
    min_top1_agreement: float | None = None  # share of next tokens equal to the reference's, 0..1
    min_mc_share: float | None = None  # multiple-choice accuracy as a share of the reference's, e.g. 0.95
    min_task_pass_rate: float | None = None  # share of the user's own task prompts passed, 0..1 (core/views/task.py)
    device: str | None = None  # a fit.DEVICE_PRESETS key the variant must fit in
    context_tokens: int = fit.DEFAULT_CONTEXT_TOKENS  # KV cache sized for this context when checking the device
    overhead_mb: float = fit.RUNTIME_OVERHEAD_MB
    users: int = 1  # served at once, each with context_tokens of its own cache (one llama-server slot each)
    cache_type: str = "f16"  # llama.cpp's KV cache type for a GGUF variant (a torch variant keeps its dtype)
    calibration: memory.Calibration | None = None  # the memory model's constants measured here (Serve > Memory)
    objective: Objective = "cheapest"
    floor_top1: float = quality.DEFAULT_FLOOR_TOP1  # under it, a verdict carries a warning (it is not a filter)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        for name in ("max_ms_per_token", "max_ttft_ms", "max_usd_per_1m_tokens", "min_top1_agreement", "min_mc_share",
                     "min_task_pass_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")
        if self.device is not None:
            fit.get_device(self.device)
        if self.context_tokens < 0:
            raise ValueError(f"context_tokens must be >= 0, got {self.context_tokens}")
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        memory.check_cache_type(self.cache_type)
        if not (math.isfinite(self.floor_top1) and 0 <= self.floor_top1 <= 1):
            raise ValueError(f"the quality floor must be a share between 0 and 1, got {self.floor_top1!r}")


@dataclass(frozen=True)
class Check:
    """One constraint on one variant. `relax_to` is the limit that would let this variant pass it."""
    name: str  # a Constraints field name
    value: float  # the variant's own number, in the constraint's unit
    limit: float
    ok: bool
    relax_to: float  # == limit when ok
    relative_change: float  # how far the limit must move: see `_effort` (0 when ok)


@dataclass(frozen=True)
class Relaxation:
    changes: tuple[Check, ...]  # the failing checks of the variant they would admit
    admits: str  # technique key of that variant
    admits_label: str


@dataclass(frozen=True)
class Recommendation:
    constraints: Constraints
    chosen: VariantRecord | None
    reference: VariantRecord | None
    checks: tuple[Check, ...]  # the chosen variant's checks (every one ok), or empty
    candidates: tuple[str, ...]  # technique keys that meet every constraint, best first
    relaxations: tuple[Relaxation, ...] = field(default_factory=tuple)  # smallest first; only when nothing fits
    headline: Headline | None = None  # the chosen variant's numbers with intervals and sources
    warning: str | None = None  # amber words when the chosen variant is under the quality floor
    max_context_tokens: dict[str, int] = field(default_factory=dict)  # per technique: the longest context that fits
    busy: str | None = None  # words when any variant chosen from was timed on a busy machine (measure it again)

    def summary(self) -> str:
        return explain(self)


# --- checks ----------------------------------------------------------------------------------------


# How far a limit must move, on one scale for every constraint so that changes can be added and ranked: the log of
# the ratio. A maximum (ms, $, MB) moves by value / limit: 5 -> 58 ms is ln 11.6 = 2.45, while +17% and +36% on two
# constraints add to 0.46. A minimum share (top-1, MC share) moves by the share of misses it lets in: 95% -> 93%
# is 5% -> 7% misses, ln 1.4 = 0.34; a limit of 100% is taken as 99.9% (ln of 0 misses has no meaning).
MIN_MISS_SHARE = 0.001


def _effort_max(value: float, limit: float) -> float:
    return math.log(value / limit) if limit > 0 and value > 0 else math.inf


def _effort_min(value: float, limit: float) -> float:
    return math.log(max(1 - value, MIN_MISS_SHARE) / max(1 - limit, MIN_MISS_SHARE))


def _max_check(name: str, value: float, limit: float) -> Check:
    ok = math.isfinite(value) and value <= limit
    return Check(name, value, limit, ok, limit if ok else value, 0.0 if ok else _effort_max(value, limit))


def _min_check(name: str, value: float, limit: float) -> Check:
    ok = math.isfinite(value) and value >= limit
    return Check(name, value, limit, ok, limit if ok else value, 0.0 if ok else _effort_min(value, limit))


def mc_share(record: VariantRecord, reference: VariantRecord | None) -> float:
    if reference is None or not reference.mc_accuracy > 0:
        return math.nan
    return record.mc_accuracy / reference.mc_accuracy


def check_variant(record: VariantRecord, c: Constraints, reference: VariantRecord | None,
                  shape: fit.KVShape | None) -> tuple[Check, ...]:
    checks = []
    if c.max_ms_per_token is not None:
        checks.append(_max_check("max_ms_per_token", decode_ms_per_token(record.decode_tokens_per_s_median),
                                 c.max_ms_per_token))
    if c.max_ttft_ms is not None:
        checks.append(_max_check("max_ttft_ms", record.ttft_ms_median, c.max_ttft_ms))
    if c.max_usd_per_1m_tokens is not None:
        checks.append(_max_check("max_usd_per_1m_tokens", record.usd_per_1m_tokens, c.max_usd_per_1m_tokens))
    if c.min_top1_agreement is not None:
        checks.append(_min_check("min_top1_agreement", record.top1_agreement, c.min_top1_agreement))
    if c.min_mc_share is not None:
        checks.append(_min_check("min_mc_share", mc_share(record, reference), c.min_mc_share))
    if c.min_task_pass_rate is not None:  # a variant the task did not run has no pass rate: it cannot pass
        rate = getattr(record, "task_pass_rate", None)
        checks.append(_min_check("min_task_pass_rate", math.nan if rate is None else rate, c.min_task_pass_rate))
    if c.device is not None:
        if shape is None:
            raise ValueError("a device constraint needs the model's KV-cache shape (layers, kv heads, head width)")
        f = fit.device_fit(record, fit.get_device(c.device), shape, c.context_tokens, c.overhead_mb, c.users,
                           c.cache_type, c.calibration)
        # value and limit in MB of memory; relaxing means a device with more usable memory
        checks.append(_max_check("device", f.need_mb, f.usable_mb))
    return tuple(checks)


# --- choosing --------------------------------------------------------------------------------------


def _num(x: float, worst: float = math.inf) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else worst


def objective_key(record: VariantRecord, objective: Objective):
    """Sort key, smaller is better; ties go to better quality, then to the smaller variant."""
    quality = -_num(record.top1_agreement, -math.inf), _num(record.kld_mean)
    if objective == "cheapest":
        return (_num(record.usd_per_1m_tokens), *quality, _num(record.size_mb))
    if objective == "fastest":
        return (_num(decode_ms_per_token(record.decode_tokens_per_s_median)), *quality, _num(record.size_mb))
    return (*quality, _num(record.usd_per_1m_tokens), _num(record.size_mb))


def find_reference(records: Sequence[VariantRecord], reference_technique: str = REFERENCE) -> VariantRecord | None:
    return next((r for r in records if r.technique == reference_technique), None)


def relaxations(records: Sequence[VariantRecord], checks: Sequence[tuple[Check, ...]]) -> tuple[Relaxation, ...]:
    """Per variant, the changes that would admit it; single-constraint changes first, then smallest change."""
    options = []
    for record, variant_checks in zip(records, checks):
        failing = tuple(ch for ch in variant_checks if not ch.ok)
        if failing and all(math.isfinite(ch.value) for ch in failing):
            options.append(Relaxation(failing, record.technique, record.label))
    # the smallest total change first, however many constraints it touches: +17% and +36% beat x11.6
    options.sort(key=lambda o: (sum(ch.relative_change for ch in o.changes), len(o.changes), o.admits))
    # keep the smallest change per constraint set: "relax X by 3%" beats "relax X by 40%"
    seen, best = set(), []
    for o in options:
        names = tuple(sorted(ch.name for ch in o.changes))
        if names not in seen:
            seen.add(names)
            best.append(o)
    return tuple(best)


LONGEST_ASKED_TOKENS = 1 << 20  # the search's ceiling: past any context a small model is trained for


def longest_context(record: VariantRecord, c: Constraints, shape: fit.KVShape) -> int:
    """The longest context per user (in whole 256-token blocks) that still fits `c.users` on `c.device` by the one
    memory model (0 when none does)."""
    usable = fit.get_device(c.device).usable_mb
    return memory.longest_context(usable, lambda n: fit.need(record, shape, n, c.overhead_mb, c.users, c.cache_type,
                                                             c.calibration), LONGEST_ASKED_TOKENS)


def recommend(records: Sequence[VariantRecord], constraints: Constraints, shape: fit.KVShape | None = None,
              reference_technique: str = REFERENCE, history: Sequence[VariantRecord] = ()) -> Recommendation:
    """The best variant meeting every constraint, or, if none does, the smallest relaxations that admit one.

    `history`: every record of this model on this machine, for the headline's same-run reference and its note when a
    newer measurement moved it; the choice itself uses `records` only."""
    if not records:
        raise ValueError("no measured variants to choose from: measure some first")
    machines = sorted({r.hardware for r in (*records, *history)})  # the headline's history too: same machine only
    if len(machines) > 1:
        raise ValueError(f"records come from {len(machines)} machines ({machines}); recommend on one machine at a time")
    reference = find_reference(records, reference_technique)
    if constraints.min_mc_share is not None and reference is None:
        raise ValueError(f"a quality share of the reference needs the {reference_technique} reference measured")
    all_checks = [check_variant(r, constraints, reference, shape) for r in records]
    passing = [(r, ch) for r, ch in zip(records, all_checks) if all(c.ok for c in ch)]
    passing.sort(key=lambda pair: objective_key(pair[0], constraints.objective))
    if passing:
        chosen, checks = passing[0]
        return Recommendation(constraints, chosen, reference, checks, tuple(r.technique for r, _ in passing),
                              headline=make_headline(chosen, reference, history or records),
                              warning=quality.floor_warning(chosen, reference, constraints.floor_top1),
                              busy=busy.decision_note(records, chosen, reference))
    contexts = {r.technique: longest_context(r, constraints, shape) for r in records} if constraints.device is not None and shape is not None else {}
    return Recommendation(constraints, None, reference, (), (), relaxations(records, all_checks),
                          max_context_tokens=contexts, busy=busy.decision_note(records, None, reference))


# --- plain words -----------------------------------------------------------------------------------

_NAMES = {
    "max_ms_per_token": ("latency per token", "ms/token", ".1f"),
    "max_ttft_ms": ("time to first token", "ms", ".0f"),
    "max_usd_per_1m_tokens": ("cost", "$ per 1M tokens", ".4f"),
    "min_top1_agreement": ("top-1 agreement with the reference", "", ".1%"),
    "min_mc_share": ("multiple-choice accuracy as a share of the reference's", "", ".1%"),
    "min_task_pass_rate": ("share of my task's prompts passed", "", ".1%"),
    "device": ("memory needed on the device", "MB", ",.0f"),
}


def _fmt(value: float, spec: str, unit: str = "") -> str:
    text = format(value, spec) if math.isfinite(value) else "n/a"
    return f"{text} {unit}".strip()


def check_estimate(ch: Check, record: VariantRecord, reference: VariantRecord | None) -> Estimate | None:
    """The checked number with its interval, from the same runs the headline uses; None for exact ones (bytes)."""
    if ch.name == "max_ms_per_token":
        return speed_estimate(record).inverted(1000.0)
    if ch.name == "max_ttft_ms":
        return intervals.median_of(record.ttft_ms_samples or [record.ttft_ms_median])
    if ch.name == "max_usd_per_1m_tokens":
        return cost_estimate(record)
    if ch.name == "min_top1_agreement":
        return top1_estimate(record)
    if ch.name == "min_mc_share" and reference is not None and reference.mc_accuracy > 0:
        return mc_estimate(record).scaled(1 / reference.mc_accuracy)
    if ch.name == "min_task_pass_rate" and (ci := getattr(record, "task_pass_rate_ci95", None)):
        return Estimate(ch.value, ci[0], ci[1], "95% Wilson interval over the task's prompts")
    return None


def describe_check(ch: Check, estimate: Estimate | None = None) -> str:
    name, unit, spec = _NAMES[ch.name]
    bound = "at least" if ch.name.startswith("min_") else "at most"
    if ch.name == "device":
        return f"needs {_fmt(ch.value, spec, unit)} of the {_fmt(ch.limit, spec, unit)} usable"
    value = fmt_estimate(estimate, spec, f" {unit}" if unit else "") if estimate else _fmt(ch.value, spec, unit)
    return f"{name} {value} ({bound} {_fmt(ch.limit, spec, unit)} asked)"


def _how_far(ch: Check) -> str:
    """The size of a change in the unit that reads naturally: points for a share; a percent or a factor for a
    maximum."""
    if ch.name.startswith("min_"):
        return f"{(ch.limit - ch.relax_to) * 100:.1f} points lower"
    ratio = ch.relax_to / ch.limit
    if ratio >= 2:
        return f"{ratio:.1f} times as much"
    percent = (ratio - 1) * 100
    return f"{percent:.0f}% higher" if round(percent, 1) == round(percent) else f"{percent:.1f}% higher"


def describe_relaxation(r: Relaxation, rec: Recommendation) -> str:
    parts = []
    for ch in r.changes:
        name, unit, spec = _NAMES[ch.name]
        if ch.name == "device":
            roomy = [d.label for d in fit.DEVICE_PRESETS.values() if d.usable_mb >= ch.value]
            context = rec.max_context_tokens.get(r.admits, 0)
            shorter = (f" or a context of at most {context:,} tokens instead of {rec.constraints.context_tokens:,}"
                       if context > 0 else " (its weights alone do not fit, so a shorter context cannot help)")
            parts.append(f"a device with at least {_fmt(ch.value, spec, unit)} of usable memory"
                         + (f" (such as {roomy[0]})" if roomy else "") + shorter)
        else:
            verb, bound = ("lower", "minimum") if ch.name.startswith("min_") else ("raise", "maximum")
            parts.append(f"{verb} the {bound} {name} from {_fmt(ch.limit, spec, unit)} to "
                         f"{_fmt(ch.relax_to, spec, unit)} ({_how_far(ch)})")
    return f"{' and '.join(parts)}, which admits {r.admits_label}"


def describe_constraints(c: Constraints) -> str:
    """The question in words: 'at least 95% top-1 agreement, fits a Phone, 4 GB, cheapest'."""
    parts = []
    if c.min_top1_agreement is not None:
        parts.append(f"at least {c.min_top1_agreement:.0%} top-1 agreement")
    if c.min_mc_share is not None:
        parts.append(f"at least {c.min_mc_share:.0%} of the reference's multiple-choice accuracy")
    if c.min_task_pass_rate is not None:
        parts.append(f"at least {c.min_task_pass_rate:.0%} of my task passes")
    if c.device is not None:
        users = f"{c.users} users" if c.users != 1 else "one user"
        parts.append(f"fits a {fit.get_device(c.device).label} at {c.context_tokens:,} tokens of context for {users} "
                     f"({c.cache_type.upper()} KV cache on llama.cpp)")
    if c.max_ms_per_token is not None:
        parts.append(f"under {c.max_ms_per_token:g} ms per token")
    if c.max_ttft_ms is not None:
        parts.append(f"first token within {c.max_ttft_ms:g} ms")
    if c.max_usd_per_1m_tokens is not None:
        parts.append(f"at most ${c.max_usd_per_1m_tokens:g} per 1M tokens")
    return ", ".join(parts + [{"cheapest": "cheapest", "fastest": "fastest", "best_quality": "best quality"}[c.objective]])


def verdict(rec: Recommendation) -> str:
    """The answer in one line: a plain 'Deploy X.' only for a variant at or above the quality floor."""
    if rec.chosen is None:
        return "Nothing meets every constraint."
    if busy.is_busy(rec.chosen):  # not a plain "Deploy": its speed and cost may be far off
        return f"{rec.chosen.label} meets your constraints, but it was timed on a busy machine: {busy.AGAIN}."
    if rec.warning:
        return f"{rec.chosen.label} meets your constraints but is below the quality floor."
    band = quality.band_of(rec.chosen.top1_agreement)
    return f"Deploy {rec.chosen.label}." + (f" Quality: {band.name}." if band else "")


def decision_lines(rec: Recommendation, asked_where: str) -> list[str]:
    """The decision as a report opens with it: the verdict, the question, the reason, the records, any move."""
    lines = [verdict(rec), f"Question ({asked_where}): {describe_constraints(rec.constraints)}; quality floor "
             f"{rec.constraints.floor_top1:.0%} top-1 agreement.", explain(rec)]
    if rec.busy:
        lines.append(rec.busy)
    if rec.headline is not None:
        lines.append("Measured: " + "; ".join(rec.headline.sources) + ".")
        if rec.headline.moved:
            lines.append(rec.headline.moved)
    return lines


_OBJECTIVE_WORDS = {"cheapest": "the cheapest per token", "fastest": "the fastest to decode",
                    "best_quality": "the closest to the reference"}


def explain(rec: Recommendation) -> str:
    if rec.chosen is not None:
        others = len(rec.candidates) - 1
        met = "; ".join(describe_check(ch, check_estimate(ch, rec.chosen, rec.reference))
                        for ch in rec.checks) or "no constraints were set"
        trade = trade_sentence(rec.headline) if rec.headline else "There is no reference to compare with."
        return (f"{rec.chosen.label} is {_OBJECTIVE_WORDS[rec.constraints.objective]} of the "
                f"{len(rec.candidates)} variant{'s' if len(rec.candidates) != 1 else ''} that meet every constraint "
                f"({others} other{'s' if others != 1 else ''} also qualif{'y' if others != 1 else 'ies'}). "
                f"It meets them with: {met}. {trade}")
    if not rec.relaxations:
        return ("No variant meets the constraints, and none can be admitted by relaxing them "
                "(their numbers are missing).")
    first = rec.relaxations[0]
    text = f"No variant meets every constraint. Smallest change: {describe_relaxation(first, rec)}."
    alternatives = [describe_relaxation(r, rec) for r in rec.relaxations[1:3]]
    if alternatives:
        text += " Or: " + "; or ".join(alternatives) + "."
    return text
