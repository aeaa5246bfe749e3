"""Your task on the pages: a stored task run shown on Your task, drawn on the map as "my task", used as Decide's
floor, and in the Report's HTML. Each page runs alone in AppTest; the task run is written as the job writes it."""

from __future__ import annotations

import pytest

from core.experiments import task_run
from core.store import ResultStore, jsonl
from tests.factories import make_record
from tests.test_pages import HERE, no_errors, page
from tests.test_task import run_of

pytestmark = pytest.mark.usefixtures("fresh_caches")
MODEL = "smollm2-135m-instruct"


def seed() -> dict:
    store = ResultStore()
    for key, label, speed in (("fp32", "FP32 (reference)", 20.0), ("gguf-q4_k_m", "Q4_K_M", 110.0)):
        store.add(make_record(technique=key, label=label, model=MODEL, hardware=HERE, run_id="r1",
                              decode_tokens_per_s_median=speed, decode_tokens_per_s_p10=speed * 0.9,
                              decode_tokens_per_s_p90=speed * 1.1, usd_per_1m_tokens=1 / speed))
    result = run_of({"fp32": [True] * 8 + [False] * 2, "gguf-q4_k_m": [True] * 5 + [False] * 5})
    result |= {"run_id": "run1", "model": MODEL, "hardware": HERE, "threads": 2, "device": "cpu", "versions": {},
               "task_file": "t.jsonl", "settings": {}}
    jsonl.append(task_run.results_path(), [result])
    return result


def test_your_task_page_shows_rates_verdicts_and_flips():
    seed()
    at = page("pages/task.py").run()
    no_errors(at)
    table = at.dataframe[0].value
    assert list(table["passed"]) == ["8/10", "5/10"] and list(table["right → wrong"]) == [0, 3]
    said = " ".join(m.value for m in at.markdown)
    assert "Q4_K_M fails 3 prompts FP32 passes and passes 0 it fails: no clear difference on 10 prompts" in said
    assert list(at.dataframe[1].value["flip"]) == ["right → wrong"] * 3


def test_your_task_page_without_a_run_says_what_to_do():
    at = page("pages/task.py").run()
    no_errors(at)
    assert any("No task run" in i.value for i in at.info)


def test_my_task_as_the_maps_quality_axis():
    seed()
    at = page("pages/tradeoff_map.py").run()
    at.radio[0].set_value("task_pass_rate").run()
    no_errors(at)
    spec = at.get("plotly_chart")[0].proto.spec
    assert "My task" in spec
    assert sorted(at.dataframe[0].value["my task pass rate"]) == [0.5, 0.8]


def test_decides_floor_on_my_task():
    seed()
    at = page("pages/decide.py").run()
    no_errors(at)
    at.checkbox(key="task_floor_use").check().run()
    at.slider(key="task_floor").set_value(0.75).run()
    no_errors(at)
    assert at.session_state["decide_question"].min_task_pass_rate == 0.75
    text = " ".join(m.value for m in at.markdown)
    assert "share of my task's prompts passed 80.0% (49.0%–94.3%) (at least 75.0% asked)" in text
    at.slider(key="task_floor").set_value(0.9).run()  # no variant passes 90%: the relaxation says how far to move
    no_errors(at)
    said = " ".join(m.value for m in [*at.markdown, *at.warning, *at.error, *at.info])
    assert "share of my task's prompts passed from 90.0% to 80.0%" in said


def test_the_report_carries_my_task():
    result = seed()
    at = page("pages/report.py").run()
    no_errors(at)
    assert any("My task: t.jsonl" in c.value for c in at.caption)
    from core.views import report, task as task_view

    records = ResultStore().all(MODEL)
    bundle = report.build_report(records, "SmolLM2", "kld_mean", {}, commit="x",
                                 task_section=task_view.report_html(result, 0.18))
    assert '<section id="my-task">' in bundle.html and "Q4_K_M fails 3 prompts" in bundle.html
