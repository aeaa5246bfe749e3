"""The first way of measuring: in each round the lab starts, the room arrives, the presenter's sweep runs under load,
and everything stops; the CLI's sweep runs before every round and after the last."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from .browsers import CHROMIUM, browsers, presenter_tab
from .lab import LOGS, dashboard_records, free_port, queue_counts, start_lab, stop_lab
from .machine import StealMeter
from .session import Stats, presenter, viewer

async def drive(args, url: str, token: str, labels: list[str], stats: Stats, pstats: Stats, data: Path,
                since: str, n_variants: int) -> float:
    stop, room_in, started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(presenter(url, pstats, token, labels, args, room_in, started, stop))]
    viewers = args.sessions - args.browsers
    for i in range(viewers):
        tasks.append(asyncio.create_task(viewer(url, stats, stop, started, i < args.viewer_jobs, seed=i)))
        await asyncio.sleep(0.2)  # people arrive over a few seconds, not in one instant
    # The room is in before the presenter presses Measure, as in a class, so that every session is active for
    # the whole sweep (with Measure first, the first variant was timed while thirty sessions were arriving).
    arrival_deadline = time.monotonic() + 120
    while stats.arrived < viewers and time.monotonic() < arrival_deadline:
        await asyncio.sleep(0.5)
    room_in.set()
    await asyncio.wait_for(started.wait(), 180)
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.max_s and len(dashboard_records(data, since)) < n_variants:
        await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return time.monotonic() - t0


@dataclass
class Round:
    """One presenter's sweep from the dashboard under load."""
    load_s: float
    load_cpu_s: float
    wall_s: float
    stats: Stats
    records: list[dict]
    queue: dict[str, int]
    log: Path
    tracebacks: int  # in the server's log of this round (a viewer's page shows none, by design)
    steal_pct: float | None


def one_round(args, python: str, env: dict, data: Path, labels: list[str], n_variants: int, index: int) -> Round:
    """Start the lab, let the room in while the presenter's sweep runs, stop everything."""
    port = free_port()
    LOGS.mkdir(exist_ok=True)
    log = LOGS / f"round-{index}.log"
    steal = StealMeter()
    lab, token = start_lab(args.app_dir.resolve(), python, env, port, log)
    url = f"http://127.0.0.1:{port}"
    me = psutil.Process()
    cpu0, wall0 = sum(me.cpu_times()[:2]), time.monotonic()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    time.sleep(1.1)  # records of an earlier round are strictly older than `since`
    stats, pstats, bstats = Stats(), Stats(), Stats()
    stop_browsers = threading.Event()
    thread = threading.Thread(target=browsers, args=(url, args.browsers, bstats, stop_browsers), daemon=True)
    tab = threading.Thread(target=presenter_tab, args=(url, token, bstats, stop_browsers), daemon=True)

    def browser_tree_cpu() -> float:  # Playwright's driver and Chromium are this process's descendants
        total = 0.0
        for child in me.children(recursive=True):
            try:
                if child.pid != lab.pid and lab.pid not in [p.pid for p in child.parents()]:
                    total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    thread.start()
    if args.presenter_tab and Path(CHROMIUM).exists():
        tab.start()
    try:
        elapsed = asyncio.run(drive(args, url, token, labels, stats, pstats, data, since, n_variants))
        browser_cpu = browser_tree_cpu()
        stop_browsers.set()
        thread.join(30)
        if tab.is_alive():
            tab.join(30)
        load_cpu = sum(me.cpu_times()[:2]) - cpu0 + browser_cpu
        wall = time.monotonic() - wall0
        jobs = queue_counts(data)
        records = dashboard_records(data, since)
    finally:
        stop_lab(lab, data)
    everyone = Stats(page_s=stats.page_s + bstats.page_s + pstats.page_s,
                     fragment_s=stats.fragment_s + pstats.fragment_s,
                     errors=stats.errors + bstats.errors + pstats.errors,
                     refusals=stats.refusals + bstats.refusals + pstats.refusals,
                     timeouts=stats.timeouts + pstats.timeouts, jobs_queued=stats.jobs_queued)
    tracebacks = log.read_text(errors="replace").count("Traceback (most recent call last)")
    return Round(elapsed, load_cpu, wall, everyone, records, jobs, log, tracebacks, steal.pct())
