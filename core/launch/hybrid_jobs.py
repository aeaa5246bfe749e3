"""The hybrids' job kinds: the dashboard queues a cascade, a prompt-lookup comparison or a GGUF draft for the worker
as it queues a sweep, with progress, a stop button, and the result appended to its JSONL store when it ends."""

from __future__ import annotations

from core.hybrids import classical, curve, gguf_draft, model_cascade, prompt_lookup
from core.launch.job import JobContext, JobKind


def _settings(cls, raw: dict, tuples: tuple[str, ...]):
    """A settings dataclass from its JSON form: the listed fields back to tuples (JSON has only lists)."""
    return cls(**raw | {k: tuple(raw[k]) for k in tuples if k in raw})


def run_cascade_job(args: dict, ctx: JobContext) -> dict:
    result = classical.run_classical(classical.ClassicalSettings(**args["settings"]), ctx.report, ctx.should_stop)
    curve.save_result(result)
    return result.to_dict()


def run_model_cascade_job(args: dict, ctx: JobContext) -> dict:
    settings = _settings(model_cascade.ModelCascadeSettings, args["settings"], ("thresholds",))
    result = model_cascade.run_model_cascade(settings, ctx.report, ctx.should_stop)
    curve.save_result(result)
    return result.to_dict()


def run_prompt_lookup_job(args: dict, ctx: JobContext) -> list[dict]:
    settings = _settings(prompt_lookup.LookupSettings, args["settings"], ("runtimes", "prompt_files"))
    results = prompt_lookup.run_prompt_lookup(args["model"], settings, ctx.report, ctx.should_stop)
    prompt_lookup.save_results(results)
    return [r.to_dict() for r in results]


def run_gguf_draft_job(args: dict, ctx: JobContext) -> list[dict]:
    settings = _settings(gguf_draft.DraftSettings, args["settings"], ("draft_max_tokens", "prompt_files"))
    results = gguf_draft.run_gguf_draft(args["model"], settings, ctx.report, ctx.should_stop)
    gguf_draft.save_results(results)
    return [r.to_dict() for r in results]


def _key(kind: str, args: dict, *names: str) -> str:
    s = args.get("settings", {})
    return "|".join([kind, *(str(s.get(n)) for n in names)])


HYBRID_JOB_KINDS: dict[str, JobKind] = {
    "cascade": JobKind(run_cascade_job, lambda a: _key("cascade", a, "model", "second", "task", "shots"),
                       models=lambda a: [a["settings"].get("model")]),
    "model-cascade": JobKind(run_model_cascade_job,
                             lambda a: _key("model-cascade", a, "model", "first", "second", "task", "max_items"),
                             models=lambda a: [a["settings"].get("model")]),
    "prompt-lookup": JobKind(run_prompt_lookup_job,
                             lambda a: _key("prompt-lookup", a, "runtimes", "technique", "draft_tokens", "new_tokens",
                                            "repeats"),
                             models=lambda a: [a["model"]]),
    "gguf-draft": JobKind(run_gguf_draft_job,
                          lambda a: _key("gguf-draft", a, "target", "draft", "draft_max_tokens", "new_tokens"),
                          models=lambda a: [a["model"]]),
}
