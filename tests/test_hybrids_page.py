"""The Hybrids page and the views behind it: measured cascades with a threshold slider over measured points, and
decoding tricks offered only where they kept every answer and were clearly faster."""

import math

import pytest
from streamlit.testing.v1 import AppTest

from core.hybrids import classical, curve, prompt_lookup
from core.hybrids.curve import ItemOutcome
from core.launch.jobqueue import JobQueue
from core.measure import benchmark
from core.views import cascades, hybrids, report
from tests.factories import make_record, run_queued_jobs_here
from tests.test_pages import ROOT, no_errors
from tests.test_recommend import seeded  # noqa: F401  (a fixture)

HERE = benchmark.hardware_fingerprint("cpu")
pytestmark = pytest.mark.usefixtures("fresh_caches")


def outcomes(n=40):
    # the first stage is sure and right on 3 of 4 items, unsure and wrong on the 4th; the second is right on all
    return [ItemOutcome("a", "a" if i % 4 else "b", 0.9 if i % 4 else 0.3, 2.0, "a", 200.0) for i in range(n)]


def seed_cascade(hardware=HERE):
    prov = {"device": "cpu", "threads": 2, "hardware": hardware, "versions": {}}
    curve.save_result(curve.build_result("classical", "support-routing", "TF-IDF + logistic regression",
                                         "SmolLM2-135M few-shot", "the classifier's probability for its answer",
                                         outcomes(), 3.6, "cloud-cpu", prov))


def lookup_row(prompt_set="grounded", identical=4, lookup_s=0.5, hardware=HERE):
    prompts = [{"plain_decode_s": 1.0, "lookup_decode_s": lookup_s * (1 + i / 20), "plain_decode_tokens": 30,
                "lookup_decode_tokens": 30} for i in range(4)]
    return {"hardware": hardware, "model": "smollm2-135m-instruct", "technique": "gguf-q4_k_m", "runtime": "llama.cpp",
            "prompt_set": prompt_set,
            "identical_outputs": identical, "prompts_total": 4, "acceptance_rate": 0.4, "speedup": 1 / lookup_s,
            "created_at": "2026-12-05T15:00:00+0000", "draft_tokens": 4, "new_tokens": 32, "repeats": 3,
            "prompts": prompts}


def test_the_page_says_how_to_measure_when_nothing_is_stored():
    at = AppTest.from_file(str(ROOT / "pages/hybrids.py"), default_timeout=60).run()
    no_errors(at)
    assert at.expander[0].proto.expanded  # the buttons are in view, not behind a closed section
    text = " ".join(i.value for i in at.info)
    assert "press **Measure the cascade**" in text and "press **Compare prompt lookup**" in text
    notes = " ".join(c.value for c in at.caption)  # the terminal is a secondary note, below
    assert "python -m core cascade" in notes and "python -m core prompt-lookup" in notes


def test_the_form_closes_once_something_is_measured():
    seed_cascade()
    at = AppTest.from_file(str(ROOT / "pages/hybrids.py"), default_timeout=60).run()
    assert not at.expander[0].proto.expanded


def test_the_page_draws_a_cascade_and_its_slider_moves_over_measured_points():
    seed_cascade()
    seed_cascade(hardware="another machine")  # never shown here
    at = AppTest.from_file(str(ROOT / "pages/hybrids.py"), default_timeout=60).run()
    no_errors(at)
    assert len(next(s for s in at.selectbox if s.label == "Measured cascade").options) == 1
    metrics = {m.label: m.value for m in at.metric}
    # the best point: every unsure item escalated (25%), accuracy 100% like the second stage alone
    assert metrics["Sent to the second stage"] == "25%" and metrics["Accuracy"] == "100.0%"
    at.select_slider[0].set_value(0.0).run()  # threshold 0: nothing escalated
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Sent to the second stage"] == "0%" and metrics["Accuracy"] == "75.0%"
    assert "costs" in " ".join(m.value for m in at.markdown)


def test_decoding_tricks_are_listed_with_their_reason(monkeypatch):
    prompt_lookup.save_results.__globals__["jsonl"].append(prompt_lookup.results_path(), [lookup_row()])
    at = AppTest.from_file(str(ROOT / "pages/hybrids.py"), default_timeout=60).run()
    no_errors(at)
    assert any("identical to plain greedy decoding on 4 of 4" in m.value for m in at.markdown)


