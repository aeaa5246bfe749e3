"""Job kinds that train something, then measure it: LoRA / QLoRA / full fine-tuning, distillation, and a
distilled student as a speculative-decoding draft."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from core import models
from core.experiments import distill_run, finetune_run, speculative
from core.experiments.sweep import SweepSettings
from core.launch.job import JobArgs, JobContext
from core.launch.kinds.base import JobKind, register
from core.techniques import distill_corpus, distillation, lora

TRAIN_SHARE = 0.8  # of a job's progress bar: training; the rest is measuring what it made


def _span(ctx: JobContext, start: float, width: float):
    return lambda f, m: ctx.report(start + width * f, m)


@dataclass(frozen=True)
class LoraArgs(JobArgs):
    kind: ClassVar[str] = "lora"
    model: str
    settings: lora.FinetuneSettings = field(default_factory=lora.FinetuneSettings)
    task: str = "support-routing"  # a bundled task; ignored when `data` is given
    data: str | None = None  # the user's JSONL of {"prompt", "completion"}
    usd_per_hour: float = 0.0
    hardware_preset: str = "laptop-cpu"
    launched_from: str = "dashboard"
    measure_with: SweepSettings | None = None  # the merged model's measurement for the map; None: a full one


def run_lora(args: LoraArgs, ctx: JobContext):
    data = Path(args.data) if args.data else None
    ctx.live = lora.TrainLog()
    result, model = finetune_run.run_finetune(args.model, args.settings, None if data else args.task, data,
                                              args.usd_per_hour, _span(ctx, 0.0, TRAIN_SHARE), ctx.should_stop,
                                              ctx.live)
    if ctx.store is not None:  # None: the CLI's --no-store
        finetune_run.store_record(model, result, ctx.store, args.usd_per_hour, args.hardware_preset,
                                  _span(ctx, TRAIN_SHARE, 1 - TRAIN_SHARE), ctx.should_stop,
                                  launched_from=args.launched_from, measure_with=args.measure_with)
    return result


LORA = register(JobKind(
    LoraArgs, run_lora,
    similar=lambda a: f"lora|{a.model}|{a.settings.method}|{a.settings.steps}|{a.settings.batch_size}|{bool(a.data)}",
    models=lambda a: [a.model], files=lambda a: [a.data] if a.data else [],
    size=lambda a: float(a.settings.steps * a.settings.batch_size), bound="train"))


@dataclass(frozen=True)
class DistillArgs(JobArgs):
    kind: ClassVar[str] = "distill"
    teacher: str
    settings: distillation.DistillSettings = field(default_factory=distillation.DistillSettings)
    corpus: str | None = None  # the user's text; None: the teacher's answers to the bundled prompts
    usd_per_hour: float = 0.0
    hardware_preset: str = "laptop-cpu"
    launched_from: str = "dashboard"
    mc_max_items: int = 0  # 0 = every question
    measure_with: SweepSettings | None = None  # how the three models are measured; None: fully (mc_max_items aside)


def run_distill(args: DistillArgs, ctx: JobContext):
    ctx.live = distillation.TrainLog()
    corpus = Path(args.corpus) if args.corpus else None
    result = distill_run.run_distill(args.teacher, args.settings, corpus, args.usd_per_hour,
                                     _span(ctx, 0.0, TRAIN_SHARE), ctx.should_stop, ctx.live)
    records = distill_run.measure(result, ctx.store, args.usd_per_hour, args.hardware_preset,
                                  _span(ctx, TRAIN_SHARE, 1 - TRAIN_SHARE), ctx.should_stop,
                                  launched_from=args.launched_from, mc_max_items=args.mc_max_items,
                                  measure_with=args.measure_with)
    return distill_run.summary(result, records)


def _teacher_answers(a: DistillArgs) -> str:
    """Whether a first run must generate the teacher's answers (minutes) or finds them cached: two jobs alike in
    every setting take very different times on either side of that."""
    if a.corpus and not a.settings.answers_with_text:
        return "own corpus"
    try:
        key = models.resolve(a.teacher).key
    except models.ModelError:
        return "unknown teacher"
    cached = distill_corpus.corpus_cache_path(key, a.settings.corpus_answer_tokens).is_file()
    return ("own corpus + " if a.corpus else "") + ("teacher answers cached" if cached else "teacher answers to generate")


def _distill_key(a: DistillArgs) -> str:
    s = a.settings
    work = f"budget_minutes={s.budget_minutes:g}" if s.budget_minutes else f"steps={s.steps}"
    return (f"distill|{a.teacher}|student_layers={s.student_layers},{work},batch_size={s.batch_size},"
            f"seq_len_tokens={s.seq_len_tokens},train_last_layers={s.train_last_layers}|{_teacher_answers(a)}")


DISTILL = register(JobKind(
    DistillArgs, run_distill, similar=_distill_key, models=lambda a: [a.teacher],
    files=lambda a: [a.corpus] if a.corpus else [],
    size=lambda a: float(a.settings.steps * a.settings.batch_size * a.settings.seq_len_tokens), bound="train",
    budget_s=lambda a: 60 * a.settings.budget_minutes))


@dataclass(frozen=True)
class SpeculateArgs(JobArgs):
    kind: ClassVar[str] = "speculate"
    model: str
    draft: str  # the draft's folder: a distilled student
    draft_tokens: int = 4
    max_new_tokens: int = 64
    prompts: int = 10  # the first N bundled prompts, each timed alone and with the draft

    def __post_init__(self) -> None:
        available = len(speculative.bundled_prompts())
        if not 1 <= self.prompts <= available:
            raise ValueError(f"prompts is how many of the {available} bundled prompts to time: between 1 and "
                             f"{available}, got {self.prompts}.")


def run_speculate(args: SpeculateArgs, ctx: JobContext):
    return speculative.run_speculate(args.model, args.draft, args.draft_tokens, args.max_new_tokens,
                                     speculative.bundled_prompts()[: args.prompts], report=ctx.report,
                                     should_stop=ctx.should_stop)


def _draft_saved(a: SpeculateArgs) -> str | None:
    try:
        models.resolve(a.draft)  # a folder that is not there is refused in words; nothing loads
        return None
    except models.ModelError as e:
        return (f"{e} A draft is a distilled student's folder: distil one first (the Distill page, or `python -m "
                "core distill`), then name its folder.")


SPECULATE = register(JobKind(
    SpeculateArgs, run_speculate,
    similar=lambda a: f"speculate|{a.model}|{a.draft_tokens}|{a.max_new_tokens}|prompts={a.prompts}",
    models=lambda a: [a.model, a.draft], results=speculative.results_path,
    size=lambda a: float(a.max_new_tokens * a.prompts),
    refuse=_draft_saved))
