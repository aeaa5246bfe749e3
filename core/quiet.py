"""Timed runs and page runs take turns, so that a room of viewers never slows what the worker measures.

On a 2-core machine the dashboard's page runs and a timed decode share the same cores: with thirty viewers the
web server kept one core busy and the dashboard's FP32 decode fell from 22 to 0.7 tokens/s (a decode step waits
for its slowest thread). So the two take turns, as a readers-writer lock with the writer first:

- a page run (the whole script, or one fragment rerun) holds `pages.lock` shared while it runs;
- a timed run first closes `gate.lock` (exclusive), so that no new page run starts, then waits until the page runs
  already going have finished (`pages.lock` exclusive), times, and opens both.

A timed run is one generation of a few seconds; between runs (loading, quality scoring) pages run as usual. A
variant's timed runs come back to back (warm-up, then ten repeats), so before closing the gate a timed run first
lets in the pages already waiting for it (`waiting.lock`, held shared by each waiting page): without that turn a
page waited for all of a variant's runs, 20 s and more, and writer-first became writer-only. So a page waits at
most about one timed run. Both sides give up waiting after a bound rather than hang: a page runs
anyway after `PAGE_WAIT_S`, and a timed run starts anyway after `DRAIN_WAIT_S` and says so in its record.
flock locks are released by the kernel when a process dies, so a killed worker never leaves pages waiting.

Pages that wait cost little; a page that keeps redrawing itself costs more. An open tab's job panel reran every 3 s,
and each rerun is a round trip through the browser's whole app: with only the presenter's tab open, a running job
and FP32 timed in alternating blocks, the tab on the page against on a blank page measured 0.895 as fast, and 1.013
with the panel's timer off (1.029 with the pause below; the tab's Chromium took 2.8% of the machine, then 0.8%). So
a variant's timed runs together make a timing phase (`timing.lock`, held by the worker for the phase): the
presenter's open panel stops its timer for the phase and starts it again after it (pages/panel.py says which panels). When anyone is watching, the worker announces the
phase `NOTICE_S` before it starts, long enough for every live panel to tick once and see it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

PAGE_WAIT_S = 20.0  # a page runs after this long even if the gate is still closed
DRAIN_WAIT_S = 10.0  # a timed run starts after this long even if page runs are still going
# Waiting is polling (flock has no timeout), backing off: thirty waiting pages polling every 20 ms would wake the
# machine 1,500 times a second and pull the timed run's threads off their cores.
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.25
LET_IN_S = 1.0  # a timed run waits at most this long for the waiting pages to get in (they poll every <= 0.25 s)
PANEL_EVERY_S = 3.0  # an open page's job panel redraws this often, outside timing phases
NOTICE_S = PANEL_EVERY_S + 1.0  # a timing phase starts this long after the worker announces it, if anyone watches


# Pausing pages is not all: a viewer's browser on this machine, the web server sending a page's scripts, anything
# else. So each timed run measures how much of the machine the other processes used meanwhile; a run during which
# they used QUIET_SHARE or more is reported disturbed and timed once more (benchmark.DISTURBED_RETRIES), and the
# record keeps the count. Waiting for a quiet moment before each run was tried and dropped: with thirty viewers
# the load generator alone used 12% of this machine, so the wait held every page back to its limit (page p90 20 s)
# for no better numbers.
QUIET_SHARE = 0.05  # of all cores


def _machine_busy_s() -> float | None:
    """CPU seconds all processes have used since boot (user, nice, system, irq, softirq), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _own_busy_s() -> float:
    t = os.times()
    return t.user + t.system


class OthersMeter:
    """Share of the machine's CPU that other processes used since it was started (None where unknown)."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.monotonic(), _machine_busy_s(), _own_busy_s()

    def share(self) -> float | None:
        busy = _machine_busy_s()
        wall = time.monotonic() - self.t0
        if busy is None or self.busy0 is None or wall <= 0:
            return None
        others = (busy - self.busy0) - (_own_busy_s() - self.own0)
        return max(0.0, others) / (wall * (os.cpu_count() or 1))


@dataclass
class Turn:
    """One timed run's turn; `others_share` is filled in when the run ends."""
    others_share: float | None = None

    @property
    def disturbed(self) -> bool:
        return self.others_share is not None and self.others_share >= QUIET_SHARE


