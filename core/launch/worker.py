"""The measuring worker: one process per machine, apart from the web server, running queued jobs one at a time.

    python -m core worker            # started by `make run` or by the dashboard on first use

Why a process of its own: timing a model in the web server's process shares its GIL, thread pools and cores
with every open browser tab, and one watching tab halved the measured decode speed. The worker runs the same
core functions the CLI runs; the server only writes job specs and reads the progress the worker writes into
the queue (core/launch/jobqueue.py). Each job runs in a fresh child process (`python -m core worker --job ID`), as a
CLI sweep does: a process kept from one measurement to the next carried state into it (its BF16 decode ran 7-11%
below the CLI's on an AVX2 EPYC and on an AMX Xeon while FP32 and NF4 matched), and a job that crashes or runs
out of memory takes only itself down. Job kinds are one registry, `JOB_KINDS`: kind -> how to run it, what makes
two jobs alike (for start estimates) and which models and files it reads (checked for viewers).
"""

from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from core import models
from core.experiments import budget_search, distill_run, finetune_run, moe_sweep, speculative
from core.experiments.sweep import SweepSettings
from core.launch import cluster, quiet
from core.launch.hybrid_jobs import HYBRID_JOB_KINDS
from core.launch.job import JobContext, JobKind
from core.launch.jobqueue import PRESENTER, JobEstimate, JobQueue, NotAllowed, QueuedJob
from core.measure import benchmark
from core.paths import ASSETS, Stopped, data_dir, repo_root
from core.serving import bench, kv
from core.store import ResultStore
from core.techniques import distillation, lora

AUTOSTART_ENV = "LAB_WORKER_AUTOSTART"  # "0": pages never spawn a worker (tests start their own)
PROGRESS_EVERY_S = 1.0  # the worker writes progress at most this often: one small row update
STOP_CHECK_EVERY_S = 0.5  # and reads the stop flag at most this often (should_stop() is called in tight loops)
IDLE_POLL_S = 0.5
IDLE_EXIT_ENV = "LAB_WORKER_IDLE_EXIT_S"  # a worker with nothing to do for this long exits (the server restarts one)
IDLE_EXIT_S = 3600.0


# ---------------------------------------------------------------- runners: the same calls the CLI makes


def _sweep_settings(args: dict):
    return SweepSettings(**args.get("settings", {}))


def _sweep_progress(ctx: JobContext):
    return lambda p: ctx.report(p.fraction, p.message)


def run_sweep_job(args: dict, ctx: JobContext):
    # Here, or as Ray tasks over the cluster when LAB_RAY_ADDRESS is set: the same measurement either way.
    job = cluster.sweep_job(args["model"], list(args["techniques"]), _sweep_settings(args), ctx.store)
    return job(ctx.report, ctx.should_stop)


def run_moe_job(args: dict, ctx: JobContext):
    return moe_sweep.run_moe_sweep(args["model"], int(args["experts"]), list(args["top_ks"]), _sweep_settings(args),
                                   store=ctx.store, should_stop=ctx.should_stop,
                                   dense_layers=int(args["dense_layers"]), progress=_sweep_progress(ctx))


def run_lora_job(args: dict, ctx: JobContext):
    settings = lora.FinetuneSettings(**(args["settings"] | {"target_modules": tuple(args["settings"]["target_modules"])}))
    data = Path(args["data"]) if args.get("data") else None
    task = None if data else args.get("task", "support-routing")
    ctx.live = lora.TrainLog()
    result, model = finetune_run.run_finetune(args["model"], settings, task, data, args["usd_per_hour"],
                                              lambda f, m: ctx.report(0.8 * f, m), ctx.should_stop, ctx.live)
    if ctx.store is not None:  # None: the CLI's --no-store
        finetune_run.store_record(model, result, ctx.store, args["usd_per_hour"], args["hardware_preset"],
                                  lambda f, m: ctx.report(0.8 + 0.2 * f, m), ctx.should_stop,
                                  launched_from=args.get("launched_from", "dashboard"))
    return result


