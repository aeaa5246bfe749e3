"""The measuring worker: one process per machine, apart from the web server, running queued jobs one at a time.

    python -m core.launch.worker     # started by `make run` (python -m core serve) or by the dashboard on first use

Why a process of its own: timing a model in the web server's process shares its GIL, thread pools and cores
with every open browser tab, and one watching tab halved the measured decode speed. The worker runs the same
core functions the CLI runs; the server only writes job specs and reads the progress the worker writes into
the queue (core/launch/jobqueue.py). Each job runs in a fresh child process (`python -m core.launch.worker --job ID`),
as a CLI sweep does: a process kept from one measurement to the next carried state into it (its BF16 decode ran 7-11%
below the CLI's on an AVX2 EPYC and on an AMX Xeon while FP32 and NF4 matched), and a job that crashes or runs
out of memory takes only itself down. The child types the queued arguments again (core/launch/kinds/) and runs
them through core/launch/execute.py, as the CLI does: here, or on the Ray cluster when $LAB_RAY_ADDRESS is set.
"""

from __future__ import annotations

import argparse
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
from core.launch import cluster, kinds, machine_load, quiet, stopping
from core.launch.kinds import prepare
from core.launch.execute import check_allowed, execute
from core.launch.job import Job, JobContext
from core.launch.jobqueue import PRESENTER, JobQueue, NotAllowed, QueuedJob
from core.launch.uploads import fmt_seconds
from core.measure import benchmark
from core.paths import Stopped, data_dir, repo_root
from core.store import ResultStore

AUTOSTART_ENV = "LAB_WORKER_AUTOSTART"  # "0": pages never spawn a worker (tests start their own)
PROGRESS_EVERY_S = 1.0  # the worker writes progress at most this often: one small row update
STOP_CHECK_EVERY_S = 0.5  # and reads the stop flag at most this often (should_stop() is called in tight loops)
IDLE_POLL_S = 0.5
IDLE_EXIT_ENV = "LAB_WORKER_IDLE_EXIT_S"  # a worker with nothing to do for this long exits (the server restarts one)
IDLE_EXIT_S = 3600.0
PREPARE_ENV = "LAB_WORKER_PREPARE"  # "0": the worker does not prepare the machine when idle (tests)
PREPARE_AFTER_IDLE_S = 2.0
GIVE_WAY_S = 1.0  # the preparation ends this soon after a job is queued (its steps keep what they finished)  # idle this long with nothing queued before the preparation is queued


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


def _where() -> str:
    """The dashboard's jobs run on the Ray cluster when $LAB_RAY_ADDRESS names one, else here."""
    return "ray" if cluster.configured_address() else "inline"


def _relay(report: Callable[[float, str], None]) -> Callable[[Any], None]:
    return lambda p: report(p.fraction, f"[{p.node}] {p.message}")


def _outcome(launched) -> tuple[str, str]:
    """A job whose parts failed (a cluster sweep's variants) ends "failed", naming them; the rest is stored."""
    return ("failed", launched.error) if launched.state == "failed" else ("done", "")


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

    gives_way = job.kind == kinds.PrepareArgs.kind  # the worker's own idle work yields to any job queued meanwhile

    def should_stop() -> bool:
        now = time.monotonic()
        if not stopped[0] and now - last_check[0] >= STOP_CHECK_EVERY_S:
            last_check[0] = now
            stopped[0] = queue.stop_requested(job.id) or (gives_way and _someone_waits(queue))
        return stopped[0]

    ctx.report, ctx.should_stop = report, should_stop
    try:
        args = kinds.parse(job.kind, job.args)
        check_allowed(args, job.owner in (PRESENTER, prepare.LAB))  # again here: the queue file is only data
        gate = quiet.Gate(data_dir())
        ctx.store = _SessionCountingStore(ResultStore(), queue, gate)
        benchmark.set_timed_section(gate.timed_run, lambda: gate.timing_phase(lambda: queue.sessions_connected() > 0))
        state, error = _outcome(execute(Job(args, job.label), _where(), ctx, progress=_relay(report)))
    except (Stopped, Terminated) as e:
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


