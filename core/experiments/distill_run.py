"""One distillation run end to end (corpus, student, training, saving), then teacher / pruned / distilled
measured with the sweep's harness and stored. The methods themselves are in core.techniques.distillation."""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from core import models, techniques
from core.experiments import sweep
from core.measure import benchmark
from core.models.saved import latest_checkpoint, student_key, student_label, students_dir
from core.techniques.distillation import (
    DistillSettings,
    Report,
    bf16_steps,
    StudentPlan,
    TrainLog,
    heldout_divergence,
    make_student,
    plan,
    save_checkpoint,
    train_student,
)
from core.techniques.distill_corpus import (answers_to_write, corpus_from_answers, corpus_from_file, merged,
                                            teacher_answers)

# ---------------------------------------------------------------- one run, end to end


@dataclass(frozen=True)
class HealPoint:
    """The student's held-out match to the teacher after some minutes of training (0: pruned, untrained)."""
    step: int
    train_minutes: float
    heldout_kld_nats: float
    heldout_top1: float


@dataclass
class DistillResult(benchmark.Provenance):
    teacher: str
    student_path: str
    student_layers: int
    teacher_layers: int
    kept_layers: list[int]
    teacher_params: int
    student_params: int
    expected_speedup: float
    train_seconds: float
    corpus_seconds: float
    tokens_seen: int
    train_tokens: int
    heldout_tokens: int
    corpus: str
    loss_first: float
    loss_last: float
    losses: list[float]
    heldout_kld_pruned: float
    heldout_kld_distilled: float
    heldout_top1_pruned: float
    heldout_top1_distilled: float
    heldout_kld_curve: list[tuple[int, float]]
    seconds_per_step_median: float
    peak_mem_mb: float
    usd_cost: float
    usd_per_hour: float
    settings: dict
    heal_curve: list[HealPoint] = field(default_factory=list)  # held-out quality at each checkpoint, step 0 included
    bf16_steps: bool = False  # the training steps ran under bfloat16 autocast (float32 weights; see DistillSettings)



def prepare_run(teacher_name: str, settings: DistillSettings, corpus_path: Path | None = None) -> tuple[models.ModelSpec, Path, StudentPlan]:
    """Everything that can be refused is checked here, before any model loads or anything is written."""
    if corpus_path is not None:
        corpus_path = Path(corpus_path)
        if not corpus_path.is_file():
            raise ValueError(f"Corpus file not found: {corpus_path}")
        if not corpus_path.read_bytes().strip():
            raise ValueError(f"{corpus_path.name} is empty: give a UTF-8 text file or JSONL of {{\"text\": ...}} lines.")
    spec = models.resolve(teacher_name)
    checkpoint = models.prepare(spec)
    models.check_loadable(checkpoint)
    return spec, checkpoint, plan(checkpoint, settings.student_layers, settings.layer_choice)