def run_distill_job(args: dict, ctx: JobContext):
    settings = distillation.DistillSettings(**args["settings"])
    corpus = Path(args["corpus"]) if args.get("corpus") else None
    ctx.live = distillation.TrainLog()
    result = distill_run.run_distill(args["teacher"], settings, corpus, args["usd_per_hour"],
                                     lambda f, m: ctx.report(0.8 * f, m), ctx.should_stop, ctx.live)
    records = distill_run.measure(result, ctx.store, args["usd_per_hour"], args["hardware_preset"],
                                  lambda f, m: ctx.report(0.8 + 0.2 * f, m), ctx.should_stop,
                                  launched_from=args.get("launched_from", "dashboard"),
                                  mc_max_items=int(args.get("mc_max_items") or 0))
    return distill_run.summary(result, records)


def run_speculate_job(args: dict, ctx: JobContext):
    result = speculative.run_speculate(args["model"], args["draft"], int(args["draft_tokens"]),
                                       int(args["max_new_tokens"]), report=ctx.report, should_stop=ctx.should_stop)
    speculative.save_result(result)
    return result


def run_serve_bench_job(args: dict, ctx: JobContext):
    raw = args["settings"]
    settings = bench.ServeSettings(**raw | {"concurrency": tuple(raw["concurrency"]),
                                            "prompt_tokens": tuple(raw["prompt_tokens"])})
    return bench.serve_bench(args["model"], list(args["techniques"]), settings, store=ctx.store,
                             report=ctx.report, should_stop=ctx.should_stop)


def run_serve_context_job(args: dict, ctx: JobContext):
    contexts = [int(c) for c in args["contexts"]] if args.get("contexts") else None
    return kv.measure_context(args["model"], contexts, int(args.get("decode_tokens", 16)), report=ctx.report,
                              should_stop=ctx.should_stop)


def run_budget_job(args: dict, ctx: JobContext):
    """Fit-my-budget from the Quantize page: one searched file per budget, measured beside the presets."""
    return budget_search.run([int(b) for b in args["budgets_bytes"]], None, bool(args.get("imatrix")), args["model"],
                             report=ctx.report, should_stop=ctx.should_stop)


def _settings_key(args: dict, *names: str) -> str:
    s = args.get("settings", {})
    return ",".join(f"{n}={s.get(n)}" for n in names)


JOB_KINDS: dict[str, JobKind] = {
    "serve-bench": JobKind(run_serve_bench_job,
                           lambda a: f"serve|{a['model']}|{','.join(sorted(a['techniques']))}|"
                                     f"{a['settings']['concurrency']}|{a['settings']['prompt_tokens']}|"
                                     f"{a['settings']['new_tokens']}|{a['settings']['repeats']}",
                           models=lambda a: [a["model"]]),
    "serve-context": JobKind(run_serve_context_job, lambda a: f"context|{a['model']}", models=lambda a: [a["model"]]),
    "sweep": JobKind(run_sweep_job,
                     lambda a: f"sweep|{a['model']}|{','.join(sorted(a['techniques']))}|"
                               + _settings_key(a, "new_tokens", "repeats", "mc_max_items"),
                     models=lambda a: [a["model"]],
                     files=lambda a: [a.get("settings", {}).get(k) for k in ("eval_set", "ppl_text")]),
    "moe": JobKind(run_moe_job,
                   lambda a: f"moe|{a['model']}|{a['experts']}|{sorted(a['top_ks'])}|"
                             + _settings_key(a, "new_tokens", "repeats", "mc_max_items"),
                   models=lambda a: [a["model"]]),
    "lora": JobKind(run_lora_job,
                    lambda a: f"lora|{a['model']}|{a['settings']['method']}|{a['settings']['steps']}|"
                              f"{a['settings']['batch_size']}|{bool(a.get('data'))}",
                    models=lambda a: [a["model"]], files=lambda a: [a.get("data")]),
    "distill": JobKind(run_distill_job,
                       lambda a: f"distill|{a['teacher']}|" + _settings_key(a, "student_layers", "steps", "batch_size",
                                                                            "seq_len_tokens"),
                       models=lambda a: [a["teacher"]], files=lambda a: [a.get("corpus")]),
    "speculate": JobKind(run_speculate_job,
                         lambda a: f"speculate|{a['model']}|{a['draft_tokens']}|{a['max_new_tokens']}",
                         models=lambda a: [a["model"], a["draft"]]),
    "budget": JobKind(run_budget_job, lambda a: f"budget|{a['model']}|{sorted(a['budgets_bytes'])}|{a.get('imatrix')}",
                      models=lambda a: [a["model"]]),
    **HYBRID_JOB_KINDS,
}


