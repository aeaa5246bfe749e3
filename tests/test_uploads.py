"""Bad uploads are refused at the door: the moment a file is chosen, in words that name the file as its owner named it
and say what to do, and nothing of a refused file stays on the server (issue #31, part 6). No model is loaded."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec
from streamlit.testing.v1 import AppTest

from core.launch import uploads
from core.measure import evaluate, textfile
from core.techniques import lora
from tests.factories import run_queued_jobs_here
from ui import uploads as upload_checks
from core.views.distill import PUBLIC_AND_ANSWERS
from ui.distill_parts import OWN_AND_ANSWERS

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
MC_LINE = {"question": "Which is a fruit?", "choices": ["apple", "brick", "cloud", "spoon"], "answer": 0}


def mc_lines(n: int) -> bytes:
    return "".join(json.dumps(MC_LINE | {"question": f"Question {i}?"}) + "\n" for i in range(n)).encode()


def lora_lines(n: int) -> bytes:
    return "".join(json.dumps({"prompt": f"message {i}", "completion": ["billing", "shipping"][i % 2]}) + "\n"
                   for i in range(n)).encode()


GOOD_MC, GOOD_LORA = mc_lines(120), lora_lines(64)
GOOD_TEXT = " ".join(f"word{i % 97}" for i in range(3400)).encode()

# (what the user named it, what it holds, the check, what the message must say: its problem and its fix)
BAD_UPLOADS = {
    "binary file as .txt": ("notes.txt", b"\x89\x01\x02 some bytes \xff\xfe" * 20, uploads.ppl_text,
                            ["notes.txt is not UTF-8 text (byte 0x89 at position 0", "Save it as UTF-8"]),
    "PNG renamed .jsonl": ("photo.jsonl", PNG, uploads.mc_set,
                           ["photo.jsonl is not a text file (it starts like a PNG image)", ("Use a JSONL file saved as "
                            "UTF-8 text, one JSON object per line")]),
    "PDF as .txt": ("paper.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", uploads.ppl_text,
                    ["paper.txt is not a text file (it starts like a PDF document)", "Use a plain-text file"]),
    "Word file as .jsonl": ("answers.jsonl", b"PK\x03\x04\x14\x00\x06\x00" + bytes(64), uploads.lora_data,
                            ["answers.jsonl is not a text file (it starts like a ZIP archive", "Use a JSONL file"]),
    "NUL bytes": ("dump.txt", b"text\x00\x00\x00more", uploads.ppl_text, ["dump.txt is not a text file (it holds NUL"]),
    "empty file": ("notes.txt", b"", uploads.ppl_text, ["notes.txt is empty", "Use a plain-text file saved as UTF-8"]),
    "blank JSONL": ("questions.jsonl", b"\n \n", uploads.mc_set, ["questions.jsonl is empty", "Use a JSONL file"]),
    "invalid JSON line": ("questions.jsonl", mc_lines(3) + b"{question: 'q'}\n",
                          uploads.mc_set, [("questions.jsonl, line 4: not valid JSON at character 2 (a key is not in "
                                           "double quotes"), 'Each line needs {"question": "...", "choices"']),
    "text, not JSON": ("questions.jsonl", b"What is 2 + 2? four\n", uploads.mc_set,
                       ["questions.jsonl, line 1: not valid JSON", "text must be in double quotes", "Each line needs"]),
    "choices not a list": ("questions.jsonl", mc_lines(1) +
                           json.dumps(MC_LINE | {"choices": "apple"}).encode() + b"\n", uploads.mc_set,
                           ["questions.jsonl, line 2: 'choices' must be a list of at least 2", "Each line needs"]),
    "MC line missing its answer": ("questions.jsonl", json.dumps({"question": "q", "choices": ["a", "b"]}).encode(),
                                   uploads.mc_set, ["questions.jsonl, line 1: 'answer' is missing", "Each line needs"]),
    "LoRA line missing completion": ("train.jsonl", b'{"prompt": "hello"}\n', uploads.lora_data,
                                     ["train.jsonl, line 1: 'prompt' and 'completion' must both be texts",
                                      'Each line needs {"prompt": "...", "completion": "..."}']),
    "LoRA list instead of object": ("train.jsonl", b'["hello", "billing"]\n', uploads.lora_data,
                                    ["train.jsonl, line 1: this is a list, not a JSON object", "Each line needs"]),
    "too few LoRA examples": ("train.jsonl", lora_lines(3), uploads.lora_data,
                              ["train.jsonl holds 3 examples; give at least 10"]),
    "short text": ("notes.txt", b"far too short", uploads.ppl_text, ["notes.txt holds only 3 words", "at least 50 words"]),
    "over the size limit": ("big.jsonl", b"x" * (uploads.MAX_UPLOAD_BYTES + 1), uploads.mc_set,
                            ["big.jsonl is 5.0 MB, more than the 5 MB", "Use fewer lines"]),
}
PYTHON_WORDS = ["codec", "Expecting", "KeyError", "TypeError", "Traceback", "line 1 column", "decode byte"]


def assert_for_people(message: str, name: str, data_dir: Path) -> None:
    """Names the file as its owner did, and never the server's copy or Python's own wording."""
    assert name in message
    assert "/data/uploads" not in message and str(data_dir) not in message and ".checking-" not in message
    assert not re.search(r"[0-9a-f]{16}", message), message  # the server's hash-named copy
    assert not any(w in message for w in PYTHON_WORDS), message


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_a_bad_upload_is_refused_by_name_with_the_fix_and_not_kept(case, data_dir):
    name, body, check, says = BAD_UPLOADS[case]
    with pytest.raises(ValueError) as refused:
        uploads.accept_upload(name, body, check)
    message = str(refused.value)
    for words in says:
        assert words in message, message
    assert_for_people(message, name, data_dir)
    assert not list((data_dir / "uploads").glob("*"))  # not even a trial copy


@pytest.mark.parametrize("case", ["PNG renamed .jsonl", "invalid JSON line", "over the size limit"])
def test_the_page_side_check_turns_a_refusal_into_words_not_an_exception(case, data_dir):
    name, body, check, says = BAD_UPLOADS[case]
    checked = upload_checks.check_upload(name, body, check)
    assert checked.refused and checked.path is None and says[0] in checked.problem
    assert upload_checks.blocked_by(upload_checks.Checked(), checked).endswith(checked.problem)


@pytest.mark.parametrize("name, body, check, summary", [
    ("questions.jsonl", GOOD_MC, uploads.mc_set, "120 questions, 4 choices each"),
    ("notes.txt", GOOD_TEXT, uploads.ppl_text, "3,400 words of text"),
    ("train.jsonl", GOOD_LORA, uploads.lora_data, "64 examples (52 to train on, 12 held out to test), 2 different"),
    ("windows.jsonl", b"\xef\xbb\xbf" + GOOD_MC, uploads.mc_set, "120 questions"),  # Notepad's UTF-8 byte-order mark
])
def test_a_good_upload_is_kept_once_with_what_was_found(name, body, check, summary, data_dir):
    kept = uploads.accept_upload(name, body, check)
    assert kept.summary.startswith(summary)
    assert kept.path.parent == data_dir / "uploads" and kept.path.suffix == Path(name).suffix
    assert sorted(p.name for p in kept.path.parent.iterdir()) == [kept.path.name]  # no trial copy left behind
    assert uploads.accept_upload(name, body, check).path == kept.path  # the same bytes: the same copy


def test_a_refusal_never_removes_an_accepted_copy_of_the_same_bytes(data_dir):
    kept = uploads.keep_upload("questions.jsonl", GOOD_MC, evaluate.load_mc_jsonl)
    with pytest.raises(ValueError, match="questions.jsonl: no, not today"):
        uploads.keep_upload("questions.jsonl", GOOD_MC, lambda p: (_ for _ in ()).throw(ValueError("no, not today")))
    assert kept.is_file()


def test_a_plain_check_error_naming_the_server_copy_is_rewritten_to_the_users_name(data_dir):
    def check(path):
        raise ValueError(f"{path} has a problem; see {path.name}")

    with pytest.raises(ValueError) as refused:
        uploads.keep_upload("mine.txt", b"hello", check)
    assert str(refused.value) == "mine.txt has a problem; see mine.txt"


def test_a_distillation_corpus_that_is_not_text_is_refused_before_a_tokenizer_loads(data_dir):
    never = Path("/nonexistent/teacher")  # loading its tokenizer would fail: the text check comes first
    with pytest.raises(ValueError, match=r"corpus.txt is not a text file \(it starts like a gzip"):
        uploads.accept_upload("corpus.txt", b"\x1f\x8b\x08\x00" + bytes(40), uploads.distill_corpus(never))


@pytest.mark.parametrize("body, says", [
    (PNG, "is not a text file (it starts like a PNG image)"),
    (b"", "is empty"),
    (b'{"question": "q", "choices": ["a", "b"], "answer": "a"}\n', "line 1: 'answer' is \"a\""),
])
def test_the_cli_names_the_path_its_user_typed(tmp_path, body, says):
    path = tmp_path / "my set.jsonl"
    path.write_bytes(body)
    with pytest.raises(ValueError) as refused:
        evaluate.load_mc_jsonl(path)
    assert str(refused.value).startswith(str(path)) and says in str(refused.value)
    assert not any(w in str(refused.value) for w in PYTHON_WORDS)


def test_validators_word_their_problems_for_any_name(tmp_path):
    path = tmp_path / "8d9af97c3ab3ebca.jsonl"  # as the server would name an upload
    path.write_text('{"prompt": "p", "completion": ""}\n')
    with pytest.raises(textfile.FileProblem) as refused:
        lora.load_examples(path)
    assert refused.value.named("train.jsonl") == ("train.jsonl, line 1: 'prompt' and 'completion' must not be empty. "
                                                  'Each line needs {"prompt": "...", "completion": "..."}.')


# ---------------------------------------------------------------- on the Quantize page, before Measure is pressed


def upload_on_page(monkeypatch, label_start: str, name: str, body: bytes) -> None:
    """AppTest cannot choose a file, so the page's uploader with this label answers as if `name` had been chosen."""
    real, real_main = DeltaGenerator.file_uploader, st.file_uploader
    chosen = UploadedFile(UploadedFileRec(f"id-{name}", name, "application/octet-stream", body),
                          SimpleNamespace(upload_url="", delete_url=""))

    def file_uploader(self, label, *args, **kwargs):
        shown = real(self, label, *args, **kwargs)  # the widget is still drawn
        return chosen if label.startswith(label_start) else shown

    def main_file_uploader(label, *args, **kwargs):  # st.file_uploader: bound to the main area when imported
        shown = real_main(label, *args, **kwargs)
        return chosen if label.startswith(label_start) else shown

    monkeypatch.setattr(DeltaGenerator, "file_uploader", file_uploader)
    monkeypatch.setattr(st, "file_uploader", main_file_uploader)


