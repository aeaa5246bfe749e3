"""Every registry entry, built on the tiny model: a new technique is tested the day it is added."""

import pytest
import torch

from core import runtimes, techniques
from core.measure import benchmark
from core.techniques.quantization import QuantConfig


@pytest.fixture(scope="module")
def fp32_bytes(tiny_dir):
    return benchmark.bytes_held(techniques.get("fp32").make(tiny_dir))


def _runner(key, tiny_dir):
    technique = techniques.get(key)
    if reason := runtimes.why_not(technique, technique.runtime, "cpu"):
        pytest.skip(reason)
    return technique, runtimes.load(technique, technique.runtime, tiny_dir, "cpu", threads=2)


@pytest.mark.parametrize("key", list(techniques.TECHNIQUES))
def test_every_technique_builds_and_generates(key, tiny_dir, fp32_bytes):
    technique, runner = _runner(key, tiny_dir)
    try:
        ids = torch.tensor([[5, 6, 7, 8]])
        run = benchmark.timed_generation(runner, ids, new_tokens=4)
        assert len(run.token_ids) == 4
        held = runner.bytes_held()
        # What every variant buys is fewer bytes read per decoded token (the roofline's denominator). For most
        # that is fewer bytes held; a mixture of experts holds every expert but reads only the chosen ones.
        # FP32 weights on another runtime read exactly what the reference reads.
        read = runner.bytes_read_per_token()
        if technique.config == techniques.get(techniques.REFERENCE).config:
            assert held == fp32_bytes == read
        else:
            assert read < fp32_bytes, f"{key} should read fewer bytes per token than fp32"
            assert read <= held
        assert technique.explanation and technique.label and runner.runtime == technique.runtime
    finally:
        runner.close()


@pytest.mark.parametrize("key", list(techniques.TECHNIQUES))
def test_every_technique_stays_close_to_reference_on_tiny(key, tiny_dir):
    _, runner = _runner(key, tiny_dir)
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    try:
        ref = techniques.get("fp32").make(tiny_dir)
        with torch.inference_mode():
            expected = torch.log_softmax(ref(input_ids=ids).logits[0].float(), -1)
        out = runner.window_logprobs(ids)
    finally:
        runner.close()
    assert out.shape == expected.shape
    assert torch.isfinite(out).all()
    # even 2- and 4-bit weights keep a random tiny model's log-probs correlated with the reference
    corr = torch.corrcoef(torch.stack([expected.flatten(), out.flatten()]))[0, 1]
    assert corr > 0.8, f"{key}: correlation {corr:.3f}"


def test_nf4_double_quant_holds_fewer_bytes_than_nf4(tmp_path):
    """Double quantization saves ~3 bytes per 64-weight block but stores a 256-entry codebook per layer:
    it only pays off on layers wider than the tiny model's, so this test builds a wider one."""
    from core.models import build_tiny_model

    if techniques.get("nf4").why_not("cpu"):
        pytest.skip("bitsandbytes unusable here")
    model, tokenizer = build_tiny_model(hidden_size=256, intermediate_size=1024)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    nf4 = benchmark.bytes_held(techniques.get("nf4").make(tmp_path))
    dq = benchmark.bytes_held(techniques.get("nf4-dq").make(tmp_path))
    assert dq < nf4


def test_size_order_on_tiny(tiny_dir):
    sizes = {k: benchmark.bytes_held(techniques.get(k).make(tiny_dir)) for k in ("fp32", "bf16", "int8", "nf4")}
    assert sizes["nf4"] < sizes["int8"] < sizes["bf16"] < sizes["fp32"]


def test_gpu_only_paths_explain_themselves_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert "GPU" in techniques.get("nf4").why_not("cuda")
    assert "CPU only" in techniques.get("dyn-int8").why_not("cuda")


def test_parse_keys_validates():
    assert techniques.parse_keys(" fp32, nf4 ") == ["fp32", "nf4"]
    with pytest.raises(ValueError, match="Unknown technique 'int4'"):
        techniques.parse_keys("fp32,int4")
    with pytest.raises(ValueError, match="twice"):
        techniques.parse_keys("fp32,fp32")
    with pytest.raises(ValueError, match="No techniques"):
        techniques.parse_keys(" , ")


def test_double_quant_only_for_4bit():
    with pytest.raises(ValueError, match="double_quant"):
        QuantConfig("int8", double_quant=True)
