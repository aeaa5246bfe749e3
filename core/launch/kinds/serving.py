"""Job kinds of the serving axis: a load test of a real loopback server, the KV cache against context, and the KV
cache type as a lever on llama-server (memory, speed and quality, checked against the memory model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.launch.job import JobArgs, JobContext
from core.launch.kinds.base import JobKind, register
from core.serving import bench, kv, memory_bench


@dataclass(frozen=True)
class ServeBenchArgs(JobArgs):
    kind: ClassVar[str] = "serve-bench"
    model: str
    techniques: tuple[str, ...]
    settings: bench.ServeSettings = field(default_factory=bench.ServeSettings)


def run_serve_bench(args: ServeBenchArgs, ctx: JobContext):
    return bench.serve_bench(args.model, list(args.techniques), args.settings, store=ctx.store, report=ctx.report,
                             should_stop=ctx.should_stop)


def _serve_key(a: ServeBenchArgs) -> str:
    s = a.settings
    return (f"serve|{a.model}|{','.join(sorted(a.techniques))}|{list(s.concurrency)}|{list(s.prompt_tokens)}|"
            f"{s.new_tokens}|{s.repeats}")


SERVE_BENCH = register(JobKind(
    ServeBenchArgs, run_serve_bench, similar=_serve_key, models=lambda a: [a.model],
    size=lambda a: float(len(a.techniques) * sum(a.settings.concurrency) * len(a.settings.prompt_tokens)
                         * a.settings.new_tokens * a.settings.repeats)))


@dataclass(frozen=True)
class ServeContextArgs(JobArgs):
    kind: ClassVar[str] = "serve-context"
    model: str
    contexts: tuple[int, ...] = ()  # () = the default ladder
    decode_tokens: int = 16


def run_serve_context(args: ServeContextArgs, ctx: JobContext):
    return kv.measure_context(args.model, list(args.contexts) or None, args.decode_tokens, report=ctx.report,
                              should_stop=ctx.should_stop)


SERVE_CONTEXT = register(JobKind(ServeContextArgs, run_serve_context, similar=lambda a: f"context|{a.model}",
                                 models=lambda a: [a.model], size=lambda a: float(len(a.contexts) or 6)))


@dataclass(frozen=True)
class ServeMemoryArgs(JobArgs):
    kind: ClassVar[str] = "serve-memory"
    model: str
    techniques: tuple[str, ...] = ()  # () = the lab's Q8_0 export and the file the model ships as
    settings: memory_bench.MemorySettings = field(default_factory=memory_bench.MemorySettings)


def run_serve_memory(args: ServeMemoryArgs, ctx: JobContext):
    return memory_bench.serve_memory(args.model, args.techniques, args.settings, report=ctx.report,
                                     should_stop=ctx.should_stop)


SERVE_MEMORY = register(JobKind(
    ServeMemoryArgs, run_serve_memory, similar=lambda a: f"memory|{a.model}", models=lambda a: [a.model],
    size=lambda a: float((len(a.techniques) or 2) * len(a.settings.cache_types) * len(a.settings.contexts)
                         * len(a.settings.slots))))
