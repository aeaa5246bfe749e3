"""What every launcher shares: a job's description (`Job`), what its runner gets (`JobContext`), and what a job
kind is (`JobKind`). The kinds themselves are core/launch/worker.py's `JOB_KINDS`; core/launch/launch.py runs a
`Job` here, in the worker process, or on a Ray cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Where = Literal["inline", "worker", "ray"]
WHERE: tuple[str, ...] = ("inline", "worker", "ray")


@dataclass(frozen=True)
class Job:
    """One job: its kind (a key of JOB_KINDS) and its arguments, JSON-able, as the dashboard queues them."""
    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # shown in the queue; the kind when empty

    def title(self) -> str:
        return self.label or self.kind


@dataclass
class JobContext:
    """What a runner gets: progress and stop callbacks wired to the queue, and the results store."""
    report: Callable[[float, str], None]
    should_stop: Callable[[], bool]
    store: Any
    live: Any = None  # a dataclass the runner fills as it goes (a loss log); written with the progress


@dataclass(frozen=True)
class JobKind:
    run: Callable[[dict, JobContext], Any]  # returns what the job made (records, a result), for inline and Ray callers
    similar: Callable[[dict], str]  # jobs with equal keys take about as long
    models: Callable[[dict], list[str]] = lambda args: []  # model names the job loads
    files: Callable[[dict], list[str]] = lambda args: []  # files the job reads
