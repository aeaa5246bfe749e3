"""One fine-tuning run end to end (LoRA, QLoRA or full), then the fine-tuned model measured with the sweep's
harness and stored. A run never touches a cached model: it loads its own copy of the base weights.
The methods themselves are in core.techniques.lora."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from core import models, techniques
from core.experiments import sweep
from core.measure import benchmark
from core.models.saved import adapters_dir, merged_dir
from core.paths import Stopped
from core.runtimes import as_runner
from core.techniques.lora import (
    FinetuneSettings,
    Report,
    TrainLog,
    attach,
    check_targets,
    count_parameters,
    dir_size_bytes,
    exact_match,
    greedy_answers,
    load_base,
    load_task,
    technique_key,
    technique_label,
    train,
    training_key,
)


def ci_pair(ci: tuple[float, float]) -> list[float]:
    return [round(ci[0], 4), round(ci[1], 4)]



# ---------------------------------------------------------------- one run, end to end


@dataclass
class FinetuneResult(benchmark.Provenance):
    method: str
    model: str
    task: str
    trainable_params: int
    total_params: int
    trainable_pct: float
    peak_mem_mb: float
    train_seconds: float
    seconds_per_step_median: float
    usd_cost: float
    usd_per_hour: float
    adapter_mb: float
    full_checkpoint_mb: float
    adapter_pct_of_full: float
    accuracy_before: float
    accuracy_before_ci95: list[float]
    accuracy_after: float
    accuracy_after_ci95: list[float]
    merged_decode_tokens_per_s: float
    unmerged_decode_tokens_per_s: float
    merged_equals_unmerged: bool | None  # None where there is nothing to merge (full fine-tuning)
    tokens_seen: int
    losses: list[float]
    examples: list[dict]
    saved_path: str
    merged_path: str  # the fine-tuned weights merged into a plain checkpoint (LoRA and full), "" for QLoRA
    settings: dict



def _decode_speed(model, tokenizer, prompt: str, device: str) -> tuple[float, tuple[int, ...]]:
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)
    bench = benchmark.bench_generation(as_runner(model, device), ids, new_tokens=16, warmup=1, repeats=3, device=device)
    return bench.decode_tokens_per_s.median, bench.token_ids


def run_finetune(model_name: str, settings: FinetuneSettings, task: str | None = "support-routing",
                 data: Path | None = None, usd_per_hour: float = 0.0, report: Report | None = None,
                 should_stop: Callable[[], bool] | None = None, log: TrainLog | None = None,
                 device: str = "auto") -> tuple[FinetuneResult, torch.nn.Module]:
    """Measure the base on the held-out set, train, measure again, save the adapter, compare merged vs unmerged.

    Returns the result and the fine-tuned model (merged where LoRA allows it), for `store_record`.
    """
    say = report or (lambda f, m: None)
    stop = should_stop or (lambda: False)
    device = benchmark.pick_device(device)
    train_set, test_set = load_task(task, data, seed=settings.seed)  # bad data fails before anything is loaded
    if settings.eval_items:
        test_set = test_set[: settings.eval_items]
    spec = models.resolve(model_name)
    checkpoint = models.prepare(spec)
    tokenizer = models.load_tokenizer(checkpoint)
    torch.manual_seed(settings.seed)
    base = load_base(checkpoint, settings.method, device)
    if settings.method != "full":
        check_targets(base, settings.target_modules)

    say(0.02, "measuring the base model on the held-out set")
    before = exact_match(base, tokenizer, test_set)
    benchmark.release_memory()
    with benchmark.PeakMemory(device) as mem:
        model = attach(base, settings)
        trainable, total = count_parameters(model)
        t0 = time.perf_counter()
        log = train(model, tokenizer, train_set, settings,
                    lambda f, m: say(0.1 + 0.7 * f, m), stop, log)
        train_seconds = time.perf_counter() - t0
    say(0.82, "measuring the fine-tuned model on the held-out set")
    after = exact_match(model, tokenizer, test_set)

    rank = "" if settings.method == "full" else f"-r{settings.rank}"
    name = f"{spec.key.replace('/', '--')}-{task or Path(data).stem}-{settings.method}{rank}-{int(time.time())}"
    run_facts = {"model": spec.key, "task": task or str(data), "settings": settings.__dict__ | {"lr": settings.lr},
                 "training_sha256": training_key(task, data, settings.seed)}  # found again by content (find_lora)
    if stop():
        raise Stopped("Stopped before saving; nothing was written.")
    saved = models.save_atomically(adapters_dir() / name, model, facts=run_facts, facts_file="lab_run.json")

    say(0.88, "timing decode with the adapter unmerged")
    unmerged_tps, _ = _decode_speed(model, tokenizer, test_set[0].prompt, device)
    merged_tps, same, final = unmerged_tps, None, model
    if settings.method == "lora":
        unmerged_out = greedy_answers(model, tokenizer, [e.prompt for e in test_set[:20]], 6)
        say(0.92, "merging the adapter into the weights, then timing decode merged")
        final = model.merge_and_unload()
        merged_tps, _ = _decode_speed(final, tokenizer, test_set[0].prompt, device)
        same = unmerged_out == greedy_answers(final, tokenizer, [e.prompt for e in test_set[:20]], 6)
    merged_path = ""
    if settings.method in ("lora", "full") and not stop():  # QLoRA's base is 4-bit: nothing plain to export
        say(0.96, "saving the merged model")
        key = technique_key(settings.method, task or str(data), settings.rank)
        merged_facts = run_facts | {"merged": True, "technique_key": key,
                                    "label": technique_label(settings.method, task or str(data), settings.rank)}
        merged_path = str(models.save_atomically(merged_dir() / name, final, tokenizer,
                                                 facts=merged_facts, facts_file="lab_run.json"))
    env = benchmark.environment(device, torch.get_num_threads())
    full_mb = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 1e6
    adapter_mb = dir_size_bytes(saved) / 1e6
    say(1.0, "fine-tune trained and saved")  # a caller that measures it next shows this short of 100%
    result = FinetuneResult(
        method=settings.method, model=spec.key, task=task or str(data),
        trainable_params=int(trainable), total_params=int(total), trainable_pct=100 * trainable / total,
        peak_mem_mb=mem.delta_bytes / 1e6, train_seconds=train_seconds,
        seconds_per_step_median=benchmark.Spread(tuple(log.step_seconds)).median,
        usd_cost=train_seconds / 3600 * usd_per_hour, usd_per_hour=usd_per_hour,
        adapter_mb=adapter_mb, full_checkpoint_mb=full_mb, adapter_pct_of_full=100 * adapter_mb / full_mb,
        accuracy_before=before.accuracy, accuracy_before_ci95=ci_pair(before.ci95),
        accuracy_after=after.accuracy, accuracy_after_ci95=ci_pair(after.ci95),
        merged_decode_tokens_per_s=merged_tps, unmerged_decode_tokens_per_s=unmerged_tps, merged_equals_unmerged=same,
        tokens_seen=log.tokens_seen, losses=list(log.losses),
        examples=[{"prompt": e.prompt, "expected": e.completion, "before": b.strip(), "after": a.strip()}
                  for e, b, a in list(zip(test_set, before.outputs, after.outputs))[:12]],
        saved_path=str(saved), merged_path=merged_path,
        settings=run_facts["settings"] | {"target_modules": list(settings.target_modules)},
        **env.provenance(),
    )
    return result, final.eval()


def store_record(model, result: FinetuneResult, store, usd_per_hour: float, hardware_preset: str = "laptop-cpu",
                 report: Report | None = None, should_stop: Callable[[], bool] | None = None,
                 launched_from: str = "cli", measure_with: sweep.SweepSettings | None = None):
    """Measure the fine-tuned (merged) model with the sweep's harness so it appears on the Trade-off Map;
    `measure_with` sets the timed runs and quality samples (a lesson's quick pass), else a full measurement.

    Its KL divergence against the base on general prose shows what specialising cost the model elsewhere.
    """
    say = report or (lambda f, m: None)
    stop = should_stop or (lambda: False)
    technique = techniques.Technique(
        key=technique_key(result.method, result.task, result.settings["rank"]),
        label=technique_label(result.method, result.task, result.settings["rank"]),
        family="lora", config=None,
        explanation="The base model fine-tuned on a task; its adapters merged into the weights where possible.",
        surprise="Quality on general prose (KLD, perplexity) can get worse even as the task gets much better.",
        build=lambda _ckpt, _cfg, _dev: model, unsupported=lambda _cfg, _dev: None,
    )
    settings = replace(measure_with or sweep.SweepSettings(), hardware_preset=hardware_preset,
                       usd_per_hour=usd_per_hour, launched_from=launched_from)
    inputs = sweep.prepare_inputs(result.model, settings, lambda m: say(0.0, f"measuring the merged model: {m}"))
    reference = sweep.reference_pass(inputs, lambda f: say(0.3 * f, "measuring the merged model: the base's reference "
                                                                     "pass"))

    def annotate(_name: str, record) -> None:
        record.variant_facts = {"finetune": {k: v for k, v in result.to_dict().items() if k not in ("versions",)}}

    [record] = sweep.measure_variants(
        [(technique.key, technique)], inputs, settings, reference, uuid.uuid4().hex[:12], store=store,
        progress=lambda p: say(p.fraction, p.message), should_stop=stop, span=(0.3, 0.7),
        describe=lambda _name, step: f"measuring the merged model: {step}",
        stop_message="Stopped while measuring for the Trade-off Map; the adapter is saved.", announce=False,
        annotate=annotate)
    return record


def summary_row(result: dict) -> dict:
    """One run as a table row: raw numbers, units in the column names (the page formats)."""
    return {
        "method": result["method"],
        "rank": result["settings"].get("rank") if result["method"] != "full" else None,
        "trainable params": result["trainable_params"],
        "trainable %": result["trainable_pct"],
        "accuracy before": result["accuracy_before"],
        "accuracy after": result["accuracy_after"],
        "after 95% CI": f"{result['accuracy_after_ci95'][0]:.2f}–{result['accuracy_after_ci95'][1]:.2f}",
        "train s": result["train_seconds"],
        "s/step": result["seconds_per_step_median"],
        "peak RSS +MB": result["peak_mem_mb"],
        "US$": result["usd_cost"],
        "saved MB": result["adapter_mb"],
        "% of full checkpoint": result["adapter_pct_of_full"],
        "decode tok/s unmerged": result["unmerged_decode_tokens_per_s"],
        "decode tok/s merged": result["merged_decode_tokens_per_s"],
    }
