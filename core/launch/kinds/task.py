"""The task run's job kind: every chosen variant answers the user's task file, each answer checked
(core/experiments/task_run.py). Its result is appended to data/tasks/task_runs.jsonl where the job was launched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from core.experiments import task_run
from core.launch.job import JobArgs, JobContext
from core.launch.kinds.base import JobKind, refusing, register


@dataclass(frozen=True)
class TaskArgs(JobArgs):
    kind: ClassVar[str] = "task"
    model: str
    settings: task_run.TaskSettings = field(default_factory=task_run.TaskSettings)


def run_task(args: TaskArgs, ctx: JobContext):
    return task_run.run_task(args.model, args.settings, ctx.report, ctx.should_stop)


TASK = register(JobKind(
    TaskArgs, run_task,
    similar=lambda a: "|".join(["task", a.model, *a.settings.techniques, str(a.settings.new_tokens)]),
    models=lambda a: [a.model], files=lambda a: [a.settings.task_file], results=task_run.results_path,
    # answers generated: an estimate from a run of another size scales by it
    size=lambda a: float(len(a.settings.techniques) * a.settings.new_tokens),
    refuse=refusing(lambda a: task_run.check_request(a.settings))))
