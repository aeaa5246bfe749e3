"""What other processes use of this machine's CPU now: the worker notes it while it waits for work, so that an
estimate shown on a page can say when it is uncertain (core/launch/estimates.py).

While the worker runs a job, the job's own timed runs measure the others (core/measure/others.py); between jobs
nothing of ours runs but the web server, so what the machine does is somebody else's: a video call, a build.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.measure.others import OthersMeter
from core.paths import data_dir

FRESH_S = 20.0  # a note older than this says nothing about now (the worker may be busy with a job)
SAMPLE_S = 0.25  # a page with no fresh note measures this long itself, when no job of ours is running


def load_path() -> Path:
    return data_dir() / "machine_load.json"


def note(share: float | None, path: Path | None = None) -> None:
    """The worker's idle note: others' share of all cores over its last idle stretch."""
    if share is None:
        return
    path = path or load_path()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"others_share": share, "at_s": time.time()}))
    tmp.replace(path)


def noted_share(path: Path | None = None, fresh_s: float = FRESH_S) -> float | None:
    try:
        entry = json.loads((path or load_path()).read_text())
    except (OSError, ValueError):
        return None
    return float(entry["others_share"]) if time.time() - float(entry.get("at_s", 0)) <= fresh_s else None


def sample_share(seconds: float = SAMPLE_S) -> float | None:
    """Others' share of all cores over `seconds`, measured here (this process's own CPU left out)."""
    meter = OthersMeter()
    time.sleep(seconds)
    return meter.share()


def recent_share(job_running: bool = False) -> float | None:
    """The worker's fresh note, else (with no job of ours running, which would count as others) a short sample."""
    noted = noted_share()
    if noted is not None or job_running:
        return noted
    return sample_share()


class IdleSampler:
    """The worker's side: call `tick()` in its idle loop; every `every_s` it notes what the others used meanwhile."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self._meter, self._since = every_s, OthersMeter(), time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self._since >= self.every_s:
            note(self._meter.share())
            self.restart()

    def restart(self) -> None:
        """After a job: the stretch it ran in is the job's, not idle time."""
        self._meter, self._since = OthersMeter(), time.monotonic()


class AroundJob:
    """What other processes used while one job ran in a child process of this one: the machine's busy time less this
    process's and its waited-for children's (the job's process and what it started and waited for)."""

    def __init__(self):
        self._meter, self._before = OthersMeter(), os.times()

    def share(self) -> float | None:
        after = os.times()
        children_s = (after.children_user + after.children_system) - (self._before.children_user
                                                                      + self._before.children_system)
        share = self._meter.share()
        if share is None or self._meter.wall_s <= 0:
            return None
        return max(0.0, share - children_s / (self._meter.wall_s * (os.cpu_count() or 1)))
