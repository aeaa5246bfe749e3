"""Sweeps fanned out over a Ray cluster: one Ray task per variant (model x technique x device).

Timings must never overlap on one machine, so every task asks for the custom resource `lab_bench: 1`
(each node offers one) and GPU tasks also for `num_gpus=1`. A task measures its one variant with the
same `sweep.run_sweep` a local sweep uses and writes the record straight into the shared store, so
each record carries the fingerprint of the machine that measured it.

A worker that dies loses only its variant: the driver measures it again once, on another node when
there is one, and the record says `attempt=2`. A record's id is derived from (sweep, variant), so even
a worker that died after its write cannot make a second row. The checkpoint reaches workers without
a hub: bundled models are prepared once on the driver and their files shipped through Ray's object
store, or every node reads a shared folder the user names.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from core.paths import repo_root
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


def configured_address() -> str | None:
    return os.environ.get(RAY_ADDRESS_ENV, "").strip() or None


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


# --- connecting --------------------------------------------------------------------------------------


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.removeprefix("ray://")
    if text in ("auto", "local") or ":" not in text:
        return None
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else -1


def _unreachable(address: str, reason: str) -> ClusterError:
    return ClusterError(
        f"Cannot reach the Ray cluster at {address}: {reason}. Start one with `ray start --head` and use "
        f"--ray auto on that machine (or ray://HEAD:10001 from another), or unset {RAY_ADDRESS_ENV} to measure "
        "on this machine alone. Nothing was measured or written."
    )


def connect(address: str) -> None:
    """Join the cluster at `address` as its driver (once per process); a clear ClusterError if it is not there."""
    target = _host_port(address)
    if target is not None:  # fail in seconds, not after Ray's own minute of retries
        host, port = target
        if port <= 0:
            raise _unreachable(address, "the address needs a port, such as ray://head:10001 or head:6379")
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as error:
            raise _unreachable(address, error.strerror or str(error)) from None
    import ray

    if ray.is_initialized():
        return
    # The lab's code travels with the job, so every node runs the same version of it.
    runtime_env = {"working_dir": str(repo_root()),
                   "excludes": [".git", ".venv", "data", "artifacts", "__pycache__", ".pytest_cache", "*.sqlite*"]}
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if os.environ.get("RAY_AUTH_MODE") != "token":  # Ray's clusters ask for a token by default
            reason += " (if the cluster uses token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN here)"
        raise _unreachable(address, reason) from None


def bench_nodes() -> list[dict[str, Any]]:
    """Alive nodes that offer the benchmark slot."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(BENCH_RESOURCE, 0) >= 1]


def _node_name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node.get('NodeManagerHostname', '?')})"


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
    import ray

    return f"{ray.util.get_node_ip_address()} ({socket.gethostname()})"


def _materialize(key: str, files: dict[str, bytes]) -> None:
    """Write a shipped checkpoint into this node's data dir, where `models.prepare` finds it ready."""
    from core import models

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


def _probe(store_url: str, shared: list[str]) -> tuple[str, list[str]]:
    """Run on each node before anything is measured: can it reach the store and every shared checkpoint?"""
    problems = [p for p in (_checkpoint_problem(m) for m in shared) if p]
    try:
        ResultStore.from_url(store_url)
    except ValueError as error:  # StoreError
        problems.append(str(error))
    return _here(), problems


def _local_inputs(settings, inputs: dict[str, tuple[str, bytes]]):
    """The settings with the eval set and text pointing at copies on this node (the driver's paths may not exist here)."""
    import hashlib

    from core.paths import data_dir

    folder = data_dir() / "cluster-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    moved = {}
    for field, (name, data) in inputs.items():
        path = folder / f"{hashlib.sha256(data).hexdigest()[:16]}-{name}"
        if not path.is_file():
            staging = path.with_name(f".{path.name}.{os.getpid()}")
            staging.write_bytes(data)
            os.replace(staging, path)
        moved[field] = str(path)
    return dataclasses.replace(settings, **moved)


