import csv
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


@pytest.fixture(scope="module")
def bundle():
    return report.build_report(records(), "SmolLM2-135M-Instruct", "kld_mean", {"quality_metric": "kld_mean"},
                               commit="abc123")


def test_html_is_self_contained_and_lists_every_variant(bundle):
    page = bundle.html
    assert page.startswith("<!doctype html>")
    for r in records():
        assert f"<td>{__import__('html').escape(r.label)}</td>" in page  # labels are escaped, never raw HTML
    assert "NF4 <4-bit>" not in page
    assert page.count('<tr>') == 1 + len(records())
    assert "Trade-off Map: quality vs decode latency" in page and "Trade-off Map: quality vs cost" in page
    # plotly.js is inline exactly once, and nothing is fetched from the network
    assert page.count("plotly.js v") >= 1
    assert not re.search(r'<script[^>]+src="https?://', page)
    assert "abc123" in page and "n/a" in page  # the NaN perplexity is shown as n/a


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


@pytest.mark.browser
def test_exported_html_opens_offline_in_chromium_with_map_and_every_variant(bundle, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    path = tmp_path / "report.html"
    path.write_text(bundle.html)
    requested = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})

            def only_files(route):
                requested.append(route.request.url)
                if route.request.url.startswith(("file://", "data:", "blob:")):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", only_files)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
            assert page.locator(".js-plotly-plot").count() == 3
            assert page.locator(".js-plotly-plot .scatterlayer .trace").count() >= 2  # bubbles were drawn
            assert page.get_by_role("heading", name="Trade-off Map: quality vs decode latency").is_visible()
            cells = page.locator("#variants tbody tr td:first-child").all_inner_texts()
            assert cells == [r.label for r in records()]
            assert errors == []
            shots = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "exported-report.png"), full_page=True)
        finally:
            browser.close()
    assert [u for u in requested if not u.startswith("file://")] == []


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
