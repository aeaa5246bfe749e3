"""The lesson path (core/launch/lesson.py) and its Overview section: every step's quick job is a valid job that runs
less than a full one, a step is done only when its own result exists, and the Overview queues the step's job."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.experiments.sweep import SweepSettings
from core.launch import kinds, lesson
from core.measure import benchmark
from core.models.saved import SavedStudent
from core.store import ResultStore
from core.techniques import distillation, lora
from tests.factories import make_record

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
HERE = benchmark.hardware_fingerprint("cpu")


def steps(students=()):
    return {s.key: s for s in lesson.lesson_steps(MODEL, "laptop-cpu", 0.18, list(students))}


def test_steps_come_in_class_order_each_with_a_page_and_what_it_gives_up():
    path = lesson.lesson_steps(MODEL, "laptop-cpu", 0.18, [])
    assert [s.key for s in path] == list(lesson.STEPS)
    for s in path:
        assert s.teaches and s.quick and s.gives_up
        assert (ROOT / s.page).is_file(), s.page


def test_each_quick_job_is_a_valid_job_that_survives_the_queue(tmp_path):
    student = SavedStudent(tmp_path, {"teacher": MODEL})
    for s in steps([student]).values():
        if s.args is None:
            assert s.key == "decide"  # the one step with nothing to run
            continue
        assert s.label
        kind = kinds.kind_of(s.args)
        assert kinds.parse(kind.name, s.args.to_json()) == s.args  # what the worker gets back from the queue
        assert kind.models(s.args) == [MODEL] or s.key == "hybrid"


def test_quick_settings_run_less_than_a_full_run_and_say_by_how_much():
    full_sweep, full_distill, full_lora = SweepSettings(), distillation.DistillSettings(), lora.FinetuneSettings()
    quick = lesson.QUICK_MEASURE
    assert quick.repeats < full_sweep.repeats and quick.new_tokens <= full_sweep.new_tokens
    assert 0 < quick.mc_max_items and quick.ppl_max_tokens < full_sweep.ppl_max_tokens
    assert lesson.QUICK_DISTILL.steps < full_distill.steps
    assert lesson.QUICK_CORPUS.is_file()  # no teacher answers to write first
    assert lesson.QUICK_LORA.steps < full_lora.steps and lesson.QUICK_LORA.eval_items > 0
    words = steps()
    assert f"{lesson.QUICK_DISTILL.steps} steps" in words["distill"].gives_up
    assert f"{full_distill.steps}" in words["distill"].gives_up
    assert f"{full_lora.steps}" in words["lora"].gives_up
    assert words["quantize"].args.settings.hardware_preset == "laptop-cpu"
    assert words["quantize"].args.settings.usd_per_hour == 0.18
    assert asdict(words["moe"].args.settings) == asdict(words["quantize"].args.settings)


def test_the_hybrid_waits_for_a_student_then_drafts_with_the_newest(tmp_path):
    assert steps()["hybrid"].args is None and "Distill" in steps()["hybrid"].waits_for
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir(), old.mkdir()
    found = lesson.students_of([SavedStudent(new, {"teacher": MODEL}), SavedStudent(old, {"teacher": MODEL}),
                                SavedStudent(tmp_path, {"teacher": "another"})], MODEL)
    assert [s.path for s in found] == [new, old]
    assert steps(found)["hybrid"].args.draft == str(new)


def test_a_step_is_done_only_when_its_own_result_is_here():
    assert lesson.done_steps([], [], MODEL, HERE) == set()
    records = [make_record(technique="fp32", hardware=HERE)]
    assert lesson.done_steps(records, [], MODEL, HERE) == set()  # the reference alone is not the quantize step
    records.append(make_record(technique="nf4", family="quantization", hardware=HERE))
    assert lesson.done_steps(records, [], MODEL, HERE) == {"quantize", "decide"}
    assert lesson.done_steps(records, [], MODEL, "another machine") == set()
    records += [
        make_record(technique="distilled-15L-x", family="distillation", hardware=HERE,
                    variant_facts={"distillation": {"role": "student_distilled"}}),
        make_record(technique="lora-support-routing-r8", family="lora", hardware=HERE, variant_facts={"finetune": {}}),
        make_record(technique="moe-8x2", family="moe", hardware=HERE, variant_facts={"experts": 8, "top_k": 2}),
    ]
    rows = [{"model": MODEL, "hardware": HERE}]
    assert lesson.done_steps(records, rows, MODEL, HERE) == set(lesson.STEPS)
    pruned_only = make_record(technique="pruned-15L", family="distillation", hardware=HERE,
                              variant_facts={"distillation": {"role": "student_pruned"}})
    assert "distill" not in lesson.done_steps([pruned_only], [], MODEL, HERE)
    assert "hybrid" not in lesson.done_steps([], [{"model": "another", "hardware": HERE}], MODEL, HERE)


@pytest.mark.usefixtures("fresh_caches")
def test_overview_lists_the_path_and_queues_a_step():
    ResultStore().add(make_record(technique="fp32", hardware=HERE))
    ResultStore().add(make_record(technique="nf4", family="quantization", hardware=HERE))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    body = " ".join(m.value for m in at.markdown)
    for s in lesson.lesson_steps(MODEL, "laptop-cpu", 0.18, []):
        assert s.title in body
    assert "Quantize** · :green[:material/check_circle: done]" in body
    assert "Distill**" in body and "Distill** ·" not in body
    lines = [e.value for e in [*at.caption, *at.warning] if "Estimated time here" in e.value]
    assert len(lines) == 4  # every step with a job to run (not the hybrid before a student exists, not Decide)
    at.button(key="lesson_run_distill").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from ui.roles import queue  # the queue of this test's data dir

    waiting = queue().snapshot().waiting
    assert [w.job.kind for w in waiting] == ["distill"]
