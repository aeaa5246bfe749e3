"""Measure a list of technique variants of one model, the same way, and store each as it finishes.

The loop is: load variant -> time generation -> text quality against the reference -> multiple
choice -> record -> store -> free. Progress goes to a callback; a `should_stop` callback is checked
between (and inside) steps, and a cancelled sweep keeps every variant it had finished.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from core import models, runtimes, techniques
from core.measure import benchmark, cost, evaluate
from core.paths import Stopped
from core.store import ResultStore
from core.store.records import VariantRecord


class Cancelled(Stopped):
    """The user stopped the sweep; finished variants are already stored."""


QUICK_REPEATS = 2
QUICK_MC_ITEMS = 40
QUICK_PPL_TOKENS = 1024


@dataclass(frozen=True)
class SweepSettings:
    prompt: str = "Explain in two sentences why the sky is blue."
    new_tokens: int = 32
    warmup_runs: int = 1
    repeats: int = 5
    threads: int = 0  # 0 = all cores this process may use
    seed: int = 0
    device: str = "auto"
    ppl_text: str = str(evaluate.DEFAULT_PPL_TEXT)
    ppl_window_tokens: int = 512
    ppl_max_tokens: int = 4096
    # Which positions text quality scores (evaluate.KLD_RULES). "llama-perplexity" makes KLD, its percentiles,
    # top-1 agreement ("same top p") and perplexity comparable with llama.cpp's `llama-perplexity --kl-divergence`
    # scoreboard at -c ppl_window_tokens; "every-position" is the lab's first rule (7-10% higher KLD on prose).
    kld_rule: evaluate.KldRule = "llama-perplexity"
    eval_set: str = str(evaluate.DEFAULT_MC_SET)
    mc_max_items: int = 0  # 0 = every question
    hardware_preset: str = "laptop-cpu"
    usd_per_hour: float | None = None  # None = the preset's price
    # Where the sweep was started. On a 2-core machine the dashboard's own server and browser share the cores
    # with the model, so dashboard-launched speeds run lower than the CLI's; the record says which it was.
    launched_from: str = "cli"
    # A first look (`quick_look`): fewer timed runs, questions and text, so that a class sees its first dot within a
    # minute; its intervals are wider, and a full pass of the same variants replaces it on the map.
    quick: bool = False

    def __post_init__(self) -> None:
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be at least 2, got {self.new_tokens}")
        if self.repeats < 1 or self.warmup_runs < 0:
            raise ValueError(f"need repeats >= 1 and warmup_runs >= 0, got {self.repeats}, {self.warmup_runs}")
        if self.ppl_window_tokens < 16:
            raise ValueError(f"ppl_window_tokens must be at least 16, got {self.ppl_window_tokens}")
        if self.kld_rule not in evaluate.KLD_RULES:
            raise ValueError(f"Unknown kld_rule {self.kld_rule!r}; choose from {', '.join(evaluate.KLD_RULES)}")
        if self.hardware_preset not in cost.HARDWARE_PRESETS:
            raise ValueError(f"Unknown hardware preset {self.hardware_preset!r}; choose from {', '.join(cost.HARDWARE_PRESETS)}")
        if self.usd_per_hour is not None and self.usd_per_hour < 0:
            raise ValueError(f"usd_per_hour must be >= 0, got {self.usd_per_hour}")

    def quick_look(self) -> "SweepSettings":
        """These settings cut to a first look: QUICK_REPEATS timed runs, QUICK_MC_ITEMS questions, QUICK_PPL_TOKENS
        tokens of text (FP32 took 28 s with the full settings on a 2-core EPYC, most of it scoring)."""
        mc = min(self.mc_max_items or QUICK_MC_ITEMS, QUICK_MC_ITEMS)
        return replace(self, repeats=min(self.repeats, QUICK_REPEATS), mc_max_items=mc,
                       ppl_max_tokens=min(self.ppl_max_tokens, QUICK_PPL_TOKENS), quick=True)

    def full(self) -> "SweepSettings":
        """The settings a full pass uses after a quick look (the defaults for what the quick look cut)."""
        d = SweepSettings()
        return replace(self, repeats=d.repeats, mc_max_items=d.mc_max_items, ppl_max_tokens=d.ppl_max_tokens,
                       quick=False)

    def resolved_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))

    def price(self) -> float:
        preset = cost.HARDWARE_PRESETS[self.hardware_preset]
        return preset.usd_per_hour if self.usd_per_hour is None else self.usd_per_hour


@dataclass(frozen=True)
class Progress:
    fraction: float  # of the whole sweep, 0..1
    variant: str
    step: str  # "load", "speed", "text", "choices", "done", "skipped", "reference"
    message: str


ProgressFn = Callable[[Progress], None]
STEPS = ("load", "speed", "text", "choices")


@dataclass
class _Inputs:
    """Everything shared by every variant of one sweep: loaded once, identical for all."""
    checkpoint: Path
    spec: models.ModelSpec
    tokenizer: object
    prompt_ids: torch.Tensor
    windows: list[torch.Tensor]
    mc_items: list[evaluate.MCItem]
    env: benchmark.Environment
    bandwidth: benchmark.Spread
    settings_record: dict = field(default_factory=dict)


_BANDWIDTH: dict[str, benchmark.Spread] = {}


def machine_bandwidth(device: str) -> benchmark.Spread:
    """Measured once per process and device (it takes about a second)."""
    if device not in _BANDWIDTH:
        _BANDWIDTH[device] = benchmark.measure_bandwidth_gb_s(device=device)
    return _BANDWIDTH[device]


def prepare_inputs(model_name: str, settings: SweepSettings, say: Callable[[str], None]) -> _Inputs:
    spec = models.resolve(model_name)
    checkpoint = models.prepare(spec, progress=say)
    models.check_loadable(checkpoint)
    tokenizer = models.load_tokenizer(checkpoint)
    device = benchmark.pick_device(settings.device)
    text = evaluate.read_text(Path(settings.ppl_text))
    windows, rule, bos = text_windows(tokenizer, text, settings)
    mc_items = evaluate.load_mc_jsonl(Path(settings.eval_set))
    if settings.mc_max_items:
        mc_items = mc_items[: settings.mc_max_items]
    threads = settings.resolved_threads()
    torch.set_num_threads(threads)
    say("Measuring memory bandwidth")
    bandwidth = machine_bandwidth(device)
    prompt_ids = models.chat_prompt_ids(tokenizer, settings.prompt)
    settings_record = asdict(settings) | {
        "threads": threads,
        "device": device,
        "prompt_tokens": int(prompt_ids.shape[-1]),
        "ppl_text_sha256": evaluate.file_sha256(Path(settings.ppl_text)),
        "ppl_tokens": sum(int(w.shape[-1]) for w in windows),
        "kld_rule": rule,  # the rule that produced the text-quality numbers (may differ from the one asked for)
        "kld_positions": sum(_scored(int(w.shape[-1]), rule) for w in windows),
        "bos_per_chunk": bos is not None,
        "eval_set_sha256": evaluate.file_sha256(Path(settings.eval_set)),
        "mc_items": len(mc_items),
        "bandwidth_gb_s_samples": list(bandwidth.samples),
        "reference_technique": techniques.REFERENCE,
        "weights_note": spec.weights_note,
        "decode": "greedy, batch 1, exactly new_tokens tokens (EOS ignored), KV cache",
    }
    if rule != settings.kld_rule:
        settings_record["kld_rule_note"] = (f"{settings.kld_rule} asked for, but the text is shorter than one "
                                            f"{settings.ppl_window_tokens}-token chunk: every position scored")
    return _Inputs(checkpoint, spec, tokenizer, prompt_ids, windows, mc_items,
                   benchmark.environment(device, threads), bandwidth, settings_record)


def text_windows(tokenizer, text: str, settings: SweepSettings) -> tuple[list[torch.Tensor], str, int | None]:
    """(windows, the rule they are scored by, the BOS id written at each chunk's start or None).

    A text shorter than one ppl_window_tokens chunk has no position the llama-perplexity rule would score: it is
    scored by every position instead, and the record's settings say so.
    """
    ids = evaluate.tokenize_text(tokenizer, text)
    bos = evaluate.bos_per_chunk(tokenizer) if settings.kld_rule == "llama-perplexity" else None
    windows = evaluate.text_windows(ids, settings.ppl_window_tokens, settings.ppl_max_tokens, settings.kld_rule, bos)
    if windows:
        return windows, settings.kld_rule, bos
    fallback = "every-position"
    return evaluate.text_windows(ids, settings.ppl_window_tokens, settings.ppl_max_tokens, fallback), fallback, None


def _scored(window_tokens: int, rule: str) -> int:
    rows = evaluate.scored_rows(window_tokens, rule)
    return rows.stop - rows.start


@dataclass(frozen=True)
class Reference:
    """The reference variant's pass over the text: its quality and its per-window [W, V] log-probs."""
    quality: evaluate.TextQuality
    logprobs: list[torch.Tensor]


_REFERENCE_CACHE: dict[tuple, Reference] = {}


def reference_pass(inputs: _Inputs, tick: evaluate.Tick) -> Reference:
    """Computed once per (model, text, windows, device) and kept in memory for the next sweep of the same text."""
    key = (str(inputs.checkpoint), inputs.settings_record["ppl_text_sha256"], inputs.settings_record["ppl_window_tokens"],
           inputs.settings_record["ppl_max_tokens"], _rule(inputs), inputs.env.device)
    if key not in _REFERENCE_CACHE:
        model = techniques.get(techniques.REFERENCE).make(inputs.checkpoint, inputs.env.device)
        quality, own = evaluate.text_quality(runtimes.as_runner(model, inputs.env.device), inputs.windows, None,
                                             inputs.env.device, tick, _rule(inputs))
        del model
        benchmark.release_memory()
        _REFERENCE_CACHE.clear()  # keep one text's reference at a time: [T, V] float32 is large
        _REFERENCE_CACHE[key] = Reference(quality, own)
    return _REFERENCE_CACHE[key]


def _rule(inputs: _Inputs) -> str:
    return inputs.settings_record.get("kld_rule", "every-position")


def measure_variant(technique: techniques.Technique, inputs: _Inputs, settings: SweepSettings,
                    reference: Reference, run_id: str,
                    step: Callable[[str, float], None]) -> VariantRecord:
    device = inputs.env.device
    build_s = _build_file(technique, inputs, lambda _msg: step("load", 0.0))
    started_at, started_s = _now(), time.perf_counter()
    benchmark.release_memory()
    with benchmark.PeakMemory(device) as mem:
        step("load", 0.0)
        torch.manual_seed(settings.seed)
        # The runner is the only thing that knows which runtime it is; everything below is the same for all.
        runner = runtimes.load(technique, technique.runtime, inputs.checkpoint, device, inputs.env.threads,
                               lambda _msg: step("load", 0.5))
        try:
            size_bytes = runner.bytes_held()
            step("speed", 0.0)
            bench = benchmark.bench_generation(runner, inputs.prompt_ids, settings.new_tokens,
                                               settings.warmup_runs, settings.repeats, device)
            step("text", 0.0)
            if technique.key == techniques.REFERENCE:  # same weights, same deterministic pass: reuse it
                quality = reference.quality
            else:
                quality, _ = evaluate.text_quality(runner, inputs.windows, reference.logprobs, device,
                                                   lambda f: step("text", f), _rule(inputs))
            step("choices", 0.0)
            mc = evaluate.mc_accuracy(runner, inputs.tokenizer, inputs.mc_items, device, lambda f: step("choices", f),
                                      settings.seed)
            dtype, read_bytes, facts = runner.dtype, runner.bytes_read_per_token(), runner.facts()
        finally:
            runner.close()
            del runner
    benchmark.release_memory()
    record = _record(technique, inputs, settings, run_id, size_bytes, mem.delta_bytes, bench, quality, mc, dtype,
                     read_bytes, facts)
    record.started_at = started_at
    record.variant_facts["measure_s"] = time.perf_counter() - started_s  # wall time here: estimates the next sweep
    if build_s is not None:
        record.variant_facts["file_build_s"] = build_s
    return record


def _build_file(technique: techniques.Technique, inputs: _Inputs, progress: Callable[[str], None]) -> float | None:
    """Build (or find cached) the file a technique hands its runtime, before the peak-memory window and the clock
    open: exporting and quantizing a GGUF is one-off work, so a variant's peak memory and measuring time must not
    depend on whether its file was cached. Returns the seconds it took; None for a technique without a file."""
    if technique.build_artifact is None:
        return None
    t0 = time.perf_counter()
    technique.artifact(inputs.checkpoint, inputs.env.threads, progress)
    return time.perf_counter() - t0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _record(technique, inputs: _Inputs, settings: SweepSettings, run_id: str, size_bytes: int, peak_bytes: int,
            bench: benchmark.GenerationBench, quality: evaluate.TextQuality, mc: evaluate.MCResult, dtype: str,
            read_bytes: int | None = None, facts: dict | None = None) -> VariantRecord:
    bandwidth = max(inputs.bandwidth.samples)  # the hardware's ceiling: best of the timed reads
    # The roofline divides bandwidth by the bytes a decoded token reads (bytes held, except for MoE).
    roof = benchmark.roofline_tokens_per_s(bandwidth, size_bytes if read_bytes is None else read_bytes)
    tps = bench.decode_tokens_per_s
    price = settings.price()
    return VariantRecord(
        model=inputs.spec.key, technique=technique.key, family=technique.family, label=technique.label,
        run_id=run_id, created_at=_now(),
        size_mb=size_bytes / 1e6, peak_mem_mb=peak_bytes / 1e6,
        ttft_ms_median=bench.ttft_ms.median, ttft_ms_p10=bench.ttft_ms.p10, ttft_ms_p90=bench.ttft_ms.p90,
        decode_tokens_per_s_median=tps.median, decode_tokens_per_s_p10=tps.p10, decode_tokens_per_s_p90=tps.p90,
        ttft_ms_samples=list(bench.ttft_ms.samples), decode_tokens_per_s_samples=list(tps.samples),
        bandwidth_gb_s=bandwidth, roofline_tokens_per_s=roof, roofline_pct=100 * tps.median / roof,
        perplexity=quality.perplexity, kld_mean=quality.kld_mean, kld_p99=quality.kld_p99,
        top1_agreement=quality.top1_agreement, kld_median=quality.kld_median, kld_p999=quality.kld_p999,
        kld_max=quality.kld_max, delta_p_mean=quality.delta_p_mean, delta_p_rms=quality.delta_p_rms,
        mc_accuracy=mc.accuracy, mc_accuracy_norm=mc.accuracy_norm, mc_accuracy_ci95=list(mc.ci95), mc_items=mc.items,
        hardware_preset=settings.hardware_preset, usd_per_hour=price,
        usd_per_1m_tokens=cost.usd_per_1m_tokens(tps.median, price),
        device=inputs.env.device_label, dtype=dtype, threads=inputs.env.threads, hardware=inputs.env.hardware,
        versions=dict(inputs.env.versions),
        # what other processes used of the machine while it was timed, and whether that makes its speed unreliable
        settings=dict(inputs.settings_record) | bench.others_load.settings(),
        sample_prompt=settings.prompt,
        sample_generation=inputs.tokenizer.decode(list(bench.token_ids), skip_special_tokens=True),
        mc_per_item=mc.per_item, variant_facts=dict(facts or {}), runtime=technique.runtime,
    )


Describe = Callable[[str, str], str]  # (variant name, step) -> progress message


def _sweep_message(name: str, step: str) -> str:
    return f"{name}: {step}"


def _placed(span: tuple[float, float], fraction: float) -> float:
    """A fraction of this work as a fraction of the caller's bar, where the work fills (start, width) of it."""
    return span[0] + span[1] * fraction


def step_reporter(report: ProgressFn, stop: Callable[[], bool], slot: int, slots: int, name: str,
                  span: tuple[float, float] = (0.0, 1.0), describe: Describe = _sweep_message,
                  stop_message: str | None = None) -> Callable[[str, float], None]:
    """The `step(step_name, fraction)` callback for one variant filling slot `slot` of `slots` equal slots:
    raises when asked to stop (Cancelled naming the step, or Stopped(stop_message)), else reports progress."""
    def step(step_name: str, frac: float) -> None:
        if stop():
            raise Cancelled(f"Stopped during {name} ({step_name}).") if stop_message is None else Stopped(stop_message)
        within = (STEPS.index(step_name) + frac) / len(STEPS) if step_name in STEPS else frac
        report(Progress(_placed(span, (slot + within) / slots), name, step_name, describe(name, step_name)))
    return step


def measure_variants(variants: list[tuple[str, techniques.Technique]], inputs: _Inputs, settings: SweepSettings,
                     reference: Reference, run_id: str, *, store: ResultStore | None = None,
                     progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
                     first_slot: int = 0, slots: int | None = None, span: tuple[float, float] = (0.0, 1.0),
                     describe: Describe = _sweep_message, stop_message: str | None = None,
                     announce: bool = True,
                     annotate: Callable[[str, VariantRecord], None] | None = None) -> list[VariantRecord]:
    """Measure each (name, technique) in turn with `measure_variant`; store and return the records in order.

    Variant i fills progress slot first_slot + i of `slots` (default: one slot each), placed in `span` (start,
    width) of the caller's bar, with messages from `describe(name, step)`. With `announce`, a variant the device
    cannot run is skipped with its reason and each finished one is reported "done"; without it, none is skipped.
    `annotate(name, record)` may amend a record before it is stored; stored at once, so a later stop keeps it.
    """
    report = progress or (lambda p: None)
    stop = should_stop or (lambda: False)
    slots = len(variants) if slots is None else slots
    records: list[VariantRecord] = []
    for slot, (name, technique) in enumerate(variants, start=first_slot):
        reason = runtimes.why_not(technique, technique.runtime, inputs.env.device) if announce else None
        if reason:
            report(Progress(_placed(span, slot / slots), technique.key, "skipped", f"{technique.label} skipped: {reason}"))
            continue
        step = step_reporter(report, stop, slot, slots, name, span, describe, stop_message)
        record = measure_variant(technique, inputs, settings, reference, run_id, step)
        if annotate is not None:
            annotate(name, record)
        if store is not None:
            store.add(record)
        records.append(record)
        if announce:
            report(Progress(_placed(span, (slot + 1) / slots), technique.key, "done", f"{technique.label} done"))
    return records


def run_sweep(model_name: str, technique_keys: list[str], settings: SweepSettings,
              store: ResultStore | None = None, progress: ProgressFn | None = None,
              should_stop: Callable[[], bool] | None = None,
              span: tuple[float, float] = (0.0, 1.0)) -> list[VariantRecord]:
    """Measure each technique on `model_name`; store and return the records. Unsupported variants are skipped with a reason.

    `span` (start, width) places the whole sweep within a longer run's progress bar."""
    chosen = [techniques.get(k) for k in technique_keys]
    if not chosen:
        raise ValueError("Pick at least one technique to measure.")
    report = progress or (lambda p: None)
    stop = should_stop or (lambda: False)
    run_id = uuid.uuid4().hex[:12]
    n = len(chosen) + 1  # +1: the reference pass

    inputs = prepare_inputs(model_name, settings, lambda msg: report(Progress(_placed(span, 0.0), "", "prepare", msg)))
    ref_step = step_reporter(report, stop, 0, n, techniques.REFERENCE, span)
    reference = reference_pass(inputs, lambda f: ref_step("reference", f))
    return measure_variants([(t.key, t) for t in chosen], inputs, settings, reference, run_id, store=store,
                            progress=report, should_stop=stop, first_slot=1, slots=n, span=span)


def records_json(records: list[VariantRecord], path: Path | None) -> str:
    text = json.dumps([r.to_dict() for r in records], indent=2)
    if path is not None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text
