"""Prompt-lookup decoding (core/hybrids/prompt_lookup.py): the transformers path on a tiny model, the record, and
bad input refused with nothing written."""

from __future__ import annotations

import json

import pytest

from core import cli, models
from core.hybrids import prompt_lookup as pl

FAST = dict(runtimes=("transformers",), draft_tokens=4, new_tokens=12, repeats=1)


def _identity(**over):
    base = dict(run_id="r", created_at="t", model="tiny", runtime="transformers", technique="fp32", model_file="f",
                prompt_set="grounded", prompt_file="p", draft_tokens=4, max_ngram=2, new_tokens=12, repeats=1,
                settings={}, device="cpu", threads=2, hardware="h", versions={})
    return {**base, **over}


def test_bundled_prompt_sets_load():
    names = [pl.load_prompt_set(p)[0] for p in pl.PROMPT_FILES]
    assert names == ["grounded", "open"]
    for p in pl.PROMPT_FILES:
        assert 8 <= len(pl.load_prompt_set(p)[1]) <= 12


def test_lookup_keeps_greedy_output_on_a_tiny_model(tiny):
    model, tokenizer = tiny
    settings = pl.LookupSettings(**FAST)
    decoder = pl.TransformersDecoder(model, tokenizer, settings, "tiny")
    _, prompts = pl.load_prompt_set(pl.PROMPT_FILES[0])
    rows = pl.measure_set(decoder, prompts[:3], settings, lambda f, m: None, lambda: False)
    assert all(r["identical"] for r in rows)
    # a random tiny model repeats itself, so the prompt's n-grams are proposed and some are kept
    assert sum(r["drafted"] for r in rows) > 0
    assert all(0 <= r["accepted"] <= r["drafted"] for r in rows)
    assert all(r["plain_decode_s"] > 0 and r["lookup_decode_s"] > 0 for r in rows)


def test_plain_generation_drafts_nothing(tiny):
    model, tokenizer = tiny
    decoder = pl.TransformersDecoder(model, tokenizer, pl.LookupSettings(**FAST), "tiny")
    ids = models.chat_prompt_ids(tokenizer, "Repeat: the cat sat on the mat. the cat sat on the mat.")
    plain, look = decoder.generate(ids, 10, False), decoder.generate(ids, 10, True)
    assert plain.drafted == plain.accepted == 0 and plain.first_tokens == 1
    assert plain.tokens == look.tokens and len(plain.tokens) <= 10


def test_summary_sums_tokens_and_seconds():
    rows = [{"identical": True, "plain_decode_tokens": 10, "plain_decode_s": 1.0, "lookup_decode_tokens": 10,
             "lookup_decode_s": 0.5, "drafted": 8, "accepted": 6},
            {"identical": False, "plain_decode_tokens": 30, "plain_decode_s": 1.0, "lookup_decode_tokens": 30,
             "lookup_decode_s": 1.5, "drafted": 2, "accepted": 0}]
    r = pl.summarize(rows, **_identity())
    assert r.plain_decode_tokens_per_s == pytest.approx(20.0)
    assert r.lookup_decode_tokens_per_s == pytest.approx(20.0)
    assert r.speedup == pytest.approx(1.0)
    assert r.acceptance_rate == pytest.approx(0.6)
    assert (r.identical_outputs, r.prompts_total, r.identical_output) == (1, 2, False)
    assert r.speedup_per_prompt["median"] == pytest.approx((2.0 + 2 / 3) / 2)


def test_run_stores_one_record_per_runtime_and_set(tiny_dir):
    settings = pl.LookupSettings(**FAST)
    results = pl.run_prompt_lookup(str(tiny_dir), settings)
    assert [(r.runtime, r.prompt_set) for r in results] == [("transformers", "grounded"), ("transformers", "open")]
    pl.save_results(results)
    saved = pl.saved_results()
    assert len(saved) == 2 and len({s["run_id"] for s in saved}) == 1
    for s in saved:
        for key in ("hardware", "threads", "versions", "device", "created_at", "model", "runtime", "technique",
                    "settings", "acceptance_rate", "plain_decode_tokens_per_s", "lookup_decode_tokens_per_s",
                    "speedup", "identical_outputs", "prompts_total", "prompts"):
            assert key in s, key
        assert s["identical_outputs"] == s["prompts_total"] == len(s["prompts"])
        assert s["threads"] == 2 and s["settings"]["draft_tokens"] == 4


@pytest.mark.parametrize("over, message", [
    (dict(draft_tokens=0), "draft tokens must be between 1 and 64"),
    (dict(draft_tokens=65), "draft tokens must be between 1 and 64"),
    (dict(new_tokens=1), "new tokens must be between"),
    (dict(runtimes=("vllm",)), "unknown runtime 'vllm'"),
    (dict(runtimes=()), "no runtime given"),
    (dict(repeats=0), "at least 1"),
])
def test_bad_settings_are_refused(over, message):
    with pytest.raises(ValueError, match=message):
        pl.LookupSettings(**over)


def test_missing_or_malformed_prompt_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="prompt file not found"):
        pl.check_request(pl.LookupSettings(**FAST, prompt_files=(str(tmp_path / "nope.json"),)))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "prompts": [{"title": "no prompt"}]}))
    with pytest.raises(ValueError, match="non-empty"):
        pl.check_request(pl.LookupSettings(**FAST, prompt_files=(str(bad),)))


def test_llama_cpp_needs_a_gguf_technique():
    with pytest.raises(ValueError, match="GGUF"):
        pl.check_request(pl.LookupSettings(runtimes=("llama.cpp",), technique="fp32"))


@pytest.mark.parametrize("argv, message", [
    (["--draft-tokens", "0"], "draft tokens must be between 1 and 64"),
    (["--runtime", "transformers,vllm"], "unknown runtime 'vllm'"),
    (["--prompts", "/no/such/prompts.json"], "prompt file not found"),
])
def test_cli_refuses_bad_input_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out.json"
    assert cli.main(["prompt-lookup", *argv, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not pl.results_path().exists()