def quantize_page() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / "quantize.py"), default_timeout=60)


@pytest.mark.usefixtures("fresh_caches")
def test_quantize_refuses_a_png_the_moment_it_is_chosen_and_measure_is_off(monkeypatch, data_dir):
    upload_on_page(monkeypatch, "Your multiple-choice set", "photo.jsonl", PNG)
    checks = []
    monkeypatch.setattr(uploads, "mc_set", lambda path: checks.append(path) or evaluate.load_mc_jsonl(path))
    at = quantize_page().run()  # nothing pressed: the file was only chosen
    assert not at.exception, [e.value for e in at.exception]
    (error,) = at.error
    assert error.value.startswith("photo.jsonl is not a text file (it starts like a PNG image).")
    assert_for_people(error.value, "photo.jsonl", data_dir)
    measure = next(b for b in at.button if b.label == "Measure")
    assert measure.disabled and "photo.jsonl" in measure.help
    at.run()  # a rerun (any click) does not check the same file again
    assert checks == [] and len(at.error) == 1  # refused before the check: a PNG never reaches the disk
    assert not list((data_dir / "uploads").glob("*"))


@pytest.mark.usefixtures("fresh_caches")
def test_quantize_accepts_a_good_set_on_choosing_and_measures_with_it(monkeypatch, data_dir):
    from core.launch.jobqueue import JobQueue

    upload_on_page(monkeypatch, "Your multiple-choice set", "questions.jsonl", GOOD_MC)
    checks = []
    monkeypatch.setattr(uploads, "mc_set", lambda path: checks.append(path) or "120 questions, 4 choices each")
    at = quantize_page().run()
    assert not at.error and any(s.value == "ok: 120 questions, 4 choices each" for s in at.success)
    at.run()
    assert len(checks) == 1  # checked once per file, not on every rerun
    measure = next(b for b in at.button if b.label == "Measure")
    assert not measure.disabled
    measure.click().run()
    (waiting,) = JobQueue().snapshot().waiting
    assert Path(waiting.job.args["settings"]["eval_set"]).parent == data_dir / "uploads"


