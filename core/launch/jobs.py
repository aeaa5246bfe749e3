"""Long work in a background thread: progress, cancel, and one heavy job at a time.

The dashboard no longer runs jobs here: it queues them for the worker process (core/launch/jobqueue.py,
core/launch/worker.py). What stays is `Stopped`, which every long core function raises on a stop request, the
torch-thread helpers the Arena uses for its live runs, and `JobSlot` for in-process use (a notebook).

The machine this lab runs on may have two cores: two timing jobs at once would spoil both, so a
`JobSlot` refuses to start a job while another is running. A job's work function receives a
`report(fraction, message)` callback and a `should_stop()` callback; what it finished before a cancel
is its own business to keep (the sweep stores each variant as soon as it is measured).

Last, what a page says about a job's time (`time_words`, `done_words`), in one place so every page says it alike.
"""

from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from core.launch.jobqueue import share_left_s, time_left_s
from core.launch.uploads import fmt_seconds
from core.paths import Report, Stopped

Status = Literal["running", "done", "cancelled", "failed"]
Work = Callable[[Report, Callable[[], bool]], Any]


# Every job runs on this one long-lived thread. torch's OpenMP thread team belongs to the thread that
# first computes: a second thread that starts computing later gets a second team competing for the same
# cores, and measured here that halved decode speed (34 -> 18 tok/s). One torch thread per process keeps
# numbers measured from the dashboard equal to the CLI's.
_TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-torch")


class BusyError(RuntimeError):
    """Another job is running."""


@dataclass(frozen=True)
class JobSnapshot:
    name: str
    status: Status
    fraction: float
    message: str
    started_s: float  # time.time() at start
    elapsed_s: float
    log: tuple[str, ...]
    result: Any = None
    error: str = ""

    @property
    def remaining_s(self) -> float | None:
        """Naive estimate from the share done so far; None until there is something to go on."""
        if self.status != "running" or self.fraction < 0.02:
            return None
        return self.elapsed_s * (1 - self.fraction) / self.fraction


@dataclass
class Job:
    name: str
    work: Work
    live: Any = None  # an object the work fills as it goes (e.g. a loss log) that pages may read while it runs
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _status: Status = "running"
    _fraction: float = 0.0
    _message: str = "starting"
    _log: list[str] = field(default_factory=list)
    _result: Any = None
    _error: str = ""
    _started: float = 0.0
    _ended: float | None = None
    _future: Future | None = None

    def start(self) -> "Job":
        self._started = time.time()
        self._future = _TORCH_THREAD.submit(self._run)
        return self

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:
            self._fraction = min(1.0, max(self._fraction, fraction))
            if message and message != self._message:
                self._log.append(message)
            self._message = message or self._message

    def _run(self) -> None:
        try:
            result = self.work(self._report, self._stop.is_set)
            status, error = "done", ""
        except Stopped as e:
            result, status, error = None, "cancelled", str(e)
        except Exception as e:  # shown to the user as one line; the traceback goes to the server log
            traceback.print_exc()
            result, status, error = None, "failed", f"{type(e).__name__}: {e}" if not isinstance(e, ValueError) else str(e)
        if self._stop.is_set() and status == "failed":
            status = "cancelled"
        with self._lock:
            self._result, self._status, self._error, self._ended = result, status, error, time.time()
            if status == "done":
                self._fraction = 1.0

    def cancel(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._future is not None:
            try:
                self._future.result(timeout)
            except TimeoutError:
                pass

    @property
    def running(self) -> bool:
        return self._status == "running"

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            end = self._ended or time.time()
            return JobSnapshot(self.name, self._status, self._fraction, self._message, self._started,
                               end - self._started, tuple(self._log), self._result, self._error)


class JobSlot:
    """At most one running job per process; the last job stays readable after it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: Job | None = None

    def start(self, name: str, work: Work, live: Any = None) -> Job:
        with self._lock:
            if self._job is not None and self._job.running:
                raise BusyError(f"'{self._job.name}' is still running; wait for it or stop it first.")
            self._job = Job(name, work, live).start()
            return self._job

    @property
    def job(self) -> Job | None:
        return self._job


def on_torch_thread(fn, *args, **kwargs):
    """Run one call on the lab's torch thread and wait for it (see `_TORCH_THREAD` for why)."""
    return _TORCH_THREAD.submit(fn, *args, **kwargs).result()


_END = object()


def iterate_on_torch_thread(generator):
    """Drive a generator step by step on the torch thread, yielding its items here (for live pages)."""
    while (item := on_torch_thread(next, generator, _END)) is not _END:
        yield item


# ---------------------------------------------------------------- a job's time, in words

PAUSED_WORDS = "paused while the worker times the model (it resumes after the timed runs)"


def time_words(elapsed_s: float, expected_s: float | None, fraction: float, message: str, paused: bool) -> str:
    """The line under a running job's bar. A figure that cannot move is never shown as if live: a paused panel
    says it is paused, and a job past its estimate says so (with the pace of the share done so far, when there
    is one) instead of "remaining about 0 s"."""
    elapsed = f"Elapsed {fmt_seconds(elapsed_s)}"
    if paused:
        return f"{elapsed} · {PAUSED_WORDS}"
    if expected_s is not None and expected_s - elapsed_s < 1:  # under a second left would read "0 s": it is late
        words = f"{elapsed} · taking longer than estimated (estimated {fmt_seconds(expected_s)}): {message}"
        more = share_left_s(elapsed_s, fraction)
        return words if more is None else f"{words} · about {fmt_seconds(max(1.0, more))} more at the pace so far"
    left = time_left_s(elapsed_s, expected_s, fraction)
    if left is None:
        return f"{elapsed} · remaining: estimating..."
    return f"{elapsed} · remaining about {fmt_seconds(max(1.0, left))}"


def done_words(label: str, took_s: float, estimated_s: float | None) -> str:
    """E.g. "Sweep done in 1 min 35 s (estimated 1 min 01 s).": the estimate only where the job had one."""
    estimated = "" if estimated_s is None else f" (estimated {fmt_seconds(estimated_s)})"
    return f"{label} done in {fmt_seconds(took_s)}{estimated}."
