"""The Serve page and the Decide page's traffic tab, driven by AppTest with seeded load points."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.measure import benchmark
from core.store import ResultStore
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


def test_decide_traffic_tab_recommends_from_load_points():
    store = ResultStore()
    store.add(make_record(hardware=HERE))
    _seed(store)
    at = AppTest.from_file(str(ROOT / "pages/decide.py"), default_timeout=60).run()
    _no_errors(at)
    # Defaults: 100,000 requests/day -> 2.31 req/s at peak; 200-token answers; >= 5 tok/s per user rules out C=16,
    # and C=4 answers 36 / 200 = 0.18 req/s per machine: 13 machines.
    assert any("One machine is not enough: 13 machines" in w.value for w in at.warning)
    assert any("at 4 concurrent requests" in m.value for m in at.markdown)


def test_report_page_counts_the_serving_points():
    store = ResultStore()
    store.add(make_record(hardware=HERE))
    _seed(store)
    at = AppTest.from_file(str(ROOT / "pages/report.py"), default_timeout=60).run()
    _no_errors(at)
    assert any("1 variants, 3 serving points" in c.value for c in at.caption)
