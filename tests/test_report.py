import contextlib
import csv
import html
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from core.views import report
from tests.factories import make_record

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def records():
    return [
        make_record(technique="fp32", label="FP32 (reference)", run_id="r1"),
        make_record(technique="nf4", family="quantization", label="NF4 <4-bit>", size_mb=173.0, run_id="r1",
                    decode_tokens_per_s_median=24.0, top1_agreement=0.72, kld_mean=0.4, perplexity=math.nan),
        make_record(technique="lora-support", family="lora", label="LoRA r8 on support", run_id="r2",
                    variant_facts={"finetune": {"usd_cost": 0.01}}, settings={"seed": 7, "new_tokens": 16}),
    ]


def table_rows(page: str, table_id: str) -> list[list[str]]:
    """The text of every body cell of one table, unescaped, row by row."""
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, re.DOTALL).group(1)
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def headings(page: str, table_id: str) -> list[str]:
    head = re.search(rf'<table id="{table_id}"><thead>(.*?)</thead>', page, re.DOTALL).group(1)
    return [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", head)]


@pytest.fixture(scope="module")
def bundle():
    return report.build_report(records(), "SmolLM2-135M-Instruct", "kld_mean", {"quality_metric": "kld_mean"},
                               commit="abc123")


def test_html_is_self_contained_and_lists_every_variant(bundle):
    page = bundle.html
    assert page.startswith("<!doctype html>")
    for r in records():
        assert f"<td>{html.escape(r.label)}</td>" in page  # labels are escaped, never raw HTML
    assert "NF4 <4-bit>" not in page
    assert page.count('<tr>') == 1 + len(records())
    assert "Trade-off Map: quality vs decode latency" in page and "Trade-off Map: quality vs cost" in page
    # plotly.js is inline exactly once, and nothing is fetched from the network
    assert page.count("plotly.js v") >= 1
    assert not re.search(r'<script[^>]+src="https?://', page)
    assert "abc123" in page
    nf4 = table_rows(page, "variants")[1]
    assert nf4[headings(page, "variants").index("Perplexity")] == "–"  # the NaN perplexity is shown as a dash


def test_csv_has_one_row_per_variant_with_nested_fields_as_json(bundle):
    rows = list(csv.DictReader(io.StringIO(bundle.csv)))
    assert [r["technique"] for r in rows] == ["fp32", "nf4", "lora-support"]
    assert json.loads(rows[2]["variant_facts"]) == {"finetune": {"usd_cost": 0.01}}
    assert "mc_per_item" not in rows[0]


def test_json_is_strict_and_carries_the_manifest(bundle):
    data = json.loads(bundle.json, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert len(data["results"]) == 3 and data["results"][1]["perplexity"] is None
    m = data["manifest"]
    assert m["app_commit"] == "abc123" and m["seeds"] == [0, 7]
    assert {run["run_id"] for run in m["runs"]} == {"r1", "r2"}
    assert m["runs"][0]["techniques"] == ["fp32", "nf4"]
    assert m["hardware"] == ["Intel Xeon, 2 cores, 8 GB"] and m["report_settings"] == {"quality_metric": "kld_mean"}
    assert m["runs"][0]["versions"]["torch"] == "2.13.0"


def test_build_report_refuses_nothing_and_mixed_machines():
    with pytest.raises(ValueError, match="nothing to report"):
        report.build_report([], "m", "kld_mean", {})
    with pytest.raises(ValueError, match="machines"):
        report.build_report([make_record(), make_record(hardware="elsewhere")], "m", "kld_mean", {})


def test_git_commit_reads_refs_without_git(tmp_path):
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert report.git_commit(tmp_path) is None  # no commit yet
    (git / "packed-refs").write_text("# pack-refs\nfeedbeef refs/heads/main\n")
    assert report.git_commit(tmp_path) == "feedbeef"
    (git / "refs" / "heads" / "main").write_text("cafe1234\n")
    assert report.git_commit(tmp_path) == "cafe1234"
    (git / "HEAD").write_text("0123abcd\n")
    assert report.git_commit(tmp_path) == "0123abcd"
    assert report.git_commit(tmp_path / "nowhere") is None


# --- the decision document (issue #31) -------------------------------------------------------------

DECISION = ["Use Q8 <GGUF>: it is 1.9x faster and keeps 99% top-1 agreement.",
            "It costs $0.71 per 1M tokens against $2.50 for FP32.", "Its KL divergence is 0.004 nats."]
WARNING = "Q2 is below the quality floor you set & should not be shipped."
BILL = [{"variant": "FP32 (reference)", "$ per month": 1234.5, "GPU-hours per month": 720},
        {"variant": "Q8 <GGUF>", "$ per month": 0.004, "GPU-hours per month": None}]
BILL_NOTE = "At 10M tokens a day, priced at $0.18/hour (laptop-cpu)."


def kld_wide():
    """The case that broke the y-axis: the reference at KLD 0 and variants from 0.0004 to 0.4 nats; one variant
    was measured from the dashboard, and one lacks every spread."""
    out = [make_record(technique="fp32", label="FP32 (reference)", kld_mean=0.0)]
    for i, kld in enumerate((0.0004, 0.004, 0.04, 0.4), start=1):
        speed = 20.0 + 6 * i
        out.append(make_record(technique=f"q{i}", family="gguf", label=f"Q{10 - 2 * i} <GGUF>", kld_mean=kld,
                               decode_tokens_per_s_median=speed, decode_tokens_per_s_p10=0.8 * speed,
                               decode_tokens_per_s_p90=1.2 * speed, usd_per_1m_tokens=50.0 / speed,
                               size_mb=538.0 / (1 + i), top1_agreement=1 - kld / 2))
    out[1].settings = {**out[1].settings, "launched_from": "dashboard"}
    out[2].decode_tokens_per_s_p10 = math.nan
    out[2].ttft_ms_p10 = math.nan
    out[2].mc_accuracy_ci95 = None
    return out


@pytest.fixture(scope="module")
def decided():
    """Built as the dashboard builds it: importing Streamlit makes its own plotly template the default, and that
    template, unlike plotly's, leaves axis margins fixed: the exported y-axis lost its labels that way."""
    import plotly.io as pio
    from streamlit.elements import plotly_chart  # noqa: F401 (sets pio.templates.default = "streamlit")

    before, pio.templates.default = pio.templates.default, "streamlit"
    try:
        return report.build_report(kld_wide(), "SmolLM2-135M-Instruct", "kld_mean", {}, commit="abc",
                                   decision=DECISION, warning=WARNING, bill_rows=BILL, bill_note=BILL_NOTE)
    finally:
        pio.templates.default = before


def test_the_report_opens_with_the_decision_then_the_bill_charts_tables_and_manifest(decided):
    page = decided.html
    order = [page.index(mark) for mark in (
        "<h1>", 'id="decision"', html.escape(DECISION[0]), 'id="warning"', html.escape(DECISION[1]),
        "What the measurements show", "Monthly bill", "js-plotly-plot", '<table id="variants"', "<h2>Manifest")]
    assert order == sorted(order)
    assert f"<strong>{html.escape(DECISION[0])}</strong>" in page  # the verdict in bold, escaped
    assert f'<div id="warning" class="warning" role="note">{html.escape(WARNING)}</div>' in page
    assert all(f"<li>{html.escape(reason)}</li>" in page for reason in DECISION[1:])
    assert "The fastest variant on the frontier" in page  # what you give up, kept after the decision
    assert "No decision was asked for" not in page


def test_the_bill_has_its_headings_with_units_and_the_note_under_it(decided):
    page = decided.html
    assert headings(page, "bill") == ["variant", "$ per month", "GPU-hours per month"]
    assert table_rows(page, "bill") == [["FP32 (reference)", "1,234.50", "720"], ["Q8 <GGUF>", "0.004", "–"]]
    assert page.index('<table id="bill"') < page.index(html.escape(BILL_NOTE)) < page.index("js-plotly-plot")


def test_without_a_decision_the_report_says_none_was_asked_for(bundle):
    page = bundle.html
    assert report.NO_DECISION in html.unescape(page)
    assert page.index('id="decision"') < page.index("js-plotly-plot")
    assert 'id="warning"' not in page and "Monthly bill" not in page
    assert report.decision_html(["", " "], "", []) == report.decision_html([], None, [])  # blanks are no decision
    assert "<li></li>" not in report.decision_html(["Keep FP32.", ""], None, [])


def test_the_variants_table_shows_every_spread_and_a_dash_for_what_is_missing(decided):
    page = decided.html
    cols = headings(page, "variants")
    for heading in ("Decode tok/s p10–p90", "TTFT ms p10–p90", "$ / 1M tokens at p90–p10 speed",
                    "MC accuracy 95% CI", "Measured from"):
        assert heading in cols
    rows = [dict(zip(cols, row)) for row in table_rows(page, "variants")]
    fp32, q8, q6 = rows[0], rows[1], rows[2]
    assert fp32["Decode tok/s p10–p90"] == "16.0–25.0" and fp32["TTFT ms p10–p90"] == "75–90"
    assert fp32["$ / 1M tokens at p90–p10 speed"] == "2.0000–3.1250"  # cost follows speed: fast runs are cheap
    assert fp32["MC accuracy 95% CI"] == "30.0%–50.0%" and fp32["Measured from"] == "CLI"
    assert q8["Measured from"] == "dashboard"
    assert q6["Decode tok/s p10–p90"] == "–" and q6["TTFT ms p10–p90"] == "–"
    assert q6["$ / 1M tokens at p90–p10 speed"] == "–" and q6["MC accuracy 95% CI"] == "–"
    cells = [c for row in rows for c in row.values()]
    assert not [c for c in cells if c in ("", "None", "nan", "n/a") or "nan" in c.lower().split("–")]


def test_the_csv_keeps_the_raw_values(decided):
    rows = list(csv.DictReader(io.StringIO(decided.csv)))
    assert rows[2]["decode_tokens_per_s_p10"] == "nan" and rows[2]["mc_accuracy_ci95"] == ""
    assert rows[0]["ttft_ms_p10"] == "75.0" and json.loads(rows[0]["mc_accuracy_ci95"]) == [0.3, 0.5]
    assert json.loads(rows[1]["settings"])["launched_from"] == "dashboard"


def test_wide_tables_scroll_in_their_box_and_charts_follow_the_page_width(decided):
    page = decided.html
    for table in ("bill", "variants"):
        assert f'<div class="wide" style="overflow-x:auto"><table id="{table}">' in page
    assert page.count('"responsive": true') == 3 and "max-width:1200px" in page
    chart_styles = re.findall(r'class="plotly-graph-div" style="([^"]*)"', page)
    assert len(chart_styles) == 3 and all("width:100%" in style for style in chart_styles)  # no fixed width


@contextlib.contextmanager
def offline_page(report_html: str, folder: Path, width: int):
    """The exported file open in headless Chromium at this viewport width, every non-file request aborted.

    Yields (page, requested URLs, page errors); on leaving, asserts that nothing but the file was asked for.
    """
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    path = folder / "report.html"
    path.write_text(report_html)
    requested: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})

            def only_files(route):
                requested.append(route.request.url)
                if route.request.url.startswith(("file://", "data:", "blob:")):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", only_files)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
            yield page, requested, errors
        finally:
            browser.close()
    assert [u for u in requested if not u.startswith("file://")] == []


