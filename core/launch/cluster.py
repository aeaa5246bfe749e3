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
import uuid
from pathlib import Path
from typing import Any, Callable

from core import models
from core.experiments import sweep  # looked up at call time: tests replace sweep.run_sweep
from core.launch.job import Launched
from core.launch.ray_tasks import (
    BENCH_RESOURCE,
    CONNECT_TIMEOUT_S,
    MAX_ATTEMPTS,
    POLL_S,
    RAY_ADDRESS_ENV,
    ClusterError,
    ClusterProgress,
    ClusterSweep,
    JobOutcome,
    Outcome,
    ProgressFn,
    Variant,
    _Board,
    measure_on_node,
    plan,
    probe_node,
    record_id_for,
    run_job_on_node,
)
from core.paths import Stopped, repo_root
from core.store import ResultStore
from core.words import plural


def configured_address() -> str | None:
    return os.environ.get(RAY_ADDRESS_ENV, "").strip() or None


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
    import ray  # optional and heavy: only a cluster run needs it

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
    import ray  # optional and heavy: only a cluster run needs it

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(BENCH_RESOURCE, 0) >= 1]


def _node_name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} ({node.get('NodeManagerHostname', '?')})"


# --- the driver side ---------------------------------------------------------------------------------


def is_shared_path(name: str) -> bool:
    """A model named by a folder path (absolute, ./, ../ or ~): read by each worker, not shipped."""
    return Path(name).is_absolute() or name.startswith(("./", "../", "~"))


def _ship(model_names: list[str], progress: Callable[[str], None]) -> dict[str, Any]:
    """model -> ObjectRef of its checkpoint files; prepared here once, read by every worker from the object store."""
    import ray  # optional and heavy: only a cluster run needs it

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


def _preflight(store: ResultStore | None, variants: list[Variant], shared: list[str], cuda: bool | None = None,
               what: str = "sweep") -> list[dict[str, Any]]:
    import ray  # optional and heavy: only a cluster run needs it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # with ray, lazily

    nodes = bench_nodes()
    if not nodes:
        raise ClusterError(f"No node of the cluster offers the `{BENCH_RESOURCE}` resource, so nothing would run. "
                           f"Start each node with `ray start ... --resources '{{\"{BENCH_RESOURCE}\": 1}}'`.")
    if cuda is None:
        cuda = any(v.device == "cuda" for v in variants)
    if cuda and not any(n["Resources"].get("GPU", 0) >= 1 for n in nodes):
        raise ClusterError(f"The {what} asks for CUDA but no benchmark node of the cluster has a GPU. "
                           "Nothing was written.")
    if store is not None and store.backend == "sqlite" and len(nodes) > 1:
        raise ClusterError(f"The results store is the local file {store.describe()}, which the other nodes "
                           "cannot write. Set LAB_STORE_URL to a PostgreSQL every node reaches. Nothing was written.")
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(store.url_with_password() if store is not None else "", shared) for n in nodes])
    problems = [f"{node}: {'; '.join(found)}" for node, found in answers if found]
    if problems:
        raise ClusterError(f"A worker cannot reach what the {what} needs, so nothing was measured or written. "
                           + " | ".join(problems)
                           + ". Put the checkpoint on a path every node mounts, or name a bundled model to "
                             "ship it from this machine.")
    return nodes


def _resolve_devices(devices: list[str]) -> list[str]:
    import ray  # optional and heavy: only a cluster run needs it

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
    import ray  # optional and heavy: only a cluster run needs it
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # with ray, lazily

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
    measure = ray.remote(max_retries=0)(measure_on_node)
    say(f"Sweep {run_id}: {plural(len(variants), 'variant')} on {plural(len(nodes), 'node')}: "
        f"{', '.join(map(_node_name, nodes))}")

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


# --- one whole job as one task -----------------------------------------------------------------------


def _job_inputs(files: list[str]) -> dict[str, tuple[str, bytes]]:
    """The files a job reads (its kind's `files`: data, corpus, eval set, prompts), to be copied onto the node."""
    return {path: (Path(path).name, Path(path).read_bytes()) for path in files if path and Path(path).is_file()}


