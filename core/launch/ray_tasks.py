"""What runs on the cluster's nodes: the shared vocabulary of the cluster (variants, progress, outcomes) and the
Ray tasks themselves, one per sweep variant (`measure_on_node`) or one per whole job (`run_job_on_node`).

Each task asks for the benchmark slot (`lab_bench: 1`), so timings never overlap on one node. A task reads the
checkpoint shipped through the object store (or a folder every node mounts), writes what it measures straight into
the shared store at `store_url`, and reports its steps to the driver's `_Board`. The driver side is
core/launch/cluster.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.launch.job import JobContext
from core.paths import data_dir
from core.store import ResultStore
from core.store.records import VariantRecord

RAY_ADDRESS_ENV = "LAB_RAY_ADDRESS"
BENCH_RESOURCE = "lab_bench"
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.5  # how often the driver collects progress and checks for a stop
PROGRESS_EVERY_S = 1.0  # a worker reports its steps at most this often (plus every start, end and skip)
MAX_ATTEMPTS = 2  # a variant whose worker died is measured once more
_RECORD_NAMESPACE = uuid.UUID("5b1c9a1e-3d0f-4c55-9e43-0a7f1e6b2c11")


class ClusterError(RuntimeError):
    """The cluster sweep cannot start (or run): one readable sentence, and nothing was written."""


@dataclass(frozen=True)
class Variant:
    model: str  # bundled key, or a folder every node reads
    technique: str  # technique key as the sweep takes it (may name a runtime: "key@runtime")
    device: str  # "cpu" or "cuda"

    def label(self) -> str:
        return f"{Path(self.model).name} · {self.technique} · {self.device}"


@dataclass(frozen=True)
class ClusterProgress:
    fraction: float  # variants finished / all variants
    node: str  # the node's address and host name
    variant: str
    attempt: int
    step: str  # a sweep step ("load", "speed", ...), "start", "done", "skipped", "retry", "failed", "cancelled"
    message: str
    pid: int  # the worker process measuring it (0 for driver-side events)


@dataclass(frozen=True)
class Outcome:
    variant: Variant
    status: str  # "stored", "skipped", "failed", "cancelled"
    attempt: int
    node: str
    record_id: str  # "" unless stored
    message: str


@dataclass(frozen=True)
class ClusterSweep:
    run_id: str
    store: str  # where the records went (password masked)
    outcomes: list[Outcome]

    def stored(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "stored"]


ProgressFn = Callable[[ClusterProgress], None]


def plan(model_names: list[str], technique_keys: list[str], devices: list[str]) -> list[Variant]:
    """Every (model, technique, device), in that order, each once."""
    if not model_names or not technique_keys or not devices:
        raise ValueError("A cluster sweep needs at least one model, one technique and one device.")
    variants = [Variant(m, t, d) for m in model_names for t in technique_keys for d in devices]
    if len(set(variants)) != len(variants):
        raise ValueError("A model, technique or device is listed twice.")
    return variants


def record_id_for(run_id: str, variant: Variant) -> str:
    """The one id this variant's record has in this sweep, whichever attempt writes it."""
    return uuid.uuid5(_RECORD_NAMESPACE, f"{run_id}|{variant.model}|{variant.technique}|{variant.device}").hex



# --- the worker side ---------------------------------------------------------------------------------


class _StampedStore:
    """What run_sweep writes to on a worker: the shared store, with this sweep's id, attempt and record id."""
    def __init__(self, store: ResultStore, run_id: str, variant: Variant, attempt: int):
        self.store, self.run_id, self.variant, self.attempt = store, run_id, variant, attempt
        self.record_id = ""

    def add(self, record: VariantRecord) -> int:
        record.run_id = self.run_id
        record.attempt = self.attempt
        record.record_id = record_id_for(self.run_id, self.variant)
        record.settings = dict(record.settings) | {"cluster_node": _here()}
        self.record_id = record.record_id
        return self.store.add(record)


def _here() -> str:
    import ray  # optional and heavy: only a cluster run needs it

    return f"{ray.util.get_node_ip_address()} ({socket.gethostname()})"


def _materialize(key: str, files: dict[str, bytes]) -> None:
    """Write a shipped checkpoint into this node's data dir, where `models.prepare` finds it ready."""
    from core import models  # torch and transformers: see measure_on_node

    if models.checkpoint_ready(key):
        return
    target = models.checkpoint_dir(key)
    staging = target.with_name(f".{target.name}.{os.getpid()}.incoming")
    for name, data in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    try:
        os.replace(staging, target)  # whole folder at once: a half-written checkpoint is never "ready"
    except OSError:
        if not models.checkpoint_ready(key):
            raise


