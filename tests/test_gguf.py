"""GGUF export, llama.cpp's quantizer, the file cache and the llama.cpp runner, on the tiny model and the bundled one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from core import runtimes, techniques
from core.runtimes import eager
from core.techniques import gguf
from core.techniques.gguf import export as gguf_export
from tests.conftest import needs_bundled

needs_llama = pytest.mark.skipif(gguf.llama_cpp_problem() is not None,
                                 reason=f"llama.cpp unavailable here: {gguf.llama_cpp_problem()}")


def _mean_kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(reference || other) over positions of two [T, V] log-prob tensors."""
    return float((reference.exp() * (reference - other)).sum(-1).clamp_min(0).mean())


def _transformers_logprobs(checkpoint, ids: torch.Tensor) -> torch.Tensor:
    model = techniques.get("fp32").make(checkpoint)
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)


def test_rope_permutation_interleaves_each_heads_halves():
    import numpy as np

    # one head of dim 4, rows (a0, a1, b0, b1) in HF's half-split layout -> (a0, b0, a1, b1) interleaved
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    out = gguf_export._permute_for_rope(w, heads=1)
    assert out[:, 0].tolist() == [0, 4, 2, 6]


def test_unknown_quant_type_is_refused_before_anything_is_written(data_dir):
    with pytest.raises(gguf.GGUFError, match="Unknown GGUF quant type 'q4_k_x'"):
        gguf.GGUFConfig("q4_k_x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown technique 'gguf-q4_k_x'"):
        techniques.parse_keys("fp32,gguf-q4_k_x")
    assert not (data_dir / "gguf").exists()


def test_architecture_the_exporter_cannot_convert_is_refused(tmp_path, data_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    model.save_pretrained(tmp_path / "gpt2-tiny")
    with pytest.raises(gguf.GGUFError, match="cannot convert a 'gpt2' model to GGUF"):
        gguf.ensure_file(tmp_path / "gpt2-tiny", gguf.GGUFConfig("f32"))
    assert not any((data_dir / "gguf").rglob("*.gguf")) if (data_dir / "gguf").exists() else True


def test_missing_llama_cpp_is_named_and_nothing_is_written(tiny_dir, data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now raises ImportError
    reason = techniques.get("gguf-q4_k_m").why_not("cpu")
    assert reason and "llama.cpp is not installed" in reason and "make setup" in reason
    with pytest.raises(ValueError, match="llama.cpp is not installed"):
        runtimes.load(techniques.get("gguf-q4_k_m"), "llama.cpp", tiny_dir, "cpu", 1)
    with pytest.raises(gguf.GGUFError, match="llama.cpp is not installed"):
        gguf.ensure_file(tiny_dir, gguf.GGUFConfig("q8_0"))
    assert not (data_dir / "gguf").exists()


def test_transformers_techniques_do_not_run_on_llama_cpp():
    assert "runs on transformers" in runtimes.why_not(techniques.get("nf4"), "llama.cpp", "cpu")
    with pytest.raises(ValueError, match="not on 'llama.cpp'"):
        techniques.get("nf4@llama.cpp")


@needs_llama
def test_f32_gguf_on_llama_cpp_computes_the_transformers_model(tiny_dir):
    path = gguf.ensure_file(tiny_dir, gguf.GGUFConfig("f32"))
    from core.runtimes.llamacpp import LlamaCppRunner

    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26]])
    llama = LlamaCppRunner(path, threads=2)
    try:
        got = llama.window_logprobs(ids)
        streamed = [t for t, _ in llama.stream(ids, 6)]
    finally:
        llama.close()
    expected = _transformers_logprobs(tiny_dir, ids)
    assert _mean_kl(expected, got) < 1e-3
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)
    model = techniques.get("fp32").make(tiny_dir)
    eager_ids = [t for t, _ in eager.stream_tokens(model, ids, 6)]
    assert streamed[0] == eager_ids[0]  # the first greedy token (a near-tie later may differ on random weights)


@needs_llama
def test_quantized_file_is_cached_and_a_corrupt_one_is_rebuilt(tiny_dir):
    config = gguf.GGUFConfig("q8_0")
    path = gguf.ensure_file(tiny_dir, config)
    assert gguf.is_intact(path)
    facts = json.loads(path.with_name(path.name + gguf.SIDECAR).read_text())
    assert facts["size_bytes"] == path.stat().st_size
    first_mtime = path.stat().st_mtime_ns
    assert gguf.ensure_file(tiny_dir, config) == path and path.stat().st_mtime_ns == first_mtime  # reused
    # truncate it, as a crash or a full disk would: detected, rebuilt, never loaded
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    assert not gguf.is_intact(path)
    messages = []
    rebuilt = gguf.ensure_file(tiny_dir, config, progress=messages.append)
    assert gguf.is_intact(rebuilt) and any("rebuilding" in m for m in messages)
    # flip one byte, same size: the hash catches it
    data = bytearray(rebuilt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    rebuilt.write_bytes(bytes(data))
    assert not gguf.is_intact(rebuilt)
    assert gguf.is_intact(gguf.ensure_file(tiny_dir, config))
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


@needs_llama
def test_quantized_sizes_fall_with_bits(tiny_dir):
    from core.runtimes.llamacpp import LlamaCppRunner

    sizes = {}
    for quant in ("f16", "q8_0", "q4_0"):
        runner = LlamaCppRunner(gguf.ensure_file(tiny_dir, gguf.GGUFConfig(quant)), threads=1)
        sizes[quant] = runner.bytes_held()
        runner.close()
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]