def run_cluster_job(run: Callable, args, store: ResultStore | None, model_names: list[str], files: list[str],
                    address: str | None = None, progress: ProgressFn | None = None,
                    should_stop: Callable[[], bool] | None = None) -> JobOutcome:
    """One whole job (moe, lora, distill, speculate, serve-bench, serve-context) as one Ray task on a benchmark node,
    through `run`, the runner the worker uses; its records go into `store`, the shared store. A sweep is fanned out
    by `run_cluster_sweep` instead. A stop cancels the task (what it stored stays) and raises Stopped."""
    import ray  # optional and heavy: only a cluster run needs it

    kind = args.kind
    report = progress or (lambda p: None)
    stop = should_stop or (lambda: False)
    connect(address or configured_address() or "auto")
    say = lambda message: report(ClusterProgress(0.0, "driver", kind, 0, "prepare", message, 0))  # noqa: E731
    shipped_by_name = _ship(model_names, say)
    shared = [m for m in model_names if m not in shipped_by_name]
    cuda = getattr(getattr(args, "settings", None), "device", None) == "cuda"
    nodes = _preflight(store, [], shared, cuda=cuda, what=f"{kind} job")
    shipped = {models.resolve(name).key: ref for name, ref in shipped_by_name.items()}
    board = ray.remote(num_cpus=0)(_Board).remote()
    inputs = ray.put(_job_inputs(files))
    options: dict[str, Any] = {"resources": {BENCH_RESOURCE: 1}}
    if cuda:
        options["num_gpus"] = 1
    say(f"{kind}: one task on {len(nodes)} node(s): {', '.join(map(_node_name, nodes))}")
    store_url = store.url_with_password() if store is not None else ""
    ref = ray.remote(max_retries=0)(run_job_on_node).options(**options).remote(run, args, store_url, shipped, inputs,
                                                                         board)

    def relay() -> None:
        for event in ray.get(board.drain.remote()):
            report(event)

    try:
        while not ray.wait([ref], num_returns=1, timeout=POLL_S)[0]:
            relay()
            if stop():
                ray.cancel(ref, force=True)  # what it stored stays
                raise Stopped(f"Stopped; the {kind} job on the cluster was cancelled.")
        relay()
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        raise Stopped(f"Stopped; the {kind} job on the cluster was cancelled.") from None
    except ray.exceptions.RayTaskError as error:  # the job itself raised: the same error it raises here
        cause = getattr(error, "cause", None)
        if isinstance(cause, (ValueError, Stopped)):
            raise cause from None
        reason = str(cause) if cause else str(error).splitlines()[-1]
        raise ClusterError(f"The {kind} job failed on the cluster: {reason}") from None
    except ray.exceptions.RayError as error:  # its worker or node died
        raise ClusterError(f"The {kind} job's worker died on the cluster ({type(error).__name__}); what it stored "
                           "is in the results store.") from None
    except KeyboardInterrupt:  # Ctrl-C on the driver stops the task too
        ray.cancel(ref, force=True)
        raise


# --- a sweep, one task per variant -------------------------------------------------------------------


def fan_out_sweep(model_names: list[str], technique_keys: list[str], settings, store: ResultStore | None,
                  address: str | None, devices: list[str] | None, progress: ProgressFn | None,
                  should_stop: Callable[[], bool] | None) -> Launched:
    """A sweep on the cluster as the CLI and the dashboard launch it: "failed" naming every variant that failed (the
    others are stored), a Stopped when it was stopped."""
    if store is None:
        raise ClusterError("The results store cannot be opened, so the cluster's workers have nowhere to write.")
    result = run_cluster_sweep(model_names, technique_keys, settings, store, address=address, devices=devices,
                               progress=progress, should_stop=should_stop)
    if any(o.status == "cancelled" for o in result.outcomes):
        kept = len(result.stored())
        raise sweep.Cancelled(f"Stopped; {plural(kept, 'variant')} finished {plural(kept, 'is', number=False)} stored.")
    ids = [o.record_id for o in result.stored()]
    failed = "; ".join(o.message for o in result.outcomes if o.status == "failed")
    return Launched("ray", state="failed" if failed else "done", result=result, record_ids=ids, error=failed)


def where() -> str:
    """Where a dashboard job will run, for its title: "" for this machine."""
    address = configured_address()
    return f" on the Ray cluster at {address}" if address else ""
