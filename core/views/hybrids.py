"""Decoding hybrids as deployable options: a variant run with a trick that keeps its answers and changes its speed.

Prompt lookup, a GGUF draft on llama.cpp and a draft model on transformers all verify drafted tokens with the model
itself, so under greedy decoding they give the model's own answers; what they change is how fast the answers come.
Where a measurement on this machine showed identical answers on every prompt and a speed-up whose whole interval is
above 1, the variant with that trick becomes one more option for Decide: the same quality numbers as the variant,
its decode speed (and so its cost per token) multiplied by the measured speed-up. The speed-up holds for prompts like
the ones it was measured on, which Decide asks about.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import plotly.graph_objects as go

from core.experiments import speculative
from core.hybrids import curve, gguf_draft, prompt_lookup
from core.measure import intervals
from core.measure.intervals import Estimate
from core.store.records import VariantRecord
from core.views import cascades
from core.words import plural

PromptKind = Literal["open", "grounded"]
PROMPT_KINDS: dict[str, str] = {
    "open": "open-ended (new text: answers, explanations, chat)",
    "grounded": "input-grounded (extract, quote or lightly rewrite a passage in the prompt)",
}
HYBRID_FAMILY = "hybrid"


@dataclass(frozen=True)
class SpeedHybrid:
    """One decoding trick measured on one variant, runtime and prompt set."""
    model: str  # the lab's model key
    trick: str  # in words: "prompt lookup", "GGUF draft model"
    key: str  # short id used in the option's technique key: "lookup", "gguf-draft"
    technique: str  # the variant it ran on (registry key)
    runtime: str  # "transformers" or "llama.cpp"
    prompt_set: str  # "grounded", "open" or another set's name
    speedup: Estimate  # decode tokens/s with the trick over without
    identical: int  # prompts whose answer was the same token for token
    prompts: int
    acceptance_rate: float  # accepted drafted tokens / drafted tokens
    hardware: str
    created_at: str
    settings: str  # the settings in words

    @property
    def keeps_answers(self) -> bool:
        return self.prompts > 0 and self.identical == self.prompts

    @property
    def clearly_faster(self) -> bool:
        return self.speedup.known and self.speedup.low > 1.0


def _speedup(row: dict, trick: str) -> Estimate:
    """Plain over with-trick decode seconds, summed over the prompts where both decoded the same number of tokens,
    with its bootstrap interval; the stored point value alone when no prompt allows that."""
    pairs = [(p.get("plain_decode_s", math.nan), p.get(f"{trick}_decode_s", math.nan)) for p in row.get("prompts", [])
             if p.get("plain_decode_tokens") == p.get(f"{trick}_decode_tokens")]
    estimate = intervals.ratio_of_sums(pairs)
    return estimate if estimate.known else Estimate(row["speedup"], math.nan, math.nan, estimate.how)


def from_prompt_lookup(row: dict) -> SpeedHybrid:
    return SpeedHybrid(
        row.get("model", ""), "prompt lookup", "lookup", row["technique"], row["runtime"], row["prompt_set"], _speedup(row, "lookup"),
        int(row["identical_outputs"]), int(row["prompts_total"]), float(row["acceptance_rate"]), row["hardware"],
        row["created_at"], f"up to {row['draft_tokens']} tokens copied from the prompt per pass, {row['new_tokens']} "
        f"new tokens, median of {plural(row['repeats'], 'run')} per prompt")


def from_speculative(row: dict) -> SpeedHybrid:
    """A draft model on transformers (core/experiments/speculative.py), timed over whole generations of the bundled
    open-ended prompts."""
    pairs = [(p["plain_s"], p["assisted_s"]) for p in row.get("prompts", []) if p.get("tokens")]
    draft = row.get("draft_facts", {}).get("run") or row.get("draft", "")
    return SpeedHybrid(
        row.get("model", ""), "a draft model", "draft", "fp32", "transformers", "open", intervals.ratio_of_sums(pairs),
        sum(bool(p.get("identical")) for p in row.get("prompts", [])), len(row.get("prompts", [])),
        float(row.get("acceptance_rate", math.nan)), row.get("hardware", ""), row.get("created_at", ""),
        f"draft {draft}, {row.get('draft_tokens')} tokens drafted per pass, {row.get('max_new_tokens')} new tokens, "
        "whole generations timed")


def from_gguf_draft(row: dict) -> SpeedHybrid:
    """A GGUF draft on llama-server (core/hybrids/gguf_draft.py): one result per draft length and prompt set."""
    n = row["draft_max_tokens"]
    draft = row.get("draft_technique") or Path(row.get("draft", "")).stem
    key = f"draft{n}-{draft.replace('+', '_')}"  # each (draft, length) its own option; no "+" inside an option's part
    return SpeedHybrid(
        row.get("model", ""), f"a GGUF draft ({draft}, up to {plural(n, 'token')})", key, row["technique"],
        row["runtime"], row["prompt_set"], _speedup(row, "drafted"), int(row["identical_outputs"]), int(row["prompts_total"]), float(row["acceptance_rate"]), row["hardware"],
        row["created_at"], f"llama-server, draft {draft}, up to {plural(n, 'token')} drafted per target pass (p-min "
        f"{row.get('draft_p_min', 0):g}), {row['new_tokens']} new tokens, median of {row['repeats']} runs per prompt")


def measured_hybrids(hardware: str, rows: Sequence[dict] | None = None) -> list[SpeedHybrid]:
    """This machine's decoding-hybrid measurements, the newest per (trick, variant, runtime, prompt set)."""
    found = ([from_prompt_lookup(r) for r in prompt_lookup.saved_results()]
             + [from_speculative(r) for r in speculative.saved_results()]
             + [from_gguf_draft(r) for r in gguf_draft.saved_results()]) if rows is None \
        else [from_prompt_lookup(r) for r in rows]
    found.sort(key=lambda h: h.created_at, reverse=True)
    newest: dict[tuple, SpeedHybrid] = {}
    for h in found:
        if h.hardware == hardware:
            newest.setdefault((h.key, h.technique, h.runtime, h.prompt_set), h)
    return list(newest.values())


