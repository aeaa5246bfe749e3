"""`--paired`, the CLI a minute away rather than a round away: the lab starts once and the room stays connected; each
round measures every variant three times in a rotating order (the CLI, the dashboard with the room active, the
dashboard with only the presenter)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import psutil

from .browsers import CHROMIUM, presenter_tab
from .lab import LOGS, cli_sweep, dashboard_records, free_port, last_presenter_job, quiet_queue, start_lab, stop_lab
from .machine import StealMeter, cpu_by_part, cpu_pct_between
from .report import paired_result, unfinished_paired_result, write_json_atomically
from .session import Session, Stats, room_arrives, set_sweep_settings
from .stats import CONDITIONS


class Presenter:
    """The presenter's protocol session on the Quantize page: it measures one variant at a time, and between
    measurements it stays on the page as a browser would (its panel ticks), unless told to step away."""

    def __init__(self, url: str, token: str, stats: Stats):
        self.here = asyncio.Event()
        self.here.set()
        self.session = Session(url, stats, f"token={token}" if token else "", active=self.here)
        self.turn = asyncio.Lock()  # one request at a time on the session's socket

    async def open(self, args) -> None:
        await self.session.__aenter__()
        await self.session.run()
        self.session.query = ""  # the page strips the token from the address bar
        await self.session.run("quantize")
        self.args = args
        self._settings()
        await self.session.run()

    def _settings(self) -> None:
        """The sweep's timed runs and questions, as the CLI's flags have them. Set again before every Measure: the
        first measurement of a run once went out with the page's defaults."""
        set_sweep_settings(self.session, self.args.repeats, self.args.mc_max_items)

    async def stay(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self.turn:
                await self.session.dwell(1.0)

    async def measure(self, label: str, key: str, data: Path, max_s: float) -> dict | None:
        """Press Measure with only `label` picked; the variant's record once the worker has stored it. Only the
        presenter's job counts: a viewer's job of the same variant (the room queues some) may end first."""
        before = last_presenter_job(data)
        async with self.turn:
            self.session.set("multiselect", "Variants to measure", string_array_value={"data": [label]})
            await self.session.run()
            self._settings()
            await self.session.run()
            await self.session.run(click="Measure")
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_s:
            job = last_presenter_job(data)
            if job and job["id"] != (before or {}).get("id") and job["ended_s"]:
                since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(job["started_s"] - 1))
                found = [r for r in dashboard_records(data, since) if r["technique"] == key
                         and r["settings"].get("repeats") == self.args.repeats]
                return found[-1] if found else None
            await asyncio.sleep(2)
        return None


def rotation(rnd: int, variant: int) -> tuple[str, ...]:
    """The order of the three conditions for one variant in one round: each round and variant starts one further."""
    shift = (rnd + variant) % len(CONDITIONS)
    return CONDITIONS[shift:] + CONDITIONS[:shift]


def enter(condition: str, room_on: asyncio.Event, sweeping: asyncio.Event, boss: Presenter,
          away: threading.Event) -> None:
    """The room is active (and queues jobs) only for "room"; for "cli" the presenter's session pauses and the tab
    goes blank."""
    room = condition == "room"
    (room_on.set if room else room_on.clear)()
    (sweeping.set if room else sweeping.clear)()
    (boss.here.clear if condition == "cli" else boss.here.set)()
    (away.set if condition == "cli" else away.clear)()


async def measure_once(args, condition: str, rnd: int, key: str, label: str, boss: Presenter, data: Path,
                       python: str, env: dict) -> dict | None:
    """One variant's record, from the CLI or from the presenter's Measure; None where none came."""
    if condition == "cli":
        json_out = data / f"cli-{rnd}-{key}.json"
        return (await asyncio.to_thread(cli_sweep, python, env, [key], args, json_out)).get(key)
    return await boss.measure(label, key, data, args.max_s)