def test_a_trick_becomes_a_decide_option_only_when_it_kept_every_answer_and_is_clearly_faster():
    record = make_record(technique="gguf-q4_k_m", runtime="llama.cpp", hardware=HERE, usd_per_1m_tokens=2.0,
                         decode_tokens_per_s_median=100.0)
    good = hybrids.from_prompt_lookup(lookup_row())
    assert good.speedup.low > 1 and good.keeps_answers
    [(option, _)] = hybrids.options([record], [good], "grounded")
    assert option.technique == "gguf-q4_k_m+lookup" and option.family == "hybrid"
    assert option.decode_tokens_per_s_median == pytest.approx(100.0 * good.speedup.value)
    assert option.usd_per_1m_tokens == pytest.approx(2.0 / good.speedup.value)
    assert option.top1_agreement == record.top1_agreement  # the same answers: the same quality numbers
    assert hybrids.options([record], [good], "open") == []  # measured on grounded prompts only
    changed = hybrids.from_prompt_lookup(lookup_row(identical=3))
    slower = hybrids.from_prompt_lookup(lookup_row(lookup_s=1.1))
    assert hybrids.options([record], [changed, slower], "grounded") == []
    reasons = " ".join(hybrids.why_not([changed, slower], "grounded"))
    assert "differed from plain greedy on 1 of 4" in reasons and "no clear gain" in reasons



def test_with_tricks_adds_the_qualifying_trick_options_after_the_measured_variants():
    record = make_record(technique="gguf-q4_k_m", runtime="llama.cpp", hardware=HERE, decode_tokens_per_s_median=100.0)
    changed = {**lookup_row(identical=3), "technique": "fp32", "runtime": "transformers"}  # a trick that changed answers
    rows = [lookup_row(), changed, lookup_row(hardware="another machine")]
    options, found = hybrids.with_tricks([record], HERE, "grounded", rows)
    assert [o.technique for o in options] == ["gguf-q4_k_m", "gguf-q4_k_m+lookup"]  # the record first, as measured
    assert list(found.by_key) == ["gguf-q4_k_m+lookup"] and found.records == tuple(options[1:])
    assert any("differed from plain greedy on 1 of 4" in line for line in found.left_out)  # not offered, and why
    assert hybrids.with_tricks([record], HERE, "open", rows)[0] == [record]  # measured on grounded prompts only
    assert hybrids.with_tricks([record], "another machine", "grounded", rows[:2])[0] == [record]  # this machine's only

def test_the_narrow_task_choice_is_the_cheapest_point_that_meets_both_limits():
    points = curve.curve(outcomes(), usd_per_hour=3.6)
    result = {"first": "clf", "second": "llm", "task": "t", "confidence": "p", "points": [vars(p) for p in points]}
    choice = cascades.choose(points, min_accuracy=0.99)
    assert choice.chosen.role == "cascade" and choice.chosen.share_escalated == 0.25
    assert "Deploy the cascade" in cascades.verdict(choice, result)
    assert "74% less than llm alone" in cascades.explain(choice, result)
    assert cascades.choose(points, 0.5).chosen.role == "first alone"
    none = cascades.choose(points, 0.99, max_usd_per_1k=0.0001)
    assert none.chosen is None and "No point" in cascades.explain(none, result)
    with pytest.raises(ValueError, match="between 0 and 1"):
        cascades.choose(points, 1.5)
    assert math.isfinite(choice.chosen.usd_per_1k_requests)


@pytest.mark.usefixtures("seeded")
def test_decide_recommends_a_decoding_trick_for_prompts_like_the_measured_ones_with_its_reason():
    row = {**lookup_row(lookup_s=0.5), "technique": "fp32", "runtime": "transformers"}
    prompt_lookup.save_results.__globals__["jsonl"].append(prompt_lookup.results_path(), [row])
    at = AppTest.from_file(str(ROOT / "pages/decide.py"), default_timeout=60).run()
    no_errors(at)
    assert any("Deploy FP32 (reference)." in s.value for s in at.success)  # open-ended prompts: no trick applies
    next(r for r in at.radio if r.label == "My prompts are mostly").set_value("grounded").run()
    no_errors(at)
    assert any("Deploy FP32 (reference) + prompt lookup." in s.value for s in at.success)
    assert any("identical to plain greedy decoding on 4 of 4" in i.value for i in at.info)