def _measure(variant: Variant, settings, store_url: str, run_id: str, attempt: int,
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
    from core import models
    from core.experiments import sweep  # after "start": a fresh worker spends its first seconds importing these

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


# --- the driver side ---------------------------------------------------------------------------------


def is_shared_path(name: str) -> bool:
    """A model named by a folder path (absolute, ./, ../ or ~): read by each worker, not shipped."""
    return Path(name).is_absolute() or name.startswith(("./", "../", "~"))


def _ship(model_names: list[str], progress: Callable[[str], None]) -> dict[str, Any]:
    """model -> ObjectRef of its checkpoint files; prepared here once, read by every worker from the object store."""
    import ray

    from core import models

    shipped = {}
    for name in model_names:
        if is_shared_path(name):
            continue  # a folder the user names: every node must read it (checked by the probe), this one need not
        spec = models.resolve(name)
        if spec.source == "local":
            continue  # a folder the user names: every node must read it (checked by the probe)
        if spec.source == "hub":
            raise ClusterError(f"{name} is a Hugging Face id; workers do not download from the hub. Save it "
                               "to a folder every node mounts and pass that folder. Nothing was written.")
        folder = models.prepare(spec, progress=progress)
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        progress(f"Shipping {spec.key} ({sum(map(len, files.values())) / 1e6:.0f} MB) through the object store")
        shipped[name] = ray.put(files)
    return shipped


def _preflight(store: ResultStore, variants: list[Variant], shared: list[str]) -> list[dict[str, Any]]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = bench_nodes()
    if not nodes:
        raise ClusterError(f"No node of the cluster offers the `{BENCH_RESOURCE}` resource, so nothing would run. "
                           f"Start each node with `ray start ... --resources '{{\"{BENCH_RESOURCE}\": 1}}'`.")
    if any(v.device == "cuda" for v in variants) and not any(n["Resources"].get("GPU", 0) >= 1 for n in nodes):
        raise ClusterError("The sweep asks for CUDA but no benchmark node of the cluster has a GPU. "
                           "Nothing was written.")
    if store.backend == "sqlite" and len(nodes) > 1:
        raise ClusterError(f"The results store is the local file {store.describe()}, which the other nodes "
                           "cannot write. Set LAB_STORE_URL to a PostgreSQL every node reaches. Nothing was written.")
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(store.url_with_password(), shared) for n in nodes])
    problems = [f"{node}: {'; '.join(found)}" for node, found in answers if found]
    if problems:
        raise ClusterError("A worker cannot reach what the sweep needs, so nothing was measured or written. "
                           + " | ".join(problems)
                           + ". Put the checkpoint on a path every node mounts, or name a bundled model to "
                             "ship it from this machine.")
    return nodes


def _resolve_devices(devices: list[str]) -> list[str]:
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    resolved = [("cuda" if has_gpu else "cpu") if d == "auto" else d for d in devices]
    if any(d not in ("cpu", "cuda") for d in resolved):
        raise ValueError(f"Devices must be cpu, cuda or auto, got {devices}")
    return list(dict.fromkeys(resolved))


