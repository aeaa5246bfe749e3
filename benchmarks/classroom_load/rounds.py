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
from .lab import LOGS, cli_sweep, dashboard_records, free_port, queue_counts, start_lab, stop_lab
from .machine import StealMeter, browsers_cpu_s
from .report import rounds_result
from .session import Stats, presenter, room_arrives


async def drive(args, url: str, token: str, labels: list[str], stats: Stats, pstats: Stats, data: Path,
                since: str, n_variants: int) -> float:
    """The presenter picks the variants, the room arrives, the presenter presses Measure, and the room stays active
    until the sweep's records are stored (or --max-s); the seconds from Measure to then."""
    stop, room_in, started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(presenter(url, pstats, token, labels, args, room_in, started, stop))]
    # The room is in before the presenter presses Measure, as in a class, so that every session is active for
    # the whole sweep (with Measure first, the first variant was timed while thirty sessions were arriving).
    tasks += await room_arrives(url, stats, stop, started, args.sessions - args.browsers, args.viewer_jobs)
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

    thread.start()
    if args.presenter_tab and Path(CHROMIUM).exists():
        tab.start()
    try:
        elapsed = asyncio.run(drive(args, url, token, labels, stats, pstats, data, since, n_variants))
        browser_cpu = browsers_cpu_s(me, lab.pid)
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


def run_rounds(args, keys: list[str], labels: list[str], python: str, env: dict, data: Path) -> dict:
    """--rounds presenter sweeps under load, with the CLI's sweep before each and after the last; the result."""
    cli_runs: list[dict[str, dict]] = []
    cli_steal: list[float | None] = []
    rounds: list[Round] = []

    def reference(name: str) -> None:
        steal = StealMeter()
        cli_runs.append(cli_sweep(python, env, keys, args, data / f"cli-{name}.json"))
        cli_steal.append(steal.pct())

    for i in range(args.rounds):
        if not args.skip_cli:
            reference(str(i))
        rounds.append(one_round(args, python, env, data, labels, len(keys), i))
    if not args.skip_cli:
        reference("last")
    return rounds_result(args, keys, rounds, cli_runs, cli_steal)
