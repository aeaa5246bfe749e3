"""Load test: a room of viewers in the dashboard while the presenter's sweep is timed. Prints numbers; asserts nothing.

    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/classroom_load.py --sessions 30 --browsers 2
    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/classroom_load.py --app-dir /path/to/old/checkout  # baseline
    flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/classroom_load.py --paired --browsers 0 --presenter-tab

What it does, all on 127.0.0.1 and bounded in time, in `--rounds` rounds:
1. measures the same sweep from the CLI (`python -m core sweep`, the reference speeds), before every round and
   once after the last, so that the CLI's samples and the dashboard's are centred on the same moment (this
   machine's own speed drifts by up to 35% within minutes);
2. starts the lab (`python -m core serve --classroom`, or plain `streamlit run` for a checkout without a worker)
   on a fresh data folder that reuses the prepared checkpoints;
3. the presenter, a protocol-level client holding the presenter link, picks the variants on the Quantize page;
   N viewer sessions arrive and draw their first page; then the presenter presses Measure and keeps the tab open
   (its progress fragment reruns as a browser's would), so every viewer is active for the whole sweep;
4. the viewers open pages, move widgets, queue a job on the Quantize page (behind the presenter's) and open the
   Arena, until the sweep ends: most speak Streamlit's websocket protocol (one light asyncio process), `--browsers` of them are
   real Chromium pages (Debian's /usr/bin/chromium through Playwright, at idle priority since they stand in for
   the viewers' own machines; no browser is downloaded); then the lab and its worker are stopped;
5. reports page response p50/p90, errors shown, jobs queued/completed, each variant's decode tok/s from the
   dashboard against the CLI's (pooled over the rounds, and each round against the CLI runs around it), how
   many sessions each record says were connected, and the load generator's CPU share; the median of the rounds'
   ratios with a bootstrap 95% interval (what says whether a 5% difference is shown at all); the tracebacks in
   each round's server log (kept in /tmp/classroom-load-logs/); and the share the hypervisor stole meanwhile.

`--paired` answers the same question with less drift in it: the lab starts once and the room stays connected;
each round measures every variant three times, a minute apart and in a rotating order (the CLI with the room paused
and the presenter's tab blank, the dashboard with the room active, the dashboard with only the presenter), and
each dashboard speed is divided by the CLI's of the same variant and round. It also reports how much of the machine
the web server, the worker, the presenter's tab and the load generator used during each measurement.

On a machine whose speed drifts, a few rounds leave a 5% question open; `--pool A.json B.json ...` reads earlier
`--paired --json` results and reports their rounds together (measuring nothing), with each file's CPU and page p90.
A `--paired --json` run rewrites its file after every measurement (marked `"finished": false` until it ends), so a
run stopped early still pools what it measured.

Viewer jobs left waiting when the sweep ends are removed from the queue (the test is bounded); the presenter's
sweep is the measurement. The Arena never generates during a timed job (by design), so viewers read its tally.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
VIEWER_PAGES = ["", "quantize", "tradeoff_map", "arena", "decide", "report", "moe", "lora", "distill"]
# Notices the lab is meant to give (queue limits, the Arena waiting for the queue) are not errors: counted apart.
EXPECTED = re.compile(r"each viewer may have|queue is full|still running|Arena opens again|try again when", re.I)
GATE_FIELDS = ("timed_runs_with_pages_paused", "timed_runs_with_pages_running", "page_turns_between_decode_steps",
               "timed_runs_disturbed_and_repeated", "other_processes_cpu_pct_median", "other_processes_cpu_pct_max",
               "page_drain_wait_ms_max")  # what core/launch/quiet.py wrote in each record
WIDGETS = ("button", "multiselect", "number_input", "selectbox", "radio", "slider", "text_area", "checkbox")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- one protocol-level session


@dataclass
class Stats:
    page_s: list[float] = field(default_factory=list)  # full script runs: request -> script finished
    fragment_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    refusals: int = 0
    jobs_queued: int = 0
    timeouts: int = 0
    arrived: int = 0  # viewer sessions that have drawn their first page


class Session:
    """Speaks the browser's protocol: BackMsg rerun requests out, ForwardMsg deltas in."""

    def __init__(self, url: str, stats: Stats, query: str = "", active: asyncio.Event | None = None):
        self.url, self.stats, self.query = url, stats, query
        self.active = active  # when given and clear, the session sends nothing until it is set again
        self.pages: dict[str, str] = {}  # url path -> page script hash
        self.page_hash = ""
        self.widgets: dict[tuple[str, str], object] = {}  # (type, label) -> element proto, current page
        self.states: dict[str, WidgetState] = {}
        self.fragments: dict[str, float] = {}  # fragment id -> auto-rerun interval (s)
        self.cache: dict[str, ForwardMsg] = {}

    async def __aenter__(self):
        self.ws = await websockets.connect(self.url.replace("http", "ws") + "/_stcore/stream",
                                           subprotocols=["streamlit"], max_size=2**26, open_timeout=60)
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()

    async def run(self, page: str | None = None, click: str | None = None, fragment: str = "",
                  timeout_s: float = 120.0) -> None:
        if self.active is not None:
            await self.active.wait()
        if page is not None:
            self.page_hash, self.states, self.fragments = self.pages.get(page, ""), {}, {}
        msg = BackMsg()
        rerun = msg.rerun_script
        rerun.query_string, rerun.page_script_hash = self.query, self.page_hash
        if fragment:
            rerun.fragment_id, rerun.is_auto_rerun = fragment, True
        states = list(self.states.values())
        if click and (button := self.widgets.get(("button", click))) is not None:
            states.append(WidgetState(id=button.id, trigger_value=True))
        rerun.widget_states.widgets.extend(states)
        if not fragment:
            self.widgets = {}
        t0 = time.perf_counter()
        await self.ws.send(msg.SerializeToString())
        try:
            await asyncio.wait_for(self._until_finished(), timeout_s)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            return
        (self.stats.fragment_s if fragment else self.stats.page_s).append(time.perf_counter() - t0)

    async def _until_finished(self) -> None:
        while True:
            fm = ForwardMsg.FromString(await self.ws.recv())
            if fm.WhichOneof("type") is None and fm.ref_hash:
                fm = self.cache.get(fm.ref_hash, fm)
            elif fm.hash:
                self.cache[fm.hash] = fm
            kind = fm.WhichOneof("type")
            if kind == "new_session" and not fm.metadata.run.fragment_ids:
                self.fragments = {}  # a whole page run: the browser drops every fragment timer, the run sets new ones
            elif kind == "stop_auto_rerun":
                for f in fm.stop_auto_rerun.fragment_ids:
                    self.fragments.pop(f, None)
            elif kind == "navigation":
                self.pages = {p.url_pathname: p.page_script_hash for p in fm.navigation.app_pages}
            elif kind == "auto_rerun":
                self.fragments[fm.auto_rerun.fragment_id] = fm.auto_rerun.interval
            elif kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                self._element(fm.delta.new_element)
            elif kind == "script_finished" and fm.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                return

    def _element(self, el) -> None:
        kind = el.WhichOneof("type")
        if kind == "exception":
            self.stats.errors.append(f"exception: {el.exception.type}: {el.exception.message[:120]}")
        elif kind == "alert" and el.alert.format == 1:  # ERROR
            if EXPECTED.search(el.alert.body):
                self.stats.refusals += 1
            else:
                self.stats.errors.append(f"error box: {el.alert.body[:160]}")
        elif kind == "alert" and EXPECTED.search(el.alert.body):
            self.stats.refusals += 1
        elif kind in WIDGETS:
            widget = getattr(el, kind)
            self.widgets[(kind, widget.label)] = widget

    def set(self, kind: str, label: str, **value) -> bool:
        widget = self.widgets.get((kind, label))
        if widget is None:
            return False
        self.states[widget.id] = WidgetState(id=widget.id, **value)
        return True

    async def dwell(self, seconds: float) -> None:
        """Stay on the page as a browser would: its fragments rerun on their own timers."""
        end = time.monotonic() + seconds
        due: dict[str, float] = {}
        while (now := time.monotonic()) < end:
            # A rerun may have set, changed or stopped timers (a paused job panel has none).
            due = {f: due.get(f, now + i) for f, i in self.fragments.items()}
            ready = [f for f, t in due.items() if t <= now]
            for f in ready:
                await self.run(fragment=f)
                due[f] = time.monotonic() + self.fragments.get(f, 3.0)
            # Asleep until the next timer or the end: a browser on another machine costs the lab's cores nothing
            # between its reruns, and thirty sessions waking twice a second did (48 wake-ups a second in all).
            await asyncio.sleep(max(0.0, min([end - now, *[t - now for t in due.values()]])))


