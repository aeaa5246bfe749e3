"""How long a sweep will take on this machine, per variant, before it starts, and which variants run far slower here.

Estimates come from earlier records of the same model, technique and machine (hardware fingerprint):
a record holds its decode tokens/s, time to first token, the settings it ran with and, since
`measure_s` is stored, the wall seconds its whole measurement took. A variant never measured here
has no estimate unless the user asks for a probe: load the real variant and time a 3-token
generation with the one timing primitive (benchmark.bench_generation).

A variant is flagged slow when it decodes at under SLOW_VS_REFERENCE of the fp32 reference's speed
on this machine (or, with no reference here, under SLOW_ROOFLINE_PCT of its own bandwidth limit).
A kernel that falls back to slow code shows up exactly like that: bitsandbytes int8 ran at 0.6
tokens/s against 8-10 for fp32 on an AVX2-only AMD EPYC, but at 16 against 22-33 on an AVX-512 Xeon.

The estimate learns: the records leave out what a sweep does besides its variants (starting a process, the
reference pass, the bandwidth measurement), and a machine's speed drifts. So each new estimate is multiplied by
the median of actual / estimated over the last LEARN_FROM_LAST sweeps that ended here (`learned_correction`), kept
within CORRECTION_MIN..CORRECTION_MAX so that one odd run (a sweep slowed by a busy machine) cannot make the next
estimate absurd. A dashboard estimate of 61 s for a sweep that took 95 s is what this corrects.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core import runtimes, techniques
from core.measure import benchmark
from core.store.records import VariantRecord
from core.techniques.quantization import uses_bitsandbytes

SLOW_VS_REFERENCE = 0.25  # nf4 at 0.56-0.65x of fp32 is its normal speed; int8 at 0.06x is not
SLOW_ROOFLINE_PCT = 2.0  # without a reference here: under 2% of what the memory bandwidth allows
MC_TOKENS_PER_ITEM = 80  # question + choices read when scoring one multiple-choice item (no wall time known)
PROBE_TOKENS = 4  # 1 prefill + 3 decode steps
LEARN_FROM_LAST = 5  # sweeps that ended here, newest first: enough for a median, recent enough to follow drift
CORRECTION_MIN, CORRECTION_MAX = 0.5, 3.0  # a sane range: beyond it the records, not the correction, are wrong
ABOUT_RIGHT = 0.10  # a median within 10% of the estimate is left alone: that is run-to-run noise here


@dataclass(frozen=True)
class SweepPlan:
    """What the next sweep will do per variant (the parts of SweepSettings that change its time)."""
    new_tokens: int = 32
    warmup_runs: int = 1
    repeats: int = 5
    mc_items: int | None = None  # None: as many as the earlier run scored
    ppl_tokens: int | None = None  # tokens of text scored at most; None: as many as the earlier run scored


@dataclass(frozen=True)
class Reference:
    """Records of a full sweep on the reference machine (assets/estimates/job_times.json), and how much slower this
    machine decodes (its measured speed against the reference's): where a variant was never measured here."""
    records: dict[str, VariantRecord]
    slower_by: float  # reference decode tokens/s / this machine's
    machine: str


@dataclass(frozen=True)
class Probe:
    """A few-second measurement of one variant here: load it, generate PROBE_TOKENS tokens once."""
    technique: str
    hardware: str
    load_s: float
    ttft_ms: float
    decode_tokens_per_s: float
    prompt_tokens: int


@dataclass(frozen=True)
class VariantEstimate:
    technique: str
    label: str
    seconds: float | None  # estimated wall seconds for this variant; None: never measured here, no probe
    basis: str  # where the estimate comes from, in words
    decode_tokens_per_s: float | None  # the speed the estimate and the flag use
    slow: bool
    why_slow: str  # plain words; "" when not slow
    uncorrected_s: float | None = None  # `seconds` before the learned correction


@dataclass(frozen=True)
class PastRun:
    """One job that ended done after an estimate: what was estimated before it started and what it took."""
    label: str
    hardware: str
    estimated_s: float  # shown before it ran (with the correction of its day)
    uncorrected_s: float  # from the records alone: what a correction compares with
    actual_s: float  # wall seconds from its start to its end
    ended_s: float  # time.time() at its end


@dataclass(frozen=True)
class Correction:
    """What the last sweeps here teach the next estimate: multiply by `factor`."""
    factor: float = 1.0
    runs: int = 0  # sweeps it learned from (0: none ended here yet)
    median_ratio: float | None = None  # actual / uncorrected estimate, median over those runs
    words: str = ""  # for people; "" with no runs


@dataclass(frozen=True)
class SweepEstimate:
    hardware: str
    variants: tuple[VariantEstimate, ...]
    correction: Correction = Correction()

    @property
    def total_s(self) -> float:
        """Seconds over the variants that have an estimate (see `unknown` for the rest), corrected."""
        return sum(v.seconds for v in self.variants if v.seconds is not None)

    @property
    def uncorrected_s(self) -> float:
        return sum(v.uncorrected_s for v in self.variants if v.uncorrected_s is not None)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(v.technique for v in self.variants if v.seconds is None)

    @property
    def slow(self) -> tuple[str, ...]:
        return tuple(v.technique for v in self.variants if v.slow)


# ---------------------------------------------------------------- time model


def _generation_s(ttft_s: float, tokens_per_s: float, new_tokens: int, runs: int) -> float:
    """One prefill plus new_tokens - 1 decode steps, per run (warm-up runs included)."""
    return runs * (ttft_s + max(0, new_tokens - 1) / tokens_per_s)


def _scoring_s(settings: dict, ttft_s: float, mc_items: int | None) -> float:
    """Perplexity/KLD windows and multiple-choice items, read at the prefill rate the prompt showed."""
    prompt_tokens = settings.get("prompt_tokens") or 0
    if not prompt_tokens or ttft_s <= 0:
        return 0.0
    items = settings.get("mc_items", 0) if mc_items is None else mc_items
    tokens = (settings.get("ppl_tokens") or 0) + items * MC_TOKENS_PER_ITEM
    return tokens / (prompt_tokens / ttft_s)


def _from_record(r: VariantRecord, plan: SweepPlan) -> tuple[float, str]:
    s = r.settings
    ttft_s, tps = r.ttft_ms_median / 1e3, r.decode_tokens_per_s_median
    runs_new = plan.warmup_runs + plan.repeats
    gen_new = _generation_s(ttft_s, tps, plan.new_tokens, runs_new)
    when = r.created_at[:16].replace("T", " ")
    measured = r.variant_facts.get("measure_s")
    if isinstance(measured, (int, float)) and measured > 0:
        runs_old = s.get("warmup_runs", 1) + s.get("repeats", 5)
        gen_old = _generation_s(ttft_s, tps, s.get("new_tokens", plan.new_tokens), runs_old)
        rest = max(0.0, measured - gen_old)  # loading and scoring: scoring scales with the tokens it reads
        rest *= _scoring_tokens(_planned(s, plan)) / max(1, _scoring_tokens(s))
        return rest + gen_new, f"scaled from its {measured:.0f} s run here ({when} UTC)"
    return gen_new + _scoring_s(s, ttft_s, plan.mc_items), f"from its speed here ({when} UTC); loading not counted"


def _planned(settings: dict, plan: SweepPlan) -> dict:
    """An earlier run's scoring counts, moved to what the plan scores: a quick look scores fewer questions and less
    text than a full pass, and a full pass after a quick look scores more."""
    planned = dict(settings)
    items, capped = settings.get("mc_items") or 0, bool(settings.get("mc_max_items"))
    whole_set = _set_size(settings.get("eval_set")) if capped else items  # every question, as far as known
    planned["mc_items"] = whole_set if plan.mc_items is None else min(plan.mc_items, whole_set or plan.mc_items)
    if plan.ppl_tokens is not None:
        tokens, cap = settings.get("ppl_tokens") or 0, settings.get("ppl_max_tokens") or 0
        text_ran_out = tokens < cap  # then the text's own length is known
        planned["ppl_tokens"] = min(tokens, plan.ppl_tokens) if text_ran_out else plan.ppl_tokens
    return planned


def _set_size(path: str | None) -> int:
    try:
        return sum(1 for line in Path(path).read_text().splitlines() if line.strip()) if path else 0
    except OSError:
        return 0


def _scoring_tokens(settings: dict) -> int:
    return (settings.get("ppl_tokens") or 0) + (settings.get("mc_items") or 0) * MC_TOKENS_PER_ITEM


def _from_probe(p: Probe, plan: SweepPlan, scoring_settings: dict) -> tuple[float, str]:
    ttft_s = p.ttft_ms / 1e3
    gen = _generation_s(ttft_s, p.decode_tokens_per_s, plan.new_tokens, plan.warmup_runs + plan.repeats)
    settings = scoring_settings | {"prompt_tokens": p.prompt_tokens}
    return p.load_s + gen + _scoring_s(settings, ttft_s, plan.mc_items), "probe: loaded and timed 3 decode steps just now"


# ---------------------------------------------------------------- the slow flag


def cpu_has_avx512() -> bool | None:
    """True/False from /proc/cpuinfo's flags; None where that file does not exist (not Linux)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return None
    return " avx512f" in info.read_text(errors="replace")


def _usual_ratio(key: str, history: list[VariantRecord], hardware: str) -> float | None:
    """This technique's speed relative to the reference on the other machines in the store (median)."""
    ratios = []
    for hw in {r.hardware for r in history if r.hardware != hardware}:
        mine = [r for r in history if r.hardware == hw and r.technique == key]
        ref = [r for r in history if r.hardware == hw and r.technique == techniques.REFERENCE]
        if mine and ref and ref[0].decode_tokens_per_s_median > 0:
            ratios.append(mine[0].decode_tokens_per_s_median / ref[0].decode_tokens_per_s_median)
    return statistics.median(ratios) if ratios else None


def _why_slow(key: str, tps: float, ref_tps: float | None, roofline_pct: float | None,
              usual: float | None, avx512: bool | None) -> str:
    if ref_tps:
        words = (f"decodes at {tps:.1f} tokens/s here, {tps / ref_tps:.0%} of the fp32 reference's {ref_tps:.1f}: "
                 "its kernels run far below their usual speed on this machine")
    else:
        words = (f"decodes at {tps:.1f} tokens/s here, {roofline_pct:.1f}% of what this machine's memory bandwidth "
                 "allows for its size: its kernels, not memory, hold it back")
    if usual is not None:
        words += f" (on the other machines in the results it ran at {usual:.0%} of fp32)"
    if uses_bitsandbytes(techniques.get(key)) and avx512 is False:
        words += ". bitsandbytes' CPU kernels are fast only with AVX-512, and this CPU has none"
    return words + "."


def _is_slow(tps: float | None, ref_tps: float | None, roofline_pct: float | None) -> bool:
    if tps is None:
        return False
    if ref_tps:
        return tps < SLOW_VS_REFERENCE * ref_tps
    return roofline_pct is not None and roofline_pct < SLOW_ROOFLINE_PCT


# ---------------------------------------------------------------- learning from the sweeps that ended here


def past_runs(jobs: Iterable) -> list[PastRun]:
    """PastRuns from the queue's ended jobs (core/launch/jobqueue.py `estimated_jobs`; read by attribute, since
    the queue's layer sits above this one)."""
    return [PastRun(j.label, j.estimate_hardware, j.estimated_s, j.uncorrected_s, j.elapsed_s, j.ended_s)
            for j in jobs if j.uncorrected_s and j.ended_s is not None]


def _recent_here(past: Iterable[PastRun], hardware: str, last: int) -> list[PastRun]:
    here = [p for p in past if p.hardware == hardware and p.uncorrected_s > 0 and p.actual_s > 0]
    return sorted(here, key=lambda p: p.ended_s, reverse=True)[:last]


def learned_correction(past: Iterable[PastRun], hardware: str, last: int = LEARN_FROM_LAST) -> Correction:
    """The median of actual / uncorrected estimate over the last `last` sweeps on `hardware`, within
    CORRECTION_MIN..CORRECTION_MAX; 1 when none ended here or they were within ABOUT_RIGHT of their estimate."""
    runs = _recent_here(past, hardware, last)
    if not runs:
        return Correction()
    ratio = statistics.median(p.actual_s / p.uncorrected_s for p in runs)
    which = f"the last {len(runs)} sweeps here" if len(runs) > 1 else "the last sweep here"
    if abs(ratio - 1) <= ABOUT_RIGHT:
        return Correction(1.0, len(runs), ratio,
                          f"not corrected: {which} took about as long as estimated (within {ABOUT_RIGHT:.0%})")
    factor = min(CORRECTION_MAX, max(CORRECTION_MIN, ratio))
    how = "longer" if ratio > 1 else "less time"
    words = f"corrected ×{factor:.2g} from {which}, which took {how} than estimated"
    if factor != ratio:
        words += f" (×{ratio:.2g} as long; the correction stops at ×{factor:g})"
    return Correction(factor, len(runs), ratio, words)


def past_rows(past: Iterable[PastRun], hardware: str, last: int = LEARN_FROM_LAST) -> list[dict]:
    """The estimate-versus-actual table: one row per recent sweep here, newest first. error % is
    (estimated - actual) / actual: negative when the sweep took longer than estimated."""
    return [{"job": p.label, "estimated s": p.estimated_s, "actual s": p.actual_s,
             "error %": 100 * (p.estimated_s - p.actual_s) / p.actual_s}
            for p in _recent_here(past, hardware, last)]


def _corrected(variants: list[VariantEstimate], factor: float) -> list[VariantEstimate]:
    return [dataclasses.replace(v, seconds=None if v.seconds is None else v.seconds * factor, uncorrected_s=v.seconds)
            for v in variants]


# ---------------------------------------------------------------- the estimate


def _newest(records: list[VariantRecord], key: str) -> VariantRecord | None:
    mine = [r for r in records if r.technique == key]
    return max(mine, key=lambda r: r.created_at) if mine else None


def estimate_sweep(history: list[VariantRecord], keys: list[str], model: str, hardware: str,
                   plan: SweepPlan = SweepPlan(), probes: dict[str, Probe] | None = None,
                   avx512: bool | None = None, past: Sequence[PastRun] = (),
                   reference: Reference | None = None) -> SweepEstimate:
    """Per-variant seconds and slow flags for `keys` on `hardware`, from the store's records and any probes,
    corrected by how long the sweeps that ended here (`past`) took against their estimates.

    `history` may hold any records (other models and machines are used only for the 'usual speed' note).
    """
    history = [r for r in history if r.model == model]
    here = [r for r in history if r.hardware == hardware]
    probes = {k: p for k, p in (probes or {}).items() if p.hardware == hardware}
    ref_record = _newest(here, techniques.REFERENCE)
    ref_probe = probes.get(techniques.REFERENCE)
    ref_tps = (ref_record.decode_tokens_per_s_median if ref_record else
               ref_probe.decode_tokens_per_s if ref_probe else None)
    scoring = dict(ref_record.settings) if ref_record else {}
    out = []
    for key in keys:
        label = techniques.TECHNIQUES[key].label if key in techniques.TECHNIQUES else key
        record, probe = _newest(here, key), probes.get(key)
        if record is not None and record.decode_tokens_per_s_median > 0:
            seconds, basis = _from_record(record, plan)
            tps, roof = record.decode_tokens_per_s_median, record.roofline_pct
        elif probe is not None and probe.decode_tokens_per_s > 0:
            seconds, basis = _from_probe(probe, plan, scoring)
            tps, roof = probe.decode_tokens_per_s, None
        elif reference is not None and key in reference.records:
            seconds, _ = _from_record(reference.records[key], plan)
            out.append(VariantEstimate(key, label, seconds * reference.slower_by,
                                       f"rough: its time on the reference machine ({reference.machine}), scaled by "
                                       "this machine's measured speed", None, False, ""))
            continue
        else:
            out.append(VariantEstimate(key, label, None, "never measured here: probe it for an estimate", None,
                                       False, ""))
            continue
        slow = key != techniques.REFERENCE and _is_slow(tps, ref_tps, roof)
        why = _why_slow(key, tps, ref_tps, roof, _usual_ratio(key, history, hardware), avx512) if slow else ""
        out.append(VariantEstimate(key, label, seconds, basis, tps, slow, why))
    correction = learned_correction(past, hardware)
    return SweepEstimate(hardware, tuple(_corrected(out, correction.factor)), correction)


def probe_variant(key: str, checkpoint: Path, prompt_ids, device: str = "cpu") -> Probe:
    """Load the real variant and time one PROBE_TOKENS-token generation: a few seconds for a small model."""
    benchmark.release_memory()
    start = time.perf_counter()
    model = techniques.get(key).make(checkpoint, device)
    load_s = time.perf_counter() - start
    bench = benchmark.bench_generation(runtimes.as_runner(model, device), prompt_ids.to(device), PROBE_TOKENS, 0, 1, device)
    del model
    benchmark.release_memory()
    return Probe(key, benchmark.hardware_fingerprint(device), load_s, bench.ttft_ms.median,
                 bench.decode_tokens_per_s.median, int(prompt_ids.shape[-1]))
