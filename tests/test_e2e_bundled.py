"""End to end on the real bundled model: language matters here, so no tiny stand-in."""

import json
import math

import pytest
import torch

from core.__main__ import main
from core.experiments import sweep
from tests.conftest import needs_bundled, shared_file

pytestmark = [pytest.mark.slow, needs_bundled]


def test_bundled_sweep_measures_real_quality_differences(bundled):
    settings = sweep.SweepSettings(new_tokens=16, repeats=2, mc_max_items=60, ppl_max_tokens=1024)
    fp32, nf4 = sweep.run_sweep("smollm2-135m-instruct", ["fp32", "nf4"], settings)
    assert fp32.kld_mean == 0.0 and fp32.top1_agreement == 1.0  # the reference pass itself, reused: exact
    assert 0.0 < nf4.kld_mean < 1.0 and 0.5 < nf4.top1_agreement < 1.0
    assert nf4.size_mb < fp32.size_mb / 2
    assert fp32.mc_accuracy_ci95[0] > 0.4  # chance is 0.25 on four choices
    assert 5 < fp32.perplexity < 100
    words = fp32.sample_generation.lower()
    assert any(w in words for w in ("blue", "light", "scatter")), fp32.sample_generation


def direct_perplexity(checkpoint, text: str, window: int, max_tokens: int, second_half: bool = False) -> float:
    """Written independently of core.measure.evaluate: transformers' own loss over the same windows.

    second_half: llama-perplexity's rule, whole windows only, the predictions from position window/2 on counted
    (the bundled tokenizer adds no BOS, so llama.cpp would write none over the chunks' first tokens).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :max_tokens]
    first = window // 2 if second_half else 0
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, ids.shape[1], window):
            chunk = ids[:, start : start + window]
            if chunk.shape[1] < 2 or (second_half and chunk.shape[1] < window):
                continue
            labels = chunk.clone()
            labels[:, : first + 1] = -100  # label j is predicted at position j - 1: keep positions first.. only
            loss = model(input_ids=chunk, labels=labels).loss  # mean over the predictions kept
            nll += loss.item() * (chunk.shape[1] - 1 - first)
            count += chunk.shape[1] - 1 - first
    return math.exp(nll / count)


def test_cli_perplexity_on_wikitext_matches_direct_transformers(tmp_path, bundled):
    source = shared_file("wikitext-2-raw-v1.test.txt")
    text = source.read_text(encoding="utf-8")[:12_000]  # several 512-token windows: the same check, quicker
    path = tmp_path / "wikitext-excerpt.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out.json"
    code = main(["sweep", "--techniques", "fp32", "--ppl-text", str(path), "--json", str(out), "--no-store",
                 "--new-tokens", "4", "--repeats", "1", "--mc-max-items", "8"])
    assert code == 0
    ours = json.loads(out.read_text())[0]["perplexity"]
    settings = sweep.SweepSettings()
    direct = direct_perplexity(bundled, text, settings.ppl_window_tokens, settings.ppl_max_tokens,
                               second_half=settings.kld_rule == "llama-perplexity")
    assert ours == pytest.approx(direct, rel=0.01)
