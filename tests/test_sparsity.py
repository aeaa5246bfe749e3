"""Activation sparsity on tiny models: the calibrated threshold, the masked and gather paths, the cache, bad keys."""

import copy
import json

import pytest
import torch
from torch import nn

from core import models, techniques
from core.models import build_tiny_model, load_model, load_tokenizer
from core.techniques import sparsity as S
from core.techniques.moe.plan import record_mlp_inputs
from tests.conftest import needs_bundled

TOKENS = 256  # four windows of the calibration text on the byte-level tiny tokenizer: milliseconds
IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])


def _config(pct, decode="gather"):
    return S.SparsityConfig(pct, decode, calibration_tokens=TOKENS)


def _sparse(tiny_dir, pct, decode="gather"):
    return S.load_sparse(tiny_dir, _config(pct, decode))


def _logits(model, ids=IDS):
    with torch.inference_mode():
        return model(input_ids=ids).logits[0]


@pytest.mark.parametrize("pct", [10, 40, 65, 90])
def test_threshold_hits_the_target_share_of_calibration_activations(tiny_dir, pct):
    dense = load_model(tiny_dir)
    ids = S.calibration_ids(load_tokenizer(tiny_dir), TOKENS)
    names, thresholds, shares = S.calibrate(dense, ids, pct)
    assert len(names) == 2 and all(t > 0 for t in thresholds)
    inputs = record_mlp_inputs(dense, S.gated_mlps(dense), ids)  # measured again, independently of calibrate()
    for name, t, share in zip(names, thresholds, shares):
        zeroed = float((S.gate_magnitudes(S.gated_mlps(dense)[name], inputs[name]) < t).float().mean())
        assert zeroed == pytest.approx(pct / 100, abs=0.005)
        assert share == pytest.approx(zeroed, abs=1e-9)


def test_quantile_threshold_is_exact_on_a_known_tensor():
    values = torch.arange(1, 101, dtype=torch.float32)  # 1..100
    assert S.quantile_threshold(values, 0.4) == 40.5  # 40 values below, 60 at or above
    assert S.quantile_threshold(torch.ones(10), 0.5) == 1.0  # ties stay: nothing below


def test_a_zero_threshold_computes_the_dense_model(tiny_dir):
    dense = load_model(tiny_dir)
    thresholds = S.Thresholds(list(S.gated_mlps(dense)), [0.0, 0.0], [0.0, 0.0], 1, TOKENS, "", str(tiny_dir), 0.0)
    sparse = S.apply_thresholds(copy.deepcopy(dense), thresholds, "gather")
    torch.testing.assert_close(_logits(sparse), _logits(dense), rtol=1e-5, atol=1e-5)


def test_one_percent_stays_close_to_dense_and_more_sparsity_drifts_further(tiny_dir):
    dense = _logits(load_model(tiny_dir)).log_softmax(-1)
    drift = [float((_logits(_sparse(tiny_dir, pct)).log_softmax(-1) - dense).abs().max()) for pct in (1, 40, 90)]
    assert drift[0] < 0.05
    assert drift[0] < drift[1] < drift[2]


def test_gather_decode_matches_the_masked_path_and_reads_fewer_weights(tiny_dir):
    gather, masked = _sparse(tiny_dir, 50, "gather"), _sparse(tiny_dir, 50, "masked")
    with torch.inference_mode():
        for layer_g, layer_m in zip(S.sparse_layers(gather), S.sparse_layers(masked)):
            for seed in range(5):
                x = torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(seed))
                torch.testing.assert_close(layer_g(x), layer_m(x), rtol=1e-5, atol=1e-6)
        # and whole decode steps through the model, with a KV cache, both fed the same tokens: the two paths sum in
        # different orders, so their logits agree to float noise (a generated token could flip on a near-tie)
        tokens = _sparse(tiny_dir, 50, "masked").generate(IDS, max_new_tokens=6, do_sample=False)[0, IDS.shape[1]:]
        for model in (gather, masked):
            out = model(input_ids=IDS, use_cache=True)
            steps, cache = [out.logits[:, -1]], out.past_key_values
            for token in tokens[:-1]:
                out = model(input_ids=token.view(1, 1), past_key_values=cache, use_cache=True)
                steps.append(out.logits[:, -1])
                cache = out.past_key_values
            model.decode_logits = torch.cat(steps)
    torch.testing.assert_close(gather.decode_logits, masked.decode_logits, rtol=1e-4, atol=1e-5)
    facts_g, facts_m = S.variant_facts(gather), S.variant_facts(masked)
    assert facts_g["decode_path"] == "gather" and facts_g["decode_passes_by_path"]["gather"] > 0
    assert facts_g["decode_passes_by_path"]["masked"] == 0 and facts_m["decode_passes_by_path"]["gather"] == 0
    assert 0 < facts_g["sparsity_decode_pct_mean"] < 100
    assert facts_g["sparsity_decode_pct_mean"] == pytest.approx(facts_m["sparsity_decode_pct_mean"])
    held = 10**9
    assert S.bytes_read_per_token(masked, held) == held  # the masked path reads every weight
    skipped = held - S.bytes_read_per_token(gather, held)
    mlp_up_down = sum(layer.up_proj.weight.nbytes + layer.down_t.nbytes for layer in S.sparse_layers(gather))
    assert skipped == pytest.approx(mlp_up_down * facts_g["sparsity_decode_pct_mean"] / 100, abs=1)


