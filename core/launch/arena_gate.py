"""Whether the Arena may generate now, and the words that say why not and when it frees.

Live runs happen in the web server, so they never overlap a timed job: the Arena is locked while a job runs, and
(for a viewer) while a queued job is about to start, i.e. the worker is up and no Arena run holds the machine, so
it claims the job within a poll. A job that merely waits behind an Arena run's lease does not lock the Arena: it
starts when the lease ends. Two Arena runs never overlap either: another session's lease locks it until released.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from core.launch.jobqueue import GIVES_WAY, JobQueue, QueueSnapshot
from core.launch.uploads import fmt_seconds


@dataclass(frozen=True)
class ArenaGate:
    reason: str = ""  # what the viewer is told; "" when the Arena is open

    @property
    def locked(self) -> bool:
        return bool(self.reason)


def other_lease_left_s(queue: JobQueue, name: str) -> float | None:
    """Seconds until another session's Arena lease ends at the latest (it is renewed while it generates); None if
    no other session holds one."""
    with sqlite3.connect(queue.path, timeout=5) as conn:  # a plain read of the queue's leases table
        row = conn.execute("SELECT MAX(until_s) FROM leases WHERE name != ? AND until_s > ?",
                           (name, time.time())).fetchone()
    return None if row is None or row[0] is None else row[0] - time.time()


def arena_gate(snapshot: QueueSnapshot, presenter: bool, other_lease_s: float | None, worker_up: bool) -> ArenaGate:
    """Open, or locked with the reason and when it frees (from the queue's own time estimates)."""
    if (job := snapshot.running) is not None and job.kind != GIVES_WAY:  # the idle preparation gives way to the Arena
        when = "when it ends" if snapshot.running_left_s is None else \
            f"when it ends, in about {fmt_seconds(snapshot.running_left_s)}"
        return ArenaGate(f"{job.label} ({job.owner}) is being measured now: generating here would spoil its timings. "
                         f"The Arena opens {when}.")
    if other_lease_s is not None:
        return ArenaGate(f"Another Arena run is generating now (two at once would slow each other). It frees within "
                         f"{fmt_seconds(other_lease_s)}" + (", then the queued job runs first." if snapshot.waiting
                                                            else "."))
    if snapshot.waiting and worker_up and not presenter and snapshot.waiting[0].job.kind != GIVES_WAY:
        nxt = snapshot.waiting[0].job
        return ArenaGate(f"{nxt.label} ({nxt.owner}) is starting now: generating here would spoil its timings. The "
                         "Arena opens when the queue is empty; the panel on its page shows how long that takes.")
    return ArenaGate()