async def viewer(url: str, stats: Stats, stop: asyncio.Event, sweeping: asyncio.Event, queue_job: bool,
                 seed: int, active: asyncio.Event | None = None) -> None:
    rng = random.Random(seed)
    try:
        async with Session(url, stats, active=active) as s:
            await s.run()
            stats.arrived += 1
            while not stop.is_set():
                page = rng.choice(VIEWER_PAGES)
                await s.run(page)
                if s.set("number_input", "US$ per hour", double_value=round(rng.uniform(0.01, 2.0), 2)):
                    await s.run()  # move a widget: the page reruns with the new price
                radio = s.widgets.get(("radio", "Quality measure"))
                if radio is not None and len(radio.options) > 1 and s.set("radio", "Quality measure",
                                                                         string_value=rng.choice(radio.options[1:])):
                    await s.run()
                if page == "quantize" and queue_job and sweeping.is_set():  # queued behind the presenter's
                    await s.run(click="Measure")
                    stats.jobs_queued += 1
                    queue_job = False
                await s.dwell(rng.uniform(3, 8))
    except (OSError, websockets.WebSocketException) as e:
        stats.errors.append(f"connection: {type(e).__name__}: {e}")


async def presenter(url: str, stats: Stats, token: str, labels: list[str], args, room_in: asyncio.Event,
                    started: asyncio.Event, stop: asyncio.Event) -> None:
    async with Session(url, stats, f"token={token}" if token else "") as s:
        await s.run()
        s.query = ""  # the page strips the token from the address bar; later requests carry none, as a browser's
        await s.run("quantize")
        s.set("multiselect", "Variants to measure", string_array_value={"data": labels})
        runs = next((label for kind, label in s.widgets if kind == "number_input" and label.startswith("Timed runs")),
                    None)
        if runs:
            s.set("number_input", runs, double_value=args.repeats)
        if args.mc_max_items:
            s.set("number_input", "Questions to score (0 = all)", double_value=args.mc_max_items)
        await s.run()
        await room_in.wait()
        await s.run(click="Measure")
        started.set()
        while not stop.is_set():
            await s.dwell(5)


