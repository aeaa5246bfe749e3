"""The hybrids' job kinds: a cascade (a classifier or a small model first), prompt lookup, and a GGUF draft on
llama-server. Each result is appended to its JSONL file on the machine that launched the job (`JobKind.results`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.hybrids import classical, curve, gguf_draft, model_cascade, prompt_lookup
from core.launch.job import JobArgs, JobContext
from core.launch.kinds.base import JobKind, register


def _key(kind: str, settings, *names: str) -> str:
    values = (getattr(settings, n) for n in names)  # tuples written as the lists their JSON form holds
    return "|".join([kind, *(str(list(v) if isinstance(v, tuple) else v) for v in values)])


@dataclass(frozen=True)
class CascadeArgs(JobArgs):
    kind: ClassVar[str] = "cascade"
    settings: classical.ClassicalSettings = field(default_factory=classical.ClassicalSettings)


def run_cascade(args: CascadeArgs, ctx: JobContext):
    return classical.run_classical(args.settings, ctx.report, ctx.should_stop)


def _cascade_files(a: CascadeArgs) -> list[str]:
    s = a.settings
    return [f for f in (s.train_file, s.test_file, s.data_file) if f]


CASCADE = register(JobKind(
    CascadeArgs, run_cascade, similar=lambda a: _key("cascade", a.settings, "model", "second", "task", "shots"),
    models=lambda a: [a.settings.model], files=_cascade_files, results=curve.results_path,
    size=lambda a: float(a.settings.shots + 1)))


@dataclass(frozen=True)
class ModelCascadeArgs(JobArgs):
    kind: ClassVar[str] = "model-cascade"
    settings: model_cascade.ModelCascadeSettings = field(default_factory=model_cascade.ModelCascadeSettings)


def run_model_cascade(args: ModelCascadeArgs, ctx: JobContext):
    return model_cascade.run_model_cascade(args.settings, ctx.report, ctx.should_stop)


MODEL_CASCADE = register(JobKind(
    ModelCascadeArgs, run_model_cascade,
    similar=lambda a: _key("model-cascade", a.settings, "model", "first", "second", "task", "max_items"),
    models=lambda a: [a.settings.model], files=lambda a: [a.settings.data] if a.settings.data else [],
    results=curve.results_path, size=lambda a: float(a.settings.max_items or 1000)))


@dataclass(frozen=True)
class PromptLookupArgs(JobArgs):
    kind: ClassVar[str] = "prompt-lookup"
    model: str
    settings: prompt_lookup.LookupSettings = field(default_factory=prompt_lookup.LookupSettings)


def run_prompt_lookup(args: PromptLookupArgs, ctx: JobContext):
    return prompt_lookup.run_prompt_lookup(args.model, args.settings, ctx.report, ctx.should_stop)


PROMPT_LOOKUP = register(JobKind(
    PromptLookupArgs, run_prompt_lookup,
    similar=lambda a: _key("prompt-lookup", a.settings, "runtimes", "technique", "draft_tokens", "new_tokens",
                           "repeats"),
    models=lambda a: [a.model], files=lambda a: list(a.settings.prompt_files), results=prompt_lookup.results_path,
    size=lambda a: float(len(a.settings.runtimes) * len(a.settings.prompt_files) * a.settings.new_tokens * (a.settings.repeats + 1))))


@dataclass(frozen=True)
class GGUFDraftArgs(JobArgs):
    kind: ClassVar[str] = "gguf-draft"
    model: str
    settings: gguf_draft.DraftSettings = field(default_factory=gguf_draft.DraftSettings)


def run_gguf_draft(args: GGUFDraftArgs, ctx: JobContext):
    return gguf_draft.run_gguf_draft(args.model, args.settings, ctx.report, ctx.should_stop)


def _draft_files(a: GGUFDraftArgs) -> list[str]:
    """The prompt files, and the draft itself when it is a file rather than a technique key or "student"."""
    s = a.settings
    return [*s.prompt_files, *([s.draft] if gguf_draft.is_draft_file(s.draft) else [])]


GGUF_DRAFT = register(JobKind(
    GGUFDraftArgs, run_gguf_draft,
    similar=lambda a: _key("gguf-draft", a.settings, "target", "draft", "draft_max_tokens", "new_tokens"),
    models=lambda a: [a.model], files=_draft_files, results=gguf_draft.results_path,
    size=lambda a: float((len(a.settings.draft_max_tokens) + 1) * len(a.settings.prompt_files) * a.settings.new_tokens
                         * (a.settings.repeats + 1))))
