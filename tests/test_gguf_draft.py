"""A GGUF draft on llama-server (core/hybrids/gguf_draft.py): the vocabulary check on real GGUF files, the drafted
server's command line, the summary's arithmetic, bad input refused with nothing written, and (slow) the real
servers on the bundled model keeping every answer."""

from __future__ import annotations

import gguf
import pytest

from core import cli, models
from core.hybrids import gguf_draft as gd
from core.runtimes import llamacpp_build
from core.serving import engines
from tests.conftest import needs_bundled

SPEC = models.BUNDLED["smollm2-135m-instruct"]
needs_tools = pytest.mark.skipif(llamacpp_build.why_not_tools() is not None,
                                 reason=f"llama.cpp's tools are not built here: {llamacpp_build.why_not_tools()}")


def _vocab_file(path, tokens, model="gpt2", bos=1, eos=2):
    """A GGUF file holding only a tokenizer: what the vocabulary check reads."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "c"]


def test_same_tokenizer_passes_and_each_difference_is_named(tmp_path):
    target = _vocab_file(tmp_path / "t.gguf", TOKENS)
    gd.check_same_vocabulary(target, _vocab_file(tmp_path / "same.gguf", TOKENS))
    cases = [(_vocab_file(tmp_path / "longer.gguf", [*TOKENS, "d"]), "7 tokens where the target has 6"),
             (_vocab_file(tmp_path / "other.gguf", [*TOKENS[:3], "x", "b", "c"]), "token 3 is 'x' where the target"),
             (_vocab_file(tmp_path / "llama.gguf", TOKENS, model="llama"), "tokenizer model 'llama'"),
             (_vocab_file(tmp_path / "eos.gguf", TOKENS, eos=5), "begin/end ids 1/5")]
    for draft, why in cases:
        with pytest.raises(ValueError, match="another vocabulary than the target") as e:
            gd.check_same_vocabulary(target, draft)
        assert why in str(e.value) and "share the target's tokenizer" in str(e.value)


def test_a_file_that_is_not_gguf_or_has_no_tokenizer_is_named(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        gd.read_vocabulary(junk)
    bare = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(bare), arch="llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="holds no tokenizer"):
        gd.read_vocabulary(bare)


@needs_tools
def test_the_drafted_server_is_the_target_server_plus_llama_cpps_draft_flags(tmp_path):
    target, draft = tmp_path / "t.gguf", tmp_path / "d.gguf"
    target.write_bytes(b"GGUF")
    plain = engines.llama_server_engine(target, "gguf-q8_0", slots=1, ctx_per_slot=gd.CONTEXT_TOKENS)
    settings = gd.DraftSettings(draft_min_tokens=1, draft_p_min=0.5)
    argv = gd.drafted_engine(plain, draft, settings, 8).argv(8123)
    assert argv[:len(plain.argv(8123))] == plain.argv(8123)  # the same server, the same target, threads and port
    opt = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--spec")}
    assert opt == {"--spec-type": "draft-simple", "--spec-draft-model": str(draft), "--spec-draft-ngl": "0",
                   "--spec-draft-n-max": "8", "--spec-draft-n-min": "1", "--spec-draft-p-min": "0.5"}


def _answer(tokens, seconds, drafted=0, accepted=0):
    return gd.Answer(tuple(tokens), "t", 10, 5.0, len(tokens), seconds, drafted, accepted)


def _identity(**over):
    base = dict(run_id="r", created_at="t", model="m", runtime="llama.cpp", technique="gguf-q8_0", target_file="t",
                draft="student", draft_technique="s+gguf-q8_0", draft_file="d", draft_facts={}, draft_max_tokens=3,
                draft_min_tokens=0, draft_p_min=0.0, prompt_set="grounded", prompt_file="p", new_tokens=4, repeats=3,
                settings={}, device="cpu", threads=2, hardware="h", versions={})
    return {**base, **over}


def test_a_prompt_keeps_its_median_runs_and_is_identical_only_when_every_run_matches():
    plain = [_answer([1, 2, 3, 4], s) for s in (0.3, 0.1, 0.2)]
    drafted = [_answer([1, 2, 3, 4], s, 6, 3) for s in (0.05, 0.15, 0.1)]
    row = gd.prompt_row("t", "p", plain, drafted)
    assert (row["plain_decode_s"], row["drafted_decode_s"], row["identical"]) == (0.2, 0.1, True)
    assert row["acceptance_rate"] == pytest.approx(0.5)
    changed = gd.prompt_row("t", "p", plain, [*drafted[:2], _answer([1, 2, 9, 4], 0.1, 6, 3)])
    assert changed["identical"] is False


def test_the_summary_sums_tokens_and_seconds_over_prompts():
    rows = [gd.prompt_row("a", "p", [_answer([1] * 4, 0.2)], [_answer([1] * 4, 0.1, 6, 3)]),
            gd.prompt_row("b", "p", [_answer([2] * 4, 0.2)], [_answer([2, 2, 2, 3], 0.3, 4, 0)])]
    r = gd.summarize(rows, **_identity())
    assert r.plain_decode_tokens_per_s == pytest.approx(8 / 0.4)
    assert r.drafted_decode_tokens_per_s == pytest.approx(8 / 0.4)
    assert r.speedup == pytest.approx(1.0) and r.acceptance_rate == pytest.approx(0.3)
    assert (r.identical_outputs, r.prompts_total, r.identical_output) == (1, 2, False)
    assert r.speedup_per_prompt["median"] == pytest.approx((2.0 + 2 / 3) / 2)


@pytest.mark.parametrize("over, message", [
    (dict(draft_max_tokens=(0,)), "draft max tokens must each be between 1 and 32"),
    (dict(draft_max_tokens=()), "draft max tokens must each be between 1 and 32"),
    (dict(draft_min_tokens=4), "draft min tokens must be between 0 and the smallest draft max"),
    (dict(draft_p_min=1.5), "draft p-min is a probability"),
    (dict(new_tokens=1), "new tokens must be between"),
    (dict(repeats=0), "at least 1"),
])
def test_bad_settings_are_refused(over, message):
    with pytest.raises(ValueError, match=message):
        gd.DraftSettings(**over)


@needs_tools
def test_a_missing_draft_or_student_or_a_draft_that_is_not_gguf_is_refused(tmp_path):
    with pytest.raises(ValueError, match="draft file not found"):
        gd.check_request(gd.DraftSettings(draft=str(tmp_path / "gone.gguf")))
    with pytest.raises(ValueError, match="no finished distilled student"):  # an empty data dir holds none
        gd.check_request(gd.DraftSettings(draft="student"))
    with pytest.raises(ValueError, match="not a GGUF variant"):
        gd.check_request(gd.DraftSettings(draft="fp32"))
    with pytest.raises(ValueError, match="target runs on llama.cpp from a GGUF file"):
        gd.check_request(gd.DraftSettings(target="int8"))


@needs_bundled
@needs_tools
def test_a_draft_with_another_vocabulary_is_refused_before_anything_is_built(tmp_path):
    draft = _vocab_file(tmp_path / "other-model.gguf", TOKENS)
    with pytest.raises(ValueError, match="another vocabulary than the target.*6 tokens where the target has 49152"):
        gd.check_request(gd.DraftSettings(draft=str(draft)))


@pytest.mark.parametrize("argv, message", [
    (["--draft-max", "0"], "draft max tokens must each be between 1 and 32"),
    (["--draft-max", "three"], "--draft-max: 'three' is not a comma-separated list"),
    (["--draft", "/no/such/draft.gguf"], "draft file not found"),
])
def test_cli_refuses_bad_input_and_writes_nothing(tmp_path, capsys, argv, message):
    if "--draft" in argv and llamacpp_build.why_not_tools() is not None:
        pytest.skip("the draft file is checked after the build is found")
    out = tmp_path / "out.json"
    assert cli.main(["gguf-draft", *argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not gd.results_path().exists()


@pytest.mark.slow
@needs_bundled
@needs_tools
def test_a_file_drafting_for_itself_keeps_every_answer_and_is_stored(bundled):
    """One GGUF file as its own draft: draft and target agree, so almost every drafted token is kept, and the
    answers are the target's own, token for token."""
    settings = gd.DraftSettings(target="gguf-q4_0", draft="gguf-q4_0", draft_max_tokens=(3,), new_tokens=16,
                                repeats=1, prompt_files=(str(gd.PROMPT_FILES[0]),))
    results = gd.run_gguf_draft(SPEC.key, settings)
    assert len(results) == 1
    r = results[0]
    assert r.identical_output and r.prompts_total >= 8 and r.draft_technique == "gguf-q4_0"
    assert r.drafted_tokens > 0 and r.acceptance_rate > 0.9
    assert r.plain_decode_tokens_per_s > 0 and r.drafted_decode_tokens_per_s > 0
    gd.save_results(results)
    saved = gd.saved_results()
    assert len(saved) == 1 and saved[0]["hardware"] and saved[0]["settings"]["draft_max_tokens"] == [3]
