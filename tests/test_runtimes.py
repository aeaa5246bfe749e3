"""The runtime seam: every runtime implements Runner, and the harness drives each one the same way."""

from __future__ import annotations

import pytest
import torch

from core import models, runtimes, techniques
from core.measure import benchmark, evaluate
from core.runtimes import eager


def test_registry_lists_each_runtime_once_with_words():
    found = runtimes.all_runtimes()
    assert set(found) == {"transformers", "transformers-compiled", "llama.cpp"}
    assert all(r.label and r.explanation for r in found.values())
    with pytest.raises(ValueError, match="Unknown runtime 'vllm'"):
        runtimes.get("vllm")


def test_variant_keys_bind_a_technique_to_a_runtime():
    compiled = techniques.get("bf16@transformers-compiled")
    assert compiled.runtime == "transformers-compiled" and compiled.config == techniques.get("bf16").config
    assert techniques.get("fp32@transformers").key == "fp32"  # the default runtime keeps the plain key
    assert techniques.get("fp32@transformers-compiled").family != "reference"  # one reference only
    assert techniques.parse_keys("fp32,fp32@transformers-compiled") == ["fp32", "fp32@transformers-compiled"]
    with pytest.raises(ValueError, match="not on 'transformers-compiled'"):
        techniques.get("nf4@transformers-compiled")


def test_every_loaded_variant_is_a_runner(tiny_dir):
    for key in ("fp32", "fp32@transformers-compiled", "gguf-q8_0"):
        technique = techniques.get(key)
        if runtimes.why_not(technique, technique.runtime, "cpu"):
            continue  # e.g. llama.cpp not built here: covered by test_gguf's skip
        runner = runtimes.load(technique, technique.runtime, tiny_dir, "cpu", threads=1)
        try:
            assert isinstance(runner, runtimes.Runner) and runner.runtime == technique.runtime
        finally:
            runner.close()


def test_compiled_decode_generates_the_eager_tokens_and_reports_compile_time_apart(tiny_dir):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    eager = runtimes.load(techniques.get("fp32"), "transformers", tiny_dir, "cpu", 1)
    compiled = runtimes.load(techniques.get("fp32@transformers-compiled"), "transformers-compiled", tiny_dir, "cpu", 1)
    first = benchmark.timed_generation(compiled, ids, new_tokens=6)
    second = benchmark.timed_generation(compiled, ids, new_tokens=6)  # the compiled step is reused, not rebuilt
    expected = benchmark.timed_generation(eager, ids, new_tokens=6)
    assert first.token_ids == second.token_ids == expected.token_ids
    facts = compiled.facts()
    assert facts["compile_s"] > 0 and facts["static_cache_tokens"] == compiled.CACHE_TOKENS
    # compile time is not decode time: the timed run after compiling is far shorter than compiling was
    assert second.ttft_s + second.decode_s < facts["compile_s"]


def test_compiled_runtime_refuses_a_prompt_longer_than_its_static_cache(tiny_dir):
    compiled = runtimes.load(techniques.get("fp32@transformers-compiled"), "transformers-compiled", tiny_dir, "cpu", 1)
    too_long = torch.ones(1, compiled.CACHE_TOKENS, dtype=torch.long)
    with pytest.raises(ValueError, match="static cache"):
        list(compiled.stream(too_long, 4))


def test_a_torch_model_passes_through_the_seam_as_an_eager_runner(tiny):
    model, tokenizer = tiny
    items = evaluate.load_mc_jsonl(evaluate.DEFAULT_MC_SET)[:3]
    runner = runtimes.as_runner(model)
    assert runner.runtime == "transformers" and runtimes.as_runner(runner) is runner
    assert runner.choice_logprobs(tokenizer, items) == eager.batch_choice_logprobs(model, tokenizer, items)
    assert runner.bytes_held() == benchmark.bytes_held(model)


def test_bitsandbytes_variants_say_why_they_do_not_compile():
    reason = runtimes.get("transformers-compiled").unsupported(techniques.get("nf4"), "cpu")
    assert reason and "bitsandbytes" in reason


def test_sweep_record_names_its_runtime(tiny_dir, data_dir):
    from core.experiments.sweep import SweepSettings, run_sweep
    from core.store import ResultStore

    settings = SweepSettings(new_tokens=3, repeats=1, warmup_runs=0, mc_max_items=2, ppl_max_tokens=64,
                             ppl_window_tokens=32)
    keys = ["fp32", "fp32@transformers-compiled"]
    records = run_sweep(str(tiny_dir), keys, settings, store=ResultStore())
    assert [r.runtime for r in records] == ["transformers", "transformers-compiled"]
    assert [r.technique for r in records] == keys
    assert "compile_s" in records[1].variant_facts
    # same weights, same eager quality pass: the compiled variant matches the reference's quality
    assert records[1].kld_mean == pytest.approx(0.0, abs=1e-6)
    assert models.resolve(str(tiny_dir)).source == "local"


@pytest.mark.parametrize("state", ["cuda device", "binding missing", "built for another CPU", "library broken", "runs"])
def test_gguf_techniques_and_the_llama_cpp_runtime_give_one_reason(monkeypatch, state):
    """"Why GGUF cannot run here" is asked of the technique (the registry, the pages) and of the runtime (the
    harness): both must say the same thing, in every state a machine can be in."""
    import sys
    import types

    from core.runtimes import llamacpp_build

    device = "cuda:0" if state == "cuda device" else "cpu"
    other_cpu = "this llama.cpp build is for another CPU" if state == "built for another CPU" else None
    monkeypatch.setattr(llamacpp_build, "why_not_binding", lambda: other_cpu)
    if state == "binding missing":
        monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    elif state == "library broken":
        monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)  # so the import runs, and fails as it loads
        monkeypatch.setattr("builtins.__import__", _failing_import("llama_cpp", OSError("libllama.so: cannot open"),
                                                                 __import__))
    else:
        monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))  # imports: the library loads
    runtime = runtimes.get("llama.cpp")
    for key in ("gguf-q4_k_m", "gguf-q8_0", "gguf-auto-105"):  # a preset and a searched file
        technique = techniques.get(key)
        reason = technique.why_not(device)
        assert reason == runtime.unsupported(technique, device)
        assert (reason is None) == (state == "runs"), reason
    if other_cpu:
        assert techniques.get("gguf-q4_k_m").why_not(device) == other_cpu


def _failing_import(name, error, real_import):
    def fake(module, *args, **kwargs):
        if module == name:
            raise error
        return real_import(module, *args, **kwargs)
    return fake
