"""Stop, for real: a job's process and everything it started end within seconds, whatever the job is doing.

A runner sees Stop only where it calls `should_stop()`; a model load, a training step, a llama.cpp tool or a teacher's
batch can keep it from the next check for minutes (the issue's walk waited 218 s). So the worker watches the stop
flag itself while it waits for the job's process (`wait_watching`): it gives the job `GRACE_S` to end at its next
check, then ends its process tree (`end_tree`): SIGTERM to the job's process group and to every descendant that left
it (llama-server runs in a session of its own), SIGKILL `TERM_WAIT_S` later to whatever is left. Nothing is lost that
was kept: records are written one transaction each, JSONL results one whole line per write (core/store/jsonl.py),
caches into a temp file renamed into place.

`KeptCount` says what a stopped job kept: the rows the results store gained while it ran. The CLI's Ctrl-C uses the
same pieces (core/cli/interrupt.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

GRACE_S = 3.0  # the job's own check runs every 0.5 s (worker.STOP_CHECK_EVERY_S): a runner at a check ends well within
TERM_WAIT_S = 3.0  # after SIGTERM, what has not ended by then gets SIGKILL
POLL_S = 0.25


def _children_map() -> dict[int, list[int]]:
    """Every process's children, from /proc (Linux; elsewhere empty: only the process group is signalled)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """The process ids below `pid` (children, their children, ...), found now."""
    children, found, todo = _children_map(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(group: int, pids: list[int], sig: int) -> None:
    for send, target in [(os.killpg, group)] + [(os.kill, p) for p in pids]:
        try:
            send(target, sig)
        except (ProcessLookupError, PermissionError):
            pass  # already ended (or reaped and its id not ours any more)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (an ended child its parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    """SIGKILL is delivered when the kernel next runs the process: wait (briefly) until each has ended."""
    deadline = time.monotonic() + timeout_s
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def end_tree(proc: subprocess.Popen, term_wait_s: float = TERM_WAIT_S) -> str:
    """End `proc` (started in a process group of its own) and everything below it; returns how it ended:
    "by itself", "on SIGTERM" or "on SIGKILL"."""
    tree = descendants(proc.pid)  # before any signal: a dead parent's children lose the link to it
    if proc.poll() is not None:
        how = "by itself"
    else:
        _signal_all(proc.pid, tree, signal.SIGTERM)
        try:
            proc.wait(term_wait_s)
            how = "on SIGTERM"
        except subprocess.TimeoutExpired:
            how = "on SIGKILL"
    tree += descendants(proc.pid) if proc.poll() is None else []
    _signal_all(proc.pid, tree, signal.SIGKILL)  # whatever outlived its parent, in the group or not
    proc.wait()
    _wait_gone(tree, term_wait_s)
    return how


@dataclass(frozen=True)
class Waited:
    code: int  # the process's exit status (negative: the signal that ended it)
    stop_seen_s: float | None  # monotonic time the stop was seen; None: it ended without one
    how: str = ""  # end_tree's words, when a stop was seen


def wait_watching(proc: subprocess.Popen, stop_requested: Callable[[], bool], grace_s: float = GRACE_S,
                  poll_s: float = POLL_S) -> Waited:
    """Wait for `proc`; once `stop_requested()` turns true, give it `grace_s` to end by itself, then end its tree.
    A Ctrl-C here ends the tree at once and is raised again."""
    try:
        while True:
            try:
                code = proc.wait(poll_s)
                end_tree(proc)  # a stray grandchild still in its group goes with it
                return Waited(code, None)
            except subprocess.TimeoutExpired:
                if stop_requested():
                    break
        seen = time.monotonic()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        how = end_tree(proc)
        return Waited(proc.returncode, seen, how)
    except KeyboardInterrupt:
        end_tree(proc, term_wait_s=1.0)
        raise


class KeptCount:
    """How many rows the results store gained from now on (records and serving points): what a stopped job kept.
    Another writer of the same store at the same time would be counted too; on one machine's worker there is none."""

    def __init__(self, store):
        self._store = store
        self._marks = self._read(store.row_marks)

    @staticmethod
    def _read(call: Callable[..., dict[str, int]], *args) -> dict[str, int] | None:
        try:
            return call(*args)
        except Exception:  # the count is a courtesy: a store that cannot say must not hide how the job ended
            return None

    def words(self) -> str:
        """"2 measured records are kept in the results store", or why nothing is."""
        added = None if self._marks is None else self._read(self._store.rows_since, self._marks)
        if added is None:
            return "what finished before the stop is kept in the results store"
        n = sum(added.values())
        if n == 0:
            return "nothing had been stored yet"
        return f"{n} measured {'record is' if n == 1 else 'records are'} kept in the results store"
