"""A few real Chromium pages through Playwright (Debian's /usr/bin/chromium; no browser is downloaded): viewers at
idle priority, since they stand in for the viewers' own machines, and the presenter's own tab at normal priority."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

from .session import EXPECTED, VIEWER_PAGES, Stats

CHROMIUM = "/usr/bin/chromium"


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




def idle_priority() -> None:
    """This thread, and what it starts, runs only on cores nothing else wants. The protocol clients keep normal
    priority: they time the pages, and a starved client would time itself (they used 0.7% of the machine while
    the gate was closed)."""
    if hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
