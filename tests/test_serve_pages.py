"""The Serve page and the Decide page's traffic tab, driven by AppTest with seeded load points."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.measure import benchmark
from core.store import ResultStore
from core.views import capacity
from tests.factories import make_record, make_serving_record

ROOT = Path(__file__).resolve().parent.parent
HERE = benchmark.hardware_fingerprint("cpu")


# Streamlit's resource cache outlives one AppTest: every page test starts and ends with it empty.
pytestmark = pytest.mark.usefixtures("fresh_caches")


def _seed(store: ResultStore) -> None:
    for c, t, u in ((1, 10.0, 10.0), (4, 36.0, 9.0), (16, 60.0, 3.8)):
        store.add_serving(make_serving_record(concurrency=c, throughput_tokens_per_s=t, per_user_tokens_per_s_median=u,
                                              hardware=HERE))


def _no_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_serve_page_empty_guides_the_user():
    at = AppTest.from_file(str(ROOT / "pages/serve.py"), default_timeout=60).run()
    _no_errors(at)
    assert any("No load points" in i.value for i in at.info)


def test_serve_page_shows_the_frontier_and_the_plain_words():
    _seed(ResultStore())
    at = AppTest.from_file(str(ROOT / "pages/serve.py"), default_timeout=60).run()
    _no_errors(at)
    text = " ".join(m.value for m in at.markdown)
    assert "one user gets 10.0 tok/s; 16 users each get 3.8" in text and "6.0 times more tokens per dollar" in text
    assert "Serving frontier" in at.get("plotly_chart")[0].proto.spec


def _decide(store: ResultStore) -> AppTest:
    store.add(make_record(hardware=HERE))
    store.add(make_record(hardware=HERE, technique="nf4", family="quantization", label="NF4",
                          decode_tokens_per_s_median=12.0, decode_tokens_per_s_p10=11.0, decode_tokens_per_s_p90=13.0))
    _seed(store)
    return AppTest.from_file(str(ROOT / "pages/decide.py"), default_timeout=60).run()


def test_decide_traffic_tab_recommends_from_load_points():
    at = _decide(ResultStore())
    _no_errors(at)
    next(n for n in at.number_input if n.label == "Requests per day").set_value(100_000).run()
    _no_errors(at)
    # 100,000 requests/day -> 2.31 req/s at peak; 200-token answers; >= 5 tok/s per user rules out C=16, and C=4
    # answers 4 / (0.1 s + 200 / 9 tok/s) = 0.18 req/s per machine: 13 machines.
    assert any("One machine is not enough: 13 machines" in w.value for w in at.warning)
    assert any("at 4 concurrent requests" in m.value and "= 0.18 requests/s" in m.value for m in at.markdown)


def test_decide_tabs_show_one_bill_for_the_same_variant():
    at = _decide(ResultStore())
    _no_errors(at)
    traffic_tab, cost_tab = at.tabs[1], at.tabs[2]
    points = traffic_tab.dataframe[0].value
    chosen = points[points["meets latency target"]].iloc[0]  # cheapest first: the plan's choice
    bills = cost_tab.dataframe[0].value
    fp32 = bills[bills["variant"] == "FP32"].iloc[0]
    for column in ("machines", "$ per month (always on)", "$ per month (busy only)", "requests/s per machine",
                   "busy hours per machine per month"):
        assert fp32[column] == pytest.approx(chosen[column]), column
    assert "load benchmark, 4 concurrent" in fp32["source"]
    nf4 = bills[bills["variant"] == "NF4"].iloc[0]
    assert nf4["source"].startswith("one request at a time") and nf4["concurrency"] == 1
    assert (bills["busy hours per machine per month"] <= 720).all()
    # the same bill in words in both tabs: "2 machines, $X a month ($lo–$hi) always on"
    words = next(m.value for m in cost_tab.markdown if "**FP32**" in m.value).split("**FP32**: ")[1].split(";")[0]
    assert any(words in m.value for m in traffic_tab.markdown), words
    assert any("Little's law" in c.value for c in cost_tab.caption)


def test_decide_bills_follow_the_billing_choice():
    at = _decide(ResultStore())
    at.selectbox(key="bill_mode").set_value("busy_only").run()
    _no_errors(at)
    bills = at.tabs[2].dataframe[0].value
    assert any("billed busy only" in c.value for c in at.tabs[2].caption)
    fp32 = bills[bills["variant"] == "FP32"].iloc[0]
    line = next(m.value for m in at.tabs[2].markdown if "**FP32**" in m.value)
    assert "busy only" in line and capacity.usd_text(fp32["$ per month (busy only)"]) in line


def test_report_page_counts_the_serving_points():
    store = ResultStore()
    store.add(make_record(hardware=HERE))
    _seed(store)
    at = AppTest.from_file(str(ROOT / "pages/report.py"), default_timeout=60).run()
    _no_errors(at)
    assert any("1 variant, 3 serving points" in c.value for c in at.caption)
