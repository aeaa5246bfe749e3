"""Your own task: every check kind on answers written by hand, the door's messages for bad task files, the pass rate's
interval and the paired test against hand-worked counts, and the words a run's result is said in."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from core.launch import uploads
from core.measure import intervals, taskfile
from core.measure.taskfile import Check, TaskItem
from core.store import jsonl
from core.views import task as task_view
from core.views.recommend import Constraints, recommend
from tests.factories import make_record


def item(**checks) -> TaskItem:
    kinds = [k for k in taskfile.CHECK_KINDS if k in checks]
    tol = checks.get("tolerance", 0.0)
    return TaskItem("x", "p", tuple(Check(k, tuple(v) if isinstance(v, list) else v, tol if k == "number" else 0.0)
                                    for k, v in checks.items() if k in kinds), 1)


@pytest.mark.parametrize("checks, answer, ok", [
    (dict(exact="Paris"), " paris. ", True),
    (dict(exact="Paris"), "The capital is Paris.", False),
    (dict(contains=["billing"]), "This goes to the Billing team.", True),
    (dict(contains=["billing", "refund"]), "Billing.", False),
    (dict(contains=["bill"]), "billing", False),  # whole words only
    (dict(not_contains=["shipping", "returns"]), "billing", True),
    (dict(not_contains=["shipping", "returns"]), "Shipping, maybe billing", False),
    (dict(regex=r"\b\d{5}\b"), "Order 48213 is late", True),
    (dict(regex=r"^yes"), "Yes", False),  # case matters in a regex unless it says otherwise
    (dict(one_of=["yes", "y"]), "Yes.", True),
    (dict(one_of=["yes", "y"]), "Yes, it is.", False),
    (dict(json_keys=["name", "email"]), 'Here: ```json\n{"name": "Dana", "email": "d@x.org"}\n```', True),
    (dict(json_keys=["name", "email"]), '{"name": "Dana"}', False),
    (dict(json_keys=["name"]), "{name: Dana}", False),  # not valid JSON
    (dict(number=2500, tolerance=1), "It is 2,500.5 grams", True),
    (dict(number=2500, tolerance=1), "2502 g", False),
    (dict(number=36), "The total is $36.", True),
    (dict(number=36), "thirty-six", False),
])
def test_every_check_kind(checks, answer, ok):
    assert (taskfile.failed_checks(answer, item(**checks)) == []) is ok


def test_every_kind_is_tested_above():
    tested = {"exact", "contains", "not_contains", "regex", "one_of", "json_keys", "number"}
    assert tested == set(taskfile.CHECK_KINDS)


def accept(tmp_path, monkeypatch, name: str, text: str) -> str:
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    return uploads.accept_upload(name, text.encode(), uploads.task_file).summary


def refused(tmp_path, monkeypatch, name: str, text: str) -> str:
    with pytest.raises(ValueError) as e:
        accept(tmp_path, monkeypatch, name, text)
    assert not list((tmp_path / "uploads").glob("*")), "a refused file stays on the server"
    return str(e.value)


def test_the_door_accepts_jsonl_and_csv(tmp_path, monkeypatch):
    lines = [{"prompt": "Route: my card was charged twice", "contains": ["billing"], "not_contains": ["shipping"]},
             {"prompt": "2+2?", "number": 4}]
    said = accept(tmp_path, monkeypatch, "mine.jsonl", "\n".join(json.dumps(x) for x in lines))
    assert said.startswith("2 prompts") and "contains" in said and "number" in said
    csv_text = 'prompt,contains,number,tolerance\n"Route: charged twice, why?",billing|refund,,\nHow many?,,4,0.5\n'
    task = taskfile.load_task(uploads.keep_upload("mine.csv", csv_text.encode(), uploads.task_file))
    assert task.items[0].checks == (Check("contains", ("billing", "refund")),)
    assert task.items[1].checks == (Check("number", 4.0, 0.5),)


@pytest.mark.parametrize("name, text, words", [
    ("t.jsonl", "\n\n", "t.jsonl is empty"),
    ("t.jsonl", '{"prompt": "a", "containz": ["x"]}', "t.jsonl, line 1: unknown field 'containz'. A check is one of"),
    ("t.jsonl", '{"prompt": "a", "exact": "x"}\n{"prompt": "b", "regex": "(unclosed"}',
     "t.jsonl, line 2: 'regex' does not compile: missing ), unterminated subpattern"),
    ("t.jsonl", '{"prompt": "a"}', "line 1: no check: add one of exact"),
    ("t.jsonl", '{"prompt": "", "exact": "x"}', "line 1: 'prompt' must be a non-empty text"),
    ("t.jsonl", '{"prompt": "a", "number": "many"}', "line 1: 'number' must be a number"),
    ("t.jsonl", '{"prompt": "a", "exact": "x", "tolerance": 1}', "line 1: 'tolerance' applies to a 'number' check"),
    ("t.jsonl", '{"prompt": "a", "contains": 3}', "line 1: 'contains' must be a list of texts"),
    ("t.jsonl", '["a", "b"]', "line 1: this is a list, not a JSON object"),
    ("t.jsonl", '{"prompt": "a", "exact": "x"', "line 1: not valid JSON"),
    ("t.csv", "question,exact\nwhat,x\n", "t.csv needs a header row naming its columns, with 'prompt'"),
    ("t.csv", "prompt,exact\na,x,extra\n", "t.csv, line 2: has more cells than the header"),
])
def test_the_door_names_the_line_and_the_field(tmp_path, monkeypatch, name, text, words):
    said = refused(tmp_path, monkeypatch, name, text)
    assert words in said and ".checking-" not in said


def test_a_one_prompt_task_says_how_little_it_shows(tmp_path, monkeypatch):
    said = accept(tmp_path, monkeypatch, "one.jsonl", '{"prompt": "a", "exact": "x"}')
    assert "One prompt tells very little" in said
    result = run_of({"fp32": [True]})
    assert "one prompt" in task_view.interval_note(result)
    rate = task_view.score(result["variants"][0]).rate
    assert rate.low < 0.25 and rate.high == 1.0  # Wilson on 1 of 1: 0.21 to 1


def test_too_long_names_the_prompt_and_the_runtime():
    items = [TaskItem("a", "p", (Check("exact", "x"),), 3), TaskItem("b", "q", (Check("exact", "x"),), 4)]
    said = taskfile.too_long(items, [100, 2030], 32, 2048, "llama.cpp")
    assert said.startswith("line 4 (b): the prompt is 2,030 tokens") and "2,048 tokens llama.cpp holds" in said
    assert taskfile.too_long(items, [100, 2000], 32, 2048, "llama.cpp") is None


def test_pass_rate_interval_against_hand_worked_wilson():
    # 24 of 30: p = 0.8, z = 1.96: centre (0.8 + 1.9208/30) / (1 + 3.8415/30) = 0.7660; half-width 0.1359
    rate = intervals.share(24 / 30, 30, unit="prompts")
    assert rate.low == pytest.approx(0.6269, abs=2e-4) and rate.high == pytest.approx(0.9050, abs=2e-4)
    assert "30 prompts" in rate.how


@pytest.mark.parametrize("only_a, only_b, p", [
    (3, 1, 0.625),  # n = 4: 2 * (1 + 4) / 16
    (0, 0, 1.0),
    (6, 0, 0.03125),  # 2 / 64
    (10, 2, 0.03857421875),  # 2 * (1 + 12 + 66) / 4096
    (5, 5, 1.0),
])
def test_mcnemar_exact_against_hand_worked_counts(only_a, only_b, p):
    assert intervals.mcnemar_exact_p(only_a, only_b) == pytest.approx(p)
    assert intervals.mcnemar_exact_p(only_b, only_a) == pytest.approx(p)


def run_of(passed: dict[str, list[bool]], reference: str = "fp32") -> dict:
    n = len(next(iter(passed.values())))
    labels = {"fp32": "FP32", "gguf-q8_0": "Q8_0", "gguf-q4_k_m": "Q4_K_M"}
    return {"task_name": "t.jsonl", "reference": reference, "new_tokens": 16, "task_sha256": "ab" * 32,
            "created_at": "2026-12-07T17:00:00+0000", "hardware": "test cpu",
            "prompts": [{"id": f"p{i}", "prompt": f"q{i}", "checks": ["exact: x"], "line": i + 1} for i in range(n)],
            "variants": [{"technique": k, "label": labels.get(k, k), "runtime": "llama.cpp", "passed": v,
                          "answers": [f"{k} answer {i}" for i in range(n)],
                          "failed": [[] if ok else ["exact: x"] for ok in v], "seconds": [0.5] * n,
                          "tokens": [8] * n} for k, v in passed.items()]}


def test_flips_and_the_paired_verdict_in_words():
    ref = [True] * 30 + [False] * 10
    q8 = list(ref)
    q4 = list(ref)
    for i in (0, 1, 2):
        q4[i] = False  # right -> wrong
    q4[35] = True  # wrong -> right
    result = run_of({"fp32": ref, "gguf-q8_0": q8, "gguf-q4_k_m": q4})
    assert task_view.flips(result, "gguf-q4_k_m") == ([0, 1, 2], [35])
    said = task_view.paired(result, "gguf-q4_k_m", against="gguf-q8_0").sentence()
    assert said.startswith("Q4_K_M fails 3 prompts Q8_0 passes and passes 1 it fails: no clear difference on 40 "
                           "prompts")
    assert "p = 0.62" in said
    assert "the same prompts" in task_view.paired(result, "gguf-q8_0").sentence()
    rows = task_view.flip_rows(result, "gguf-q4_k_m", limit=3)
    assert [r["flip"] for r in rows] == ["right → wrong"] * 3 and rows[0]["Q4_K_M says"] == "gguf-q4_k_m answer 0"
    clear = run_of({"fp32": [True] * 10, "gguf-q4_k_m": [False] * 8 + [True] * 2})
    assert "a clear difference on 10 prompts, Q4_K_M does worse" in task_view.paired(clear, "gguf-q4_k_m").sentence()


def test_cost_per_thousand_answers_and_the_report_section():
    result = run_of({"fp32": [True, False, True], "gguf-q4_k_m": [False, False, True]})
    row = task_view.score_rows(result, 0.36)[1]
    assert row["$ per 1,000 answers"] == pytest.approx(0.36 / 3600 * 0.5 * 1000)
    assert row["right → wrong"] == 1 and row["passed"] == "1/3"
    page = task_view.report_html(result, 0.36)
    assert 'id="my-task"' in page and "task-flips" in page and "fp32 answer 0" in page


def test_task_pass_rate_on_the_map_and_as_decides_floor():
    records = [make_record(technique=k, label=k, decode_tokens_per_s_median=s, usd_per_1m_tokens=1 / s)
               for k, s in (("fp32", 20.0), ("gguf-q8_0", 100.0), ("gguf-q4_k_m", 120.0), ("nf4", 30.0))]
    result = run_of({"fp32": [True] * 10, "gguf-q8_0": [True] * 9 + [False], "gguf-q4_k_m": [True] * 6 + [False] * 4})
    drawn, left_out = task_view.with_task(records, result)
    assert [r.technique for r in drawn] == ["fp32", "gguf-q8_0", "gguf-q4_k_m"] and left_out == ["nf4"]
    assert drawn[1].task_pass_rate == pytest.approx(0.9) and drawn[1].task_pass_rate_ci95[0] < 0.9
    rec = recommend(drawn, Constraints(min_task_pass_rate=0.85, objective="cheapest"))
    assert rec.chosen.technique == "gguf-q8_0"
    nothing = recommend(drawn, Constraints(min_task_pass_rate=1.0, objective="fastest", max_ms_per_token=20))
    assert nothing.chosen is None and any(ch.name == "min_task_pass_rate" for r in nothing.relaxations
                                          for ch in r.changes)
    assert math.isnan(task_view.score({"technique": "x", "label": "x", "runtime": "r", "passed": [],
                                       "seconds": [], "tokens": []}).rate.value)


# --- the run itself, on the tiny random model (real code paths, milliseconds) -------------------------------------


def write_task(path, lines: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(x) for x in lines))
    return str(path)


def test_a_run_answers_every_prompt_with_every_variant_and_the_cli_says_it(tiny_dir, tmp_path, capsys):
    from core.cli import main
    from core.experiments import task_run

    task = write_task(tmp_path / "t.jsonl", [{"prompt": "Say hi", "regex": "."}, {"prompt": "Say bye", "exact": "x"}])
    assert main(["task", "--model", str(tiny_dir), "--task", task, "--techniques", "fp32,bf16", "--new-tokens", "4",
                 "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "BF16" in out and "Intervals are 95% Wilson intervals over 2 prompts" in out
    result = json.loads((tmp_path / "out.json").read_text())
    assert [v["technique"] for v in result["variants"]] == ["fp32", "bf16"] and result["reference"] == "fp32"
    for v in result["variants"]:
        assert len(v["answers"]) == len(v["passed"]) == len(v["seconds"]) == 2 and all(t <= 4 for t in v["tokens"])
        assert v["passed"][1] is False  # a random model does not answer "x"
    assert result["task_sha256"] == hashlib.sha256((tmp_path / "t.jsonl").read_bytes()).hexdigest()
    assert result["hardware"] and result["versions"] and result["settings"]["decoding"] == "greedy"
    stored = jsonl.read_newest_first(task_run.results_path())
    assert stored[0]["run_id"] == result["run_id"]  # kept once, by the job kind, as a worker's run is


def test_a_prompt_longer_than_the_context_is_refused_before_anything_loads(tiny_dir, tmp_path):
    from core.experiments import task_run

    task = write_task(tmp_path / "long.jsonl", [{"prompt": "short", "exact": "x"},
                                                {"prompt": "word " * 300, "exact": "x"}])  # 1,500 bytes > 1,024
    settings = task_run.TaskSettings(("fp32",), task, 8)
    said = task_run.context_problem(str(tiny_dir), settings)
    assert said.startswith("long.jsonl, line 2 (#2): the prompt is") and "1,024 tokens transformers holds" in said


@pytest.mark.parametrize("techniques, file_text, words", [
    (("fp32", "nosuch"), '{"prompt": "a", "exact": "x"}', "Unknown technique 'nosuch'"),
    (("fp32",), '{"prompt": "a", "exakt": "x"}', "line 1: unknown field 'exakt'"),
])
def test_the_job_kind_refuses_at_the_door(tmp_path, techniques, file_text, words):
    from core.experiments import task_run
    from core.launch import kinds

    path = tmp_path / "t.jsonl"
    path.write_text(file_text)
    said = kinds.refusal(kinds.TaskArgs("smollm2-135m-instruct", task_run.TaskSettings(techniques, str(path))))
    assert words in said
    with pytest.raises(ValueError, match="listed twice"):
        task_run.TaskSettings(("fp32", "fp32"))