# ---------------------------------------------------------------- a few real browsers


def browsers(url: str, count: int, stats: Stats, stop: threading.Event) -> None:
    if count == 0:
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        stats.errors.append("playwright is not installed: no browser sessions")
        return
    if not Path(CHROMIUM).exists():
        print(f"note: {CHROMIUM} is absent; running without browser sessions", file=sys.stderr)
        return
    # A classroom's browsers run on the viewers' own machines; here they share the lab's two cores, where a
    # probe with the gate held closed found two of them using 9% of the machine (the web server 2.6%). So they
    # run at idle priority: they still load every page and show every error, but yield the cores to a timed
    # run. (This thread's policy passes to the Playwright driver and to Chromium, which it starts.)
    idle_priority()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                                              "--disable-background-networking", "--disable-sync"])
        pages = [b.new_context(viewport={"width": 1280, "height": 900}).new_page() for _ in range(count)]
        rng = random.Random(7)
        for page in pages:
            _browse(page, stats, lambda: page.goto(url))
        while not stop.is_set():
            for page in pages:
                here = page.url.split("/", 3)[-1].split("?")[0]  # "" on the Overview
                name = rng.choice([n for n in VIEWER_PAGES if n != here])
                link = page.locator(f"[data-testid='stSidebarNavLink'][href$='/{name}']").first
                _browse(page, stats, link.click)  # within the app, as a person moves between pages
                stop.wait(rng.uniform(3, 8) / len(pages))  # each page dwells as long as a protocol viewer
        b.close()


