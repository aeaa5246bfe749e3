"""The web server's door: a browser's page requests held while the gate (core/launch/quiet.py) is closed.

A page that waits at the gate has already cost the web server a thread, a message and the app's first lines. So
the server also holds a browser's page requests at its door (`Door`, put in front of Streamlit by ui/turns.py)
while the gate is closed, and lets them in when it opens: the server's CPU during timed runs with thirty viewers
fell from 5.3% to 1.3% of a core.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.launch.quiet import LET_IN_S, PAGE_WAIT_S, POLL_FIRST_S, Gate, open_lock_file, turns_taken


@dataclass
class _HeldSession:
    since_s: float  # time.monotonic() when its first request was held
    requests: list[Callable[[], None]] = field(default_factory=list)


class Door:
    """Holds a browser's page requests at the web server's door while the gate is closed, so that a timed run is
    not slowed by the server starting page runs that would only wait at the gate.

    A page run that waits at the gate has already cost the server a thread, a session message and the first lines
    of the app before it waits (3% of a core with thirty viewers on a 2-core machine, by the server's own CPU time
    with the gate held closed). A request held here costs nothing until the gate opens. Once a session has a held
    request, every later message of that session queues behind it, so their order is kept.

    While it holds anything, one watcher thread holds `waiting.lock` shared (held requests are pages waiting, and
    the worker lets them in between timed runs, as it does pages waiting at the gate) and waits for the gate to open
    without polling (`_GateOpening`). When the gate opens it holds it open (shared) until the page runs it let in
    have got their turn, for at most LET_IN_S; requests held longer than `wait_s` are let in anyway, as a page at the
    gate is.

    `deliver(fn)` must run fn on the web server's event loop thread (Streamlit's requests are handled there).
    """

    def __init__(self, gate: Gate, deliver: Callable[[Callable[[], None]], None], wait_s: float = PAGE_WAIT_S):
        self.gate, self._deliver, self.wait_s = gate, deliver, wait_s
        self._lock = threading.Lock()
        self._held: dict[str, _HeldSession] = {}
        self._watcher: threading.Thread | None = None
        self._waited_s: dict[str, tuple[float, float]] = {}  # session -> (waited s, when let in)
        self.requests_held = 0  # since the door was made (for tests and probes)

    def offer(self, session: str, request: Callable[[], None], starts_run: bool) -> bool:
        """True if the request is held (the door calls it later), False if the caller should handle it now: nothing
        of this session is held, and it either starts no page run or the gate is open."""
        with self._lock:
            held = self._held.get(session)
            if held is None:
                if not starts_run or not self.gate.closed():
                    return False
                held = self._held[session] = _HeldSession(time.monotonic())
                if self._watcher is None:
                    self._watcher = threading.Thread(target=self._watch, name="lab-door", daemon=True)
                    self._watcher.start()
            held.requests.append(request)
            self.requests_held += 1
            return True

    def held_sessions(self) -> int:
        with self._lock:
            return len(self._held)

    def _watch(self) -> None:
        waiting = open_lock_file(self.gate.waiting_path)
        try:
            fcntl.flock(waiting, fcntl.LOCK_SH)
            while True:
                with self._lock:
                    if not self._held:
                        self._watcher = None
                        return
                    due = min(held.since_s for held in self._held.values()) + self.wait_s
                opening = _GateOpening(self.gate.gate_path)
                if opening.wait(max(0.0, due - time.monotonic())):
                    self._let_in(self._take(lambda held: True), hold_gate_open=True)
                    opening.done()
                else:
                    opening.done()
                    self._let_in(self._take(lambda held: time.monotonic() - held.since_s >= self.wait_s))
        except BaseException:  # the server is going away (its event loop closed): the next request starts a watcher
            with self._lock:
                self._watcher = None
            raise
        finally:
            os.close(waiting)

    def _take(self, which: Callable[[_HeldSession], bool]) -> dict[str, _HeldSession]:
        with self._lock:
            taken = [s for s, held in self._held.items() if which(held)]
            return {s: self._held.pop(s) for s in taken}

    def _let_in(self, sessions: dict[str, _HeldSession], hold_gate_open: bool = False) -> None:
        """Hand the sessions' requests to the server, in order. With the gate open (and held open meanwhile), wait
        up to LET_IN_S until each session's page run has got its turn, so that none of them waits for another timed
        run; a session let in with the gate still closed has waited its share, and its page run does not wait again."""
        if not sessions:
            return
        now = time.monotonic()
        with self._lock:
            self._waited_s = {s: w for s, w in self._waited_s.items() if now - w[1] < 60}  # page runs that never came
            for s, held in sessions.items():
                self._waited_s[s] = (now - held.since_s, now)
        before = turns_taken(self.gate.folder)
        for held in sessions.values():
            for request in held.requests:
                self._deliver(request)
        deadline = now + LET_IN_S
        while hold_gate_open and turns_taken(self.gate.folder) - before < len(sessions) and time.monotonic() < deadline:
            time.sleep(POLL_FIRST_S)

    def waited_s(self, session: str) -> float:
        """How long this session's last held requests waited at the door (once; 0 if none): its page run waits at
        the gate only for what is left of PAGE_WAIT_S."""
        with self._lock:
            return self._waited_s.pop(session, (0.0, 0.0))[0]


class _GateOpening:
    """Waits for the gate to open without waking up meanwhile: a thread of its own sits in a blocking flock (shared),
    which the kernel ends when the timed run opens the gate. The door's watcher used to look every 50 ms, twenty
    wake-ups a second on the cores a timed run uses, whenever the room had a request held. Given up (`done` before
    it opened), the thread lets the lock go as soon as it gets it."""

    def __init__(self, path: Path):
        self._fd, self._opened, self._lock, self._over = open_lock_file(path), threading.Event(), threading.Lock(), False
        threading.Thread(target=self._take, name="lab-door-gate", daemon=True).start()

    def _take(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        with self._lock:
            if self._over:
                os.close(self._fd)
            else:
                self._opened.set()

    def wait(self, timeout_s: float) -> bool:
        """True once the gate is open (and held open, shared, until `done`)."""
        return self._opened.wait(timeout_s)

    def done(self) -> None:
        with self._lock:
            self._over = True
            if self._opened.is_set():
                os.close(self._fd)
