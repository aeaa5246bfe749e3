"""The gate: timed runs and page runs take turns, so that a room of viewers never slows what the worker measures.

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
most about one timed run. A timed run longer than `TURN_S` (a slow variant on a slow CPU) also lets waiting pages
in between two of its decode steps (`Turn.between_steps`): steps are timed one by one, so the pause is not counted,
and on an AVX2-only 2-core machine this took the room's page p90 from 3.6 s to 2.3 s. Both sides give up waiting
after a bound rather than hang: a page runs anyway after `PAGE_WAIT_S`, and a timed run starts anyway after
`DRAIN_WAIT_S` and says so in its record.

A page that waits at the gate has already cost the web server a thread, a message and the app's first lines. So
the server also holds a browser's page requests at its door (`Door`, put in front of Streamlit by pages/common.py)
while the gate is closed, and lets them in when it opens: the server's CPU during timed runs with thirty viewers
fell from 5.3% to 1.3% of a core.
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

from core.measure import others
from core.measure.others import OthersMeter

PAGE_WAIT_S = 20.0  # a page runs after this long even if the gate is still closed
DRAIN_WAIT_S = 10.0  # a timed run starts after this long even if page runs are still going
# Waiting is polling (flock has no timeout), backing off: thirty waiting pages polling every 20 ms would wake the
# machine 1,500 times a second and pull the timed run's threads off their cores.
POLL_FIRST_S, POLL_MAX_S = 0.01, 0.25
TURN_S = 1.0  # a timed run closes the gate for about this long at a time (it lets waiting pages in between steps)
LET_IN_S = 1.0  # a timed run waits at most this long for the waiting pages to get in (they poll every <= 0.25 s)
PANEL_EVERY_S = 3.0  # an open page's job panel redraws this often, outside timing phases
# A page run is over for the gate when its script ends, but its work is not: the web server still sends what it drew
# and the browser draws it. With thirty viewers a probe holding the gate closed saw the others' CPU at 4-9% of a core
# in the first 50 ms after pages had their turn and 1-1.3% after that. So after pages had a turn the timed run waits
# this long before its next step (not counted). The step right after a turn stays 5-8% slower even with nothing else
# running (a 0.2 s pause alone does that on a 2-core AMD EPYC; the next two steps 1-6%): the pause itself, not pages.
SETTLE_S = 0.05
NOTICE_S = PANEL_EVERY_S + 1.0  # a timing phase starts this long after the worker announces it, if anyone watches


# Pausing pages is not all: a viewer's browser on this machine, the web server sending a page's scripts, anything
# else. So each timed run measures how much of the machine the other processes used meanwhile (core/measure/others.py,
# for the CLI's runs too); a run during which they used QUIET_SHARE or more is reported disturbed and timed once more
# (benchmark.DISTURBED_RETRIES), and the record keeps the shares and the verdict. The gate's Turn keeps its own meter
# so that the pages let in between two steps do not count against the run. Waiting for a quiet moment before each
# run was tried and dropped: with thirty viewers the load generator alone used 12% of this machine, so the wait held
# every page back to its limit (page p90 20 s) for no better numbers.
QUIET_SHARE = others.QUIET_SHARE


@dataclass
class GateStats:
    """What the worker's timed runs saw of pages: how many, how long they waited for pages, how many could not wait,
    and how often they let waiting pages in between their steps. What other processes used is the timing
    primitive's to record (benchmark.bench_generation), in the CLI's records too."""
    timed_runs: int = 0
    drain_wait_s: list[float] = field(default_factory=list)
    undrained_runs: int = 0
    turns_between_steps: int = 0

    def record(self, turn: "Turn") -> None:
        self.timed_runs += 1
        self.undrained_runs += turn.undrained
        self.turns_between_steps += turn.turns_between_steps

    def settings(self) -> dict:
        waits = sorted(self.drain_wait_s)
        return {"timed_runs_with_pages_paused": self.timed_runs - self.undrained_runs,
                "timed_runs_with_pages_running": self.undrained_runs,
                "page_turns_between_decode_steps": self.turns_between_steps,
                "page_drain_wait_ms_max": round(1e3 * waits[-1], 1) if waits else None}


def open_lock_file(path: Path) -> int:
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
_turns_lock = threading.Lock()
_turns_taken: dict[Path, int] = {}  # page runs in this process that got their turn, per data folder


def _took_turn(folder: Path) -> None:
    with _turns_lock:
        _turns_taken[folder] = _turns_taken.get(folder, 0) + 1


def turns_taken(folder: Path) -> int:
    with _turns_lock:
        return _turns_taken.get(Path(folder), 0)


class Gate:
    """The four lock files of one data folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
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
        gate, pages, waiting = open_lock_file(self.gate_path), open_lock_file(self.pages_path), open_lock_file(self.waiting_path)
        try:
            fcntl.flock(waiting, fcntl.LOCK_SH)  # "a page is waiting"; only ever held exclusive for an instant
            waited_out = not _lock_within(gate, fcntl.LOCK_SH, wait_s)
            os.close(waiting)
            waiting = -1
            # Holding the gate shared, no timed run can be holding pages.lock: this returns at once.
            _lock_within(pages, fcntl.LOCK_SH, 0.0 if waited_out else wait_s)
            _took_turn(self.folder)
            os.close(gate)
            gate = -1
            yield not waited_out
        finally:
            for fd in (gate, waiting):
                if fd >= 0:
                    os.close(fd)
            os.close(pages)  # closing drops the lock

    @contextlib.contextmanager
    def timed_run(self, drain_s: float = DRAIN_WAIT_S) -> Iterator["Turn"]:
        """Hold around one timed run: no page starts, and the ones going finish first (up to drain_s). Between its
        steps the run may let waiting pages in (`Turn.between_steps`). The Turn says afterwards whether other
        processes disturbed the run."""
        turn = Turn(self, drain_s)
        try:
            turn.close()
            yield turn
        finally:
            turn.open()
        turn.others_share = turn.meter.share()
        self.stats.record(turn)

    def pages_waiting(self) -> bool:
        """True while a page (or a request at the door) waits for the gate to open."""
        return _held_by_another(self.waiting_path, fcntl.LOCK_EX)

    def _let_waiting_pages_in(self, wait_s: float = LET_IN_S) -> bool:
        """With the gate open, wait until no page is waiting for it (up to wait_s): the pages that waited for the
        previous timed run get their turn before the next one. True if any page was waiting."""
        waiting = open_lock_file(self.waiting_path)
        try:
            none_waiting = _lock_within(waiting, fcntl.LOCK_EX, 0.0)
            if none_waiting or _lock_within(waiting, fcntl.LOCK_EX, wait_s):
                fcntl.flock(waiting, fcntl.LOCK_UN)
            return not none_waiting
        finally:
            os.close(waiting)

    @contextlib.contextmanager
    def timing_phase(self, watched: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """Held by the worker around one variant's timed runs (warm-up and repeats). Open job panels pause for it;
        when `watched()` says someone is connected, the phase starts NOTICE_S after it is announced, so that every
        live panel has seen it before the first timed run."""
        phase = open_lock_file(self.timing_path)
        try:
            fcntl.flock(phase, fcntl.LOCK_EX)  # one worker per data folder: never contended
            if watched():
                time.sleep(NOTICE_S)
            yield
        finally:
            os.close(phase)

    def closed(self) -> bool:
        """True while a timed run holds the gate (no page may start)."""
        return _held_by_another(self.gate_path, fcntl.LOCK_SH)

    def timing_now(self) -> bool:
        """True while the worker is in a timing phase (a page asks before it starts a panel's timer)."""
        return _held_by_another(self.timing_path, fcntl.LOCK_SH)


def _held_by_another(path: Path, mode: int) -> bool:
    """True if someone holds `path` so that this process cannot take it in `mode` now (it is not kept)."""
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class Turn:
    """One timed run's hold on the gate. A run longer than TURN_S (a slow variant, a long generation) lets the pages
    waiting for it in between two of its steps, then closes again: the steps are timed one by one and the time
    between them is not counted, so a page waits about TURN_S, not a whole generation (an int8 run on an AVX2-only
    CPU took 50 s). The others' share counts only the closed stretches."""

    def __init__(self, gate: Gate, drain_s: float):
        self.gate, self.drain_s = gate, drain_s
        self.undrained, self.turns_between_steps = False, 0
        self.others_share: float | None = None
        self.meter: OthersMeter | None = None
        self._fds: tuple[int, int] | None = None
        self._closed_at = 0.0

    @property
    def disturbed(self) -> bool:
        return others.is_disturbed(self.others_share)

    def close(self) -> None:
        pages_came = self.gate._let_waiting_pages_in()
        gate, pages = open_lock_file(self.gate.gate_path), open_lock_file(self.gate.pages_path)
        self._fds = (gate, pages)
        fcntl.flock(gate, fcntl.LOCK_EX)  # one worker per data folder: nobody else ever holds it exclusive
        t0 = time.monotonic()
        at_once = _lock_within(pages, fcntl.LOCK_EX, 0.0)
        drained = at_once or _lock_within(pages, fcntl.LOCK_EX, self.drain_s)
        pages_came = pages_came or not at_once
        self.gate.stats.drain_wait_s.append(time.monotonic() - t0)
        self.undrained = self.undrained or not drained
        if pages_came:
            time.sleep(SETTLE_S)
        self._closed_at = time.monotonic()
        if self.meter is None:
            self.meter = OthersMeter()
        else:
            self.meter.resume()

    def open(self) -> None:
        if self._fds is None:
            return
        if self.meter is not None:
            self.meter.pause()
        gate, pages = self._fds
        self._fds = None
        os.close(pages)  # closing drops the lock
        os.close(gate)

    def between_steps(self) -> None:
        """Called between two timed steps: after TURN_S closed, let the waiting pages in and close again."""
        if time.monotonic() - self._closed_at < TURN_S or not self.gate.pages_waiting():
            return
        self.open()
        self.turns_between_steps += 1
        self.close()
