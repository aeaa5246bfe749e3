"""The one-off work a fresh machine needs before its first jobs are quick, done by the worker when it is idle:
make the bundled model loadable (dequantized once), measure this machine's speed for estimates
(core/experiments/machine_speed.py), build the GGUF files of the default sweep, and generate the teacher's answers a
first distillation needs. Without it, a class's first Measure spent its first minutes on that work, and a first
distillation sat at "teacher answers: 24/360" with no estimate.

The worker queues this job itself when nothing waits (core/launch/worker.py) and gives way to any job queued
meanwhile: it stops between (and inside) its steps, keeps what it finished, and is queued again at the next idle
moment until every step is done. Each step's product is a cache that the jobs themselves would make and reuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from core import models, techniques
from core.launch.job import JobArgs, JobContext
from core.launch.kinds.base import JobKind, register
from core.experiments import machine_speed
from core.measure import benchmark
from core.paths import Stopped, data_dir
from core.techniques import distill_corpus, distillation

LAB = "the lab"  # the owner shown for it in the queue
GAVE_WAY = "gave way to a queued job; what it finished is kept, and the rest follows when the machine is idle again"


@dataclass(frozen=True)
class PrepareArgs(JobArgs):
    kind: ClassVar[str] = "prepare"
    model: str = models.DEFAULT_MODEL
    gguf: bool = True  # the default sweep's GGUF files
    teacher_answers: bool = True  # the default distillation's corpus


def _gguf_keys() -> list[str]:
    return [k for k in techniques.defaults_for("sweep") if techniques.get(k).build_artifact is not None]


def missing(args: PrepareArgs) -> list[str]:
    """The steps not done yet on this machine, in the order they run ([] = ready)."""
    spec = models.resolve(args.model)
    steps = []
    if not models.checkpoint_ready(spec.key):
        steps.append("model")
    if not machine_speed.steady(machine_speed.saved(benchmark.hardware_fingerprint("cpu"))):
        steps.append("speed")
    if args.gguf:  # the files are cached by the GGUF code itself; this notes which were made (or found) here
        steps += [f"gguf:{k}" for k in _gguf_keys() if f"{spec.key}|gguf:{k}" not in _marked()]
    answers = distillation.DistillSettings().corpus_answer_tokens
    if args.teacher_answers and not distill_corpus.corpus_cache_path(spec.key, answers).is_file():
        steps.append("teacher answers")
    return steps


def describe(step: str) -> str:
    """A step in words for the queue and the progress line."""
    if step.startswith("gguf:"):
        return f"the {techniques.get(step.split(':', 1)[1]).label} file"
    return {"model": "the bundled model", "speed": "this machine's speed",
            "teacher answers": "the teacher's answers for a first distillation"}.get(step, step)


def _marker() -> Path:
    return data_dir() / "prepared.json"


def _marked() -> set[str]:
    try:
        return set(json.loads(_marker().read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _mark(entry: str) -> None:
    tmp = _marker().with_suffix(".tmp")
    tmp.write_text(json.dumps(sorted(_marked() | {entry})))
    tmp.replace(_marker())


def run_prepare(args: PrepareArgs, ctx: JobContext) -> list[str]:
    """Run the missing steps in order; returns the steps done. Stops (keeping what is done) when asked."""
    spec = models.resolve(args.model)
    steps, done = missing(args), []
    for i, step in enumerate(steps):
        if ctx.should_stop():
            raise Stopped(GAVE_WAY)
        say = _reporter(ctx, i, len(steps), step)
        checkpoint = models.prepare(spec, progress=lambda m: say(0.0, m))
        if step == "speed":
            say(0.1, "measuring this machine's decode and training speed for estimates (about 15 s)")
            machine_speed.save(machine_speed.measure(checkpoint, spec.key, benchmark.hardware_fingerprint("cpu")))
        elif step.startswith("gguf:"):
            key = step.split(":", 1)[1]
            techniques.get(key).artifact(checkpoint, torch.get_num_threads(), lambda m: say(0.5, m))
            _mark(f"{spec.key}|{step}")
        elif step == "teacher answers":
            _teacher_answers(spec, checkpoint, lambda f, m: say(f, m), ctx.should_stop)
        done.append(step)
        say(1.0, "done")
    return done


def _reporter(ctx: JobContext, i: int, n: int, step: str):
    def say(fraction: float, message: str) -> None:
        ctx.report((i + fraction) / n, f"getting ready, step {i + 1} of {n} ({describe(step)}): {message}")
    return say


def _teacher_answers(spec: models.ModelSpec, checkpoint, report, stop) -> None:
    answers = distillation.DistillSettings().corpus_answer_tokens
    teacher = models.load_model(checkpoint, torch.float32, "cpu")
    tokenizer = models.load_tokenizer(checkpoint)
    distill_corpus.teacher_answers(teacher, tokenizer, spec.key, answers, "cpu", report, stop)


PREPARE = register(JobKind(PrepareArgs, run_prepare, similar=lambda a: f"prepare|{a.model}|{','.join(missing(a))}",
                           models=lambda a: [a.model], size=lambda a: float(len(missing(a)) or 1)))
