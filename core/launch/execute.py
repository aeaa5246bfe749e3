"""Running a launched job where it was sent: in this process ("inline") or on a Ray cluster ("ray"). Both the
CLI's `launch()` and the worker's child process come here, so a job runs the same way whoever started it; a
queued job reaches this from the worker (core/launch/worker.py).

Who may run what is checked here too (`check_allowed`): a viewer may load only the lab's own models and read only
uploaded or bundled files (or the public WikiText-2 text beside the lab), whatever the kind, from the files and models the kind declares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from core import models
from core.launch import cluster, kinds
from core.launch.job import Job, JobContext, Launched
from core.launch.jobqueue import NotAllowed
from core.launch.ray_tasks import as_json
from core import paths
from core.paths import ASSETS, data_dir


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def check_allowed(args: kinds.JobArgs, presenter: bool) -> None:
    """A viewer may load only the lab's own models and students, and read only uploaded or bundled files:
    anything else would read the server's disk or fetch from the network on a stranger's say-so."""
    kind = kinds.kind_of(args)
    if presenter:
        return
    for name in kind.models(args):
        if not models.viewer_may_load(name):
            raise NotAllowed("Only the presenter can load a model from a folder on the server or from the "
                             "Hugging Face Hub. Pick one of the lab's models in the sidebar.")
    public = paths.shared_wikitext()  # the public text the Distill and MoE pages offer everyone
    for path in filter(None, kind.files(args)):
        if not (_inside(path, data_dir() / "uploads") or _inside(path, ASSETS) or (public and _inside(path, public))):
            raise NotAllowed("A viewer's job can read only files uploaded through the page or shipped with the lab.")


def execute(job: Job, where: str, ctx: JobContext, *, address: str | None = None,
            progress: Callable[[Any], None] | None = None) -> Launched:
    """Run `job` in this process or on the cluster at `address` (else $LAB_RAY_ADDRESS, else "auto"); a result that
    a page reads from a JSONL file is kept here, on the launching machine, in both cases. `progress` gets a cluster
    run's ClusterProgress events; `ctx.store` must then be the shared store for kinds that write records."""
    kind = kinds.kind_of(job.args)
    if where == "inline":
        result = kind.run(job.args, ctx)
        kind.keep(as_json(result))
        return Launched("inline", result=result)
    if where != "ray":
        raise ValueError(f"execute runs a job inline or on ray, got {where!r}")
    if kind.on_ray is not None:
        return kind.on_ray(job.args, ctx.store, address, progress, ctx.should_stop)
    outcome = cluster.run_cluster_job(kind.run, job.args, ctx.store, kind.models(job.args), kind.files(job.args),
                                      address=address, progress=progress, should_stop=ctx.should_stop)
    kind.keep(outcome.result)
    return Launched("ray", result=outcome.result, record_ids=list(outcome.record_ids), node=outcome.node)
