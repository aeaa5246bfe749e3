"""Live in a lesson: from an empty data folder and a fresh server, the first measured variant reaches the map without
reloading the page, the next joins it as it is measured, and Stop ends the sweep keeping both.

How fast is a benchmark's question, not this test's: it prints the times against the lesson's targets (the first dot
within a minute, Stop within 10 s) and keeps them in first_dot.json; `benchmarks/first_dot.py` runs it and reports
them. The test fails only past generous limits (3x the targets), where something hangs rather than runs slowly on a
busy or AVX2-only machine.

The bundled model is prepared first (as `make model` leaves it): dequantizing it is the one-off work that the worker
otherwise does when idle. The worker's idle preparation is on, as on a teacher's laptop, and gives way to the sweep.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests import dashboard
from tests.conftest import needs_bundled
from tests.test_browser import assert_no_errors, open_page

pytestmark = [pytest.mark.browser, needs_bundled]
ROOT = Path(__file__).resolve().parent.parent
FIRST_DOT_S = 60.0  # the lesson's targets, printed beside the measured times
STOP_S = 10.0
HANG_FACTOR = 3  # past this multiple of a target the test fails: the sweep or Stop hangs
ALL_DOTS_S = 300.0  # the second variant, generously (an AVX2-only machine is far slower for int8)


def _map_rows(page) -> int:
    """Variants in the map's table (one row each, plus the header row); 0 while nothing is measured."""
    grid = page.locator("[data-testid='stDataFrame'] [role='grid']").first
    if not grid.count():
        return 0
    return max(0, int(grid.get_attribute("aria-rowcount") or 1) - 1)


def _queue_state() -> str:
    from core.launch.jobqueue import JobQueue

    snap = JobQueue().snapshot()
    jobs = ([snap.running] if snap.running else []) + [w.job for w in snap.waiting] + list(snap.recent)
    return "; ".join(f"{j.kind} {j.state} {j.elapsed_s:.0f}s: {j.log[-6:]} {j.error}" for j in jobs)


def _ended() -> str:
    """The sweep's state once it ended ("" while it runs or waits)."""
    from core.launch.jobqueue import JobQueue

    sweeps = [j for j in JobQueue().snapshot().recent if j.kind == "sweep"]
    return sweeps[0].state if sweeps else ""


def test_first_dot_on_the_map_then_the_next_then_stop(bundled, data_dir, tmp_path):
    with dashboard.running(data_dir, env={"LAB_WORKER_PREPARE": "1"}) as url, dashboard.chromium() as browser:
        page = open_page(browser, url, "quantize", "Quantize")
        toggle = page.get_by_text("Quick first look")
        toggle.wait_for(timeout=60_000)
        assert page.get_by_role("switch", name="Quick first look").is_checked()  # the default while nothing is measured
        page.get_by_role("button", name="Measure", exact=True).click()
        pressed = time.monotonic()
        page.get_by_text("Quantization sweep").first.wait_for(timeout=30_000)  # queued: the panel shows it
        the_map = open_page(browser, url, "tradeoff_map", "Trade-off Map")
        try:
            the_map.locator(".js-plotly-plot").first.wait_for(timeout=HANG_FACTOR * FIRST_DOT_S * 1000)  # no reload
        except Exception:
            the_map.screenshot(path=str(ROOT / "artifacts" / "screenshots" / "first-dot-missing.png"), full_page=True)
            pytest.fail(f"no dot within {HANG_FACTOR * FIRST_DOT_S:.0f} s; the queue says: {_queue_state()}")
        first_dot_s = time.monotonic() - pressed
        assert_no_errors(the_map)
        the_map.get_by_text("from a quick first look").first.wait_for(timeout=10_000)  # said, with the full pass
        times = {"first_dot_s": round(first_dot_s, 1)}
        deadline = time.monotonic() + ALL_DOTS_S
        seen = 1
        while time.monotonic() < deadline and seen < 2:  # the next follows as it is measured, on the page already open
            seen = max(seen, _map_rows(the_map))
            the_map.wait_for_timeout(1000)
        times["second_dot_s"] = round(time.monotonic() - pressed, 1)
        assert seen >= 2, "only the first variant reached the map"
        page.bring_to_front()  # then Stop, on the Quantize page's panel: it ends within seconds, keeping both dots
        page.get_by_role("button", name="Stop").first.click()
        stopped = time.monotonic()
        while time.monotonic() - stopped < HANG_FACTOR * STOP_S and not _ended():
            time.sleep(0.25)
        times["stop_s"] = round(time.monotonic() - stopped, 1)
        assert _ended() == "cancelled", _queue_state()
        the_map.screenshot(path=str(ROOT / "artifacts" / "screenshots" / "first-dots.png"), full_page=True)
        times.update(target_first_dot_s=FIRST_DOT_S, target_stop_s=STOP_S)
        (Path(os.environ.get("LAB_FIRST_DOT_OUT", tmp_path)) / "first_dot.json").write_text(json.dumps(times))
        print("first dot:", json.dumps(times))