# ---------------------------------------------------------------- who may queue what


def _inside(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):
        return False


def check_allowed(kind: str, args: dict, presenter: bool) -> None:
    """A viewer may load only the lab's own models and students, and read only uploaded or bundled files:
    anything else would read the server's disk or fetch from the network on a stranger's say-so."""
    if kind not in JOB_KINDS:
        raise ValueError(f"Unknown job kind {kind!r}; known: {', '.join(JOB_KINDS)}.")
    if presenter:
        return
    spec = JOB_KINDS[kind]
    for name in spec.models(args):
        if not models.viewer_may_load(name):
            raise NotAllowed("Only the presenter can load a model from a folder on the server or from the "
                             "Hugging Face Hub. Pick one of the lab's models in the sidebar.")

    for path in filter(None, spec.files(args)):
        if not (_inside(path, data_dir() / "uploads") or _inside(path, ASSETS)):
            raise NotAllowed("A viewer's job can read only files uploaded through the page or shipped with the lab.")


def submit(queue: JobQueue, kind: str, args: dict, label: str, owner: str, session: str,
           estimate: JobEstimate | None = None) -> int:
    """Check, then queue (with the estimate the page showed, which the job's time is later compared with); the
    worker is started if none runs (and autostart is not switched off)."""
    check_allowed(kind, args, owner == PRESENTER)
    job_id = queue.submit(kind, args, label, JOB_KINDS[kind].similar(args), owner, session, estimate)
    ensure_running()
    return job_id


# ---------------------------------------------------------------- running one job


class _SessionCountingStore:
    """Writes into each record how many browser sessions were connected while it was measured: the most seen
    at once (sampled with each progress write, and when the record is stored), so page reloads are not summed;
    and whether page runs were paused during its timed runs (core/launch/quiet.py)."""

    def __init__(self, store: ResultStore, queue: JobQueue, gate: quiet.Gate):
        self._store, self._queue, self._gate = store, queue, gate
        self.peak = queue.sessions_connected()

    def sample(self) -> None:
        self.peak = max(self.peak, self._queue.sessions_connected())

    def add(self, record) -> int:
        self.sample()
        record.settings = dict(record.settings) | {"sessions_connected": self.peak} | self._gate.stats.settings()
        self.peak = self._queue.sessions_connected()  # the next variant starts counting from now
        self._gate.stats = quiet.GateStats()
        return self._store.add(record)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def _live_json(live: Any) -> Any:
    return dataclasses.asdict(live) if dataclasses.is_dataclass(live) else None


def run_job(queue: JobQueue, job: QueuedJob) -> str:
    """Run one claimed job to its end; returns its final state. Failures end the job, never the worker."""
    log: list[str] = []
    last_write = [0.0]
    last_check, stopped = [0.0], [False]
    ctx = JobContext(report=lambda f, m: None, should_stop=lambda: False, store=None)

    def report(fraction: float, message: str) -> None:
        if message and (not log or log[-1] != message):
            log.append(message)
        now = time.monotonic()
        if now - last_write[0] >= PROGRESS_EVERY_S:
            last_write[0] = now
            queue.progress(job.id, fraction, message, log, _live_json(ctx.live))
            if isinstance(ctx.store, _SessionCountingStore):
                ctx.store.sample()

    def should_stop() -> bool:
        now = time.monotonic()
        if not stopped[0] and now - last_check[0] >= STOP_CHECK_EVERY_S:
            last_check[0] = now
            stopped[0] = queue.stop_requested(job.id)
        return stopped[0]

    ctx.report, ctx.should_stop = report, should_stop
    try:
        check_allowed(job.kind, job.args, job.owner == PRESENTER)  # again here: the queue file is only data
        gate = quiet.Gate(data_dir())
        ctx.store = _SessionCountingStore(ResultStore(), queue, gate)
        benchmark.set_timed_section(gate.timed_run, lambda: gate.timing_phase(lambda: queue.sessions_connected() > 0))
        JOB_KINDS[job.kind].run(job.args, ctx)
        state, error = "done", ""
    except Stopped as e:
        state, error = "cancelled", str(e) or "stopped"
    except (ValueError, NotAllowed) as e:  # the lab's own refusals are written for people
        state, error = "failed", str(e)
    except Exception as e:  # anything else: one line for the page, the traceback for the worker's log
        traceback.print_exc()
        state, error = "failed", f"{type(e).__name__}: {e}"
    finally:
        benchmark.set_timed_section(None)
    if state == "failed" and queue.stop_requested(job.id):
        state = "cancelled"
    queue.progress(job.id, 1.0 if state == "done" else 0.0, log[-1] if log else "", log, _live_json(ctx.live))
    queue.finish(job.id, state, error)
    return state