def run_distill(teacher_name: str, settings: DistillSettings, corpus_path: Path | None = None,
                usd_per_hour: float = 0.0, report: Report | None = None, should_stop: Callable[[], bool] | None = None,
                log: TrainLog | None = None, device: str = "auto") -> DistillResult:
    """Build the corpus (cached), cut the student, distill it with checkpoints, and save the final student."""
    say = report or (lambda f, m: None)
    stop = should_stop or (lambda: False)
    log = log if log is not None else TrainLog()
    device = benchmark.pick_device(device)
    spec, checkpoint, shape = prepare_run(teacher_name, settings, corpus_path)
    answers = corpus_path is None or settings.answers_with_text
    if answers and (todo := answers_to_write(spec.key, settings.corpus_answer_tokens)):
        say(0.0, f"first run with this teacher: it writes {todo} teacher answers before training starts (once; later "
                 "runs reuse them)")
    tokenizer = models.load_tokenizer(checkpoint)
    torch.manual_seed(settings.seed)
    teacher = models.load_model(checkpoint, torch.float32, device)

    t0 = time.perf_counter()
    parts = [corpus_from_file(corpus_path, tokenizer, settings.heldout_share)] if corpus_path is not None else []
    if answers:
        rows = teacher_answers(teacher, tokenizer, spec.key, settings.corpus_answer_tokens, device,
                               lambda f, m: say(0.25 * f, m), stop)
        parts.append(corpus_from_answers(rows, tokenizer, settings.heldout_share))
    corpus = merged(parts)
    corpus_seconds = time.perf_counter() - t0

    student = make_student(teacher, shape.kept_layers)
    say(0.26, "held-out divergence of the pruned, untrained student")
    kld_pruned, top1_pruned = heldout_divergence(teacher, student, corpus.heldout, device)
    run = f"{spec.key.replace('/', '--')}-{shape.student_layers}L-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = students_dir() / run
    facts = {"run": run, "teacher": spec.key, "teacher_checkpoint": str(checkpoint), "teacher_layers": shape.teacher_layers,
             "student_layers": shape.student_layers, "kept_layers": shape.kept_layers, "steps": settings.steps,
             "settings": asdict(settings), "corpus": corpus.source, "complete": False,
             "bf16_steps": bf16_steps(settings, device)}

    def save(step: int, final: bool) -> None:
        save_checkpoint(student, tokenizer, run_dir, step, facts | {"complete": final, "loss_last": log.losses[-1]})

    benchmark.release_memory()
    try:
        with benchmark.PeakMemory(device) as mem:
            t1 = time.perf_counter()
            train_student(student, teacher, corpus, settings, device, lambda f, m: say(0.27 + 0.72 * f, m), stop, log, save)
            train_seconds = time.perf_counter() - t1
    except BaseException:
        if latest_checkpoint(run_dir) is None:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing complete: leave nothing at all
        raise
    _, kld_distilled, top1_distilled = log.heldout[-1]  # the last checkpoint is the final step
    env = benchmark.environment(device, torch.get_num_threads())
    say(1.0, "student distilled and saved")  # a caller that measures it next shows this short of 100%
    return DistillResult(
        teacher=spec.key, student_path=str(latest_checkpoint(run_dir)), student_layers=shape.student_layers,
        teacher_layers=shape.teacher_layers, kept_layers=shape.kept_layers, teacher_params=shape.teacher_params,
        student_params=shape.student_params, expected_speedup=shape.expected_speedup,
        train_seconds=train_seconds, corpus_seconds=corpus_seconds, tokens_seen=log.tokens_seen,
        train_tokens=corpus.train_tokens, heldout_tokens=corpus.heldout_tokens, corpus=corpus.source,
        loss_first=log.losses[0], loss_last=log.losses[-1], losses=list(log.losses),
        heldout_kld_pruned=kld_pruned, heldout_kld_distilled=kld_distilled,
        heldout_top1_pruned=top1_pruned, heldout_top1_distilled=top1_distilled,
        heldout_kld_curve=[(0, kld_pruned)] + [(s, k) for s, k, _ in log.heldout],
        heal_curve=[HealPoint(0, 0.0, kld_pruned, top1_pruned)] + [
            HealPoint(s, seconds / 60, k, t) for (s, k, t), seconds in zip(log.heldout, log.heldout_seconds)],
        seconds_per_step_median=benchmark.Spread(tuple(log.step_seconds)).median, peak_mem_mb=mem.delta_bytes / 1e6,
        usd_cost=train_seconds / 3600 * usd_per_hour, usd_per_hour=usd_per_hour,
        settings=asdict(settings), bf16_steps=facts["bf16_steps"], **env.provenance(),
    )


# ---------------------------------------------------------------- measuring for the Trade-off Map


def _technique(key: str, label: str, build, explanation: str, surprise: str):
    return techniques.Technique(key=key, label=label, family="distillation", config=None, explanation=explanation,
                                surprise=surprise, build=build, unsupported=lambda _cfg, _dev: None)