@dataclass
class GateStats:
    """What the worker's timed runs saw: how many, how long they waited for pages, how many could not wait,
    how many were disturbed by other processes (and timed again), and the most others used in a kept run."""
    timed_runs: int = 0
    drain_wait_s: list[float] = field(default_factory=list)
    undrained_runs: int = 0
    disturbed_runs: int = 0
    others_share_kept: list[float] = field(default_factory=list)

    def record(self, turn: Turn) -> None:
        if turn.disturbed:
            self.disturbed_runs += 1
        elif turn.others_share is not None:
            self.others_share_kept.append(turn.others_share)

    def settings(self) -> dict:
        waits = sorted(self.drain_wait_s) or [0.0]
        kept = sorted(self.others_share_kept) or [0.0]
        return {"timed_runs_with_pages_paused": self.timed_runs - self.undrained_runs,
                "timed_runs_with_pages_running": self.undrained_runs,
                "page_drain_wait_ms_max": round(1e3 * waits[-1], 1),
                "timed_runs_disturbed_and_repeated": self.disturbed_runs,
                "other_processes_cpu_pct_max": round(100 * kept[-1], 2)}


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def _lock_within(fd: int, mode: int, wait_s: float) -> bool:
    """flock with a deadline (flock itself has none); True once held."""
    deadline, pause = time.monotonic() + wait_s, POLL_FIRST_S
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(2 * pause, POLL_MAX_S)


_held = threading.local()  # a fragment drawn inside its page's run is already inside that page's turn


class Gate:
    """The four lock files of one data folder."""

    def __init__(self, folder: Path):
        self.gate_path, self.pages_path = Path(folder) / "gate.lock", Path(folder) / "pages.lock"
        self.waiting_path, self.timing_path = Path(folder) / "waiting.lock", Path(folder) / "timing.lock"
        self.stats = GateStats()

    @contextlib.contextmanager
    def page_run(self, wait_s: float = PAGE_WAIT_S) -> Iterator[bool]:
        """Hold around one page run; yields False when the gate stayed closed past wait_s (the page ran anyway).
        Re-entrant within a thread: a nested call (a fragment inside its page) holds nothing more."""
        if getattr(_held, "depth", 0):
            _held.depth += 1
            try:
                yield True
            finally:
                _held.depth -= 1
            return
        with self._page_locks(wait_s) as in_turn:
            _held.depth = 1
            try:
                yield in_turn
            finally:
                _held.depth = 0

    @contextlib.contextmanager
    def _page_locks(self, wait_s: float) -> Iterator[bool]:
        gate, pages, waiting = _open(self.gate_path), _open(self.pages_path), _open(self.waiting_path)
        try:
            fcntl.flock(waiting, fcntl.LOCK_SH)  # "a page is waiting"; only ever held exclusive for an instant
            waited_out = not _lock_within(gate, fcntl.LOCK_SH, wait_s)
            os.close(waiting)
            waiting = -1
            # Holding the gate shared, no timed run can be holding pages.lock: this returns at once.
            _lock_within(pages, fcntl.LOCK_SH, 0.0 if waited_out else wait_s)
            os.close(gate)
            gate = -1
            yield not waited_out
        finally:
            for fd in (gate, waiting):
                if fd >= 0:
                    os.close(fd)
            os.close(pages)  # closing drops the lock

    @contextlib.contextmanager
    def timed_run(self, drain_s: float = DRAIN_WAIT_S) -> Iterator[Turn]:
        """Hold around one timed run: no page starts, and the ones going finish first (up to drain_s). The Turn
        says afterwards whether other processes disturbed the run."""
        self._let_waiting_pages_in()
        gate, pages = _open(self.gate_path), _open(self.pages_path)
        try:
            fcntl.flock(gate, fcntl.LOCK_EX)  # one worker per data folder: nobody else ever holds it exclusive
            t0 = time.monotonic()
            drained = _lock_within(pages, fcntl.LOCK_EX, drain_s)
            self.stats.timed_runs += 1
            self.stats.drain_wait_s.append(time.monotonic() - t0)
            self.stats.undrained_runs += not drained
            turn, meter = Turn(), OthersMeter()
            yield turn
            turn.others_share = meter.share()
            self.stats.record(turn)
        finally:
            os.close(pages)
            os.close(gate)

    def _let_waiting_pages_in(self, wait_s: float = LET_IN_S) -> None:
        """With the gate open, wait until no page is waiting for it (up to wait_s): the pages that waited for the
        previous timed run get their turn before the next one."""
        waiting = _open(self.waiting_path)
        try:
            if _lock_within(waiting, fcntl.LOCK_EX, wait_s):
                fcntl.flock(waiting, fcntl.LOCK_UN)
        finally:
            os.close(waiting)

    @contextlib.contextmanager
    def timing_phase(self, watched: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """Held by the worker around one variant's timed runs (warm-up and repeats). Open job panels pause for it;
        when `watched()` says someone is connected, the phase starts NOTICE_S after it is announced, so that every
        live panel has seen it before the first timed run."""
        phase = _open(self.timing_path)
        try:
            fcntl.flock(phase, fcntl.LOCK_EX)  # one worker per data folder: never contended
            if watched():
                time.sleep(NOTICE_S)
            yield
        finally:
            os.close(phase)

    def timing_now(self) -> bool:
        """True while the worker is in a timing phase (a page asks before it starts a panel's timer)."""
        phase = _open(self.timing_path)
        try:
            fcntl.flock(phase, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(phase)
