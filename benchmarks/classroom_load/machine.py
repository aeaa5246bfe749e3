"""What each part of the machine used: CPU seconds of the web server, the worker, the browsers and this load
generator, their shares of the whole machine, and the share the hypervisor stole."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil


def steal_s() -> float | None:
    """CPU seconds the hypervisor has taken from this virtual machine since boot (the `steal` column of
    /proc/stat), or None off Linux. Time stolen during a timed run slows it as another process would, but no
    process on this machine shows it, so the lab's own check of other processes cannot see it."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else None


class StealMeter:
    """Share of the machine the hypervisor took while it ran (None where unknown)."""

    def __init__(self):
        self.t0, self.s0 = time.monotonic(), steal_s()

    def pct(self) -> float | None:
        s1, wall = steal_s(), time.monotonic() - self.t0
        if s1 is None or self.s0 is None or wall <= 0:
            return None
        return round(100 * (s1 - self.s0) / (wall * psutil.cpu_count()), 2)


def processes_cpu_s(procs: list[psutil.Process]) -> float | None:
    """User + system CPU seconds so far of these processes; None if one has gone, so that a share across its exit
    is unknown rather than negative."""
    try:
        return sum(sum(proc.cpu_times()[:2]) for proc in procs)
    except psutil.Error:
        return None


def tree_cpu_s(proc: psutil.Process) -> float | None:
    """User + system CPU seconds so far of a process and everything under it, the children it has already waited
    for included: the worker runs each job in a child process that comes and goes between two readings."""
    try:
        own = proc.cpu_times()
    except psutil.Error:
        return None
    live = 0.0
    for kid in proc.children(recursive=True):
        try:
            live += sum(kid.cpu_times()[:2])
        except psutil.Error:  # ended since the listing: its time is in its parent's children_* from now on
            pass
    return own.user + own.system + own.children_user + own.children_system + live


def browsers_cpu_s(me: psutil.Process, lab_pid: int) -> float:
    """CPU seconds so far of this process's descendants outside the lab: Playwright's driver and Chromium."""
    total = 0.0
    for child in me.children(recursive=True):
        try:
            if child.pid != lab_pid and lab_pid not in [p.pid for p in child.parents()]:
                total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def share_pct(before: float | None, after: float | None, wall_s: float) -> float | None:
    """CPU seconds between two readings as a share of the whole machine (all cores), in percent."""
    if before is None or after is None:
        return None
    return round(100 * (after - before) / (wall_s * psutil.cpu_count()), 2)


def command_line(proc: psutil.Process) -> str:
    """'' for a process that has ended (a job's child the worker has not yet waited for is a zombie, with none)."""
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def cpu_by_part(lab_pid: int) -> dict[str, float | None]:
    """CPU seconds so far of each part on this machine: the lab's web server, its worker with its job processes, the
    presenter's Chromium tab (this process's Chromium children), this load generator, and the whole machine."""
    me, lab = psutil.Process(), psutil.Process(lab_pid)
    worker = [k for k in lab.children(recursive=True) if "worker" in (cmd := command_line(k)) and "--job" not in cmd]
    browser = [k for k in me.children(recursive=True) if "chrom" in k.name().lower()]
    machine = psutil.cpu_times()
    return {"web_server": processes_cpu_s([lab]), "worker": tree_cpu_s(worker[0]) if worker else None,
            "presenter_tab": processes_cpu_s(browser), "load_generator": processes_cpu_s([me]),
            "machine": machine.user + machine.nice + machine.system + getattr(machine, "irq", 0)
            + getattr(machine, "softirq", 0)}


def cpu_pct_between(before: dict[str, float | None], after: dict[str, float | None],
                    wall_s: float) -> dict[str, float | None]:
    """Each part's share of the machine (all cores) between two cpu_by_part readings."""
    return {k: share_pct(before[k], after[k], wall_s) for k in before}


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown")
