"""One seam for every job kind: `launch(Job(kind, args), where=...)` runs it in this process ("inline"), queues it
for the measuring worker's own process ("worker"), or runs it on a Ray cluster ("ray").

The kinds are core/launch/worker.py's `JOB_KINDS`, and every place runs the kind's one runner. On Ray a sweep is
fanned out, one task per variant (core/launch/cluster.py `run_cluster_sweep`); any other job runs whole as one
task on a benchmark node (`run_cluster_job`), its checkpoint and files shipped, its records written to the shared
store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from core.experiments.sweep import Cancelled, SweepSettings
from core.launch import cluster, worker
from core.launch.job import WHERE, Job, JobContext
from core.launch.jobqueue import PRESENTER, JobQueue
from core.launch.ray_tasks import ClusterError, as_json

ENDED = ("done", "failed", "cancelled")
WAIT_POLL_S = 0.5


@dataclass
class Launched:
    """What a launch gave back."""
    where: str
    state: str = "done"  # "waiting" for a queued job not waited for; the queue's end state when waited for
    result: Any = None  # the runner's result (inline), its JSON form (ray), None (worker)
    record_ids: list[str] = field(default_factory=list)  # records it wrote (ray)
    job_id: int | None = None  # the queue's id (worker)
    node: str = ""  # where it ran (ray)
    error: str = ""


def launch(job: Job, where: str = "inline", *, store=None, report: Callable[[float, str], None] | None = None,
           should_stop: Callable[[], bool] | None = None, address: str | None = None,
           progress: cluster.ProgressFn | None = None, devices: list[str] | None = None,
           queue: JobQueue | None = None, owner: str = PRESENTER, session: str = "cli", wait: bool = False
           ) -> Launched:
    """Run `job` here, in the worker, or on Ray.

    inline: the kind's runner in this process, writing into `store`; `report(fraction, message)` and `should_stop`.
    worker: queued (checked as `owner` would be) for the worker process, which it starts if none runs; with `wait`,
        polled until it ends, its progress passed to `report`.
    ray: on the cluster at `address` (else $LAB_RAY_ADDRESS, else "auto"); `progress` gets ClusterProgress events
        and `store` must be the shared store (None only for kinds that store nothing: speculate, serve-context).
    """
    if where not in WHERE:
        raise ValueError(f"where must be one of {', '.join(WHERE)}, got {where!r}")
    worker.check_allowed(job.kind, job.args, owner == PRESENTER)
    if where == "inline":
        ctx = JobContext(report=report or (lambda f, m: None), should_stop=should_stop or (lambda: False), store=store)
        return Launched("inline", result=worker.JOB_KINDS[job.kind].run(job.args, ctx))
    if where == "worker":
        return _on_worker(job, queue or JobQueue(), owner, session, wait, report)
    if job.kind == "sweep":
        return _sweep_on_ray(job, store, address, devices, progress, should_stop)
    kind = worker.JOB_KINDS[job.kind]
    outcome = cluster.run_cluster_job(kind.run, job.kind, job.args, store, kind.models(job.args),
                                      kind.files(job.args), address=address, progress=progress,
                                      should_stop=should_stop)
    return Launched("ray", result=outcome.result, record_ids=list(outcome.record_ids), node=outcome.node)


def _on_worker(job: Job, queue: JobQueue, owner: str, session: str, wait: bool,
               report: Callable[[float, str], None] | None) -> Launched:
    job_id = worker.submit(queue, job.kind, job.args, job.title(), owner, session)
    if not wait:
        return Launched("worker", state="waiting", job_id=job_id)
    while True:
        queued = queue.job(job_id)
        if queued is None:
            return Launched("worker", state="failed", job_id=job_id, error="the job left the queue")
        if report is not None:
            report(queued.fraction, queued.message)
        if queued.state in ENDED:
            return Launched("worker", state=queued.state, job_id=job_id, error=getattr(queued, "error", "") or "")
        time.sleep(WAIT_POLL_S)


def _sweep_on_ray(job: Job, store, address: str | None, devices: list[str] | None,
                  progress: cluster.ProgressFn | None, should_stop: Callable[[], bool] | None) -> Launched:
    """Today's sweep fan-out, one task per variant; the args may name several models (comma-separated)."""
    if store is None:
        raise ClusterError("The results store cannot be opened, so the cluster's workers have nowhere to write.")
    args = job.args
    settings = SweepSettings(**args.get("settings", {}))
    names = [m.strip() for m in args["model"].split(",") if m.strip()]
    result = cluster.run_cluster_sweep(names, list(args["techniques"]), settings, store, address=address,
                                       devices=devices or args.get("devices"), progress=progress,
                                       should_stop=should_stop)
    if any(o.status == "cancelled" for o in result.outcomes):
        raise Cancelled(f"Stopped; the {len(result.stored())} variants finished are stored.")
    ids = [o.record_id for o in result.stored()]
    failed = "; ".join(o.message for o in result.outcomes if o.status == "failed")
    return Launched("ray", state="failed" if failed else "done", result=result, record_ids=ids, error=failed)


__all__ = ["Job", "Launched", "WHERE", "as_json", "launch"]