def presenter_tab(url: str, token: str, stats: Stats, stop: threading.Event,
                  away: threading.Event | None = None) -> None:
    """The presenter's own Chromium tab on the lab's machine, on the Quantize page, watching the job panel. It is
    the one browser a single-machine demo really has, so it keeps normal priority. While `away` is set it shows a
    blank page (the presenter looks elsewhere while the CLI measures), and comes back to the Quantize page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                                              "--disable-background-networking", "--disable-sync"])
        page = b.new_context(viewport={"width": 1280, "height": 900}).new_page()
        _browse(page, stats, lambda: page.goto(f"{url}/quantize?token={token}"))
        blank = False
        while not stop.is_set():
            if away is not None and away.is_set() != blank:
                blank = away.is_set()
                if blank:
                    page.goto("about:blank")
                else:  # the session keeps its presenter rights: the token went once, as a browser's history has it
                    _browse(page, stats, lambda: page.goto(f"{url}/quantize?token={token}"))
            stop.wait(0.5)  # not page.wait_for_timeout: that is a round trip through Playwright's driver and Chromium
        b.close()


def _browse(page, stats: Stats, go) -> None:
    """One page visit: time until the new page's title is drawn, then look for errors on it."""
    t0 = time.perf_counter()
    try:
        before = page.locator("h1").first.inner_text(timeout=1000) if page.locator("h1").count() else ""
        go()
        page.wait_for_function("old => { const h = document.querySelector('h1'); return h && h.innerText !== old }",
                               arg=before, timeout=60_000)
        stats.page_s.append(time.perf_counter() - t0)
        page.wait_for_timeout(1500)
        for box in page.locator("[data-testid='stException'], [data-testid='stAlertContentError']").all():
            text = box.inner_text()
            if EXPECTED.search(text):
                stats.refusals += 1
            else:
                stats.errors.append(f"browser: {text[:160]}")
    except Exception as e:  # a page that did not load in time is what this test looks for
        stats.errors.append(f"browser: {type(e).__name__}: {str(e)[:120]}")


# ---------------------------------------------------------------- the lab under test, and the CLI reference


LOGS = Path(tempfile.gettempdir()) / "classroom-load-logs"  # the server's log of each round, kept after the run


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


def cli_sweep(python: str, env: dict, keys: list[str], args, out: Path) -> dict[str, dict]:
    """The same sweep from the CLI; technique -> its record."""
    cmd = [python, "-m", "core", "sweep", "--techniques", ",".join(keys), "--repeats", str(args.repeats),
           "--no-store", "--json", str(out)]
    if args.mc_max_items:
        cmd += ["--mc-max-items", str(args.mc_max_items)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL)
    return {r["technique"]: r for r in json.loads(out.read_text())}


