"""What the web server's own process does with jobs: the one torch thread the Arena's live runs use, and what a
page says about a job's time (`time_words`, `done_words`), in one place so every page says it alike. Jobs
themselves are queued for the worker process (core/launch/launch.py, core/launch/worker.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from core.launch.jobqueue import share_left_s, time_left_s
from core.launch.uploads import fmt_seconds

# Every live run in the web server's process goes on this one long-lived thread. torch's OpenMP thread team belongs to the thread that
# first computes: a second thread that starts computing later gets a second team competing for the same
# cores, and measured here that halved decode speed (34 -> 18 tok/s). One torch thread per process keeps
# numbers measured from the dashboard equal to the CLI's.
_TORCH_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-torch")


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
        return f"{elapsed} · remaining: not known yet (no estimate for this job here; the pace shows after 5%)"
    unsure = "" if expected_s is not None else " at the pace so far (unsure: no estimate for this job here)"
    return f"{elapsed} · remaining about {fmt_seconds(max(1.0, left))}{unsure}"


def done_words(label: str, took_s: float, estimated_s: float | None) -> str:
    """E.g. "Sweep done in 1 min 35 s (estimated 1 min 01 s).": the estimate only where the job had one."""
    estimated = "" if estimated_s is None else f" (estimated {fmt_seconds(estimated_s)})"
    return f"{label} done in {fmt_seconds(took_s)}{estimated}."