def measure(result: DistillResult, store, usd_per_hour: float, hardware_preset: str = "laptop-cpu",
            report: Report | None = None, should_stop: Callable[[], bool] | None = None,
            launched_from: str = "cli", mc_max_items: int = 0,
            measure_with: sweep.SweepSettings | None = None) -> dict[str, object]:
    """Teacher, pruned-but-untrained student and distilled student through the sweep's harness, stored;
    `measure_with` sets the timed runs and quality samples (a lesson's quick pass), else a full measurement.

    Returns {"teacher": record, "student_pruned": record, "student_distilled": record}.
    """
    say = report or (lambda f, m: None)
    stop = should_stop or (lambda: False)
    settings = replace(measure_with or sweep.SweepSettings(mc_max_items=mc_max_items), hardware_preset=hardware_preset,
                       usd_per_hour=usd_per_hour, launched_from=launched_from)
    inputs = sweep.prepare_inputs(result.teacher, settings, lambda m: say(0.0, m))
    reference = sweep.reference_pass(inputs, lambda f: say(0.1 * f, "reference pass"))
    n, run = result.student_layers, Path(result.student_path).parent.name

    def pruned(checkpoint, _cfg, device):
        return make_student(models.load_model(checkpoint, torch.float32, device), result.kept_layers)

    variants = {
        "teacher": techniques.get(techniques.REFERENCE),
        "student_pruned": _technique(
            f"pruned-{n}L", f"Pruned to {n} layer{'s' if n != 1 else ''} (untrained)", pruned,
            f"The teacher with only {n} of its {result.teacher_layers} layers kept, before any training.",
            "Removing layers without retraining breaks the model badly: this is the starting point distillation repairs."),
        "student_distilled": _technique(
            student_key(n, run), student_label(n, run),
            lambda _c, _cfg, device: models.load_model(Path(result.student_path), torch.float32, device),
            f"The {n}-layer student after {len(result.losses)} steps ({result.train_seconds / 60:.0f} min here"
            f"{', in bfloat16' if result.bf16_steps else ''}) of learning to match the teacher's next-token "
            "distributions.",
            "A short distillation recovers much of the quality but not all; more steps and more text recover more."),
    }

    def annotate(role: str, record) -> None:
        if role == "student_distilled":
            record.variant_facts = {"distillation": {k: v for k, v in result.to_dict().items() if k != "versions"}
                                    | {"role": role}}
        elif role == "student_pruned":  # shape only: it was never trained, so it carries no training cost
            record.variant_facts = {"distillation": {k: getattr(result, k) for k in (
                "teacher", "student_layers", "teacher_layers", "kept_layers", "student_params")} | {"role": role}}

    records = sweep.measure_variants(
        list(variants.items()), inputs, settings, reference, uuid.uuid4().hex[:12], store=store,
        progress=lambda p: say(p.fraction, p.message), should_stop=stop, span=(0.1, 0.9),
        describe=lambda role, name: f"measuring {role.replace('_', ' ')}: {name}",
        stop_message="Stopped while measuring; the student is saved.", announce=False, annotate=annotate)
    return dict(zip(variants, records))


def summary(result: DistillResult, records: dict) -> dict:
    """The CLI's JSON: the run and, for each of teacher / pruned / distilled, the headline measurements."""
    keys = ("decode_tokens_per_s_median", "ttft_ms_median", "size_mb", "perplexity", "kld_mean", "top1_agreement",
            "mc_accuracy", "mc_accuracy_ci95")
    out = result.to_dict()
    for role, record in records.items():
        out[role] = {k: getattr(record, k) for k in keys} | {"technique": record.technique}
    teacher, distilled = records["teacher"], records["student_distilled"]
    out["measured_speedup"] = distilled.decode_tokens_per_s_median / teacher.decode_tokens_per_s_median
    return out