# ---------------------------------------------------------------- a fresh process for each job


def _run_apart(queue: JobQueue, job: QueuedJob, lock_fd: int) -> str:
    """Run a claimed job in a child process and wait for it; a child that dies before writing the job's end
    (a crash, the kernel's out-of-memory killer) has its job marked failed here. The child inherits the worker's
    lock, so no second worker can start while it still measures."""
    child = subprocess.Popen([sys.executable, "-m", "core", "worker", "--job", str(job.id)], cwd=repo_root(),
                             stdin=subprocess.DEVNULL, pass_fds=(lock_fd,))
    code = child.wait()
    ended = queue.job(job.id)
    if ended is None:
        return "failed"
    if ended.state == "running":
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        queue.finish(job.id, "failed", f"The measuring process {how} before the job ended (out of memory?); "
                                       "every variant it finished is in the results store.")
        return "failed"
    return ended.state


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the worker that started it dies (Linux; elsewhere a no-op), so a
    killed worker never leaves behind a measurement that goes on timing on the cores the next worker uses."""
    try:

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (AttributeError, OSError):
        pass


def run_claimed(job_id: int) -> int:
    """The child's side: run job `job_id`, which its parent worker claimed. Returns the exit code."""
    _die_with_parent()
    queue = JobQueue()
    job = queue.job(job_id)
    if job is None or job.state != "running" or job.worker_pid != os.getppid():
        return 2  # not claimed by the worker that started us (or that worker is already gone)
    models.quiet_library_output()
    run_job(queue, job)
    return 0


# ---------------------------------------------------------------- the process


def lock_path() -> Path:
    return data_dir() / "worker.lock"


def pid_path() -> Path:
    return data_dir() / "worker.pid"


def running_pid() -> int | None:
    """The running worker's process id (for scripts and tests that stop it), or None."""
    try:
        return int(pid_path().read_text()) if is_running() else None
    except (OSError, ValueError):
        return None


def _try_lock() -> int | None:
    """The machine's one worker holds this lock for its lifetime (the kernel drops it when the process dies)."""
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def is_running() -> bool:
    fd = _try_lock()
    if fd is None:
        return True
    os.close(fd)
    return False


def ensure_running() -> bool:
    """Start a worker in the background unless one runs; True if one was started."""
    if os.environ.get(AUTOSTART_ENV) == "0" or is_running():
        return False
    log = open(data_dir() / "worker.log", "ab")
    subprocess.Popen([sys.executable, "-m", "core", "worker"], cwd=repo_root(), stdout=log, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True)  # its own session: it outlives a killed server
    log.close()
    return True


def serve(until_idle: bool = False, say: Callable[[str], None] = print) -> int:
    """The worker loop. Returns 0; 1 if another worker already holds the machine."""
    fd = _try_lock()
    if fd is None:
        say("a worker is already running on this machine's data folder")
        return 1
    try:
        pid_path().write_text(str(os.getpid()))
        idle_exit_s = float(os.environ.get(IDLE_EXIT_ENV, IDLE_EXIT_S))
        idle_since = time.monotonic()
        queue = JobQueue()
        for job_id in queue.recover():
            say(f"job {job_id} was interrupted by the previous worker's end; what it finished is in the results store")
        say(f"worker {os.getpid()} waiting for jobs")
        while True:
            job = queue.claim(os.getpid())
            if job is None:
                if until_idle and not queue.snapshot().waiting:
                    return 0
                if time.monotonic() - idle_since > idle_exit_s:
                    say(f"worker {os.getpid()} idle for {idle_exit_s:.0f} s: exiting")
                    return 0
                time.sleep(IDLE_POLL_S)
                continue
            say(f"job {job.id} ({job.kind}, {job.owner}) started")
            state = _run_apart(queue, job, fd)
            say(f"job {job.id} {state}")
            idle_since = time.monotonic()
    finally:
        os.close(fd)
