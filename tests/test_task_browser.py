"""Your task in real Chromium: upload a three-prompt task file, run it on FP32 and BF16 of the bundled model (the
worker generates the answers for real, 8 tokens each), pick "my task" as the map's quality axis, set Decide's floor
on it, and download the Report with the task's section. The sweep records the map needs are
seeded (the test is about the task, not about timing); BF16 stands in for a cheaper variant because it needs no GGUF file built first.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core import techniques
from core.measure import benchmark
from core.store import ResultStore
from tests import dashboard
from tests.conftest import needs_bundled
from tests.factories import make_record
from tests.test_browser import assert_no_errors, open_page

pytestmark = [pytest.mark.browser, needs_bundled]
MODEL = "smollm2-135m-instruct"
RUN_S = 240  # the worker's task run: two variants load and answer 3 prompts of at most 8 tokens each
PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of France? Answer with one word.", "exact": "Paris"},
    {"id": "route", "prompt": "Which team handles a double charge on a card: billing or shipping?",
     "contains": ["billing"], "not_contains": ["shipping"]},
    {"id": "sum", "prompt": "What is 2 + 2? Answer with the number only.", "number": 4},
]


def seed(data: Path) -> None:
    store = ResultStore(data / "results.sqlite")
    for key, speed in (("fp32", 20.0), ("bf16", 24.0)):
        store.add(make_record(technique=key, label=techniques.get(key).label, model=MODEL, run_id="seed",
                              hardware=benchmark.hardware_fingerprint("cpu"), decode_tokens_per_s_median=speed,
                              decode_tokens_per_s_p10=speed * 0.9, decode_tokens_per_s_p90=speed * 1.1,
                              usd_per_1m_tokens=0.18 / (speed * 3600) * 1e6))


def pick_variants(page, labels: list[str]) -> None:
    """Empty the Variants multiselect, then choose `labels` by typing them, as a person would."""
    box = page.get_by_test_id("stMultiSelect").first
    box.get_by_role("button", name="Clear all").click()
    for label in labels:
        box.locator("input").fill(label)
        page.get_by_role("option", name=label, exact=True).click()  # not Enter: "FP32 (reference)" also starts
        # the compiled runtime's label
    page.keyboard.press("Escape")


def test_upload_run_map_decide_report(bundled, data_dir, tmp_path):
    seed(data_dir)
    task = tmp_path / "three.jsonl"
    task.write_text("\n".join(json.dumps(p) for p in PROMPTS))
    t0 = time.monotonic()
    with dashboard.running(data_dir) as url, dashboard.chromium() as browser:
        page = open_page(browser, url, "task", "Your task")
        page.get_by_text("Upload my own").click()
        page.locator("input[type='file']").set_input_files(str(task))
        page.get_by_text("ok: 3 prompts").wait_for(timeout=30_000)
        pick_variants(page, ["FP32 (reference)", "BF16"])
        tokens = page.locator("input[aria-label='Answer tokens at most']")
        tokens.fill("8")
        tokens.press("Enter")
        page.get_by_role("button", name="Run my task").click()
        try:
            page.get_by_text("BF16 passes").or_(page.get_by_text("BF16 fails")).first.wait_for(timeout=RUN_S * 1000)
        except Exception:
            page.screenshot(path=str(tmp_path.parent / "task-run-missing.png"), full_page=True)
            pytest.fail(f"no verdict within {RUN_S} s; the page says: {page.inner_text('body')[-3000:]}")
        assert_no_errors(page)
        assert page.get_by_text("This task has one prompt").count() == 0  # three prompts: no one-prompt warning

        page.get_by_role("link", name="Trade-off Map", exact=True).click()  # in-app navigation keeps this session's choices
        page.get_by_role("heading", name="Trade-off Map").first.wait_for(timeout=60_000)
        page.get_by_text("My task: pass rate").click()
        page.locator(".js-plotly-plot").first.wait_for(timeout=60_000)
        page.get_by_text("My task's pass rate").first.wait_for(timeout=30_000)  # the y axis title
        assert_no_errors(page)

        page.get_by_role("link", name="Decide", exact=True).click()
        page.get_by_role("heading", name="Decide").first.wait_for(timeout=60_000)
        page.get_by_text("Minimum pass rate on my task").click()
        page.get_by_text("share of my task's prompts passed").first.wait_for(timeout=60_000)
        assert_no_errors(page)

        page.get_by_role("link", name="Report", exact=True).click()
        try:
            page.get_by_text("My task: three.jsonl").first.wait_for(timeout=120_000)
        except Exception:
            page.screenshot(path=str(tmp_path.parent / "report-missing.png"), full_page=True)
            pytest.fail(f"no task section on the Report; the page says: {page.inner_text('body')[-3000:]}")
        with page.expect_download(timeout=60_000) as download:
            page.get_by_role("button", name="Download HTML report").click()
        report = tmp_path / "report.html"
        download.value.save_as(report)
    html = report.read_text()
    assert '<section id="my-task">' in html and "three.jsonl" in html and "BF16 " in html
    assert "of my task passes" in html  # the decision answers the floor asked on Decide
    print(f"task browser test: {time.monotonic() - t0:.0f} s")
