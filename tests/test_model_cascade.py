"""Small model first, large model when unsure (core/hybrids/model_cascade.py): scoring on two tiny models, the curve
and its verdict, the stages by name, the CLI end to end, and bad input refused with nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from core import cli, models, runtimes
from core.hybrids import curve
from core.hybrids import model_cascade as mc
from core.measure import evaluate
from core.runtimes.llamacpp import llama_cpp_problem

needs_llama = pytest.mark.skipif(llama_cpp_problem() is not None, reason=f"llama.cpp unavailable: {llama_cpp_problem()}")
TINY = "tiny-random-llama"


@pytest.fixture(scope="module")
def two_tiny():
    """(small, large) runners of two differently seeded tiny models, and their shared byte-level tokenizer."""
    (a, tokenizer), (b, _) = models.build_tiny_model(seed=0), models.build_tiny_model(seed=1, hidden_size=96)
    return runtimes.as_runner(a), runtimes.as_runner(b), tokenizer


def _mc_items(n: int = 4):
    return evaluate.load_mc_jsonl(evaluate.DEFAULT_MC_SET)[:n]


def _routing_items(n: int = 3):
    return list(mc.load_task("support-routing", max_items=n).items)


# ---------------------------------------------------------------- scoring


def test_multiple_choice_answers_are_the_lab_scorers_picks(two_tiny):
    small, _, tokenizer = two_tiny
    items = _mc_items()
    answers = mc.score_stage(small, tokenizer, items)
    expected = evaluate.mc_accuracy(small, tokenizer, items).per_item
    assert [a.pick for a in answers] == [row["pick"] for row in expected]
    for a, row in zip(answers, expected):
        probs = torch.softmax(torch.tensor(row["logprobs"], dtype=torch.float64), 0)
        assert a.confidence == pytest.approx(float(probs.max()), abs=1e-3)  # the scorer's scores, softmaxed
        assert 0 < a.ms and 1 / len(probs) - 1e-9 <= a.confidence <= 1


def test_a_routing_label_is_scored_as_the_prompts_continuation(two_tiny):
    small, _, tokenizer = two_tiny
    item = _routing_items(1)[0]
    got = mc.prompt_scores(small, tokenizer, item)
    ctx = tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
    for choice, score in zip(item.choices, got):
        whole = tokenizer(item.prompt + " " + choice, add_special_tokens=False)["input_ids"]
        lp = small.window_logprobs(torch.tensor([whole]))  # [W, V], one forward over prompt and label
        direct = sum(float(lp[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))
        assert score == pytest.approx(direct, abs=1e-3)


def test_two_tiny_models_make_a_curve_with_both_ends_and_a_verdict(two_tiny):
    small, large, tokenizer = two_tiny
    items = _mc_items(6)
    outcomes = mc.outcomes_of(items, mc.score_stage(small, tokenizer, items), mc.score_stage(large, tokenizer, items))
    assert [o.label for o in outcomes] == ["ABCD"[it.answer] for it in items]
    points = curve.curve(outcomes, usd_per_hour=1.0)
    first, second = curve.ends(points)
    assert first.share_escalated == 0 and second.share_escalated == 1
    cascade = [p for p in points if p.role == "cascade"]
    assert cascade[0].share_escalated == 0 and cascade[-1].share_escalated == 1
    assert cascade[0].accuracy == first.accuracy and cascade[-1].accuracy == second.accuracy
    v = mc.verdict(points)
    assert v.beats_both_ends == bool(curve.winning_points(points))
    assert v.most_accurate.accuracy == max(p.accuracy for p in cascade)


def test_stage_answers_must_cover_every_item(two_tiny):
    small, _, tokenizer = two_tiny
    items = _mc_items(2)
    answers = mc.score_stage(small, tokenizer, items)
    with pytest.raises(ValueError, match="every item"):
        mc.outcomes_of(items, answers, answers[:1])


# ---------------------------------------------------------------- tasks and stages


def test_bundled_tasks_load_and_cut():
    assert len(mc.load_task("mc").items) == 194
    routing = mc.load_task("support-routing")
    assert len(routing.items) == 100 and routing.name == "support-routing"
    assert routing.items[0].choices == ("account", "billing", "returns", "shipping", "technical")
    assert len(mc.load_task("mc", max_items=5).items) == 5


@pytest.mark.parametrize("kind, text, words", [
    ("mc", "", "is empty"),
    ("support-routing", "\n\n", "is empty"),
    ("support-routing", '{"prompt": "Team:", "completion": "billing"}\n' * 3, "at least 10"),
    ("support-routing", '{"prompt": "Team:", "completion": "billing"}\n' * 12, "single answer"),
])
def test_an_empty_or_one_label_task_file_is_refused(tmp_path, kind, text, words):
    path = tmp_path / "task.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=words):
        mc.load_task(kind, str(path))


def test_routing_prompts_start_with_one_worked_example_per_team():
    task = mc.load_task("support-routing", max_items=2)
    assert task.shots == mc.ROUTING_SHOTS and task.shots_words == ", 5-shot"
    prompt = task.items[0].prompt
    assert prompt.count("Team:") == 6 and all(f"Team: {label}\n\n" in prompt for label in task.items[0].choices)
    assert mc.load_task("support-routing", shots=0).items[0].prompt.count("Team:") == 1
    with pytest.raises(ValueError, match="--shots is for the support-routing task"):
        mc.load_task("mc", shots=3)
    with pytest.raises(ValueError, match="from 0 to 20"):
        mc.ModelCascadeSettings(task="support-routing", shots=-1)


def test_unknown_task_and_missing_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown task"):
        mc.load_task("poetry")
    with pytest.raises(ValueError, match="not found"):
        mc.load_task("mc", str(tmp_path / "absent.jsonl"))


def test_no_saved_student_says_how_to_make_one():
    with pytest.raises(ValueError, match="python -m core distill"):
        mc.resolve_stage("student")


def test_stages_by_name():
    assert mc.resolve_stage("gguf-q2_k").technique == "gguf-q2_k"
    assert mc.resolve_stage("fp32", TINY).model == TINY
    gemma = mc.resolve_stage("gemma3-270m")
    assert (gemma.model, gemma.technique) == ("gemma3-270m", "fp32")
    with pytest.raises(ValueError, match="Unknown stage 'gguf-q2k'.*student.*gguf-q2_k"):
        mc.resolve_stage("gguf-q2k")


def test_a_model_that_is_not_installed_is_named_with_its_install_hint():
    gemma = models.BUNDLED["gemma3-270m"]
    if models.is_available(gemma):
        pytest.skip("Gemma-3-270M is installed here")
    with pytest.raises(ValueError, match="not installed.*make gemma"):
        mc.check_stage(mc.resolve_stage("gemma3-270m"))


@pytest.mark.parametrize("over, words", [
    (dict(thresholds=(0.5, 1.5)), "between 0 and 1"),
    (dict(max_items=-1), "max-items"),
    (dict(task="poetry"), "Unknown task"),
    (dict(usd_per_hour=-1.0), "usd_per_hour"),
    (dict(threads=0), "threads"),
])
def test_bad_settings_are_refused_in_words(over, words):
    with pytest.raises(ValueError, match=words):
        mc.ModelCascadeSettings(**{"first": "bf16", "model": TINY, **over})


def test_the_same_model_twice_is_refused():
    with pytest.raises(ValueError, match="same model"):
        mc.check_request(mc.ModelCascadeSettings(first="fp32", second="fp32", model=TINY))


# ---------------------------------------------------------------- the CLI


def _cli(*args: str) -> int:
    return cli.main(["model-cascade", "--model", TINY, *args])


def test_cli_measures_stores_and_says_whether_it_beats_both_ends(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _cli("--first", "bf16", "--second", "fp32", "--task", "support-routing", "--max-items", "4",
                "--json", str(out)) == 0
    printed = capsys.readouterr().out
    assert "first alone" in printed and "second alone" in printed and "beats both ends: " in printed
    saved = curve.saved_results()
    assert len(saved) == 1 and saved[0]["kind"] == "model" and saved[0]["n_items"] == 4
    assert saved[0]["model"] == TINY and saved[0]["settings"]["first_stage"]["technique"] == "bf16"
    assert json.loads(out.read_text())["run_id"] == saved[0]["run_id"]


def test_cli_thresholds_pick_the_stored_points(capsys):
    assert _cli("--first", "bf16", "--max-items", "3", "--thresholds", "0.3,0.6", "--no-store") == 0
    assert "0.300" in capsys.readouterr().out
    assert not curve.results_path().exists()


@pytest.mark.parametrize("args, words", [
    (["--first", "student"], "python -m core distill"),
    (["--first", "nope"], "Unknown stage"),
    (["--first", "bf16", "--thresholds", "0.2,7"], "between 0 and 1"),
    (["--first", "bf16", "--thresholds", "half"], "comma-separated"),
    (["--first", "bf16", "--data", "EMPTY"], "is empty"),
    (["--first", "bf16", "--json", "/no/such/folder/r.json"], "does not exist"),
])
def test_cli_refuses_bad_input_and_writes_nothing(tmp_path, capsys, args, words):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code = _cli(*[str(empty) if a == "EMPTY" else a for a in args], "--json", str(tmp_path / "r.json")) \
        if "--json" not in args else _cli(*args)
    assert code == 2
    assert words in capsys.readouterr().err
    assert not curve.results_path().exists() and not (tmp_path / "r.json").exists()
    assert not models.checkpoint_dir(TINY).exists()  # refused before any model was prepared


def _save_tiny_student(data_dir, complete: bool = True):
    model, tokenizer = models.build_tiny_model(seed=3, hidden_size=32, intermediate_size=64)
    folder = data_dir / "students" / "run-1" / "step-000010"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    facts = {"teacher": TINY, "student_layers": 2, "teacher_layers": 2, "run": "run-1", "step": 10, "steps": 10,
             "complete": complete}
    (folder / "lab_student.json").write_text(json.dumps(facts))
    return folder


def test_the_student_goes_first(data_dir, capsys):
    folder = _save_tiny_student(data_dir)
    stage = mc.resolve_stage("student", TINY)
    assert stage.model == str(folder) and stage.technique == "fp32"
    assert _cli("--first", "student", "--second", "fp32", "--max-items", "3") == 0
    assert curve.saved_results()[0]["first"].startswith("Student 2/2 layers")


@needs_llama
def test_a_gguf_first_stage_runs_on_llama_cpp(capsys):
    assert _cli("--first", "gguf-q8_0", "--second", "fp32", "--task", "support-routing", "--max-items", "3") == 0
    saved = curve.saved_results()[0]
    assert saved["settings"]["first_stage"]["technique"] == "gguf-q8_0" and saved["n_items"] == 3


# ---------------------------------------------------------------- the verdict in words


def _o(label, first, conf, second):
    return curve.ItemOutcome(label, first, conf, 10.0, second, 100.0)


@pytest.mark.parametrize("outcomes, words", [
    # the small model is right where it is sure, the large one fixes the unsure item: a threshold wins
    ([_o("a", "a", 0.9, "a"), _o("b", "x", 0.3, "b"), _o("c", "c", 0.8, "x")], "yes at 11 thresholds from 0.3000 to 0.8000"),
    # the small model is as good as the large one, and cheaper
    ([_o("a", "a", 0.9, "a"), _o("b", "b", 0.3, "x")], "no, because the small model alone is already"),
    # the small model is sure exactly where it is wrong: only escalating (nearly) everything catches up, and then
    # the small model's time is paid on top
    ([_o("a", "x", 0.95, "a"), _o("b", "b", 0.3, "b"), _o("c", "c", 0.4, "c")], "not less than its $0.10000"),
])
def test_the_verdict_in_words(capsys, outcomes, words):
    from core.cli.model_cascade import print_result

    prov = {"device": "cpu", "threads": 2, "hardware": "h", "versions": {}}
    print_result(curve.build_result("model", "t", "small", "large", "p", outcomes, 3.6, "laptop-cpu", prov))
    assert words in capsys.readouterr().out


def test_with_thresholds_that_never_escalate_enough_the_reason_is_the_confidence():
    from core.cli.model_cascade import why_not

    outcomes = [_o("a", "x", 0.95, "a"), _o("b", "b", 0.3, "b"), _o("c", "c", 0.4, "c")]
    v = mc.verdict(curve.curve(outcomes, 3.6, thresholds=[0.5]))
    assert not v.beats_both_ends and "does not single out the items it gets wrong" in why_not(v)
