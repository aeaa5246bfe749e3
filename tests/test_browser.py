"""Smoke test in a real browser: start the dashboard, open every page in headless Chromium, and fail on
any exception or error box. The main paths are clicked through on the bundled model by tests/test_first_dot_browser.py
(Measure, the map filling in, Stop) and tests/test_lesson_browser.py (every lever, distill -> speculative decoding).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import dashboard

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
PAGES = {"": "LLM Trade-off Lab", "quantize": "Quantize", "lora": "Fine-tune with LoRA", "distill": "Distill a smaller student",
         "moe": "Mixture of experts",
         "tradeoff_map": "Trade-off Map", "arena": "Arena", "task": "Your task", "hybrids": "Hybrids", "decide": "Decide",
         "report": "Report"}


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