@needs_llama
def test_k_quant_fallback_on_narrow_rows_is_recorded(tiny_dir):
    # the tiny model's rows are 64 or 128 wide, never a multiple of k-quants' 256-weight blocks
    path = gguf.ensure_file(tiny_dir, gguf.GGUFConfig("q4_k_m"))
    facts = gguf.file_facts(path)
    assert facts["fallback_tensors"] > 0 and facts["quantized_tensors"] >= facts["fallback_tensors"]
    assert gguf.quantizer_facts("no such line") == {"fallback_tensors": 0}


@needs_llama
def test_importance_matrix_covers_every_block_linear(tiny_dir):
    matrix = gguf.importance_matrix(tiny_dir, gguf.calibration_text_path().read_text(), max_tokens=256, window=64)
    assert "blk.0.attn_q.weight" in matrix and "blk.1.ffn_down.weight" in matrix
    assert matrix["blk.0.ffn_down.weight"].shape == (128,)  # one value per input column (intermediate size)
    assert all((v >= 0).all() for v in matrix.values())


@needs_llama
def test_llama_cpp_scores_multiple_choice_like_transformers(tiny_dir):
    from core import models
    from core.measure import evaluate

    tokenizer = models.load_tokenizer(tiny_dir)
    items = evaluate.load_mc_jsonl(evaluate.DEFAULT_MC_SET)[:4]
    runner = runtimes.load(techniques.get("gguf-f16"), "llama.cpp", tiny_dir, "cpu", 2)
    try:
        got = runner.choice_logprobs(tokenizer, items)
    finally:
        runner.close()
    expected = eager.batch_choice_logprobs(techniques.get("fp32").make(tiny_dir), tokenizer, items)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=0.05)  # f16 weights: small rounding, same choices scored


@needs_llama
@needs_bundled
@pytest.mark.slow
def test_bundled_f32_gguf_matches_transformers_fp32(bundled):
    """Both runtimes compute the same model: mean KL divergence below 1e-3 on real text."""
    from core import models
    from core.measure import evaluate

    checkpoint = bundled
    tokenizer = models.load_tokenizer(checkpoint)
    ids = evaluate.token_windows(evaluate.tokenize_text(tokenizer, evaluate.read_text(evaluate.DEFAULT_PPL_TEXT)), 256, 256)[0]
    from core.runtimes.llamacpp import LlamaCppRunner

    path = gguf.ensure_file(checkpoint, gguf.GGUFConfig("f32"))
    assert gguf_export._vocab_of(str(path))[1] == "smollm"  # llama.cpp's own text splitting, for its server
    runner = LlamaCppRunner(path, threads=2)
    try:
        got = runner.window_logprobs(ids)
    finally:
        runner.close()
    expected = _transformers_logprobs(checkpoint, ids)
    kl = _mean_kl(expected, got)
    assert kl < 1e-3, f"mean KL {kl:.2e}"
    assert float((expected.argmax(-1) == got.argmax(-1)).float().mean()) > 0.99


@needs_llama
def test_a_merged_fine_tune_exports_to_gguf_and_is_measured_against_its_base(tiny_dir, data_dir):
    from core.experiments import finetune_run
    from core.experiments.sweep import SweepSettings, run_sweep
    from core.store import ResultStore
    from core.techniques import lora

    settings = lora.FinetuneSettings(method="lora", rank=4, steps=2, batch_size=4, eval_items=4)
    result, _ = finetune_run.run_finetune(str(tiny_dir), settings, "support-routing")
    assert result.merged_path and (Path(result.merged_path) / "config.json").is_file()
    key = lora.technique_key("lora", "support-routing", 4) + "+gguf-q8_0"
    technique = techniques.get(key)
    assert technique.family == "gguf" and technique.config.source == result.merged_path
    quick = SweepSettings(new_tokens=3, repeats=1, warmup_runs=0, mc_max_items=2, ppl_max_tokens=64, ppl_window_tokens=32)
    [record] = run_sweep(str(tiny_dir), [key], quick, store=ResultStore())
    assert record.runtime == "llama.cpp" and record.technique == key
    assert record.kld_mean > 0  # measured against the base it was fine-tuned from, which it no longer equals
    with pytest.raises(ValueError, match="No finished distilled student or merged fine-tune"):
        techniques.get("distilled-3L-nothing+gguf-q8_0")


_PEAK_OF_ONE_SWEEP = """
import json
from core.experiments import sweep
from core.experiments.sweep import SweepSettings
settings = SweepSettings(new_tokens=4, repeats=1, warmup_runs=0, mc_max_items=3, ppl_window_tokens=32, ppl_max_tokens=64)
record = sweep.run_sweep("smollm2-135m-instruct", ["gguf-q8_0"], settings)[0]
print(json.dumps({"peak_mem_mb": record.peak_mem_mb, "file_build_s": record.variant_facts.get("file_build_s")}))
"""


@pytest.mark.slow
@needs_llama
@needs_bundled
def test_a_gguf_variants_peak_memory_does_not_depend_on_whether_its_file_was_cached(bundled):
    """Exporting and quantizing the file is one-off work done before the peak-memory window opens: the first sweep
    (which builds the file) and a later one (which finds it cached) report the same peak, each in a fresh process
    as the worker runs them."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    runs = [json.loads(subprocess.run([sys.executable, "-c", _PEAK_OF_ONE_SWEEP], cwd=root, env=os.environ.copy(),
                                      capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
            for _ in range(2)]
    built, cached = runs
    assert built["file_build_s"] > cached["file_build_s"]  # the first run did build the file
    # Two fresh processes differ by a few percent in what the allocator holds (5.2% seen in one run); counting the
    # export would add the fp32 checkpoint the converter reads (over 500 MB), so 20% still tells the two apart.
    assert cached["peak_mem_mb"] == pytest.approx(built["peak_mem_mb"], rel=0.2)
