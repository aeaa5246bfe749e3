"""Decide and the Report as a product manager uses them, in real Chromium, on a store holding the quantization and
GGUF families: three questions, then the offline Report.

The store is seeded with records shaped like this lab's sweeps of SmolLM2-135M on a 2-core CPU (the numbers are the
inputs of the test, not shown as results anywhere), so the test runs in seconds and asks what the pages do with them:
no green verdict under the quality floor without its warning, one bill per variant in every tab, an interval on
every headline number, and a Report whose chart axes keep their tick labels offline.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core import models, techniques
from core.measure import benchmark
from core.store import ResultStore
from tests import dashboard
from tests.factories import make_record, make_serving_record

pytestmark = pytest.mark.browser
MODEL = "smollm2-135m-instruct"
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
# technique: (MB held, decode tok/s of 5 timed runs, TTFT ms, top-1 agreement, KLD nats, perplexity, MC accuracy)
SWEEP = {
    "fp32": (538.0, [16.7, 17.1, 17.9, 17.3, 17.6], 90.0, 1.0, 0.0, 23.78, 0.753),
    "nf4": (173.0, [27.0, 28.5, 29.2, 28.8, 28.1], 300.0, 0.715, 0.235, 29.54, 0.691),
    "gguf-q8_0": (145.0, [111.0, 118.0, 119.0, 116.0, 121.0], 40.0, 0.957, 0.0038, 23.91, 0.758),
    "gguf-q4_k_m": (105.0, [110.0, 111.0, 112.0, 113.0, 112.0], 45.0, 0.866, 0.052, 25.13, 0.737),
    "gguf-q2_k": (88.0, [120.0, 125.0, 128.0, 126.0, 124.0], 40.0, 0.641, 0.389, 31.5, 0.66),
}
INTERVAL = r"\(\$?[\d.,]+%?–\$?[\d.,]+%?"  # "(6.91–8.12x)", "(95.0%–96.4%)", "($322–$451)"


def seed(data: Path) -> None:
    """Records, load points and the model's config.json where the dashboard started with LAB_DATA_DIR=data looks."""
    here = benchmark.hardware_fingerprint("cpu")
    store = ResultStore(data / "results.sqlite")
    for key, (mb, speeds, ttft, top1, kld, ppl, mc) in SWEEP.items():
        t = techniques.get(key)
        store.add(make_record(
            technique=key, family=t.family, label=t.label, model=MODEL, hardware=here, size_mb=mb,
            decode_tokens_per_s_samples=speeds, decode_tokens_per_s_median=sorted(speeds)[2],
            decode_tokens_per_s_p10=min(speeds), decode_tokens_per_s_p90=max(speeds), ttft_ms_median=ttft,
            top1_agreement=top1, kld_mean=kld, perplexity=ppl, mc_accuracy=mc, mc_accuracy_ci95=[mc - 0.06, mc + 0.06],
            usd_per_1m_tokens=0.0571 / (sorted(speeds)[2] * 3600) * 1e6, usd_per_hour=0.0571, run_id="run-seed",
            settings={"launched_from": "cli", "repeats": 5, "ppl_tokens": 3384, "seed": 0}))
    for key, per_user in (("fp32", 16.0), ("gguf-q4_k_m", 100.0)):
        for c in (1, 2, 4):
            store.add_serving(make_serving_record(
                technique=key, label=techniques.get(key).label, model=MODEL, hardware=here, concurrency=c,
                runtime="llama.cpp" if key.startswith("gguf") else "transformers",
                prompt_tokens=128, new_tokens=64, per_user_tokens_per_s_median=per_user / c ** 0.5,
                throughput_tokens_per_s=per_user * c ** 0.5 * 0.9, ttft_ms_p50=100.0 * c, ttft_ms_p90=150.0 * c))
    target = data / "models" / models.checkpoint_dir(MODEL).name
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps({"num_hidden_layers": 30, "num_attention_heads": 9,
                                                    "num_key_value_heads": 3, "head_dim": 64, "hidden_size": 576}))


@pytest.fixture(scope="module")
def decide(tmp_path_factory):
    data = tmp_path_factory.mktemp("decide-data")
    seed(data)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with dashboard.running(data) as url, dashboard.chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(f"{url}/decide")  # the server's first visit: it gets the app's frame (test_first_visit_browser.py)
        page.get_by_role("heading", name="Decide").first.wait_for(timeout=120_000)
        page.get_by_text("Deploy", exact=False).first.wait_for(timeout=120_000)
        yield page, url


def alerts(page, kind: str) -> list[str]:
    return [t for t in page.locator(f"[data-testid='stAlertContent{kind}']").all_inner_texts()]