@pytest.mark.browser
def test_exported_html_opens_offline_in_chromium_with_map_and_every_variant(bundle, tmp_path):
    with offline_page(bundle.html, tmp_path, 1300) as (page, _, errors):
        assert page.locator(".js-plotly-plot").count() == 3
        assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 2  # bubbles were drawn
        assert page.get_by_role("heading", name="Trade-off Map: quality vs decode latency").is_visible()
        cells = page.locator("#variants tbody tr td:first-child").all_inner_texts()
        assert cells == [r.label for r in records()]
        assert errors == []
        shots = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "exported-report.png"), full_page=True)


# Per chart: the non-empty tick labels of each axis, their boxes, the y title's box and the chart's own box.
AXES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(plot => {
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const labels = sel => Array.from(plot.querySelectorAll('.main-svg ' + sel))
    .filter(t => t.textContent.trim() !== '' && t.getAttribute('display') !== 'none');
  const title = plot.querySelector('.main-svg .g-ytitle text');
  return {x: labels('g.xtick text').map(t => t.textContent), y: labels('g.ytick text').map(t => t.textContent),
          yBoxes: labels('g.ytick text').map(box), yTitle: title ? box(title) : null, plot: box(plot)};
})"""


def overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.browser
@pytest.mark.parametrize("width", [800, 1400])
def test_exported_decision_report_reads_at_any_width_with_labelled_axes(decided, tmp_path, width):
    with offline_page(decided.html, tmp_path, width) as (page, _, errors):
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg g.ytick').length > 0 && "
                               "document.querySelectorAll('.js-plotly-plot').length === 3", timeout=30_000)
        # the page never scrolls sideways: wide tables scroll in their own box
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        charts = page.evaluate(AXES_JS)
        assert len(charts) == 3
        for i, chart in enumerate(charts):
            assert len(chart["y"]) >= 3 and len(chart["x"]) >= 3, (i, chart["x"], chart["y"])
            assert chart["yTitle"] is not None
            for label_box in chart["yBoxes"]:
                assert not overlaps(chart["yTitle"], label_box), (i, chart["yTitle"], label_box)
                assert label_box[0] >= chart["plot"][0] - 1  # inside the chart, not cut off at its left edge
        assert charts[0]["y"] == ["0.0001", "0.001", "0.01", "0.1"]  # the wide KLD range, in plain decimals
        decision, warning = (page.locator(sel).bounding_box() for sel in ("#decision", "#warning"))
        first_chart = page.locator(".js-plotly-plot").first.bounding_box()
        assert decision["y"] < warning["y"] < first_chart["y"]
        assert page.locator("#warning").is_visible() and page.locator("#warning").inner_text() == WARNING
        assert page.locator("#decision strong").first.inner_text() == DECISION[0]
        assert errors == []


# --- the page --------------------------------------------------------------------------------------


def test_report_page_offers_three_downloads_for_the_stored_results():
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from core.measure import benchmark
    from core.store import ResultStore

    here = benchmark.hardware_fingerprint("cpu")
    for r in records():
        r.hardware = here
        ResultStore().add(r)
    st.cache_resource.clear()
    root = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(root / "pages" / "report.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("download_button")) == 3
    assert set(at.dataframe[0].value["Technique"]) == {"fp32", "nf4", "lora-support"}
    assert any("3 variants" in c.value for c in at.caption)


def test_report_page_without_results_says_what_to_do():
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(root / "pages" / "report.py"), default_timeout=60).run()
    assert not at.exception
    assert any("Nothing measured" in i.value for i in at.info)
