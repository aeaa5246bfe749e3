"""The Overview's lesson path walked in Chromium end to end on the bundled model, from a fresh data folder (the model
already prepared), as a teacher would in class: each step's "Run this step", its job ending done on the Overview's
panel, its result on the page the step links to, the step marked done; then Decide. Each step's wall time is printed
(pytest -s) and written to lesson_times.json in the test's tmp dir.

By default it walks the chain a class cannot skip: the first dot (quantize), a distilled student, and the hybrid that
drafts with it (about 5 minutes). LoRA's and MoE's steps queue the same kinds through the same panel (their quick
jobs are checked in tests/test_lesson.py and run for real in test_cluster.py); LAB_LESSON_ALL_STEPS=1 walks all five
and then holds the whole walk to the lesson's 30 minutes (8 min here): a timing, so not in every `make test`.
"""

from __future__ import annotations

import json
import os
import time

import pytest

expect = pytest.importorskip("playwright.sync_api").expect

from core.launch import lesson
from tests import dashboard
from tests.conftest import needs_bundled, place_bundled

pytestmark = [pytest.mark.browser, needs_bundled]
WALK_LIMIT_S = 30 * 60
ALL_STEPS = os.environ.get("LAB_LESSON_ALL_STEPS") == "1"
WALKED = lesson.STEPS[:-1] if ALL_STEPS else ("quantize", "distill", "hybrid")
STEP_LIMIT_MS = 10 * 60 * 1000  # one step's job; a step that takes this long has lost its "quick"
RESULT_SHOWN = {  # step -> text its linked page shows once the step's result exists
    "quantize": "How close each variant gets to the memory-bandwidth limit",
    "distill": "Held-out KL divergence, pruned → distilled",
    "lora": "Runs, newest first",
    "moe": "Quality against speed as the share of work per token changes",
    "hybrid": "Speed-up: decode tokens per second with the trick",
}
ALSO_SHOWN = {"hybrid": ("distill", "Tokens per teacher pass")}  # step -> (another page, text it shows then)


# what each step's job is called in the queue: the panel's "done" line starts with it
LABELS = {s.key: s.label for s in lesson.lesson_steps("smollm2-135m-instruct", "laptop-cpu", 0.0, [])}


def assert_no_errors(page) -> None:
    exceptions = page.locator("[data-testid='stException']")
    assert exceptions.count() == 0, exceptions.first.inner_text()
    errors = page.locator("[data-testid='stAlertContentError']")
    assert errors.count() == 0, errors.first.inner_text()


def open_overview(page, url: str):
    page.goto(url)
    page.get_by_role("heading", name="Lesson path (50 minutes)").wait_for(timeout=180_000)
    page.wait_for_load_state("networkidle")
    assert_no_errors(page)
    return page.locator(".st-key-lesson_step_quantize")


def wait_done(page, label: str) -> None:
    """Until the Overview's panel says the job with this label is done; a failed job fails the test at once."""
    deadline = time.monotonic() + STEP_LIMIT_MS / 1000
    done = page.locator("[data-testid='stAlertContentSuccess']").filter(has_text=f"{label} (")
    while time.monotonic() < deadline:
        if done.count():
            return
        assert_no_errors(page)
        page.wait_for_timeout(2000)
    pytest.fail(f"{label} did not end within {STEP_LIMIT_MS / 60000:.0f} min")


def step_box(page, key: str):
    return page.locator(f".st-key-lesson_step_{key}")


def title(page, key: str):
    """The step's first line: its number, title and, once its result exists, "done"."""
    return step_box(page, key).locator("p").first


def see_result(page, key: str) -> None:
    step_box(page, key).get_by_role("link").first.click()
    page.get_by_text(RESULT_SHOWN[key], exact=False).first.wait_for(timeout=180_000)
    page.wait_for_load_state("networkidle")
    assert_no_errors(page)


def see_also(page, url: str, key: str) -> None:
    if key in ALSO_SHOWN:
        path, text = ALSO_SHOWN[key]
        page.goto(f"{url}/{path}")
        page.get_by_text(text).first.wait_for(timeout=180_000)
        assert_no_errors(page)


def test_the_lesson_path_walks_end_to_end_within_30_minutes(tmp_path, monkeypatch, bundled_once):
    data = tmp_path / "data"
    monkeypatch.setenv("LAB_DATA_DIR", str(data))
    place_bundled(bundled_once)  # "after the bundled model is prepared": the model step is not the lesson's
    times: dict[str, dict[str, float]] = {}
    walk_start = time.monotonic()
    with dashboard.running(data) as url, dashboard.chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        open_overview(page, url)
        for key in WALKED:
            box = step_box(page, key)
            assert "done" not in title(page, key).inner_text()
            t0 = time.monotonic()
            box.get_by_role("button", name="Run this step").click()
            wait_done(page, LABELS[key])
            job_s = time.monotonic() - t0
            see_result(page, key)
            see_also(page, url, key)
            open_overview(page, url)
            expect(title(page, key)).to_contain_text("done", timeout=60_000)
            times[key] = {"job_s": round(job_s, 1), "with_page_visits_s": round(time.monotonic() - t0, 1)}
            print(f"lesson step {key}: job {job_s:.0f} s, with its page {times[key]['with_page_visits_s']:.0f} s",
                  flush=True)
        t0 = time.monotonic()
        expect(title(page, "decide")).to_contain_text("done")
        step_box(page, "decide").get_by_role("link").first.click()
        page.get_by_role("heading", name="Decide").first.wait_for(timeout=120_000)
        # the recommendation: green for a variant that meets the question, amber (with the reason) otherwise
        page.locator("[data-testid='stAlertContentSuccess'], [data-testid='stAlertContentWarning']").first.wait_for(
            timeout=120_000)
        assert_no_errors(page)
        times["decide"] = {"job_s": 0.0, "with_page_visits_s": round(time.monotonic() - t0, 1)}
    total_s = time.monotonic() - walk_start
    times["total"] = {"with_page_visits_s": round(total_s, 1)}
    (tmp_path / "lesson_times.json").write_text(json.dumps(times, indent=2))
    print(f"lesson path: {total_s / 60:.1f} min in all; per step: {json.dumps(times)}", flush=True)
    if ALL_STEPS:
        assert total_s < WALK_LIMIT_S, times