# ---------------------------------------------------------------- Fine-tune and Distill, the same way


@pytest.mark.usefixtures("fresh_caches")
def test_lora_refuses_a_bad_jsonl_on_choosing_and_train_is_off(monkeypatch, data_dir):
    upload_on_page(monkeypatch, "Your {prompt, completion} JSONL", "train.jsonl", b'{"prompt": "hi"}\n')
    at = AppTest.from_file(str(ROOT / "pages" / "lora.py"), default_timeout=60).run()
    at.radio[0].set_value("your own JSONL").run()
    assert not at.exception, [e.value for e in at.exception]
    (error,) = at.error
    assert error.value.startswith("train.jsonl, line 1: 'prompt' and 'completion' must both be texts")
    train = next(b for b in at.button if b.label == "Train")
    assert train.disabled and "train.jsonl" in train.help


@pytest.mark.usefixtures("fresh_caches")
@pytest.mark.parametrize("name, body, shown", [
    ("corpus.txt", "\n\n".join(f"Paragraph {i}: " + "the cat sat on the mat and looked at the rain. " * 8
                               for i in range(12)).encode(), "ok: 12 texts, "),
    ("corpus.txt", b"\x1f\x8b\x08\x00" + bytes(40), "corpus.txt is not a text file (it starts like a gzip"),
])
def test_distill_checks_a_corpus_on_choosing_in_the_teachers_tokens(name, body, shown, tiny_dir, monkeypatch, data_dir):
    from core import models

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)  # the tiny teacher: no download
    upload_on_page(monkeypatch, "UTF-8 text (paragraphs", name, body)
    at = AppTest.from_file(str(ROOT / "pages" / "distill.py"), default_timeout=60).run()
    at.radio(key="training_text").set_value("your own text").run()
    assert not at.exception, [e.value for e in at.exception]
    messages = [m.value for m in [*at.success, *at.error]]
    assert len(messages) == 1 and messages[0].startswith(shown), messages
    assert next(b for b in at.button if b.label == "Distill").disabled == bool(at.error)


