"""What a job kind is: its typed arguments (`JobArgs`) and the kind itself (`JobKind`: how it runs, what it
reads, what makes two jobs alike, where its results are kept), in one registry (`KINDS`).

Pages, the CLI, the worker and Ray all build and read the same `JobArgs` dataclass (core/launch/job.py); the queue
and Ray carry its JSON form. A kind registers itself with `register`; `core/launch/launch.py` runs any of them here,
in the worker's process, or on a Ray cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from core.launch.job import JobArgs, JobContext
from core.store import jsonl

A = TypeVar("A", bound=JobArgs)


def _none(args: Any) -> list[str]:
    return []


def _fine(args: Any) -> str | None:
    return None


class Refused(ValueError):
    """A job that cannot run, refused at the door (before it is queued or run), with what to do instead."""


def refusing(check: Callable[[A], Any]) -> Callable[[A], str | None]:
    """A kind's `refuse` from a check that raises ValueError with its reason (the checks pages already call)."""
    def refuse(args: A) -> str | None:
        try:
            check(args)
        except ValueError as e:
            return str(e)
        return None
    return refuse


@dataclass(frozen=True)
class JobKind(Generic[A]):
    """One kind of job. `run` measures and returns what it made (records, a result); `results` names the JSONL file
    a result is appended to on the machine that launched the job (after a Ray task too, so pages find it), or None
    when the job writes records into the store itself."""
    args_type: type[A]
    run: Callable[[A, JobContext], Any]
    similar: Callable[[A], str]  # jobs with equal keys take about as long (start estimates)
    models: Callable[[A], list[str]] = _none  # model names the job loads (a viewer may name only the lab's own)
    files: Callable[[A], list[str]] = _none  # files the job reads (a viewer's must be uploaded or bundled)
    results: Callable[[], Path] | None = None
    on_ray: Callable[..., Any] | None = None  # a kind's own fan-out over a cluster; None: one task runs it whole
    # How much work a job is, in the kind's own unit (steps, variants, prompts): an estimate from a job of the same
    # kind but another size scales by it (core/launch/estimates.py). And what bounds its time: "decode" (generating
    # and scoring) or "train" (forward and backward), which of this machine's measured speeds it scales with.
    size: Callable[[A], float] = lambda a: 1.0
    bound: str = "decode"
    # seconds the job spends by design on any machine (a training budget in minutes), 0 when its work is a count:
    # such a job is estimated from jobs alike, else as at least its budget, never scaled from a job of another size
    budget_s: Callable[[A], float] = lambda a: 0.0
    # why this job cannot run, found cheaply (no model loads): a budget below any file, a missing student; None: fine
    refuse: Callable[[A], str | None] = _fine

    @property
    def name(self) -> str:
        return self.args_type.kind

    def keep(self, result_json: Any) -> None:
        """Append a result (its JSON form: one object or a list of them) to the kind's JSONL file."""
        if self.results is not None and result_json is not None:
            jsonl.append(self.results(), result_json if isinstance(result_json, list) else [result_json])


KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    if not kind.name:
        raise ValueError(f"{kind.args_type.__name__} names no kind")
    if kind.name in KINDS and KINDS[kind.name].args_type is not kind.args_type:
        raise ValueError(f"job kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind
    return kind


def get(name: str) -> JobKind:
    if name not in KINDS:
        raise ValueError(f"Unknown job kind {name!r}; known: {', '.join(sorted(KINDS))}.")
    return KINDS[name]


def kind_of(args: JobArgs) -> JobKind:
    return get(args.kind)


def refusal(args: JobArgs) -> str | None:
    """Why a job cannot run, before it is queued or run: a file it reads that is not there, then its kind's own
    checks. Pages, the CLI and the queue all come through core/launch/launch.py, so all refuse alike."""
    kind = kind_of(args)
    missing = [f for f in filter(None, kind.files(args)) if not Path(f).expanduser().is_file()]
    if missing:
        return f"{', '.join(missing)}: no such file here. Upload it again or give an existing file."
    return kind.refuse(args)


def check(args: JobArgs) -> None:
    """`refusal` as an exception: Refused(reason)."""
    if (reason := refusal(args)) is not None:
        raise Refused(reason)


def parse(name: str, raw: dict[str, Any]) -> JobArgs:
    """A queued or shipped job's arguments, typed again."""
    return get(name).args_type.from_json(raw)
