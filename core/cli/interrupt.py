"""Ctrl-C on any command ends it within seconds, keeping what finished, and says what was kept.

Python raises KeyboardInterrupt only between bytecodes of the main thread, so a command inside one long call in C
(a model load, an in-process llama.cpp quantization) would not see Ctrl-C until the call returned. The signal still
reaches Python's C handler at once, which writes it to the wakeup fd (`signal.set_wakeup_fd`): a watcher thread
reads it there, gives the main thread `GRACE_S` to end the usual way (its `finally` blocks stop servers and remove
temp files), and otherwise ends the processes the command started and the command itself. Nothing kept is harmed by
that: records are one transaction each, JSONL results one whole line per write, caches renamed into place whole.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from core.launch import stopping
from core.store.results import stored_by_this_process

GRACE_S = 5.0  # seconds the main thread gets to end by its KeyboardInterrupt before the watcher ends the process
INTERRUPTED = 130  # the shell's status for a command ended by SIGINT

_said = threading.Event()  # the kept-words line is printed once, by whichever path gets there first
_wakeup: list[socket.socket] = []  # the fd the C handler writes to, held: a closed one would lose the signal


def kept_words() -> str:
    n = stored_by_this_process()
    if n == 0:
        return "nothing measured here had been stored yet"
    return f"{n} measured {'record is' if n == 1 else 'records are'} kept in the results store"


def say_interrupted(how: str = "") -> None:
    """One line on stderr: interrupted, and what was kept."""
    if not _said.is_set():
        _said.set()
        print(f"interrupted{how}; {kept_words()}", file=sys.stderr, flush=True)


def _watch(reader: socket.socket, grace_s: float) -> None:
    while signal.SIGINT not in reader.recv(64):  # each byte is the number of a signal Python caught
        pass
    time.sleep(grace_s)  # the usual way ends the process well before this
    say_interrupted(f" (still busy {grace_s:.0f} s after Ctrl-C, inside a long call: ended)")
    for pid in stopping.descendants(os.getpid()):  # a llama.cpp tool or server it started goes too
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    os._exit(INTERRUPTED)


def watch(grace_s: float = GRACE_S) -> None:
    """Start the watcher (main thread only; once per process)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if _wakeup:
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    _wakeup.append(writer)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(reader, grace_s), name="ctrl-c watcher", daemon=True).start()
