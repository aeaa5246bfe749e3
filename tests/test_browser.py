"""Smoke test in a real browser: start the dashboard, open every page in headless Chromium, and fail on
any exception or error box. The main path (measure -> see the map) is clicked through on the tiny model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import dashboard

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
PAGES = {"": "LLM Trade-off Lab", "quantize": "Quantize", "lora": "Fine-tune with LoRA", "distill": "Distill a smaller student",
         "moe": "Mixture of experts",
         "tradeoff_map": "Trade-off Map", "arena": "Arena", "hybrids": "Hybrids", "decide": "Decide", "report": "Report"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with dashboard.running(tmp_path_factory.mktemp("browser-data")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with dashboard.chromium() as b:
        yield b


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
    page.get_by_role("button", name="Measure", exact=True).click()
    page.get_by_text("Results on this machine").wait_for(timeout=480_000)
    assert_no_errors(page)
    page.get_by_role("link", name="Trade-off Map").first.click()
    page.get_by_role("heading", name="Trade-off Map").wait_for(timeout=90_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=90_000)
    assert page.locator(".js-plotly-plot").count() >= 2
    assert_no_errors(page)
    page.screenshot(path=str(ROOT / "artifacts" / "screenshots" / "map-after-sweep.png"), full_page=True)


def test_distill_then_speculate(server, browser):
    """On the tiny model: distill from the page's own form (20 steps: the default 150 took most of this test's 7
    minutes and test nothing more), see the three models, then run speculative decoding."""
    page = open_page(browser, server, "distill", "Distill a smaller student")
    sidebar = page.locator("[data-testid='stSidebar']")
    # generous bounds: the first page run imports torch, bitsandbytes and llama.cpp, and a CI machine may be slow
    sidebar.locator("[data-testid='stSelectbox']").first.click(timeout=120_000)
    page.get_by_role("option", name="Tiny random Llama (tests)").click()
    page.get_by_text("The teacher has 2 decoder layers").wait_for(timeout=90_000)
    steps = page.get_by_label("Steps", exact=True)
    steps.fill("20")
    steps.press("Tab")
    page.get_by_text("Estimated time here").first.wait_for(timeout=30_000)  # the estimate line above the button
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Distill", exact=True).click()
    page.get_by_text("Held-out KL divergence, pruned → distilled").wait_for(timeout=480_000)
    assert_no_errors(page)
    page.get_by_role("button", name="Compare on 10 bundled prompts").click()
    page.get_by_text("Tokens per teacher pass").wait_for(timeout=300_000)
    assert_no_errors(page)
    page.screenshot(path=str(ROOT / "artifacts" / "screenshots" / "distill-after-run.png"), full_page=True)