@pytest.mark.usefixtures("seeded")
def test_decides_narrow_task_tab_picks_a_cascade_point():
    seed_cascade()
    at = AppTest.from_file(str(ROOT / "pages/decide.py"), default_timeout=60).run()
    no_errors(at)
    assert any("Deploy the cascade: TF-IDF + logistic regression first" in s.value for s in at.success)
    next(s for s in at.slider if s.label == "Accuracy at least, %").set_value(70.0).run()
    assert any("Deploy TF-IDF + logistic regression alone." in s.value for s in at.success)


@pytest.mark.usefixtures("seeded")
def test_the_report_answers_with_the_trick_decide_offered_and_lists_the_hybrids():
    row = {**lookup_row(lookup_s=0.5), "technique": "fp32", "runtime": "transformers"}
    prompt_lookup.save_results.__globals__["jsonl"].append(prompt_lookup.results_path(), [row])
    seed_cascade()
    at = AppTest.from_file(str(ROOT / "pages/report.py"), default_timeout=60)
    at.session_state["decide_prompt_kind"] = "grounded"
    at.run()
    no_errors(at)
    assert any("Deploy FP32 (reference) + prompt lookup." in m.value for m in at.markdown)
    lines, figs = hybrids.report_parts(HERE, "smollm2-135m-instruct", 3.6)
    assert len(figs) == 1 and any(line.startswith("TF-IDF + logistic regression answers every") for line in lines)
    assert any(line.startswith("Prompt lookup on fp32") for line in lines)
    records = [make_record(hardware=HERE)]
    page = report.build_report(records, "m", "kld_mean", {}, commit="x", hybrid_lines=lines, hybrid_figures=figs).html
    assert '<section id="hybrids">' in page and "Cascade: support-routing" in page


@pytest.mark.usefixtures("seeded")
def test_the_map_draws_a_trick_as_its_own_bubble_for_the_prompts_it_was_measured_on():
    row = {**lookup_row(lookup_s=0.5), "technique": "fp32", "runtime": "transformers"}
    prompt_lookup.save_results.__globals__["jsonl"].append(prompt_lookup.results_path(), [row])
    at = AppTest.from_file(str(ROOT / "pages/tradeoff_map.py"), default_timeout=60).run()
    no_errors(at)
    table = at.dataframe[0].value
    assert not any("prompt lookup" in str(v) for v in table.iloc[:, 0])
    next(s for s in at.selectbox if s.label == "Decoding tricks on the map").set_value("grounded").run()
    no_errors(at)
    labels = [str(v) for v in at.dataframe[0].value.iloc[:, 0]]
    assert "FP32 (reference) + prompt lookup" in labels


def test_a_transformers_draft_result_reads_as_a_trick_on_open_prompts():
    row = {"model": "smollm2-135m-instruct", "hardware": HERE, "created_at": "2026-12-05T10:00:00+0000",
           "draft_tokens": 4, "max_new_tokens": 64, "acceptance_rate": 0.5, "draft_facts": {"run": "run-1"},
           "prompts": [{"plain_s": 1.0, "assisted_s": 2.0, "tokens": 64, "identical": True},
                       {"plain_s": 1.0, "assisted_s": 3.0, "tokens": 64, "identical": True}]}
    h = hybrids.from_speculative(row)
    assert h.prompt_set == "open" and h.keeps_answers and h.speedup.value == pytest.approx(0.4)
    assert not h.clearly_faster and "no clear gain" in hybrids.why_not([h], "open")[0]


def test_the_page_queues_a_cascade_and_the_worker_stores_it(monkeypatch):
    def fake_run(settings, report=None, should_stop=None):
        report(0.5, "half way")
        prov = {"device": "cpu", "threads": 2, "hardware": HERE, "versions": {}}
        return curve.build_result("classical", settings.task, "clf", settings.second, "p", outcomes(), 3.6,
                                  "cloud-cpu", prov)

    monkeypatch.setattr(classical, "run_classical", fake_run)
    at = AppTest.from_file(str(ROOT / "pages/hybrids.py"), default_timeout=60).run()
    next(b for b in at.button if b.label == "Measure the cascade").click().run()
    no_errors(at)
    assert [w.job.kind for w in JobQueue().snapshot().waiting] == ["cascade"]
    run_queued_jobs_here()
    assert len(curve.saved_results()) == 1