def _runs_on(record: VariantRecord, h: SpeedHybrid) -> bool:
    runtime = "llama.cpp" if record.runtime == "llama.cpp" else "transformers"
    return record.technique == h.technique and runtime == h.runtime


def as_option(record: VariantRecord, h: SpeedHybrid) -> VariantRecord:
    """The variant with the trick: its quality as measured, its speeds and cost per token scaled by the speed-up."""
    s = h.speedup.value
    return replace(
        record, technique=f"{record.technique}+{h.key}", family=HYBRID_FAMILY, label=f"{record.label} + {h.trick}",
        decode_tokens_per_s_median=record.decode_tokens_per_s_median * s,
        decode_tokens_per_s_p10=record.decode_tokens_per_s_p10 * s,
        decode_tokens_per_s_p90=record.decode_tokens_per_s_p90 * s,
        decode_tokens_per_s_samples=[x * s for x in record.decode_tokens_per_s_samples],
        usd_per_1m_tokens=record.usd_per_1m_tokens / s,
        notes=f"{record.notes} Speed from its sweep times the {h.trick} speed-up measured on "
              f"{h.prompt_set} prompts ({h.created_at}).".strip())


def options(records: Sequence[VariantRecord], hybrids: Sequence[SpeedHybrid], prompt_kind: str
            ) -> list[tuple[VariantRecord, SpeedHybrid]]:
    """Each variant with each trick that kept every answer and was clearly faster on prompts of this kind."""
    out = []
    for h in hybrids:
        if h.prompt_set != prompt_kind or not (h.keeps_answers and h.clearly_faster):
            continue
        for r in records:
            if r.hardware == h.hardware and r.model == h.model and r.family != HYBRID_FAMILY and _runs_on(r, h):
                out.append((as_option(r, h), h))
    return out


def _times(x: float) -> str:
    return f"{x:.2f}x" if math.isfinite(x) else "n/a"


def _measured(h: SpeedHybrid, how: bool) -> tuple[str, str, str]:
    """(answers kept, speed with its interval, drafts kept and settings): the words every description shares."""
    s = h.speedup
    interval = f" (95%: {_times(s.low)} to {_times(s.high)}{f', {s.how}' if how else ''})" if s.known else ""
    kind = PROMPT_KINDS.get(h.prompt_set, h.prompt_set)
    kept = f"identical to plain greedy decoding on {h.identical} of {h.prompts} {kind} prompts"
    drafts = f"{h.acceptance_rate:.0%} of drafted tokens were kept ({h.settings}; measured {h.created_at})"
    return kept, f"{_times(s.value)} as fast{interval}", drafts


def reason(h: SpeedHybrid) -> str:
    """Why the hybrid may be deployed, and the condition it holds under."""
    kept, speed, drafts = _measured(h, how=True)
    return (f"With {h.trick} on {h.runtime}, its answers were {kept}, and it decoded {speed}; {drafts}. The gain "
            "holds only for prompts like these.")