class Terminated(BaseException):
    """The worker ended this job's process (SIGTERM) because Stop was pressed and the job did not stop by itself.
    Raised wherever the job is, past any `except Exception`, so that its `finally` blocks still run (a server is
    stopped, a temp file removed); a job stuck in one long C call gets SIGKILL instead (core/launch/stopping.py)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated("ended by the worker after Stop")


def child_argv(job_id: int) -> list[str]:
    """The command that runs one claimed job in a process of its own."""
    return [sys.executable, "-m", "core.launch.worker", "--job", str(job_id)]


def _kept_count() -> stopping.KeptCount | None:
    try:
        return stopping.KeptCount(ResultStore())
    except Exception:  # a store that cannot be opened here fails the job in the child, with its own words
        return None


def _end_stopped(queue: JobQueue, ended: QueuedJob, waited: stopping.Waited, kept: stopping.KeptCount | None) -> str:
    """A job whose Stop the worker saw: cancelled, saying how long it ran, how it ended and what it kept (a job
    that finished meanwhile keeps its own end)."""
    if ended.state not in ("running", "cancelled"):
        return ended.state
    after = time.monotonic() - waited.stop_seen_s
    by_itself = waited.how == "by itself"
    own = ended.error if by_itself and ended.state == "cancelled" and ended.error not in ("", "stopped") else "Stopped."
    how = "at its next safe point" if by_itself else \
        f"{waited.how} from the worker, not having stopped by itself within {stopping.GRACE_S:.0f} s"
    words = kept.words() if kept is not None else "what finished before the stop is kept in the results store"
    queue.finish(ended.id, "cancelled", f"{own} It ran {fmt_seconds(ended.elapsed_s)} and ended {how} "
                                        f"({after:.1f} s after Stop); {words}.")
    return "cancelled"


def _run_apart(queue: JobQueue, job: QueuedJob, lock_fd: int) -> str:
    """Run a claimed job in a child process and wait for it, watching its stop flag (core/launch/stopping.py): a
    stopped job that does not end by itself within seconds is ended with everything it started. A child that dies
    before writing the job's end (a crash, the kernel's out-of-memory killer) has its job marked failed here. The
    child inherits the worker's lock, so no second worker can start while it still measures; it runs in a process
    group of its own, so that ending it ends the llama.cpp tools it started too."""
    kept, load = _kept_count(), machine_load.AroundJob()
    child = subprocess.Popen(child_argv(job.id), cwd=repo_root(), stdin=subprocess.DEVNULL, pass_fds=(lock_fd,),
                             process_group=0)
    gives_way = job.kind == kinds.PrepareArgs.kind  # the worker's own idle work yields to any job queued meanwhile

    def stop_now() -> bool:
        return queue.stop_requested(job.id) or (gives_way and _someone_waits(queue))

    try:
        waited = stopping.wait_watching(child, stop_now, grace_s=GIVE_WAY_S if gives_way else stopping.GRACE_S)
    except KeyboardInterrupt:  # the worker's own Ctrl-C: its job ended with it (wait_watching ended the child)
        queue.finish(job.id, "cancelled", "Stopped: the worker was interrupted (Ctrl-C); "
                                          f"{kept.words() if kept else 'what finished before is kept'}.")
        raise
    code = waited.code
    queue.note_others(job.id, load.share())  # a job slowed by other programs does not teach the next estimate
    ended = queue.job(job.id)
    if ended is None:
        return "failed"
    if waited.stop_seen_s is not None and gives_way:
        queue.finish(job.id, "cancelled", prepare.GAVE_WAY)
        return "cancelled"
    if waited.stop_seen_s is not None:
        return _end_stopped(queue, ended, waited, kept)
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
    signal.signal(signal.SIGTERM, _on_sigterm)
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
    subprocess.Popen([sys.executable, "-m", "core.launch.worker"], cwd=repo_root(), stdout=log, stderr=subprocess.STDOUT,
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
        sampler, tried = machine_load.IdleSampler(), set()
        while True:
            job = queue.claim(os.getpid())
            if job is None:
                if until_idle and not queue.snapshot().waiting:
                    return 0
                sampler.tick()
                if time.monotonic() - idle_since > PREPARE_AFTER_IDLE_S and _queue_preparation(queue, tried):
                    continue
                if time.monotonic() - idle_since > idle_exit_s:
                    say(f"worker {os.getpid()} idle for {idle_exit_s:.0f} s: exiting")
                    return 0
                time.sleep(IDLE_POLL_S)
                continue
            say(f"job {job.id} ({job.kind}, {job.owner}) started")
            state = _run_apart(queue, job, fd)
            say(f"job {job.id} {state}")
            idle_since = time.monotonic()
            sampler.restart()
    finally:
        os.close(fd)


def _someone_waits(queue: JobQueue) -> bool:
    """A job queued, or an Arena run holding the machine: the idle preparation gives way to either."""
    return bool(queue.snapshot().waiting) or queue.leased()


def _queue_preparation(queue: JobQueue, tried: set[tuple[str, ...]]) -> bool:
    """Queue the machine's one-off preparation (core/launch/kinds/prepare.py) when steps are missing; True if
    queued. A set of missing steps is tried once per worker: a step that fails is not retried in a loop."""
    if os.environ.get(PREPARE_ENV) == "0":
        return False
    args = kinds.PrepareArgs()
    try:
        missing = tuple(prepare.missing(args))
    except (models.ModelError, OSError):
        return False  # the bundled model is not installed: nothing to prepare
    if not missing or missing in tried:
        return False
    tried.add(missing)
    queue.submit(args.kind, args.to_json(), "Getting this machine ready: " + ", ".join(map(prepare.describe, missing)),
                 kinds.kind_of(args).similar(args), prepare.LAB, "worker")
    return True


def main(argv: list[str] | None = None) -> int:
    """`python -m core.launch.worker [--until-idle]`, and `--job ID` for the child that runs one claimed job."""
    parser = argparse.ArgumentParser(prog="python -m core.launch.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--until-idle", action="store_true", help="exit once the queue is empty (tests, scripts)")
    parser.add_argument("--job", type=int, help=argparse.SUPPRESS)  # the child process for one claimed job
    args = parser.parse_args(argv)
    models.quiet_library_output()
    if args.job is not None:
        return run_claimed(args.job)
    return serve(until_idle=args.until_idle, say=lambda m: print(m, file=sys.stderr, flush=True))


if __name__ == "__main__":
    sys.exit(main())