def test_the_page_offers_only_stages_that_exist_and_says_how_to_make_the_rest():
    at = AppTest.from_file(str(ROOT / "pages/hybrids.py"), default_timeout=60).run()
    no_errors(at)
    # an empty data dir holds no distilled student and no LoRA fine-tune: neither is offered
    assert "student" not in next(s for s in at.selectbox if s.label == "Small model first").options
    assert "lora" not in next(s for s in at.selectbox if s.label == "LLM behind the classifier").options
    assert not any(b.label == "Compare the GGUF draft" for b in at.button)
    notes = " ".join(c.value for c in at.caption)
    assert "No distilled student of this model is saved here yet" in notes and "Distill" in notes


def draft_row(draft_s=(2.0, 2.5), draft_max=3, identical=2, hardware=HERE):
    prompts = [{"plain_decode_s": 1.0, "drafted_decode_s": s, "plain_decode_tokens": 40, "drafted_decode_tokens": 40}
               for s in draft_s]
    return {"hardware": hardware, "model": "smollm2-135m-instruct", "technique": "gguf-q8_0", "runtime": "llama.cpp",
            "prompt_set": "grounded", "identical_outputs": identical, "prompts_total": len(prompts),
            "acceptance_rate": 0.05, "speedup": 0.44, "created_at": "2026-12-05T17:00:00+0000",
            "draft_max_tokens": draft_max, "draft_p_min": 0.0, "draft": "student",
            "draft_technique": "distilled-10L-x+gguf-q8_0", "new_tokens": 64, "repeats": 3, "prompts": prompts}


def test_a_gguf_draft_result_is_a_trick_per_draft_length_and_a_slow_one_is_not_offered():
    slow, fast = hybrids.from_gguf_draft(draft_row()), hybrids.from_gguf_draft(draft_row((0.5, 0.6), draft_max=8))
    assert slow.key == "draft3-distilled-10L-x_gguf-q8_0" and fast.key == "draft8-distilled-10L-x_gguf-q8_0"
    assert "distilled-10L-x+gguf-q8_0" in slow.trick
    assert slow.speedup.value == pytest.approx(2 / 4.5) and slow.keeps_answers and not slow.clearly_faster
    assert "slower than plain decoding: no clear gain" in hybrids.why_not([slow], "grounded")[0]
    words = hybrids.sentence(slow)  # what the page and the Report say of a trick Decide leaves out
    assert words.startswith("Answers identical to plain greedy decoding on 2 of 2 input-grounded")
    assert "0.44x as fast" in words and "Not offered by Decide" in words and "gain holds" not in words
    assert hybrids.sentence(fast) == hybrids.reason(fast)  # offered: the reason to deploy it
    record = make_record(technique="gguf-q8_0", runtime="llama.cpp", hardware=HERE, decode_tokens_per_s_median=100.0)
    [(option, _)] = hybrids.options([record], [slow, fast], "grounded")
    assert option.technique == "gguf-q8_0+draft8-distilled-10L-x_gguf-q8_0"
    other = hybrids.from_gguf_draft({**draft_row((0.5, 0.6)), "draft_technique": "gguf-q2_k"})
    assert len(hybrids.options([record], [fast, other], "grounded")) == 2  # two drafts of one length: two options


def test_the_page_lists_a_measured_gguf_draft_and_queues_one():
    from core.hybrids import gguf_draft

    gguf_draft.save_results.__globals__["jsonl"].append(gguf_draft.results_path(), [draft_row()])
    at = AppTest.from_file(str(ROOT / "pages/hybrids.py"), default_timeout=60).run()
    no_errors(at)
    assert any("a GGUF draft (distilled-10L-x+gguf-q8_0, up to 3 tokens)" in m.value for m in at.markdown)
    # an empty data dir holds no distilled student: the draft's button is not offered, the Distill page is named
    assert not any(b.label == "Compare the GGUF draft" for b in at.button)
    assert not JobQueue().snapshot().waiting
