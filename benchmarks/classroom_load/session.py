"""One viewer as the lab sees it, without a browser: Streamlit's websocket protocol (BackMsg rerun requests out,
ForwardMsg deltas in), and the two people the load test plays with it, a viewer and the presenter."""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

VIEWER_PAGES = ["", "quantize", "tradeoff_map", "arena", "decide", "report", "moe", "lora", "distill"]
# Notices the lab is meant to give (queue limits, the Arena waiting for the queue) are not errors: counted apart.
EXPECTED = re.compile(r"each viewer may have|queue is full|still running|Arena opens again|try again when", re.I)


WIDGETS = ("button", "multiselect", "number_input", "selectbox", "radio", "slider", "text_area", "checkbox")


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


def set_sweep_settings(s: Session, repeats: int, mc_max_items: int) -> None:
    """The sweep's timed runs and questions on the Quantize page, as the CLI's flags have them."""
    runs = next((label for kind, label in s.widgets if kind == "number_input" and label.startswith("Timed runs")), None)
    if runs:
        s.set("number_input", runs, double_value=repeats)
    if mc_max_items:
        s.set("number_input", "Questions to score (0 = all)", double_value=mc_max_items)


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
        set_sweep_settings(s, args.repeats, args.mc_max_items)
        await s.run()
        await room_in.wait()
        await s.run(click="Measure")
        started.set()
        while not stop.is_set():
            await s.dwell(5)




async def room_arrives(url: str, stats: Stats, stop: asyncio.Event, sweeping: asyncio.Event, count: int, jobs: int,
                       active: asyncio.Event | None = None) -> list[asyncio.Task]:
    """`count` viewers arrive over a few seconds, not in one instant, and the first `jobs` of them will queue a job
    while `sweeping` is set; their tasks, once every one has drawn its first page (or after 120 s)."""
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(viewer(url, stats, stop, sweeping, i < jobs, seed=i, active=active)))
        await asyncio.sleep(0.2)
    deadline = time.monotonic() + 120
    while stats.arrived < count and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return tasks