def distill_page_queues(monkeypatch, training_text: str) -> list:
    """Pick a training text on the Distill page, press Distill and run the queued job with distillation itself
    replaced: returns (answers_with_text, corpus) for each run the job started."""
    from core.experiments import distill_run

    seen = []
    monkeypatch.setattr(distill_run, "run_distill", lambda teacher, settings, corpus, *a, **k: seen.append(
        (settings.answers_with_text, corpus)) or "result")
    monkeypatch.setattr(distill_run, "measure", lambda *a, **k: [])
    monkeypatch.setattr(distill_run, "summary", lambda result, records: {})
    at = AppTest.from_file(str(ROOT / "pages" / "distill.py"), default_timeout=60).run()
    at.radio(key="training_text").set_value(training_text).run()
    assert training_text != PUBLIC_AND_ANSWERS or not at.get("file_uploader")  # nothing to upload: the text is here
    at.button(key="distill").click().run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    run_queued_jobs_here()
    return seen


def test_distill_trains_on_an_uploaded_text_with_the_teachers_answers(tiny_dir, monkeypatch, data_dir):
    from core import models

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)  # the tiny teacher: no download
    body = "\n\n".join(f"Paragraph {i} of a story about a lighthouse keeper and the sea." * 3 for i in range(12))
    upload_on_page(monkeypatch, "UTF-8 text (paragraphs", "story.txt", body.encode())
    seen = distill_page_queues(monkeypatch, OWN_AND_ANSWERS)
    assert len(seen) == 1 and seen[0][0] is True and seen[0][1].name.endswith(".txt")


def test_distill_offers_the_public_text_only_where_it_lies_beside_the_lab(tiny_dir, monkeypatch, data_dir, tmp_path):
    from core import models, paths

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)  # the tiny teacher: no download
    monkeypatch.setattr(paths, "shared_wikitext", lambda: None)
    at = AppTest.from_file(str(ROOT / "pages" / "distill.py"), default_timeout=60).run()
    assert PUBLIC_AND_ANSWERS not in at.radio(key="training_text").options

    wiki = tmp_path / "wikitext-2-raw-v1.test.txt"
    wiki.write_text("\n\n".join(f" = Heading {i} = \n\n The lighthouse at point {i} stood for a century ." for i in range(30)))
    monkeypatch.setattr(paths, "shared_wikitext", lambda: wiki)
    assert distill_page_queues(monkeypatch, PUBLIC_AND_ANSWERS) == [(True, wiki)]