def start_lab(app_dir: Path, python: str, env: dict, port: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """The lab as its user starts it; returns the process and the presenter token (empty for an old checkout)."""
    # A checkout with a worker (core/worker.py; core/launch/worker.py since core/ has one folder per axis) starts with
    # `core serve`, which runs the dashboard through ui/server.py where the checkout has it.
    if any((app_dir / "core" / where / "worker.py").exists() for where in ("", "launch")):
        cmd = [python, "-m", "core", "serve", "--host", "127.0.0.1", "--port", str(port), "--classroom"]
    else:  # an old checkout, from before the worker and ui/server.py
        cmd = [python, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    # The server's own log: a viewer's page shows no traceback, this file has it. It also has the presenter link,
    # whose token dies with the server, but the file is still the presenter's alone.
    log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
    proc = subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    token = ""
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        sys.exit("the lab did not start within 120 s")
    token_file = Path(env["LAB_DATA_DIR"]) / "presenter.token"
    if token_file.exists():
        token = token_file.read_text().strip()  # read here, never printed
    return proc, token


def dashboard_records(data: Path, since: str) -> list[dict]:
    path = data / "results.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT record_json FROM results WHERE created_at > ?", (since,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def queue_counts(data: Path) -> dict[str, int]:
    path = data / "queue.sqlite"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT owner = 'presenter', state, COUNT(*) FROM jobs GROUP BY 1, 2").fetchall()
        conn.execute("UPDATE jobs SET state = 'cancelled', error = 'load test over', ended_s = ? "
                     "WHERE state = 'queued'", (time.time(),))  # bounded: leftover viewer jobs do not run
    return {f"{'presenter' if p else 'viewer'} {state}": n for p, state, n in rows}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def labels_for(keys: list[str]) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from core import techniques

    return [techniques.get(k).label for k in keys]


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


def idle_priority() -> None:
    """This thread, and what it starts, runs only on cores nothing else wants. The protocol clients keep normal
    priority: they time the pages, and a starved client would time itself (they used 0.7% of the machine while
    the gate was closed)."""
    if hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def stop_lab(lab: subprocess.Popen, data: Path) -> None:
    lab.terminate()
    lab.wait(20)
    pid_file = data / "worker.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)  # a viewer's job may still be running
        except (ProcessLookupError, ValueError):
            pass
        time.sleep(2)  # the CLI that follows must have the machine alone


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


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def median_ci95(values: list[float], resamples: int = 4000) -> list[float] | None:
    """Percentile-bootstrap 95% interval of the median (seeded, so a rerun on the same numbers prints the same).
    With this machine's drift, the interval over rounds is what says whether "within 5%" is shown or not."""
    if len(values) < 3:
        return None
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return [round(meds[int(0.025 * resamples)], 3), round(meds[int(0.975 * resamples) - 1], 3)]


def compare(keys: list[str], rounds: list[Round], cli_runs: list[dict[str, dict]]) -> list[dict]:
    """Each variant's dashboard decode median against the CLI's, pooled over all rounds.

    The CLI runs before the first round, between rounds and after the last, so its samples and the dashboard's
    are centred on the same moment: this machine's speed drifted by up to 35% within minutes (one CLI process
    alone gave 19-28 tok/s for FP32 inside one minute), which a single before-and-after pair cannot cancel.
    Each round's own ratio is against the mean of the two CLI runs around it."""
    out = []
    for k in keys:
        dash = [r for rd in rounds for r in rd.records if r["technique"] == k]
        dash_samples = [x for r in dash for x in r["decode_tokens_per_s_samples"]]
        cli_samples = [x for run in cli_runs if k in run for x in run[k]["decode_tokens_per_s_samples"]]
        per_round = []
        for i, rd in enumerate(rounds):
            mine = [r["decode_tokens_per_s_median"] for r in rd.records if r["technique"] == k]
            around = [cli_runs[j][k]["decode_tokens_per_s_median"] for j in (i, i + 1)
                      if j < len(cli_runs) and k in cli_runs[j]]
            if mine and around:
                per_round.append(round(mine[0] / statistics.mean(around), 3))
        d, c = median(dash_samples), median(cli_samples)
        out.append({
            "technique": k, "dashboard_decode_tok_s": round(d, 2), "cli_decode_tok_s": round(c, 2),
            "dashboard_over_cli": round(d / c, 3) if dash_samples and cli_samples else None,
            "dashboard_over_cli_by_round": per_round,
            "by_round_median": round(median(per_round), 3) if per_round else None,
            "by_round_median_ci95": median_ci95(per_round),
            "sessions_connected": [r["settings"].get("sessions_connected") for r in dash],
            "timed_runs": [{n: r["settings"].get(n) for n in GATE_FIELDS} for r in dash],
            "dashboard_samples": [round(x, 2) for x in dash_samples],
            "cli_samples": [round(x, 2) for x in cli_samples],
            "settings": {n: dash[0]["settings"].get(n) for n in ("threads", "new_tokens", "prompt_tokens", "repeats")}
            if dash else None,
        })
    return out


# ---------------------------------------------------------------- paired mode: the CLI a minute away, not a round away


CONDITIONS = ("cli", "room", "alone")  # the CLI alone; the dashboard with the room active; with only the presenter


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
        s = self.session
        runs = next((label for kind, label in s.widgets if kind == "number_input" and label.startswith("Timed runs")),
                    None)
        if runs:
            s.set("number_input", runs, double_value=self.args.repeats)
        if self.args.mc_max_items:
            s.set("number_input", "Questions to score (0 = all)", double_value=self.args.mc_max_items)

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


def last_presenter_job(data: Path) -> dict | None:
    path = data / "queue.sqlite"
    if not path.exists():
        return None
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT id, started_s, ended_s FROM jobs WHERE owner = 'presenter' ORDER BY id DESC"
                           " LIMIT 1").fetchone()
    return dict(zip(("id", "started_s", "ended_s"), row)) if row else None


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


def quiet_queue(data: Path, max_wait_s: float = 120) -> None:
    """No viewer job runs into the next measurement: waiting ones are cancelled, a running one is stopped (as the
    presenter's Stop does) and its end awaited."""
    sys.path.insert(0, str(ROOT))
    from core.launch.jobqueue import JobQueue

    queue = JobQueue(data / "queue.sqlite")
    end = time.monotonic() + max_wait_s
    while time.monotonic() < end:
        snap = queue.snapshot()
        for w in snap.waiting:
            queue.stop(w.job.id, "", presenter=True)
        if snap.running is None:
            return
        queue.stop(snap.running.id, "", presenter=True)
        time.sleep(1)


async def paired(args, url: str, token: str, keys: list[str], labels: list[str], data: Path, python: str,
                 env: dict, stats: Stats, pstats: Stats, away: threading.Event, lab_pid: int,
                 keep=lambda measured: None) -> list[dict]:
    """Every round measures each variant three times in a rotating order, about a minute apart: the CLI (the room
    paused and the presenter's tab away), the dashboard with the room active, and the dashboard with only the
    presenter. The room stays connected throughout; a paused session sends nothing, as a tab left open.
    `keep` is handed the measurements so far after each one, so that a long run stopped early keeps them."""
    stop, room_on, sweeping = asyncio.Event(), asyncio.Event(), asyncio.Event()
    viewers = args.sessions - args.browsers
    tasks = []
    room_on.set()
    for i in range(viewers):
        tasks.append(asyncio.create_task(viewer(url, stats, stop, sweeping, i < args.viewer_jobs, seed=i,
                                                active=room_on)))
        await asyncio.sleep(0.2)
    deadline = time.monotonic() + 120
    while stats.arrived < viewers and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    boss = Presenter(url, token, pstats)
    await boss.open(args)
    tasks.append(asyncio.create_task(boss.stay(stop)))
    out, t_start = [], time.monotonic()
    try:
        for rnd in range(args.rounds):
            for v, (key, label) in enumerate(zip(keys, labels)):
                shift = (rnd + v) % len(CONDITIONS)
                for condition in CONDITIONS[shift:] + CONDITIONS[:shift]:
                    room = condition == "room"
                    (room_on.set if room else room_on.clear)()
                    (sweeping.set if room else sweeping.clear)()
                    (boss.here.clear if condition == "cli" else boss.here.set)()
                    (away.set if condition == "cli" else away.clear)()
                    await asyncio.sleep(3)  # paused sessions finish what they had started; the tab goes blank
                    t0 = time.monotonic() - t_start
                    cpu0 = cpu_by_part(lab_pid)
                    if condition == "cli":
                        json_out = data / f"cli-{rnd}-{key}.json"
                        record = (await asyncio.to_thread(cli_sweep, python, env, [key], args, json_out)).get(key)
                    else:
                        record = await boss.measure(label, key, data, args.max_s)
                    cpu_pct = cpu_pct_between(cpu0, cpu_by_part(lab_pid), time.monotonic() - t_start - t0)
                    if condition != "cli":
                        room_on.clear()
                        await asyncio.to_thread(quiet_queue, data)
                    print(f"round {rnd} {key:6s} {condition:5s} " + (
                        f"{record['decode_tokens_per_s_median']:.2f} tok/s" if record else "no record") + f"  cpu % {cpu_pct}",
                        file=sys.stderr, flush=True)
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


def paired_summary(keys: list[str], measured: list[dict]) -> dict:
    """Each dashboard measurement over the CLI measurement of the same variant in the same round."""
    def decode(rnd: int, key: str, condition: str) -> float | None:
        found = [m["record"] for m in measured if (m["round"], m["technique"], m["condition"]) == (rnd, key, condition)
                 and m["record"]]
        return found[0]["decode_tokens_per_s_median"] if found else None

    rounds = sorted({m["round"] for m in measured})
    out, all_ratios = {}, {"room": [], "alone": []}
    for key in keys:
        row = {"cli_decode_tok_s_by_round": [decode(r, key, "cli") for r in rounds]}
        for condition in ("room", "alone"):
            ratios = [round(d / c, 3) for r in rounds
                      if (d := decode(r, key, condition)) and (c := decode(r, key, "cli"))]
            all_ratios[condition] += ratios
            row[f"{condition}_decode_tok_s_by_round"] = [decode(r, key, condition) for r in rounds]
            row[f"{condition}_over_cli_by_round"] = ratios
            row[f"{condition}_over_cli_median"] = round(median(ratios), 3) if ratios else None
            row[f"{condition}_over_cli_median_ci95"] = median_ci95(ratios)
        room = [m["record"] for m in measured if m["technique"] == key and m["condition"] == "room" and m["record"]]
        row["sessions_connected"] = [r["settings"].get("sessions_connected") for r in room]
        row["timed_runs"] = [{n: r["settings"].get(n) for n in GATE_FIELDS} for r in room]
        out[key] = row
    cpu = {c: {part: round(median([m["cpu_pct_of_machine"][part] for m in measured if m["condition"] == c
                                   and m["cpu_pct_of_machine"][part] is not None]), 2)
               for part in measured[0]["cpu_pct_of_machine"]} for c in CONDITIONS} if measured else {}
    return {"variants": out, "cpu_pct_of_machine_median_by_condition": cpu,
            **{f"all_variants_{c}_over_cli_median": round(median(v), 3) if v else None
                                for c, v in all_ratios.items()},
            **{f"all_variants_{c}_over_cli_median_ci95": median_ci95(v) for c, v in all_ratios.items()}}


def run_paired(args, keys: list[str], labels: list[str], python: str, env: dict, data: Path) -> dict:
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
            page_s = stats.page_s + pstats.page_s + bstats.page_s
            write_json_atomically(args.json, {
                "mode": "paired", "finished": False, "cpu": cpu_name(), "sessions": args.sessions,
                "rounds": len({m["round"] for m in measured}), "page_runs": len(page_s),
                "page_response_s_p90": round(pct(page_s, 0.9), 3) if page_s else None,
                "errors_shown": len(stats.errors + pstats.errors + bstats.errors), "measurements": measured})

    try:
        measured = asyncio.run(paired(args, f"http://127.0.0.1:{port}", token, keys, labels, data, python, env,
                                      stats, pstats, away, lab.pid, keep))
        load_cpu = sum(me.cpu_times()[:2]) - cpu0
        wall = time.monotonic() - wall0
    finally:
        stop_tab.set()
        if tab.is_alive():
            tab.join(30)
        stop_lab(lab, data)
    page_s = stats.page_s + pstats.page_s + bstats.page_s
    errors = stats.errors + pstats.errors + bstats.errors
    return {
        "mode": "paired", "finished": True, "app": str(args.app_dir.resolve()), "sessions": args.sessions,
        "rounds": len({m["round"] for m in measured}),  # as the unfinished file counts them
        "presenter_tab": args.presenter_tab, "wall_s": round(wall, 1), "page_runs": len(page_s),
        "page_response_s_p50": round(pct(page_s, 0.5), 3), "page_response_s_p90": round(pct(page_s, 0.9), 3),
        "fragment_rerun_s_p90": round(pct(stats.fragment_s + pstats.fragment_s, 0.9), 3),
        "timeouts": stats.timeouts + pstats.timeouts, "errors_shown": len(errors),
        "error_samples": sorted(set(errors))[:8], "viewer_jobs_queued": stats.jobs_queued,
        "load_generator_cpu_pct_of_machine": round(100 * load_cpu / (wall * psutil.cpu_count()), 1),
        "server_log": str(log), "server_tracebacks": log.read_text(errors="replace").count("Traceback (most recent"),
        "hypervisor_steal_pct": steal.pct(), "cpu": cpu_name(), "cores": psutil.cpu_count(),
        "records_not_at_asked_repeats": [(m["round"], m["technique"], m["condition"]) for m in measured if m["record"]
                                         and m["record"]["settings"].get("repeats") != args.repeats],
        **paired_summary(keys, measured), "measurements": measured,
    }


def write_json_atomically(path: Path, obj: dict) -> None:
    """A reader (or --pool) sees the previous whole file or the new whole file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown")


def pool(paths: list[Path]) -> dict:
    """The rounds of several --paired results as one: each round still pairs the dashboard with the CLI of the same
    minutes; only the medians and intervals are taken over more of them."""
    measured, sources = [], []
    for i, path in enumerate(paths):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: cannot read it as JSON ({e}); pass files written by --paired --json")
        if result.get("mode") != "paired" or "measurements" not in result:
            raise SystemExit(f"{path}: not a --paired result with its measurements; rerun with --paired --json")
        measured += [m | {"round": (i, m["round"])} for m in result["measurements"]]
        sources.append({"file": str(path), "cpu": result["cpu"], "rounds": result["rounds"],
                        "finished": result.get("finished", True),
                        "page_response_s_p90": result["page_response_s_p90"], "errors_shown": result["errors_shown"]})
    keys = list(dict.fromkeys(m["technique"] for m in measured))
    return {"pooled": sources, "rounds": len({m["round"] for m in measured}), **paired_summary(keys, measured)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=30, help="viewer sessions in all (browsers included)")
    ap.add_argument("--browsers", type=int, default=2, help="how many of them are real Chromium pages")
    ap.add_argument("--presenter-tab", action="store_true",
                    help="also open the presenter's own Chromium tab on the Quantize page (normal priority)")
    ap.add_argument("--viewer-jobs", type=int, default=3, help="viewers that queue a job on the Quantize page")
    ap.add_argument("--techniques", default="fp32,bf16,nf4")
    ap.add_argument("--rounds", type=int, default=2, help="presenter sweeps under load, with the CLI before, "
                                                          "between and after them")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per variant, on the page and in the CLI")
    ap.add_argument("--mc-max-items", type=int, default=0, help="questions scored per variant (0 = all, as the page)")
    ap.add_argument("--max-s", type=float, default=1200, help="stop a round after this long even if its sweep "
                                                              "has not ended")
    ap.add_argument("--app-dir", type=Path, default=ROOT, help="checkout to serve (an older one gives the baseline)")
    ap.add_argument("--models-from", type=Path, default=ROOT / "data" / "models",
                    help="prepared checkpoints to reuse (linked, never copied or changed)")
    ap.add_argument("--skip-cli", action="store_true", help="do not measure the CLI reference")
    ap.add_argument("--paired", action="store_true",
                    help="start the lab once; each round measures each variant from the CLI, from the dashboard with "
                         "the room active, and with only the presenter, in a rotating order about a minute apart")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    ap.add_argument("--pool", type=Path, nargs="+", metavar="JSON",
                    help="measure nothing: report the rounds of these --paired --json results together")
    args = ap.parse_args()
    if args.pool:
        print(json.dumps(pool(args.pool), indent=2))
        return
    args.browsers = min(args.browsers, args.sessions)
    keys = [k.strip() for k in args.techniques.split(",") if k.strip()]
    labels = labels_for(keys)
    python = sys.executable
    data = Path(tempfile.mkdtemp(prefix="classroom-load-"))
    env = os.environ | {"LAB_DATA_DIR": str(data), "LAB_WORKER_AUTOSTART": "1"}
    if args.models_from.is_dir():
        (data / "models").symlink_to(args.models_from.resolve())
    else:
        subprocess.run([python, "-m", "core", "prepare"], cwd=ROOT, env=env, check=True)
    if args.paired:
        try:
            result = run_paired(args, keys, labels, python, env, data)
        finally:
            shutil.rmtree(data, ignore_errors=True)
        print(json.dumps({k: v for k, v in result.items() if k != "measurements"}, indent=2))
        if args.json:
            write_json_atomically(args.json, result)
        return
    cli_runs: list[dict[str, dict]] = []
    cli_steal: list[float | None] = []
    rounds: list[Round] = []

    def reference(name: str) -> None:
        steal = StealMeter()
        cli_runs.append(cli_sweep(python, env, keys, args, data / f"cli-{name}.json"))
        cli_steal.append(steal.pct())

    try:
        for i in range(args.rounds):
            if not args.skip_cli:
                reference(str(i))
            rounds.append(one_round(args, python, env, data, labels, len(keys), i))
        if not args.skip_cli:
            reference("last")
    finally:
        shutil.rmtree(data, ignore_errors=True)
    page_s = [x for rd in rounds for x in rd.stats.page_s]
    errors = [e for rd in rounds for e in rd.stats.errors]
    result = {
        "app": str(args.app_dir.resolve()), "sessions": args.sessions, "browser_sessions": args.browsers,
        "rounds": len(rounds), "load_s": [round(rd.load_s, 1) for rd in rounds], "page_runs": len(page_s),
        "page_response_s_p50": round(pct(page_s, 0.5), 3), "page_response_s_p90": round(pct(page_s, 0.9), 3),
        "fragment_rerun_s_p90": round(pct([x for rd in rounds for x in rd.stats.fragment_s], 0.9), 3),
        "timeouts": sum(rd.stats.timeouts for rd in rounds), "errors_shown": len(errors),
        "error_samples": sorted(set(errors))[:8],
        "expected_notices_shown": sum(rd.stats.refusals for rd in rounds),
        "viewer_jobs_queued": sum(rd.stats.jobs_queued for rd in rounds), "queue_by_round": [rd.queue for rd in rounds],
        "load_generator_cpu_pct_of_machine": round(100 * sum(rd.load_cpu_s for rd in rounds)
                                                   / (sum(rd.wall_s for rd in rounds) * psutil.cpu_count()), 1),
        "cpu": cpu_name(), "cores": psutil.cpu_count(),
        "variants": compare(keys, rounds, cli_runs),
        "server_logs": [str(rd.log) for rd in rounds],
        "server_tracebacks_by_round": [rd.tracebacks for rd in rounds],
        "hypervisor_steal_pct": {"cli_runs": cli_steal, "rounds": [rd.steal_pct for rd in rounds]},
    }
    ratios = [x for v in result["variants"] for x in v["dashboard_over_cli_by_round"]]
    result["all_variants_by_round_median"] = round(median(ratios), 3) if ratios else None
    result["all_variants_by_round_median_ci95"] = median_ci95(ratios)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomically(args.json, result)


if __name__ == "__main__":
    main()
