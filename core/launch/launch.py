"""One seam for every job kind: `launch(Job(args), where=...)` runs it in this process ("inline"), queues it for the
measuring worker's own process ("worker"), or runs it on a Ray cluster ("ray").

The kinds are core/launch/kinds/ (`KINDS`): every place runs a kind's one runner on the same typed arguments. On
Ray a sweep is fanned out, one task per variant (`SweepArgs`' kind has its own `on_ray`); any other job runs whole as
one task on a benchmark node, its checkpoint and files shipped, its records written to the shared store.
"""

from __future__ import annotations

import time
from typing import Callable

from core.launch import kinds, worker
from core.launch.execute import check_allowed, execute
from core.launch.job import WHERE, Job, JobContext, Launched
from core.launch.jobqueue import PRESENTER, JobEstimate, JobQueue
from core.launch.ray_tasks import as_json
from core.measure import benchmark

ENDED = ("done", "failed", "cancelled", "interrupted")
WAIT_POLL_S = 0.5


def launch(job: Job, where: str = "inline", *, store=None, report: Callable[[float, str], None] | None = None,
           should_stop: Callable[[], bool] | None = None, address: str | None = None, progress=None,
           queue: JobQueue | None = None, owner: str = PRESENTER, session: str = "cli", wait: bool = False,
           estimate: JobEstimate | None = None) -> Launched:
    """Run `job` here, in the worker, or on Ray.

    inline: the kind's runner in this process, writing into `store`; `report(fraction, message)` and `should_stop`.
    worker: queued (checked as `owner` would be, with the `estimate` its page showed) for the worker process, which
        is started if none runs; with `wait`, polled until it ends, its progress passed to `report`.
    ray: on the cluster at `address` (else $LAB_RAY_ADDRESS, else "auto"); `progress` gets ClusterProgress events
        and `store` must be the shared store (None only for kinds that store nothing: speculate, serve-context).
    """
    if where not in WHERE:
        raise ValueError(f"where must be one of {', '.join(WHERE)}, got {where!r}")
    check_allowed(job.args, owner == PRESENTER)
    if where == "worker":
        return _on_worker(job, queue or JobQueue(), owner, session, wait, report, estimate)
    ctx = JobContext(report=report or (lambda f, m: None), should_stop=should_stop or (lambda: False), store=store)
    return execute(job, where, ctx, address=address, progress=progress)


def submit(queue: JobQueue, job: Job, owner: str, session: str, estimate: JobEstimate | None = None) -> int:
    """Check, then queue (with the estimate the page showed, which the job's time is later compared with); the
    worker is started if none runs (and autostart is not switched off)."""
    check_allowed(job.args, owner == PRESENTER)
    kind = kinds.kind_of(job.args)
    if estimate is None:  # the machine is kept even without a figure: this job's time teaches the next estimate
        estimate = JobEstimate(None, None, benchmark.hardware_fingerprint(benchmark.pick_device("auto")))
    job_id = queue.submit(job.kind, job.args.to_json(), job.title(), kind.similar(job.args), owner, session, estimate)
    worker.ensure_running()
    return job_id


def _on_worker(job: Job, queue: JobQueue, owner: str, session: str, wait: bool,
               report: Callable[[float, str], None] | None, estimate: JobEstimate | None) -> Launched:
    job_id = submit(queue, job, owner, session, estimate)
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


__all__ = ["Job", "Launched", "WHERE", "as_json", "launch", "submit"]