def test_higher_target_gives_more_zeros(tiny_dir):
    seen = []
    for pct in (25, 50, 75):
        model = _sparse(tiny_dir, pct)
        model.generate(IDS, max_new_tokens=4, do_sample=False)
        facts = S.variant_facts(model)
        assert facts["sparsity_calibration_pct_mean"] == pytest.approx(pct, abs=0.5)
        seen.append(facts["sparsity_decode_pct_mean"])
    assert seen[0] < seen[1] < seen[2]


def test_thresholds_are_cached_and_the_second_build_calibrates_nothing(tiny_dir, data_dir, monkeypatch):
    runs = []
    real = S.calibrate
    monkeypatch.setattr(S, "calibrate", lambda *a, **k: runs.append(1) or real(*a, **k))
    first = S.layer_thresholds(tiny_dir, _config(40))
    assert S.layer_thresholds(tiny_dir, _config(40)) == first and runs == [1]
    (path,) = (data_dir / "sparsity").glob("*.json")
    assert json.loads(path.read_text())["threshold"] == first.threshold
    assert not list((data_dir / "sparsity").glob(".*tmp"))  # the atomic write leaves no temp file
    S.layer_thresholds(tiny_dir, _config(50))  # another target is another calibration
    assert runs == [1, 1]
    path.write_text('{"layers": [')  # a cut file is calibrated again
    assert S.layer_thresholds(tiny_dir, _config(40)).threshold == first.threshold


@pytest.mark.parametrize("key", ["sparse-0", "sparse-96", "sparse-100", "sparse-x", "sparse-40-fast", "sparse-40-gather"])
def test_bad_keys_are_refused_with_what_to_choose(key):
    with pytest.raises(ValueError, match="1 to 95"):
        techniques.get(key)


def test_any_target_resolves_and_the_words_point_at_the_measured_speed():
    assert techniques.get("sparse-33").config.target_pct == 33
    assert techniques.get("sparse-40").config.decode_path == "gather"
    words = techniques.get("sparse-40").explanation
    assert "about 73% of the feed-forward weights" in words and "compare its measured decode speed" in words
    masked = techniques.get("sparse-40-masked")
    assert masked.config.decode_path == "masked" and "reads every weight" in masked.explanation
    assert techniques.parse_keys("fp32, sparse-40") == ["fp32", "sparse-40"]


def test_a_model_without_gated_mlp_is_refused(tmp_path):
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))

    with pytest.raises(models.ModelError, match="gated MLP"):
        S.check_sparsifiable(Plain())
    with pytest.raises(models.ModelError, match="gated MLP"):
        S.calibrate(Plain(), torch.arange(64), 40)


@pytest.mark.slow
@needs_bundled
def test_bundled_kld_grows_with_sparsity(bundled):
    from core.measure.evaluate import DEFAULT_PPL_TEXT  # the evaluation text, never the calibration text

    tokenizer = load_tokenizer(bundled)
    ids = tokenizer(DEFAULT_PPL_TEXT.read_text(), return_tensors="pt")["input_ids"][:, :256]
    reference = _logits(load_model(bundled), ids).log_softmax(-1)
    kld = {}
    for pct in (25, 65):
        out = _logits(S.load_sparse(bundled, S.SparsityConfig(pct)), ids).log_softmax(-1)
        kld[pct] = float((reference.exp() * (reference - out)).sum(-1).mean())
    assert all(torch.isfinite(torch.tensor(v)) for v in kld.values())
    assert 0 < kld[25] < kld[65], kld