def run_cluster_sweep(model_names: list[str], technique_keys: list[str], settings, store: ResultStore,
                      address: str | None = None, devices: list[str] | None = None,
                      progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
                      ) -> ClusterSweep:
    """Measure every (model, technique, device) on the cluster, one Ray task each, into `store`.

    Finished variants stay stored when the sweep is stopped (`should_stop`) or a variant fails.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    report = progress or (lambda p: None)
    stop = should_stop or (lambda: False)
    connect(address or configured_address() or "auto")
    variants = plan(model_names, technique_keys, _resolve_devices(devices or [settings.device]))
    say = lambda message: report(ClusterProgress(0.0, "driver", "", 0, "prepare", message, 0))  # noqa: E731
    shipped = _ship(model_names, say)
    shared = [m for m in model_names if m not in shipped]
    nodes = _preflight(store, variants, shared)
    run_id = uuid.uuid4().hex[:12]
    store_url = store.url_with_password()
    board = ray.remote(num_cpus=0)(_Board).remote()
    # The eval set and the text travel too: the driver's paths (and uploads) need not exist on a node.
    inputs = ray.put({field: (Path(getattr(settings, field)).name, Path(getattr(settings, field)).read_bytes())
                      for field in ("eval_set", "ppl_text")})
    measure = ray.remote(max_retries=0)(_measure)
    say(f"Sweep {run_id}: {len(variants)} variants on {len(nodes)} node(s): {', '.join(map(_node_name, nodes))}")

    last_node: dict[Variant, str] = {}  # node id a variant last ran on, to retry elsewhere

    def submit(variant: Variant, attempt: int, avoid: str | None = None):
        options: dict[str, Any] = {"resources": {BENCH_RESOURCE: 1}}
        if variant.device == "cuda":
            options["num_gpus"] = 1
        others = [n["NodeID"] for n in bench_nodes() if n["NodeID"] != avoid]
        if avoid and others:  # soft: if that node is busy or gone, anywhere will do
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(others[0], soft=True)
        return measure.options(**options).remote(variant, settings, store_url, run_id, attempt,
                                                 shipped.get(variant.model), inputs, board)

    pending = {submit(v, 1): (v, 1) for v in variants}
    outcomes: list[Outcome] = []
    node_ids = {f"{n['NodeManagerAddress']}": n["NodeID"] for n in nodes}

    def relay() -> None:
        for event in ray.get(board.drain.remote()):
            variant = next((v for v, _ in pending.values() if v.label() == event.variant), None)
            if variant is not None:
                last_node[variant] = node_ids.get(event.node.split(" ")[0], "")
            report(dataclasses.replace(event, fraction=len(outcomes) / len(variants)))

    def finish(outcome: Outcome) -> None:
        outcomes.append(outcome)
        report(ClusterProgress(len(outcomes) / len(variants), outcome.node, outcome.variant.label(),
                               outcome.attempt, "done" if outcome.status == "stored" else outcome.status,
                               outcome.message, 0))

    try:
        while pending:
            if stop():
                for ref in pending:
                    ray.cancel(ref, force=True)  # the worker stops at once; its variant was not written
                for variant, attempt in pending.values():
                    finish(Outcome(variant, "cancelled", attempt, "", "", f"{variant.label()} cancelled"))
                pending.clear()
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            relay()
            for ref in ready:
                variant, attempt = pending.pop(ref)
                try:
                    finish(ray.get(ref))
                except ray.exceptions.TaskCancelledError:
                    finish(Outcome(variant, "cancelled", attempt, "", "", f"{variant.label()} cancelled"))
                except ray.exceptions.RayTaskError as error:  # the measurement itself raised: a retry would too
                    reason = str(error.cause) if getattr(error, "cause", None) else str(error).splitlines()[-1]
                    finish(Outcome(variant, "failed", attempt, "", "", f"{variant.label()} failed: {reason}"))
                except ray.exceptions.RayError as error:  # the worker or its node died
                    rid = record_id_for(run_id, variant)
                    if store.get(rid) is not None:  # it died after its write: the variant is in
                        finish(Outcome(variant, "stored", attempt, "", rid, f"{variant.label()} stored"))
                    elif attempt < MAX_ATTEMPTS:
                        report(ClusterProgress(len(outcomes) / len(variants), "driver", variant.label(), attempt + 1,
                                               "retry", f"{variant.label()}: worker lost ({type(error).__name__}); "
                                               f"measuring it again (attempt {attempt + 1})", 0))
                        pending[submit(variant, attempt + 1, avoid=last_node.get(variant))] = (variant, attempt + 1)
                    else:
                        finish(Outcome(variant, "failed", attempt, "", "",
                                       f"{variant.label()} failed: its worker died on {attempt} attempts"))
    except KeyboardInterrupt:  # Ctrl-C on the driver stops the workers too
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    relay()
    return ClusterSweep(run_id, store.describe(), outcomes)


class _Board:
    """A Ray actor that holds workers' progress until the driver collects it."""

    def __init__(self) -> None:
        self.events: list[ClusterProgress] = []

    def report(self, event: ClusterProgress) -> None:
        self.events.append(event)

    def drain(self) -> list[ClusterProgress]:
        events, self.events = self.events, []
        return events


# --- the dashboard's entry point ---------------------------------------------------------------------


def where() -> str:
    """Where a dashboard sweep will run, for its title: "" for this machine."""
    address = configured_address()
    return f" on the Ray cluster at {address}" if address else ""


def sweep_job(model: str, technique_keys: list[str], settings, store: ResultStore | None):
    """The Measure button's job: on the cluster when LAB_RAY_ADDRESS is set, else on this machine."""
    from core.experiments.sweep import Cancelled, run_sweep

    def job(report: Callable[[float, str], None], stop: Callable[[], bool]):
        if configured_address() is None:
            return run_sweep(model, technique_keys, settings, store=store, should_stop=stop,
                             progress=lambda p: report(p.fraction, p.message))
        if store is None:
            raise ClusterError("The results store cannot be opened, so the cluster's workers have nowhere to write.")
        result = run_cluster_sweep([model], technique_keys, settings, store, progress=lambda p: report(
            p.fraction, f"[{p.node}] {p.message}"), should_stop=stop)
        if any(o.status == "cancelled" for o in result.outcomes):
            raise Cancelled(f"Stopped; the {len(result.stored())} variants finished are stored.")
        return [r for r in (store.get(o.record_id) for o in result.stored()) if r is not None]

    return job
