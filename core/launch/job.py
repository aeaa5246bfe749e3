"""The vocabulary every launcher shares: where a job runs (`Where`), a job's typed arguments (`JobArgs`, which
every kind subclasses), a job as launched (`Job`: its arguments and a label), what its runner gets (`JobContext`)
and what a launch gives back (`Launched`). The kinds themselves are core/launch/kinds/.

The queue and Ray carry a job's arguments as JSON (`JobArgs.to_json`); `from_json` gives the dataclass back, nested
settings and tuples included, so nobody unpacks a dict by hand.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

Where = Literal["inline", "worker", "ray"]
WHERE: tuple[str, ...] = typing.get_args(Where)


@dataclass(frozen=True)
class JobArgs:
    """A job's arguments; each kind subclasses it with its own fields and names itself in `kind`."""
    kind: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return _plain(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]):
        """The dataclass back from its JSON form; an unknown or missing field is a ValueError naming it."""
        if not isinstance(raw, dict):
            raise ValueError(f"{cls.kind} job: arguments must be a JSON object, got {type(raw).__name__}")
        return _build(cls, raw, cls.kind)


@dataclass(frozen=True)
class Job:
    """One job as it is launched: its typed arguments (they name the kind) and the words the queue shows."""
    args: JobArgs
    label: str = ""

    @property
    def kind(self) -> str:
        return self.args.kind

    def title(self) -> str:
        return self.label or self.kind


@dataclass
class JobContext:
    """What a runner gets: progress and stop callbacks wired to the queue, and the results store."""
    report: Callable[[float, str], None]
    should_stop: Callable[[], bool]
    store: Any
    live: Any = None  # a dataclass the runner fills as it goes (a loss log); written with the progress


@dataclass
class Launched:
    """What a launch gave back."""
    where: str
    state: str = "done"  # "waiting" for a queued job not waited for; "failed" with `error` when part of it failed
    result: Any = None  # the runner's result (inline), its JSON form (ray), None (worker)
    record_ids: list[str] = field(default_factory=list)  # records it wrote (ray)
    job_id: int | None = None  # the queue's id (worker)
    node: str = ""  # where it ran (ray)
    error: str = ""


# ---------------------------------------------------------------- JSON form and back


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _build(cls: type, raw: dict[str, Any], where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    values = {name: _typed(hints[name], raw[name], f"{where}.{name}") for name in fields if name in raw}
    try:
        return cls(**values)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"{where}: {e}") from None


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` (from JSON) as the annotated type: nested dataclasses, tuples, paths; everything else as is."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _typed(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return _build(hint, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        inner = typing.get_args(hint)
        item = inner[0] if inner else Any
        return tuple(_typed(item, v, where) for v in value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    return value
