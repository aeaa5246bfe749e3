"""A job kind for the Stop tests only: its runner never calls should_stop(), as a model load, a training step or a
llama.cpp tool does not, and it starts two processes of its own, one in its process group (as llama-perplexity
runs) and one in a session of its own (as llama-server runs). With `in_c` it then waits inside one C call that no
signal ends (a mutex locked twice), as a long C call would: the SIGTERM handler never runs, only SIGKILL ends it.

Registered in a test (`register()`), and in the worker's child process through `child_argv`, which imports this
module first: the worker's own command knows only the lab's kinds.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import ClassVar

from core.launch import kinds
from core.launch.job import JobArgs
from core.launch.kinds.base import JobKind
from core.paths import data_dir

PIDS_FILE = "stuck-pids.json"


@dataclass(frozen=True)
class StuckArgs(JobArgs):
    kind: ClassVar[str] = "stuck-test"
    in_c: bool = False


def _stuck(args: StuckArgs, ctx) -> dict:
    in_group = subprocess.Popen(["sleep", "300"])
    own_session = subprocess.Popen(["sleep", "301"], start_new_session=True)
    (data_dir() / PIDS_FILE).write_text(json.dumps([in_group.pid, own_session.pid]))
    ctx.report(0.1, "stuck on purpose")
    if args.in_c:
        libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64)
        libc.pthread_mutex_lock(mutex)
        libc.pthread_mutex_lock(mutex)  # waits forever
    for _ in range(600):  # ten minutes, never asking should_stop()
        time.sleep(1.0)
    return {}


def register() -> JobKind:
    return kinds.register(JobKind(StuckArgs, _stuck, similar=lambda a: "stuck-test"))


def unregister() -> None:
    kinds.KINDS.pop(StuckArgs.kind, None)


def child_argv(job_id: int) -> list[str]:
    """The worker's child command, with this kind registered first."""
    code = ("import sys; from tests import stop_kind; stop_kind.register(); from core.launch import worker; "
            f"sys.exit(worker.main(['--job', '{job_id}']))")
    return [sys.executable, "-c", code]