def _not_offered(h: SpeedHybrid) -> str | None:
    """Why Decide does not offer this trick, or None when it does."""
    if not h.keeps_answers:
        return (f"answers differed from plain greedy on {h.prompts - h.identical} of {h.prompts} prompts, so it is not "
                "the same model's output.")
    if not h.clearly_faster:
        slower = " slower than plain decoding:" if h.speedup.known and h.speedup.high < 1.0 else ""
        return (f"{_times(h.speedup.value)} as fast (95% down to {_times(h.speedup.low)}):{slower} no clear gain on "
                "these prompts.")
    return None


def why_not(hybrids: Sequence[SpeedHybrid], prompt_kind: str) -> list[str]:
    """Measured tricks that Decide does not offer for this prompt kind, each with the reason."""
    return [f"{h.trick} on {h.technique} ({h.runtime}): {why}" for h in hybrids
            if h.prompt_set == prompt_kind and (why := _not_offered(h)) is not None]


def sentence(h: SpeedHybrid) -> str:
    """What was measured, in words: the reason to deploy it when Decide offers it, else what it did and why not."""
    if (why := _not_offered(h)) is None:
        return reason(h)
    kept, speed, drafts = _measured(h, how=False)
    return f"Answers {kept}; {speed}; {drafts}. Not offered by Decide: {why}"


def speed_rows(hybrids: Sequence[SpeedHybrid]) -> list[dict]:
    """One row per measured decoding trick, for a table."""
    return [{"trick": h.trick, "variant": h.technique, "runtime": h.runtime, "prompts": h.prompt_set,
             "speed-up": h.speedup.value,
             "95% interval": f"{_times(h.speedup.low)} to {_times(h.speedup.high)}" if h.speedup.known else "n/a",
             "identical answers": f"{h.identical}/{h.prompts}", "drafts kept": h.acceptance_rate,
             "measured": h.created_at[:16].replace("T", " ")} for h in hybrids]


@dataclass(frozen=True)
class TrickOptions:
    """What Decide adds for one prompt kind: the options, the trick behind each, and the tricks left out (why)."""
    records: tuple[VariantRecord, ...]
    by_key: dict[str, SpeedHybrid]
    left_out: tuple[str, ...]


def trick_options(records: Sequence[VariantRecord], measured: Sequence[SpeedHybrid], prompt_kind: str) -> TrickOptions:
    found = options(records, measured, prompt_kind)
    return TrickOptions(tuple(o for o, _ in found), {o.technique: h for o, h in found},
                        tuple(why_not(measured, prompt_kind)))


def with_tricks(records: Sequence[VariantRecord], hardware: str, prompt_kind: str,
                rows: Sequence[dict] | None = None) -> tuple[list[VariantRecord], TrickOptions]:
    """The measured variants plus each variant with a decoding trick measured on `hardware` that qualifies for
    prompts of this kind (Decide's options, the map's bubbles, the Report's answer); `rows`: saved trick results,
    read from the results folder when None."""
    found = trick_options(records, measured_hybrids(hardware, rows), prompt_kind)
    return [*records, *found.records], found


def _repriced(result: dict, usd_per_hour: float) -> dict:
    points = curve.repriced(result, usd_per_hour)
    return {**result, "usd_per_hour": usd_per_hour, "points": [vars(p) for p in points]}


def report_parts(hardware: str, model: str, usd_per_hour: float, cascade_rows: Sequence[dict] | None = None,
                 trick_rows: Sequence[dict] | None = None) -> tuple[list[str], list[tuple[str, go.Figure]]]:
    """The Report's hybrids: one sentence per measured cascade (newest per task and stages) and decoding trick of
    this model on this machine, and each cascade's curve at the report's price."""
    rows = curve.saved_results() if cascade_rows is None else cascade_rows
    newest: dict[tuple, dict] = {}
    for r in cascades.on_machine(rows, hardware):
        if r.get("model") in ("", None, model):  # a result that names no model is shown with every model
            newest.setdefault((r["task"], r["first"], r["second"]), _repriced(r, usd_per_hour))
    lines = [cascades.one_sentence(r) for r in newest.values()]
    figs = [(f"Cascade: {cascades.result_label(r)}", cascades.figure(r, curve.repriced(r, usd_per_hour)))
            for r in newest.values()]
    for h in measured_hybrids(hardware, trick_rows):
        if h.model == model:
            lines.append(f"{h.trick.capitalize()} on {h.technique}: {sentence(h)}")
    return lines, figs
