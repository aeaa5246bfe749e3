"""What other processes used of the machine while a run was timed: the meter, and the verdict a record carries.

A laptop is never quiet: a browser, an indexer, another user's job. A decode step waits for its slowest thread:
while another process held one core of two, five timed runs of GGUF Q8_0 ranged from 1.2 to 17 tokens/s. Every timed
run therefore measures the share of the machine's CPU that other processes used meanwhile (/proc/stat's busy time of
all processes minus this process's own), in the CLI and in the dashboard's worker alike (benchmark.timed_generation).
A run at or above QUIET_SHARE is disturbed and timed again; a variant whose kept runs were still disturbed (at least
half of them) was measured on a busy machine, and its record says so (`busy_machine`), with the share. Where the share
cannot be read (not Linux), the record says None: unknown is never written as 0.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# A run during which other processes used this share of all cores or more is disturbed. With thirty viewers and
# pages paused, core/launch/quiet.py's probe saw the others at 1-1.3% of a core; one other process holding a thread
# takes a whole core, 50% of a 2-core machine.
QUIET_SHARE = 0.05  # of all cores


def machine_busy_s() -> float | None:
    """CPU seconds all processes have used since boot (user, nice, system, irq, softirq), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_busy_s() -> float:
    t = os.times()
    return t.user + t.system


class OthersMeter:
    """Share of the machine's CPU that other processes used while it ran (None where unknown). It can pause, so
    that a timed run that lets pages in between its steps counts only its own closed stretches."""

    def __init__(self):
        self.others_s, self.wall_s, self._start = 0.0, 0.0, None
        self.known = machine_busy_s() is not None
        self.resume()

    def resume(self) -> None:
        self._start = (time.monotonic(), machine_busy_s(), own_busy_s())

    def pause(self) -> None:
        if self._start is None:
            return
        t0, busy0, own0 = self._start
        busy = machine_busy_s()
        self.wall_s += time.monotonic() - t0
        if busy is not None and busy0 is not None:
            self.others_s += max(0.0, (busy - busy0) - (own_busy_s() - own0))
        self._start = None

    def share(self) -> float | None:
        self.pause()
        if not self.known or self.wall_s <= 0:
            return None
        return min(1.0, self.others_s / (self.wall_s * (os.cpu_count() or 1)))


def is_disturbed(share: float | None) -> bool:
    return share is not None and share >= QUIET_SHARE


def _pct(share: float | None) -> float | None:
    return None if share is None else round(100 * share, 2)


@dataclass(frozen=True)
class OthersLoad:
    """What other processes used during one variant's timed runs (warm-ups left out).

    `attempts` holds every timed run in order, the disturbed ones that were timed again included; `kept` the run
    each sample comes from. None where the share could not be read."""
    attempts: tuple[float | None, ...] = ()
    kept: tuple[float | None, ...] = ()

    @property
    def known(self) -> list[float]:
        return [s for s in self.attempts if s is not None]

    @property
    def disturbed(self) -> int:
        return sum(is_disturbed(s) for s in self.attempts)

    @property
    def kept_disturbed(self) -> int:
        return sum(is_disturbed(s) for s in self.kept)

    @property
    def busy(self) -> bool | None:
        """True when the speed is unreliable: at least half of the kept runs were disturbed, so the median sample
        may come from a disturbed run. None when no kept run could be measured."""
        measured = [s for s in self.kept if s is not None]
        if not measured:
            return None
        return 2 * self.kept_disturbed >= len(measured)

    def settings(self) -> dict:
        """The fields a record's settings carry (percent of all cores; None where unknown, never 0)."""
        known = self.known
        return {
            "other_processes_cpu_pct_median": _pct(statistics.median(known)) if known else None,
            "other_processes_cpu_pct_max": _pct(max(known)) if known else None,
            "timed_runs_measured": len(self.attempts),
            "timed_runs_disturbed": self.disturbed if known else None,
            "timed_runs_disturbed_and_repeated": len(self.attempts) - len(self.kept),
            "timed_runs_kept_disturbed": self.kept_disturbed if known else None,
            "quiet_share_pct": _pct(QUIET_SHARE),
            "busy_machine": self.busy,
        }


@dataclass(frozen=True)
class OthersReading:
    """A stored record's verdict, read back from its settings. Records measured before every timed run was metered
    (no `busy_machine` key) read as unknown: the worker then wrote 0.0 when no run was kept clean."""
    cpu_pct_median: float | None
    cpu_pct_max: float | None
    runs: int | None
    disturbed: int | None
    busy: bool | None

    @property
    def known(self) -> bool:
        return self.cpu_pct_median is not None


def read(settings: dict) -> OthersReading:
    if "busy_machine" not in settings:
        return OthersReading(None, None, None, None, None)
    return OthersReading(settings.get("other_processes_cpu_pct_median"), settings.get("other_processes_cpu_pct_max"),
                         settings.get("timed_runs_measured"), settings.get("timed_runs_disturbed"),
                         settings.get("busy_machine"))


def load_of(runs: Sequence) -> OthersLoad:
    """The load over timed runs that each carry `others_shares` (every attempt, the kept one last)."""
    return OthersLoad(tuple(s for r in runs for s in r.others_shares),
                      tuple(r.others_shares[-1] if r.others_shares else None for r in runs))
