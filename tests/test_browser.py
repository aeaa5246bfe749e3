"""Smoke test in a real browser: start the dashboard, open every page in headless Chromium, and fail on
any exception or error box. The main path (measure -> see the map) is clicked through on the tiny model.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from core.launch import quiet

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = {"": "LLM Trade-off Lab", "quantize": "Quantize", "lora": "Fine-tune with LoRA", "distill": "Distill a smaller student",
         "moe": "Mixture of experts",
         "tradeoff_map": "Trade-off Map", "arena": "Arena", "decide": "Decide", "report": "Report"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    pytest.importorskip("playwright.sync_api")
    port = free_port()
    data = tmp_path_factory.mktemp("browser-data")
    env = os.environ | {"LAB_DATA_DIR": str(data), "LAB_SHOW_TEST_MODELS": "1", "LAB_WORKER_AUTOSTART": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the dashboard did not start within 60 s:\n" + proc.stdout.read().decode()[-2000:])
    yield url
    proc.terminate()
    try:  # a page run waiting at the gate while the worker times ends after up to quiet.PAGE_WAIT_S, then the server
        proc.wait(quiet.PAGE_WAIT_S + 10)
    except subprocess.TimeoutExpired:  # shutting down is not what this module tests; a stuck server must not hang it
        proc.kill()
        proc.wait(10)
    pid = (data / "worker.pid").read_text() if (data / "worker.pid").exists() else ""
    if pid:  # the measuring worker the dashboard started (its own session: it outlives the server on purpose)
        try:
            os.kill(int(pid), 15)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


def assert_no_errors(page) -> None:
    page.wait_for_timeout(500)
    exceptions = page.locator("[data-testid='stException']")
    assert exceptions.count() == 0, exceptions.first.inner_text()
    errors = page.locator("[data-testid='stAlertContentError']")
    assert errors.count() == 0, errors.first.inner_text()


def open_page(browser, url: str, path: str, title: str, shots: Path | None = None):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
    page.wait_for_load_state("networkidle")
    assert_no_errors(page)
    if shots:
        page.screenshot(path=str(shots / f"{path or 'home'}.png"), full_page=True)
    return page


def test_every_page_opens_without_errors(server, browser):
    shots = ROOT / "artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    for path, title in PAGES.items():
        open_page(browser, server, path, title, shots).close()


def test_measure_then_see_the_map(server, browser):
    page = open_page(browser, server, "quantize", "Quantize")
    sidebar = page.locator("[data-testid='stSidebar']")
    # generous bounds: the first page run imports torch, bitsandbytes and llama.cpp, and a CI machine may be slow
    sidebar.locator("[data-testid='stSelectbox']").first.click(timeout=120_000)
    page.get_by_role("option", name="Tiny random Llama (tests)").click()
    page.get_by_role("button", name="Measure").click()
    page.get_by_text("Results on this machine").wait_for(timeout=480_000)
    assert_no_errors(page)
    page.get_by_role("link", name="Trade-off Map").first.click()
    page.get_by_role("heading", name="Trade-off Map").wait_for(timeout=90_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=90_000)
    assert page.locator(".js-plotly-plot").count() >= 2
    assert_no_errors(page)
    page.screenshot(path=str(ROOT / "artifacts" / "screenshots" / "map-after-sweep.png"), full_page=True)


def test_distill_then_speculate(server, browser):
    """On the tiny model: distill with the default settings, see the three models, then run speculative decoding."""
    page = open_page(browser, server, "distill", "Distill a smaller student")
    sidebar = page.locator("[data-testid='stSidebar']")
    # generous bounds: the first page run imports torch, bitsandbytes and llama.cpp, and a CI machine may be slow
    sidebar.locator("[data-testid='stSelectbox']").first.click(timeout=120_000)
    page.get_by_role("option", name="Tiny random Llama (tests)").click()
    page.get_by_text("The teacher has 2 decoder layers").wait_for(timeout=90_000)
    page.get_by_role("button", name="Distill", exact=True).click()
    page.get_by_text("Held-out KL divergence, pruned → distilled").wait_for(timeout=480_000)
    assert_no_errors(page)
    page.get_by_role("button", name="Compare on 10 bundled prompts").click()
    page.get_by_text("Tokens per teacher pass").wait_for(timeout=300_000)
    assert_no_errors(page)
    page.screenshot(path=str(ROOT / "artifacts" / "screenshots" / "distill-after-run.png"), full_page=True)
