import json
import math

import pytest
import torch

from core.measure import evaluate
from core.paths import ASSETS
from core.runtimes import as_runner, eager


def test_token_windows_are_non_overlapping_and_drop_single_tokens():
    windows = evaluate.token_windows(list(range(10)), window=4)
    assert [w.tolist()[0] for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(evaluate.token_windows(list(range(9)), window=4)) == 2  # the lone 9th token predicts nothing
    assert sum(w.shape[-1] for w in evaluate.token_windows(list(range(100)), 8, max_tokens=20)) == 20
    with pytest.raises(ValueError):
        evaluate.token_windows([1, 2, 3], window=1)


def direct_perplexity(model, windows):
    """Independent computation: transformers' own shifted cross-entropy loss per window."""
    nll, n = 0.0, 0
    with torch.inference_mode():
        for w in windows:
            loss = model(input_ids=w, labels=w).loss
            nll += loss.item() * (w.shape[-1] - 1)
            n += w.shape[-1] - 1
    return math.exp(nll / n)


def test_perplexity_matches_transformers_loss(tiny):
    model, tokenizer = tiny
    ids = evaluate.tokenize_text(tokenizer, "The quick brown fox jumps over the lazy dog. " * 20)
    windows = evaluate.token_windows(ids, 64)
    quality, own = evaluate.text_quality(as_runner(model), windows, None)
    assert quality.perplexity == pytest.approx(direct_perplexity(model, windows), rel=1e-4)
    assert quality.kld_mean == 0.0 and quality.top1_agreement == 1.0  # its own log-probs as reference: exact
    assert len(own) == len(windows)


def test_kld_positive_and_agreement_drops_for_a_perturbed_model(tiny):
    from core.models import build_tiny_model

    model, tokenizer = tiny
    windows = evaluate.token_windows(evaluate.tokenize_text(tokenizer, "Some plain words to score here. " * 10), 32)
    _, reference = evaluate.text_quality(as_runner(model), windows, None)
    other, _ = build_tiny_model(seed=1)
    torch.manual_seed(1)  # the random head below must not depend on which tests ran before
    # a tied random model predicts its input token; an untied random head makes it disagree for real
    other.lm_head.weight = torch.nn.Parameter(torch.randn_like(other.lm_head.weight))
    quality, _ = evaluate.text_quality(as_runner(other), windows, reference)
    assert quality.kld_mean > 0.0
    assert quality.top1_agreement < 1.0
    assert quality.kld_p99 >= quality.kld_mean


def test_choice_logprobs_batched_equals_one_at_a_time(tiny):
    """Left padding with explicit positions must not change any choice's score."""
    model, tokenizer = tiny
    item = evaluate.MCItem("What colour is the sky?", ("blue", "a very long green answer", "red"), 0)
    batched = eager.choice_logprobs(model, tokenizer, item)
    for choice, score in zip(item.choices, batched):
        ctx, cont = evaluate._continuation_ids(tokenizer, evaluate.mc_prompt(item), " " + choice)
        ids = torch.tensor([ctx + cont])
        with torch.inference_mode():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        direct = sum(lp[len(ctx) + j - 1, t].item() for j, t in enumerate(cont))
        assert score == pytest.approx(direct, abs=1e-4)


def test_batched_items_of_different_shapes_score_as_if_alone(tiny):
    """Questions of different lengths and choice counts share one batch without changing any score."""
    model, tokenizer = tiny
    items = [
        evaluate.MCItem("Short?", ("a", "bb"), 1),
        evaluate.MCItem("A much longer question that pads the others on the left?", ("x y z", "w", "v v", "u"), 0),
        evaluate.MCItem("Middle sized question here?", ("one two three four five", "six", "seven"), 2),
    ]
    together = eager.batch_choice_logprobs(model, tokenizer, items)
    for item, scores in zip(items, together):
        alone = eager.batch_choice_logprobs(model, tokenizer, [item])[0]
        assert scores == pytest.approx(alone, abs=1e-4)


def test_mc_accuracy_reports_items_and_interval(tiny):
    model, tokenizer = tiny
    items = [evaluate.MCItem(f"Question {i}?", ("yes", "no", "maybe"), i % 3) for i in range(12)]
    result = evaluate.mc_accuracy(as_runner(model), tokenizer, items)
    assert result.items == 12 and len(result.per_item) == 12
    assert sum(r["correct"] for r in result.per_item) / 12 == pytest.approx(result.accuracy)
    assert result.ci95[0] <= result.accuracy <= result.ci95[1]


@pytest.mark.parametrize("choices,scores,raw,norm", [
    # divided by len(choice): -2/1 > -6/4, so "bbbb"; counting the " " delimiter (-2/2 < -6/5) would pick "a"
    (("a", "bbbb"), [-2.0, -6.0], 0, 1),
    # characters, not UTF-8 bytes: -3.3/3 > -3.6/3, so "abc"; per byte (-3.6/6) would pick "ééé"
    (("ééé", "abc"), [-3.6, -3.3], 1, 1),
    # a tie goes to the first choice, as np.argmax does
    (("xy", "zw"), [-1.0, -1.0], 0, 0),
])
def test_normalised_pick_divides_by_choice_characters_as_lm_eval(choices, scores, raw, norm):
    assert evaluate.mc_picks(scores, choices) == (raw, norm)


def test_arc_loader_maps_the_answer_by_label_not_letter(tmp_path):
    rows = [{"id": "a", "question": {"stem": "Q1?", "choices": [{"text": "x", "label": "1"}, {"text": "y", "label": "2"},
                                                                  {"text": "z", "label": "3"}]}, "answerKey": "3"},
            {"id": "b", "question": {"stem": "Q2?", "choices": [{"text": "p", "label": "B"}, {"text": "q", "label": "A"}]},
             "answerKey": "A"}]
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    first, second = evaluate.load_arc_jsonl(path)
    assert first == evaluate.MCItem("Q1?", ("x", "y", "z"), 2) and second.answer == 1
    assert len(evaluate.load_arc_jsonl(path, limit=1)) == 1
    path.write_text(json.dumps(rows[0] | {"answerKey": "E"}) + "\n")
    with pytest.raises(ValueError, match="arc.jsonl, line 1: not an ARC item"):
        evaluate.load_arc_jsonl(path)


def test_arc_easy_public_file_loads():
    from tests.conftest import shared_file

    items = evaluate.load_arc_jsonl(shared_file("ARC-Easy-Test.jsonl"))
    assert len(items) == 2376
    assert sorted({len(it.choices) for it in items}) == [3, 4, 5]
    assert items[0].question.startswith("Which statement best explains") and items[0].answer == 0


def test_bootstrap_ci_is_reproducible_and_sensible():
    outcomes = [True] * 70 + [False] * 30
    lo, hi = evaluate.bootstrap_ci(outcomes, seed=3)
    assert (lo, hi) == evaluate.bootstrap_ci(outcomes, seed=3)
    assert 0.58 < lo < 0.7 < hi < 0.8
    assert evaluate.bootstrap_ci([True] * 10) == (1.0, 1.0)


@pytest.mark.parametrize("line,message", [
    ("not json", "line 1: not valid JSON at character 1"),
    ('{"question": "", "choices": ["a", "b"], "answer": 0}', "'question' must be"),
    ('{"question": "q", "choices": ["a"], "answer": 0}', "at least 2"),
    ('{"question": "q", "choices": ["a", "b"], "answer": 2}', "from 0 to 1"),
    ('{"question": "q", "choices": ["a", "b"], "answer": true}', "a whole number"),
    ("[1, 2]", "this is a list, not a JSON object"),
])
def test_load_mc_jsonl_names_the_problem(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        evaluate.load_mc_jsonl(path)


def test_load_mc_jsonl_empty_and_missing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        evaluate.load_mc_jsonl(empty)
    empty.write_bytes(b"\xef\xbb\xbf\n")  # a byte-order mark and nothing else
    with pytest.raises(ValueError, match="holds no examples"):
        evaluate.load_mc_jsonl(empty)
    with pytest.raises(ValueError, match="not found"):
        evaluate.load_mc_jsonl(tmp_path / "missing.jsonl")


def test_bundled_assets_are_valid():
    items = evaluate.load_mc_jsonl(evaluate.DEFAULT_MC_SET)
    assert len(items) >= 150
    assert len({i.question for i in items}) == len(items)
    answers = [i.answer for i in items]
    assert max(answers.count(k) for k in range(4)) / len(items) < 0.35  # no answer-position bias
    text = evaluate.read_text(evaluate.DEFAULT_PPL_TEXT)
    assert len(text.split()) > 2000
    prompts = json.loads((ASSETS / "prompts.json").read_text())
    assert all(p["prompt"] for p in prompts)


def test_read_text_rejects_short_and_binary(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="at least 50 words"):
        evaluate.read_text(short)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00" * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        evaluate.read_text(binary)