def verdict_text(page) -> str:
    page.wait_for_timeout(1500)  # the rerun after a widget change
    return page.locator("[data-testid='stMainBlockContainer']").inner_text()


def test_question_1_cheapest_at_95_top1_on_a_4gb_phone(decide):
    page, _ = decide
    text = verdict_text(page)
    assert any("Deploy GGUF Q8_0" in s for s in alerts(page, "Success")), alerts(page, "Success")
    for headline in (r"decodes at [\d.]+x \([\d.]+–[\d.]+x\) the speed",  # every headline number, with its interval
                     r"costs \$[\d.]+ \(\$[\d.]+–\$[\d.]+\) per 1M tokens",
                     r"top-1 agreement with the reference [\d.]+% \([\d.]+%–[\d.]+%\) \(at least 95.0% asked\)",
                     r"Quality: top-1 agreement [\d.]+% \([\d.]+%–[\d.]+%\), very close",
                     r"multiple-choice accuracy [\d.]+% \([\d.]+%–[\d.]+%\) against [\d.]+% \([\d.]+%–[\d.]+%\)"):
        assert re.search(headline, text), f"{headline!r} not in {text[:3000]}"
    assert "from the CLI" in text and "run run-seed" in text  # the records it rests on
    assert page.get_by_role("button", name="Deploy").count() == 0  # Streamlit's own Deploy button is hidden
    page.screenshot(path=str(SHOTS / "decide-q1-cheapest-95-phone.png"), full_page=True)


def test_question_2_fastest_under_50_ms_warns_under_the_floor(decide):
    page, _ = decide
    page.get_by_text("fastest", exact=True).click()
    page.get_by_text("Minimum top-1 agreement", exact=True).click()
    page.get_by_text("Must fit on a device", exact=True).click()
    page.get_by_text("Maximum latency per token", exact=True).click()
    verdict_text(page)
    assert not any("Q2_K" in s for s in alerts(page, "Success")), alerts(page, "Success")
    warnings = alerts(page, "Warning")
    assert any("GGUF Q2_K" in w and "below the quality floor" in w and "1 next token in 3" in w for w in warnings), \
        warnings
    page.screenshot(path=str(SHOTS / "decide-q2-fastest-50ms.png"), full_page=True)


def test_question_3_ten_thousand_requests_a_day_one_bill_in_every_tab(decide):
    page, _ = decide
    page.get_by_role("tab", name="Traffic at load").click()
    page.wait_for_timeout(1000)
    traffic = page.locator("[data-testid='stTabPanel']:visible").inner_text()
    page.screenshot(path=str(SHOTS / "decide-q3-traffic.png"), full_page=True)
    page.get_by_role("tab", name="Monthly cost").click()
    page.wait_for_timeout(1000)
    monthly = page.locator("[data-testid='stTabPanel']:visible").inner_text()
    page.screenshot(path=str(SHOTS / "decide-q3-monthly.png"), full_page=True)
    bills = re.findall(r"\$[\d,]+(?:\.\d+)? a month", traffic)
    assert bills, traffic
    assert re.search(INTERVAL, traffic), "the bill carries its interval"
    # the tab's headline bill for the chosen variant appears, as the same figure, in the Monthly cost tab's words
    assert any(b.split(" a month")[0] in monthly for b in bills), (bills, monthly[:2000])


def test_the_offline_report_keeps_its_axes(decide, tmp_path):
    page, url = decide
    page.goto(f"{url}/report")
    page.get_by_role("heading", name="Report").first.wait_for(timeout=120_000)
    page.get_by_text("plotly.js is embedded", exact=False).wait_for(timeout=120_000)  # the run has passed the buttons
    with page.expect_download(timeout=120_000) as download:
        page.get_by_role("button", name="Download HTML report").click()
    report = tmp_path / "report.html"
    download.value.save_as(report)
    offline = page.context.browser.new_context(offline=True, viewport={"width": 1000, "height": 900})
    view = offline.new_page()
    view.goto(report.as_uri())
    view.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    view.wait_for_timeout(1000)
    html = report.read_text()
    assert html.index('id="decision"') < html.index("js-plotly-plot")  # the decision comes first
    figures = view.locator(".js-plotly-plot")
    assert figures.count() >= 3
    for i in range(figures.count()):
        ticks = [t for t in figures.nth(i).locator("g.ytick text").all_text_contents() if t.strip()]
        assert len(ticks) >= 3, f"figure {i}: y ticks {ticks}"
    assert view.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    view.screenshot(path=str(SHOTS / "report-offline.png"), full_page=True)
    offline.close()
