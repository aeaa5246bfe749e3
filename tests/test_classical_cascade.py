"""The classical cascade: a TF-IDF + logistic regression classifier in front of an LLM (core/hybrids/classical.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core import runtimes
from core.cli import main
from core.hybrids import classical, curve
from core.techniques.lora import Example, load_task
from tests.conftest import needs_bundled

TEAMS = ("billing", "shipping", "technical", "returns", "account")
PHRASES = {"billing": "I was charged twice for my order", "shipping": "where is my parcel, tracking has not moved",
           "technical": "my headphones will not pair over bluetooth", "returns": "I want to send the laptop back",
           "account": "I cannot reset the password of my shop account"}


def write_task(path: Path, labels: tuple[str, ...], per_label: int) -> Path:
    rows = [{"prompt": f"Route this message.\nMessage: {PHRASES[lab]} ({i})\nTeam:", "completion": lab}
            for i in range(per_label) for lab in labels]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def small_task(tmp_path) -> tuple[Path, Path]:
    return write_task(tmp_path / "train.jsonl", TEAMS[:3], 4), write_task(tmp_path / "test.jsonl", TEAMS[:3], 1)


def nothing_written(data_dir: Path) -> bool:
    return not curve.results_path().exists() and not (data_dir / "hybrids").exists()


# ---------------------------------------------------------------- the first stage


def test_classifier_beats_the_majority_baseline_on_the_bundled_task():
    train, test = load_task("support-routing")
    clf = classical.train_classifier(train)
    answers = classical.classify(clf, [e.prompt for e in test])
    accuracy = sum(a.text == e.completion for a, e in zip(answers, test)) / len(test)
    assert accuracy > 0.6  # the split is balanced over five teams: always guessing one team scores 20%
    assert all(0.2 <= a.confidence <= 1.0 and a.ms >= 0 for a in answers)  # the top of 5 probabilities is >= 1/5
    assert {a.text for a in answers} <= set(TEAMS)


def test_shots_are_one_per_label_in_turn_and_fixed_by_the_seed():
    train, _ = load_task("support-routing")
    shots = classical.pick_shots(train, 7, seed=3)
    assert [s.completion for s in shots] == sorted(TEAMS) + sorted(TEAMS)[:2]
    assert shots == classical.pick_shots(train, 7, seed=3)
    assert classical.pick_shots(train, 0) == []
    prompt = classical.few_shot_prompt(shots[:1], "Q:")
    assert prompt == f"{shots[0].prompt} {shots[0].completion}\n\nQ:"


# ---------------------------------------------------------------- the second stage


class ScriptedRunner:
    """Says the same tokens whatever it is asked, and counts the tokens it was made to produce."""

    def __init__(self, token_ids):
        self.token_ids, self.produced = list(token_ids), 0

    def stream(self, prompt_ids, max_new_tokens, clock=None):
        for i, t in enumerate(self.token_ids[:max_new_tokens]):
            self.produced += 1
            yield t, 0.001 * (i + 1)


def test_an_answer_stops_once_its_first_word_is_complete(tiny):
    _, tokenizer = tiny
    runner = ScriptedRunner(tokenizer(" Billing. and more words", add_special_tokens=False)["input_ids"])
    answer = classical.ask(runner, tokenizer, "Team:", 40, {tokenizer.eos_token_id})
    assert answer.text == "billing" and answer.ms > 0
    assert runner.produced == len(tokenizer(" Billing.", add_special_tokens=False)["input_ids"])


def test_answers_outside_the_labels_are_kept_and_count_as_wrong(tiny):
    model, tokenizer = tiny
    answers = classical.llm_answers(runtimes.as_runner(model), tokenizer, ["Team:", "Team: "], TEAMS)
    assert len(answers) == 2 and all(a.ms > 0 for a in answers)
    task = classical.Task("t", (), (Example("a", "billing"), Example("b", "account")), TEAMS)
    first = [classical.Answer("billing", 0.1, 0.9), classical.Answer("billing", 0.1, 0.4)]
    outcomes = classical.outcomes_of(task, first, [classical.Answer("zzz", 50.0), classical.Answer("account", 50.0)])
    points = curve.curve(outcomes, usd_per_hour=1.0)
    first_alone, second_alone = curve.ends(points)
    assert first_alone.accuracy == 0.5 and second_alone.accuracy == 0.5  # "zzz" is not a label: wrong
    assert curve.at_threshold(outcomes, 0.5, 1.0).accuracy == 1.0  # only the unsure item goes on, and is right


# ---------------------------------------------------------------- the whole run, on the tiny model


def test_the_cli_measures_stores_and_states_the_bar(small_task, data_dir, tmp_path, capsys):
    train, test = small_task
    out = tmp_path / "result.json"
    rc = main(["cascade", "--model", "tiny-random-llama", "--train", str(train), "--test", str(test), "--shots", "1",
               "--usd-per-hour", "2", "--threshold", "0.5", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    saved = curve.saved_results()
    assert len(saved) == 1 and saved[0]["kind"] == "classical" and saved[0]["n_items"] == 3
    assert saved[0]["usd_per_hour"] == 2.0 and saved[0]["task"] == "train.jsonl"
    assert json.loads(out.read_text())["run_id"] == saved[0]["run_id"]
    points = [curve.CascadePoint(**p) for p in saved[0]["points"]]
    assert {p.role for p in points} == {"first alone", "second alone", "cascade"}
    assert all(p.accuracy_low <= p.accuracy <= p.accuracy_high for p in points)
    assert "classifier alone" in printed and "LLM alone" in printed and "at your threshold" in printed
    assert "Best threshold" in printed and "the bar" in printed


def test_verdict_says_whether_a_threshold_meets_the_bar():
    def outcome(conf, first_right, second_right):
        return curve.ItemOutcome("a", "a" if first_right else "b", conf, 1.0, "a" if second_right else "b", 100.0)

    # sure and right on 8 of 10; the LLM is right on all: sending the 2 unsure ones matches it
    good = [outcome(0.9, True, True)] * 8 + [outcome(0.3, False, True)] * 2
    v = classical.verdict(curve.curve(good, 1.0))
    assert v.meets and v.best is not None and v.best.share_escalated == pytest.approx(0.2)
    # the classifier is wrong on half and sure of it: no threshold sends <= 30% and keeps the LLM's accuracy
    bad = [outcome(0.9, True, True)] * 5 + [outcome(0.9, False, True)] * 5
    v = classical.verdict(curve.curve(bad, 1.0))
    assert not v.meets and v.best_under_share.accuracy == 0.5 and v.llm.accuracy == 1.0


def test_a_saved_lora_of_the_task_is_found(data_dir):
    folder = data_dir / "merged" / "smollm2-135m-instruct-support-routing-lora-r8-1"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "lab_run.json").write_text(json.dumps({"model": "smollm2-135m-instruct", "task": "support-routing",
                                                     "merged": True, "technique_key": "lora-support-routing-r8",
                                                     "label": "LORA r8 on support-routing"}))
    found = classical.find_lora(classical.ClassicalSettings(second="lora"), "smollm2-135m-instruct")
    assert found.path == folder
    with pytest.raises(ValueError, match="python -m core lora"):
        classical.find_lora(classical.ClassicalSettings(second="lora"), "tiny-random-llama")


def _saved_lora(data_dir: Path, name: str, facts: dict) -> Path:
    folder = data_dir / "merged" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "lab_run.json").write_text(json.dumps({"model": "tiny-random-llama", "merged": True, **facts}))
    return folder


def test_a_lora_is_found_by_its_training_data_content_not_its_file_name(tmp_path, data_dir):
    from core.techniques import lora

    train_path, test_path = lora.BUNDLED_TASKS["support-routing"]
    bundled = _saved_lora(data_dir, "bundled", {"task": "support-routing",
                                                "training_sha256": lora.training_key("support-routing")})
    copy = tmp_path / "my_train.jsonl"  # the bundled training file under another name
    copy.write_bytes(train_path.read_bytes())
    given = classical.ClassicalSettings(second="lora", train_file=str(copy), test_file=str(test_path))
    assert classical.find_lora(given, "tiny-random-llama").path == bundled
    data = write_task(tmp_path / "data.jsonl", TEAMS, 4)
    own = _saved_lora(data_dir, "own", {"task": str(data), "training_sha256": lora.training_key(None, data, 0)})
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_bytes(data.read_bytes())
    assert classical.find_lora(classical.ClassicalSettings(second="lora", data_file=str(renamed)),
                               "tiny-random-llama").path == own
    assert own.exists()
    data.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")  # changed under the same name
    with pytest.raises(ValueError, match="No LoRA-tuned"):
        classical.find_lora(classical.ClassicalSettings(second="lora", data_file=str(data)), "tiny-random-llama")


# ---------------------------------------------------------------- bad input: a clear message, nothing written


def _refused(args: list[str], capsys, data_dir: Path, words: str) -> None:
    rc = main(["cascade", "--model", "tiny-random-llama", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and words in err, err
    assert nothing_written(data_dir)


def test_one_class_only_is_refused(tmp_path, data_dir, capsys):
    train = write_task(tmp_path / "one.jsonl", ("billing",), 5)
    _refused(["--train", str(train), "--test", str(train)], capsys, data_dir, "single answer")
    _refused(["--data", str(write_task(tmp_path / "one10.jsonl", ("billing",), 12))], capsys, data_dir,
             "single answer")


def test_a_test_label_never_trained_on_is_refused(tmp_path, data_dir, capsys):
    train = write_task(tmp_path / "train.jsonl", TEAMS[:2], 3)
    test = write_task(tmp_path / "test.jsonl", TEAMS[:3], 1)
    _refused(["--train", str(train), "--test", str(test)], capsys, data_dir, "never shows: ['technical']")


def test_empty_and_missing_files_are_refused(tmp_path, data_dir, capsys, small_task):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    train, _ = small_task
    _refused(["--train", str(train), "--test", str(empty)], capsys, data_dir, "is empty")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    _refused(["--train", str(blank), "--test", str(train)], capsys, data_dir, "is empty")
    _refused(["--train", str(tmp_path / "nope.jsonl"), "--test", str(train)], capsys, data_dir, "no such file")
    _refused(["--train", str(train)], capsys, data_dir, "Give both --train and --test")


@pytest.mark.parametrize("second, words", [("fp16x", "Unknown second stage"), ("gguf-nope", "Unknown technique"),
                                           ("lora", "No LoRA-tuned")])
def test_an_unknown_or_missing_second_stage_is_refused(second, words, data_dir, capsys):
    _refused(["--second", second], capsys, data_dir, words)


@pytest.mark.parametrize("args, words", [(["--threshold", "1.5"], "between 0 and 1"),
                                         (["--threshold", "-0.1"], "between 0 and 1"),
                                         (["--shots", "-1"], "shots must be"),
                                         (["--usd-per-hour", "-3"], "usd_per_hour")])
def test_out_of_range_numbers_are_refused(args, words, data_dir, capsys):
    _refused(args, capsys, data_dir, words)


# ---------------------------------------------------------------- the real bundled model


@pytest.mark.slow
@needs_bundled
def test_the_bundled_model_few_shot_answers_with_labels(tmp_path, bundled):
    """Ten test items, so it runs in seconds: the base model, shown one example per team, mostly names teams (it also
    says words like "payment" or "setup", which count as wrong: 7 of 10 were team names when measured)."""
    train, test = load_task("support-routing")
    test_file = tmp_path / "test10.jsonl"
    test_file.write_text("".join(json.dumps({"prompt": e.prompt, "completion": e.completion}) + "\n" for e in test[:10]))
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps({"prompt": e.prompt, "completion": e.completion}) + "\n" for e in train))
    result = classical.run_classical(classical.ClassicalSettings(train_file=str(train_file), test_file=str(test_file)))
    said = [o["second_answer"] for o in result.outcomes]
    assert sum(s in TEAMS for s in said) >= 5 and all(said), said
    assert all(o["second_ms"] > o["first_ms"] for o in result.outcomes)