def _checkpoint_problem(model: str) -> str:
    """Why this node cannot read the shared checkpoint folder `model` ("" when it can)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return f"{model} is not a folder on this node"
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        return f"{model} holds no config.json and *.safetensors weights"
    if not os.access(path / "config.json", os.R_OK):
        return f"{model} is not readable here"
    return ""


def probe_node(store_url: str, shared: list[str]) -> tuple[str, list[str]]:
    """Run on each node before anything is measured: can it reach the store and every shared checkpoint?"""
    problems = [p for p in (_checkpoint_problem(m) for m in shared) if p]
    try:
        if store_url:  # "": a job that writes no records (speculate, serve-context)
            ResultStore.from_url(store_url)
    except ValueError as error:  # StoreError
        problems.append(str(error))
    return _here(), problems


def _local_file(name: str, data: bytes) -> str:
    """A copy of a driver's file on this node, named by its content (the driver's path may not exist here)."""
    folder = data_dir() / "cluster-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}-{name}"
    if not path.is_file():
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_bytes(data)
        os.replace(staging, path)
    return str(path)


def _local_inputs(settings, inputs: dict[str, tuple[str, bytes]]):
    """The settings with the eval set and text pointing at copies on this node (the driver's paths may not exist here)."""
    return dataclasses.replace(settings, **{field: _local_file(name, data) for field, (name, data) in inputs.items()})


def measure_on_node(variant: Variant, settings, store_url: str, run_id: str, attempt: int,
             shipped: dict[str, bytes] | None, inputs: dict[str, tuple[str, bytes]], board) -> Outcome:
    """One variant, measured on this node, its record written to the shared store."""
    node, pid = _here(), os.getpid()
    last = [0.0]

    def tell(step: str, message: str, always: bool = False) -> None:
        now = time.monotonic()
        if always or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            board.report.remote(ClusterProgress(0.0, node, variant.label(), attempt, step, message, pid))

    tell("start", f"{variant.label()}: attempt {attempt} on {node}", always=True)
    # Lazily, after "start": a fresh Ray worker spends seconds importing torch and the lab, and this module stays
    # light so that the driver hears where each variant runs at once (cluster.py imports it too).
    from core import models
    from core.experiments import sweep

    if shipped is not None:
        _materialize(models.resolve(variant.model).key, shipped)
    store = _StampedStore(ResultStore.from_url(store_url), run_id, variant, attempt)
    skipped: list[str] = []

    def progress(p) -> None:
        if p.step == "skipped":
            skipped.append(p.message)
        tell(p.step, p.message, always=p.step in ("skipped", "done"))

    settings = dataclasses.replace(_local_inputs(settings, inputs), device=variant.device)
    sweep.run_sweep(variant.model, [variant.technique], settings, store=store, progress=progress)
    if store.record_id:
        return Outcome(variant, "stored", attempt, node, store.record_id, f"{variant.label()} stored")
    return Outcome(variant, "skipped", attempt, node, "", skipped[0] if skipped else "not measured")



@dataclass(frozen=True)
class JobOutcome:
    kind: str
    node: str
    record_ids: list[str]  # the records it wrote into the shared store
    result: Any  # what the runner returned, as JSON (records as dicts); None if nothing


class _NodeStore:
    """What a job's runner writes to on a node: the shared store, each record marked with the node, its id kept."""
    def __init__(self, store: ResultStore):
        self.store, self.record_ids = store, []

    def _mark(self, record) -> None:
        record.settings = dict(record.settings) | {"cluster_node": _here()}

    def add(self, record: VariantRecord) -> int:
        self._mark(record)
        row = self.store.add(record)
        self.record_ids.append(record.record_id)
        return row

    def add_serving(self, record) -> int:
        self._mark(record)
        row = self.store.add_serving(record)
        self.record_ids.append(record.record_id)
        return row

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def as_json(value: Any) -> Any:
    """A runner's result as plain JSON: records and results by their to_dict(), dataclasses as dicts."""
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _with_paths(value: Any, copies: dict[str, str]) -> Any:
    """A job's JSON arguments with every string that names a shipped file replaced by its copy on this node."""
    if isinstance(value, dict):
        return {k: _with_paths(v, copies) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_paths(v, copies) for v in value]
    return copies.get(value, value) if isinstance(value, str) else value


def _local_args(args, inputs: dict[str, tuple[str, bytes]]):
    """The job's typed arguments with the files it reads pointing at copies on this node."""
    copies = {path: _local_file(name, data) for path, (name, data) in inputs.items()}
    return type(args).from_json(_with_paths(args.to_json(), copies))


def run_job_on_node(run: Callable[[Any, JobContext], Any], args, store_url: str, shipped: dict[str, Any],
                    inputs: dict[str, tuple[str, bytes]], board) -> JobOutcome:
    """One whole job (moe, lora, distill, ...) on this node, through the runner the worker uses; its records are
    written to the shared store. `shipped`: checkpoint key -> ObjectRef of its files, materialized here first."""
    import ray  # optional and heavy: this runs only as a Ray task

    node, pid, kind = _here(), os.getpid(), args.kind
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            board.report.remote(ClusterProgress(fraction, node, kind, 1, "progress", message, pid))

    board.report.remote(ClusterProgress(0.0, node, kind, 1, "start", f"{kind}: started on {node}", pid))
    for key, files in shipped.items():
        _materialize(key, ray.get(files))  # refs inside a dict are not resolved by Ray itself
    store = _NodeStore(ResultStore.from_url(store_url)) if store_url else None
    # No stop flag to read here: the driver stops a job by cancelling its task.
    ctx = JobContext(report=report, should_stop=lambda: False, store=store)
    result = run(_local_args(args, inputs), ctx)
    board.report.remote(ClusterProgress(1.0, node, kind, 1, "done", f"{kind} done on {node}", pid))
    return JobOutcome(kind, node, store.record_ids if store else [], as_json(result))


class _Board:
    """A Ray actor that holds workers' progress until the driver collects it."""
    def __init__(self) -> None:
        self.events: list[ClusterProgress] = []

    def report(self, event: ClusterProgress) -> None:
        self.events.append(event)

    def drain(self) -> list[ClusterProgress]:
        events, self.events = self.events, []
        return events