def say(rnd: int, key: str, condition: str, record: dict | None, cpu_pct: dict) -> None:
    print(f"round {rnd} {key:6s} {condition:5s} " + (
        f"{record['decode_tokens_per_s_median']:.2f} tok/s" if record else "no record") + f"  cpu % {cpu_pct}",
        file=sys.stderr, flush=True)


async def paired(args, url: str, token: str, keys: list[str], labels: list[str], data: Path, python: str,
                 env: dict, stats: Stats, pstats: Stats, away: threading.Event, lab_pid: int,
                 keep=lambda measured: None) -> list[dict]:
    """Every round measures each variant three times in a rotating order, about a minute apart: the CLI (the room
    paused and the presenter's tab away), the dashboard with the room active, and the dashboard with only the
    presenter. The room stays connected throughout; a paused session sends nothing, as a tab left open.
    `keep` is handed the measurements so far after each one, so that a long run stopped early keeps them."""
    stop, room_on, sweeping = asyncio.Event(), asyncio.Event(), asyncio.Event()
    room_on.set()
    tasks = await room_arrives(url, stats, stop, sweeping, args.sessions - args.browsers, args.viewer_jobs,
                               active=room_on)
    boss = Presenter(url, token, pstats)
    await boss.open(args)
    tasks.append(asyncio.create_task(boss.stay(stop)))
    out, t_start = [], time.monotonic()
    try:
        for rnd in range(args.rounds):
            for v, (key, label) in enumerate(zip(keys, labels)):
                for condition in rotation(rnd, v):
                    enter(condition, room_on, sweeping, boss, away)
                    await asyncio.sleep(3)  # paused sessions finish what they had started; the tab goes blank
                    t0 = time.monotonic() - t_start
                    cpu0 = cpu_by_part(lab_pid)
                    record = await measure_once(args, condition, rnd, key, label, boss, data, python, env)
                    cpu_pct = cpu_pct_between(cpu0, cpu_by_part(lab_pid), time.monotonic() - t_start - t0)
                    if condition != "cli":
                        room_on.clear()
                        await asyncio.to_thread(quiet_queue, data)
                    say(rnd, key, condition, record, cpu_pct)
                    out.append({"round": rnd, "technique": key, "condition": condition, "at_s": round(t0, 1),
                                "cpu_pct_of_machine": cpu_pct, "record": record})
                    keep(out)
    finally:
        stop.set()
        room_on.set()
        boss.here.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await boss.session.__aexit__(None, None, None)
    return out


def run_paired(args, keys: list[str], labels: list[str], python: str, env: dict, data: Path) -> dict:
    """Start the lab once, measure every round with the room connected, stop the lab; the result to print."""
    LOGS.mkdir(exist_ok=True)
    log = LOGS / "paired.log"
    port = free_port()
    steal = StealMeter()
    lab, token = start_lab(args.app_dir.resolve(), python, env, port, log)
    url = f"http://127.0.0.1:{port}"
    stats, pstats, bstats = Stats(), Stats(), Stats()
    stop_tab, away = threading.Event(), threading.Event()
    tab = threading.Thread(target=presenter_tab, args=(url, token, bstats, stop_tab, away), daemon=True)
    if args.presenter_tab and Path(CHROMIUM).exists():
        tab.start()
    me = psutil.Process()
    cpu0, wall0 = sum(me.cpu_times()[:2]), time.monotonic()

    def keep(measured: list[dict]) -> None:  # what an interrupted run leaves for --pool: every measurement it finished
        if args.json:
            write_json_atomically(args.json, unfinished_paired_result(args, measured, (stats, pstats, bstats)))

    try:
        measured = asyncio.run(paired(args, url, token, keys, labels, data, python, env, stats, pstats, away, lab.pid,
                                      keep))
        load_cpu = sum(me.cpu_times()[:2]) - cpu0
        wall = time.monotonic() - wall0
    finally:
        stop_tab.set()
        if tab.is_alive():
            tab.join(30)
        stop_lab(lab, data)
    return paired_result(args, keys, measured, (stats, pstats, bstats), wall, load_cpu, log, steal.pct())
