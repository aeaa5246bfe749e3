"""Mixture of experts from a dense model: partition, routing, exactness at k = E, sizes, registry, CLI, page."""

import json

import pytest
import torch

from core import models, techniques
from core.__main__ import main
from core.experiments import moe_sweep
from core.measure import benchmark
from core.runtimes import as_runner
from core.techniques import moe
from core.views import moe_curve
from core.views.tables import moe_rows, moe_view
from tests.conftest import needs_bundled
from tests.factories import make_record, run_queued_jobs_here

IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79, 32, 38]])
FAST = ["--new-tokens", "4", "--repeats", "2", "--warmup", "1", "--mc-max-items", "5"]


@pytest.fixture(scope="module")
def calibration(tiny):
    return moe.calibration_ids(tiny[1], 2048)


@pytest.fixture(scope="module")
def converted(tiny, calibration):
    """The tiny model as 8 experts, top_k set per test (module-scoped: tests put top_k back to 8)."""
    return moe.convert_to_moe(tiny[0], moe.MoEConfig(experts=8, top_k=8), calibration)


def logits(model, ids=IDS):
    with torch.inference_mode():
        return model(input_ids=ids).logits


# ---------------------------------------------------------------- config and partition


@pytest.mark.parametrize("kwargs,message", [
    (dict(experts=8, top_k=9), "top_k must be between 1 and the 8 routed experts, got top_k=9"),
    (dict(experts=8, top_k=7, shared=2), "top_k must be between 1 and the 6 routed experts, got top_k=7"),
    (dict(experts=8, top_k=1, shared=7), "shared experts must be between 0 and 6"),
    (dict(experts=8, top_k=0), "got top_k=0"),
    (dict(experts=1, top_k=1), "experts must be at least 2, got 1"),
    (dict(calibration_tokens=10), "calibration_tokens"),
])
def test_config_refuses_bad_values_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        moe.MoEConfig(**kwargs)


def test_partition_covers_every_neuron_exactly_once_in_equal_groups():
    torch.manual_seed(0)
    features = torch.randn(96, 16)
    groups = moe.partition_neurons(features, 8, seed=0)
    assert len(groups) == 8 and all(len(g) == 12 for g in groups)
    assert sorted(torch.cat(groups).tolist()) == list(range(96))
    again = moe.partition_neurons(features, 8, seed=0)
    # integer neuron indices, not floats: exact equality is the right check for determinism
    assert all(torch.equal(a, b) for a, b in zip(groups, again))


def test_partition_groups_neurons_that_fire_together():
    """Neurons active on the same quarter of the tokens come back as those 4 groups."""
    torch.manual_seed(0)
    truth = torch.arange(64) % 4
    tokens = torch.arange(200) % 4
    features = (truth[:, None] == tokens[None, :]).float() + 0.05 * torch.rand(64, 200)  # [m, N]
    groups = moe.partition_neurons(features, 4, seed=1)
    assert sorted(tuple(sorted(set(truth[g].tolist()))) for g in groups) == [(0,), (1,), (2,), (3,)]


def test_balanced_assignment_respects_capacity():
    sim = torch.zeros(6, 2)
    sim[:, 0] = 1.0  # every row prefers group 0
    labels = moe.balanced_assignment(sim, capacity=3)
    assert torch.bincount(labels).tolist() == [3, 3]


@pytest.mark.parametrize("intermediate,experts,message", [
    (128, 3, "128 neurons do not split into 3 equal experts; choose experts from \\[2, 4, 8, 16\\]"),
    (128, 32, "leaves 4 neurons per expert"),
])
def test_neuron_count_that_does_not_split_sensibly_is_refused(intermediate, experts, message):
    with pytest.raises(ValueError, match=message):
        moe.neurons_per_expert(intermediate, experts)


def test_router_fit_recovers_a_linear_rule():
    torch.manual_seed(0)
    x = torch.randn(500, 8)
    w = torch.randn(4, 8)
    importance = torch.softmax(x @ w.T, dim=-1)
    rw, rb = moe.fit_router(x, importance)
    assert moe.routing_recall(torch.nn.functional.linear(x, rw, rb), importance, 1) > 0.8


# ---------------------------------------------------------------- the converted model


def test_all_experts_reproduce_the_dense_logits(tiny, converted):
    moe.set_top_k(converted, 8)
    assert (logits(converted) - logits(tiny[0])).abs().max() < 1e-4


def test_coactivation_features_measure_each_neurons_contribution():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gate = up = torch.eye(2)
    down = torch.tensor([[3.0, 0.0], [4.0, 0.0]])  # neuron 0's down column has norm 5, neuron 1's 0
    features = moe.coactivation_features(x, gate, up, down, torch.nn.functional.silu)
    assert features.shape == (2, 2)
    assert features[0, 0] == pytest.approx(5 * torch.nn.functional.silu(torch.tensor(1.0)).item())
    assert features[1].abs().sum() == 0 and features[0, 1] == 0


def test_first_mlp_stays_dense_by_default(tiny, converted):
    assert isinstance(converted.model.layers[0].mlp, type(tiny[0].model.layers[0].mlp))
    assert isinstance(converted.model.layers[1].mlp, moe.MoEMLP)
    every = moe.convert_to_moe(tiny[0], moe.MoEConfig(experts=8, top_k=8, dense_layers=0),
                               moe.calibration_ids(tiny[1], 256))
    assert len(moe.moe_layers(every)) == 2 and (logits(every) - logits(tiny[0])).abs().max() < 1e-4
    with pytest.raises(ValueError, match="dense_layers=2 would leave none of the model's 2 MLP layers"):
        moe.convert_to_moe(tiny[0], moe.MoEConfig(dense_layers=2), moe.calibration_ids(tiny[1], 256))


def test_skipped_experts_contribute_their_mean(converted):
    layer = moe.moe_layers(converted)[0]
    x = torch.randn(1, 64)
    moe.set_top_k(converted, 1)
    try:
        with torch.inference_mode():
            e = layer.select_experts(x)[0, 0].item()
            others = [j for j in range(8) if j != e]
            expected = moe.expert_outputs(x, layer.gate_up, layer.down_t, layer.act_fn, e) + layer.mean_out[others].sum(0)
            assert torch.allclose(layer(x[None])[0], expected, atol=1e-5)
    finally:
        moe.set_top_k(converted, 8)


def test_dispatch_path_with_every_expert_equals_the_dense_mlp(tiny, converted):
    layer = moe.moe_layers(converted)[0]
    dense_mlp = tiny[0].model.layers[1].mlp
    x = torch.randn(7, 64)
    with torch.inference_mode():
        every = torch.arange(8).expand(7, 8)
        assert (layer.dispatch(x, every) - dense_mlp(x)).abs().max() < 1e-5
        assert (layer.dispatch(x[:1], every[:1]) - dense_mlp(x[:1])).abs().max() < 1e-5  # decode path


def test_conversion_leaves_the_input_model_untouched(tiny, calibration):
    model = tiny[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moe.convert_to_moe(model, moe.MoEConfig(experts=4, top_k=1), calibration)
    after = model.state_dict()
    # the same stored tensors, never recomputed: any change at all is a bug, so exact equality
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not moe.moe_layers(model)


@pytest.mark.parametrize("top_k", [1, 2, 5])
def test_routing_runs_exactly_k_distinct_experts_per_token(converted, top_k):
    import copy

    layer = copy.deepcopy(moe.moe_layers(converted)[0])
    layer.top_k = top_k
    x = torch.randn(9, 64)
    chosen = layer.select_experts(x)
    assert chosen.shape == (9, top_k)
    assert all(len(set(row)) == top_k for row in chosen.tolist())
    with torch.inference_mode():
        expected = layer.mean_total + sum(layer.expert(x[:1], e) for e in chosen[0].tolist())
        before = layer(x[None])
        # Poison every expert token 0 did not choose: the decode path must never read them.
        skipped = [e for e in range(8) if e not in chosen[0].tolist()]
        layer.gate_up[skipped] = float("nan")
        layer.down_t[skipped] = float("nan")
        out = layer(x[:1][None])[0]
    assert torch.isfinite(out).all() and torch.allclose(out, expected, atol=1e-5)
    calls = []
    original = layer.expert
    layer.expert = lambda h, e: calls.append((h.shape[0], e)) or original(h, e)
    with torch.inference_mode():
        moe.MoEMLP.dispatch(layer, x, chosen)  # nine tokens: the multi-token path
    assert sum(n for n, _ in calls) == 9 * top_k  # each token seen by exactly its k experts
    assert torch.isfinite(before).all()


def test_fewer_experts_change_the_output_and_one_model_serves_every_k(tiny, converted):
    dense = logits(tiny[0])
    diffs = []
    for k in (1, 4, 8):
        moe.set_top_k(converted, k)
        diffs.append((logits(converted) - dense).abs().max().item())
    assert diffs[0] > 1e-4 and diffs[-1] < 1e-4
    with pytest.raises(ValueError, match="got top_k=9"):
        moe.set_top_k(converted, 9)


def test_active_params_flops_and_bytes_read_fall_with_k(tiny, converted):
    dense = tiny[0]
    dense_total = moe.total_params(dense)
    assert moe.dense_params(converted) == dense_total
    assert moe.active_params(converted, 8) == dense_total + moe.router_params(converted)
    actives = [moe.active_params(converted, k) for k in (1, 2, 4, 8)]
    flops = [moe.flops_per_token(converted, k) for k in (1, 2, 4, 8)]
    assert actives == sorted(actives) and flops == sorted(flops) and len(set(actives)) == 4
    # each expert of a layer holds 3 * n * d weights; going from k to k+1 adds one per layer
    per_expert = 3 * 16 * 64 * len(moe.moe_layers(converted))
    assert actives[1] - actives[0] == per_expert
    assert flops[1] - flops[0] == 2 * per_expert
    held = benchmark.bytes_held(converted)
    moe.set_top_k(converted, 2)
    assert moe.bytes_read_per_token(converted, held) == held - 4 * 6 * per_expert
    moe.set_top_k(converted, 8)
    assert moe.bytes_read_per_token(converted, held) == held


def test_a_model_without_a_gated_mlp_is_refused_by_name(calibration):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300, n_positions=64))
    with pytest.raises(ValueError, match=r"needs a gated MLP \(gate_proj, up_proj, down_proj\).*gpt2 \(GPT2LMHeadModel\)"):
        moe.convert_to_moe(gpt2, moe.MoEConfig(), calibration)


def test_conversion_can_be_stopped(tiny, calibration):
    with pytest.raises(moe.ConversionCancelled, match="layer 1 of 2"):
        moe.convert_to_moe(tiny[0], moe.MoEConfig(), calibration, should_stop=lambda: True)


# ---------------------------------------------------------------- registry, cache, build


def test_registry_builds_any_experts_and_k_and_caches_the_conversion(tiny_dir, tiny):
    t = techniques.get("moe-4x1")
    assert t.family == "moe" and t.config == moe.MoEConfig(experts=4, top_k=1)
    first = t.make(tiny_dir)
    cached = list(moe.cache_root().glob("*-E4-*"))
    assert len(cached) == 1 and (cached[0] / moe.PLAN_FILE).is_file() and (cached[0] / moe.EXPERTS_FILE).is_file()
    second = techniques.get("moe-4x4").make(tiny_dir)  # same E: loads the cached plan, no new conversion
    assert list(moe.cache_root().glob("*-E4-*")) == cached
    assert (logits(second) - logits(tiny[0])).abs().max() < 1e-4
    in_memory = moe.convert_to_moe(tiny[0], t.config, moe.calibration_ids(tiny[1], t.config.calibration_tokens))
    # the cached experts are the same conversion; the router is a least-squares fit whose last digits
    # depend on BLAS threading, so the logits agree to float noise, not bit for bit
    torch.testing.assert_close(logits(first), logits(in_memory), rtol=1e-4, atol=1e-5)
    assert moe.moe_layers(first)[0].top_k == 1
    facts = t.facts(first)
    assert facts["experts"] == 4 and facts["top_k"] == 1 and facts["active_params_pct"] < 100
    assert t.bytes_read_per_token(first, benchmark.bytes_held(first)) < benchmark.bytes_held(first)
    with pytest.raises(ValueError, match="got top_k=5"):
        techniques.get("moe-4x5")


def test_sweep_records_carry_moe_facts_and_roofline_uses_bytes_read(data_dir):
    from core.experiments import sweep

    settings = sweep.SweepSettings(new_tokens=4, repeats=1, warmup_runs=0, mc_max_items=4, ppl_window_tokens=64,
                                   ppl_max_tokens=128)
    fp32, one = sweep.run_sweep("tiny-random-llama", ["fp32", "moe-8x1"], settings)
    assert fp32.variant_facts["active_params_pct"] == 100.0 and fp32.variant_facts["top_k"] is None
    assert one.variant_facts["top_k"] == 1 and one.variant_facts["active_params"] < fp32.variant_facts["active_params"]
    assert abs(one.size_mb - fp32.size_mb) / fp32.size_mb < 0.05  # holds about the same bytes as dense...
    bytes_read = one.bandwidth_gb_s * 1e9 / one.roofline_tokens_per_s
    assert bytes_read < one.size_mb * 1e6 * 0.9  # ...but reads fewer per token


# ---------------------------------------------------------------- a model that is already a mixture of experts


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory, tiny):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(vocab_size=len(tiny[1]), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=256)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mixtral") / "tiny-mixtral"
    MixtralForCausalLM(config).save_pretrained(path)
    tiny[1].save_pretrained(path)
    return path


def test_native_moe_changes_experts_per_token_without_converting(tiny_mixtral):
    assert moe.native_moe_of(tiny_mixtral) == (4, 2)
    shipped = moe.load_moe(tiny_mixtral, moe.MoEConfig(experts=4, top_k=2))
    one = moe.load_moe(tiny_mixtral, moe.MoEConfig(experts=4, top_k=1))
    assert one.config.num_experts_per_tok == 1
    assert (logits(one) - logits(shipped)).abs().max() > 1e-5
    facts = moe.variant_facts(one)
    assert facts["native_moe"] and facts["experts"] == 4 and facts["top_k"] == 1
    assert facts["active_params"] < moe.variant_facts(shipped)["active_params"]
    with pytest.raises(ValueError, match="already has 4 experts per layer; choose experts=4"):
        moe.load_moe(tiny_mixtral, moe.MoEConfig(experts=8, top_k=1))


# ---------------------------------------------------------------- CLI


def test_cli_writes_the_dense_record_and_one_per_k(tmp_path, capsys):
    out = tmp_path / "moe.json"
    code = main(["moe", "--model", "tiny-random-llama", "--experts", "8", "--top-k", "1,8", "--json", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())
    assert [r["technique"] for r in rows] == ["fp32", "moe-8x1", "moe-8x8"]
    for r in rows:
        for field in ("experts", "top_k", "active_params", "active_params_pct", "flops_per_token",
                      "decode_tokens_per_s_median", "perplexity", "kld_mean", "top1_agreement", "mc_accuracy"):
            assert field in r, field
    dense, k1, k8 = rows
    assert k1["experts"] == 8 and k1["top_k"] == 1 and k1["active_params"] < dense["active_params"]
    # all 8 experts = the dense MLP summed in another order: float noise may flip a near-tied argmax
    assert k8["kld_mean"] < 1e-6 and k8["top1_agreement"] > 0.98
    assert k1["kld_mean"] > k8["kld_mean"]


@pytest.mark.parametrize("args,message", [
    (["--top-k", "1,9"], "top_k must be between 1 and the 8 routed experts, got top_k=9"),
    (["--experts", "3", "--top-k", "1"], "128 neurons do not split into 3 equal experts"),
    (["--experts", "32", "--top-k", "1"], "leaves 4 neurons per expert"),
    (["--top-k", "one,two"], "--top-k: expected comma-separated whole numbers"),
    (["--top-k", "2,2"], "listed twice"),
])
def test_cli_bad_input_exits_2_with_one_line(args, message, capsys):
    assert main(["moe", "--model", "tiny-random-llama", "--no-store", *args, *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]
    assert sum(line.startswith("error:") for line in err) == 1


def test_cli_refuses_a_model_without_a_gated_mlp(tmp_path, tiny, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tiny[1]), n_positions=64)).save_pretrained(tmp_path)
    tiny[1].save_pretrained(tmp_path)
    assert main(["moe", "--model", str(tmp_path), "--no-store", "--top-k", "1", *FAST]) == 2
    assert "needs a gated MLP" in capsys.readouterr().err


# ---------------------------------------------------------------- figure and table


def moe_records(hardware="cpu-box", run_id="r1"):
    common = dict(model="smollm2-135m-instruct", hardware=hardware, run_id=run_id, sample_prompt="Why is the sky blue?")
    dense = make_record(technique="fp32", label="FP32 (reference)", sample_generation="Because of scattering.",
                        variant_facts=dict(experts=None, top_k=None, active_params=134e6, active_params_pct=100.0,
                                           flops_per_token=268e6, dense_flops_per_token=268e6), **common)
    ks = [make_record(technique=f"moe-8x{k}", family="moe", label=f"MoE {k} of 8 experts",
                      decode_tokens_per_s_median=40.0 - 3 * k, decode_tokens_per_s_p10=38.0 - 3 * k,
                      decode_tokens_per_s_p90=42.0 - 3 * k, kld_mean=1.0 / k if k < 8 else 0.0,
                      sample_generation=f"Answer with {k} experts.",
                      variant_facts=dict(experts=8, top_k=k, dense_layers=1, active_params=(55 + 10 * k) * 1e6,
                                         active_params_pct=(55 + 10 * k) / 1.34, flops_per_token=(110 + 20 * k) * 1e6,
                                         dense_flops_per_token=268e6), **common)
          for k in (1, 2, 4, 8)]
    return dense, ks


def test_moe_curve_has_one_line_per_expert_count_and_the_dense_star():
    dense, ks = moe_records()
    fig = moe_curve.moe_curve_figure([*ks, dense])
    names = [t.name for t in fig.data]
    assert names == ["8 experts", moe_curve.DENSE_NAME]
    assert list(fig.data[0].text) == ["k=1 · 12%", "k=2 · 25%", "k=4 · 50%", "k=8 · 100%"]  # share of MLP neurons run
    assert fig.layout.yaxis.autorange == "reversed"  # KLD: lower is better, drawn up
    assert "Active parameters" in fig.data[0].customdata[0]
    assert "No mixture-of-experts" in moe_curve.moe_curve_figure([dense]).layout.annotations[0].text
    with pytest.raises(ValueError, match="machines"):
        moe_curve.moe_curve_figure([*ks, make_record(hardware="other")])


def test_moe_view_prefers_the_reference_of_the_same_run():
    dense, ks = moe_records()
    later_dense = make_record(technique="fp32", run_id="r2", created_at="2025-07-01T00:00:00+00:00")
    reference, chosen = moe_view([later_dense, *ks, dense], experts=8)
    assert reference is dense and [r.variant_facts["top_k"] for r in chosen] == [1, 2, 4, 8]
    rows = moe_rows(chosen, reference)
    assert rows[0]["variant"] == "FP32 (reference)" and rows[1]["speed-up vs dense"] == pytest.approx(37 / 20)
    assert moe_view([dense], experts=8) == (dense, [])


# ---------------------------------------------------------------- the page


def test_page_empty_store_guides_the_user():
    from tests.test_pages import no_errors, page

    at = page("pages/moe.py").run()
    no_errors(at)
    assert any("Convert and measure" in i.value for i in at.info)
    assert at.selectbox[0].value == 8 and at.multiselect[0].value == [1, 2, 4, 8]


def test_page_shows_the_curve_slider_and_side_by_side():
    from core.store import ResultStore
    from tests.test_pages import HERE, no_errors, page

    dense, ks = moe_records(hardware=HERE)
    store = ResultStore()
    for r in [dense, *ks]:
        store.add(r)
    at = page("pages/moe.py").run()
    no_errors(at)
    assert "k=2" in at.get("plotly_chart")[0].proto.spec
    texts = [t.value for t in at.text]
    assert "Because of scattering." in texts and "Answer with 4 experts." in texts  # the slider starts mid-way
    at.select_slider[0].set_value("1 of 8").run()
    no_errors(at)
    assert "Answer with 1 experts." in [t.value for t in at.text]
    assert len(at.dataframe[0].value) == 5


def test_page_says_what_a_measured_routing_ceiling_means(data_dir):
    from core.experiments import moe_ceiling
    from core.store import ResultStore
    from tests.test_pages import HERE, no_errors, page

    dense, ks = moe_records(hardware=HERE)
    store = ResultStore()
    for r in [dense, *ks]:
        store.add(r)
    config = moe.MoEConfig(experts=8, top_k=2)
    path = moe_ceiling.ceiling_path("smollm2-135m-instruct", config, "ab" * 32, "llama-perplexity")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(dict(technique="moe-8x2", kld_router_nats=1.17, kld_oracle_nats=0.93, positions=1530,
                                    rule="llama-perplexity", text_sha256="ab" * 32, measured_at="2026-12-07T18:00:00")))
    at = page("pages/moe.py").run()
    no_errors(at)
    said = " ".join(m.value for m in at.markdown)
    assert "**MoE 2 of 8 experts** is 1.17 nats" in said and "would still leave 0.93 nats" in said
    assert "the loss is in skipping experts" in said  # an oracle wins back only a fifth: routing is not the gap


def test_page_button_queues_a_conversion_and_sweep_for_the_worker(monkeypatch):
    from core.store import ResultStore
    from tests.test_pages import HERE, no_errors, page

    calls = {}

    def fake(model, experts, top_ks, settings, store=None, progress=None, should_stop=None, dense_layers=1, shared=0):
        calls["args"] = (model, experts, top_ks)
        dense, ks = moe_records(hardware=HERE)
        for r in [dense, *ks]:
            store.add(r)
        return []

    monkeypatch.setattr(moe_sweep, "run_moe_sweep", fake)
    at = page("pages/moe.py").run()
    at.button[0].click().run()
    run_queued_jobs_here()  # the job's body, in this process so that the fake applies
    assert calls["args"] == ("smollm2-135m-instruct", 8, [1, 2, 4, 8])
    assert len(ResultStore().all()) == 5
    no_errors(at)


def test_page_heals_on_the_public_text_only_where_it_lies_beside_the_lab(monkeypatch, tmp_path):
    from core import paths
    from core.views import moe_text
    from tests.test_pages import no_errors, page

    monkeypatch.setattr(paths, "shared_wikitext", lambda: None)
    at = page("pages/moe.py").run()
    assert moe_text.HEAL_PUBLIC not in next(b for b in at.selectbox if b.label == "Heal on").options

    wiki = tmp_path / "wikitext-2-raw-v1.test.txt"
    wiki.write_text(" = A heading = \n\n A paragraph of public prose .\n")
    monkeypatch.setattr(paths, "shared_wikitext", lambda: wiki)
    calls = {}
    monkeypatch.setattr(moe_sweep, "heal_and_measure", lambda model, config, minutes, settings, **kw: calls.update(
        top_k=config.top_k, minutes=minutes, corpus=kw["corpus_path"]) or [])
    at = page("pages/moe.py").run()
    at.multiselect[0].set_value([2])
    next(n for n in at.number_input if n.label.startswith("Heal the carve")).set_value(5.0)
    at.run()
    next(b for b in at.selectbox if b.label == "Heal on").set_value(moe_text.HEAL_PUBLIC)
    at.run()
    at.button[0].click().run()
    no_errors(at)
    run_queued_jobs_here()
    assert calls == {"top_k": 2, "minutes": 5.0, "corpus": wiki}


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
@needs_bundled
def test_bundled_model_with_every_expert_matches_dense_logits(bundled):
    """29 of the 30 MLPs split and routed on 256 calibration tokens: with every expert running, the split must give
    the dense logits whatever the calibration chose. (On the default 2,048 tokens, spherical k-means over 2,048
    features per neuron took nearly a minute of a 2-core machine; 256 gives the same 5e-5 agreement in 7 s.)"""
    from core import models

    dense = models.load_model(bundled)
    tokenizer = models.load_tokenizer(bundled)
    converted = moe.convert_to_moe(dense, moe.MoEConfig(experts=8, top_k=8, calibration_tokens=256),
                                   moe.calibration_ids(tokenizer, 256))
    ids = torch.tensor([tokenizer("The library in the old town opens at nine, and the children arrive early "
                                  "to read about volcanoes, rivers and the stars.")["input_ids"]])
    assert (logits(converted, ids) - logits(dense, ids)).abs().max() < 1e-3
    moe.set_top_k(converted, 2)
    assert (logits(converted, ids) - logits(dense, ids)).abs().max() > 1e-2  # k < E really changes the computation


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no NVIDIA GPU visible")
def test_moe_runs_on_cuda(tiny_dir, tiny):
    model = techniques.get("moe-8x2").make(tiny_dir, "cuda")
    assert next(model.parameters()).device.type == "cuda"
    run = benchmark.timed_generation(as_runner(model, "cuda"), IDS.cuda(), 4, device="cuda")
    assert len(run.token_ids) == 4
    moe.set_top_k(model, 8)
    assert (logits(model, IDS.cuda()).cpu() - logits(tiny[0])).abs().max() < 1e-3


# ---------------------------------------------------------------- shared experts (always on)


def test_firing_rate_counts_the_tokens_on_which_a_neuron_is_a_top_contributor():
    features = torch.tensor([[9.0, 9.0, 9.0, 9.0],   # neuron 0: a top contributor on every token
                             [0.0, 5.0, 0.0, 0.0],   # neuron 1: on one token of four
                             [1.0, 0.0, 1.0, 1.0],
                             [0.0, 0.0, 0.0, 0.0]])
    rate = moe.firing_rate(features, top_share=0.5)  # the top 2 of 4 neurons fire on each token
    assert rate[0] == 1.0 and rate[1] == 0.25 and rate[2] == 0.75 and rate[3] == 0.0


def test_shared_experts_take_the_most_often_firing_neurons_and_routed_ones_split_the_rest():
    torch.manual_seed(0)
    features = torch.rand(64, 50)
    busy = torch.tensor([3, 7, 11, 20, 30, 41, 52, 63])
    features[busy] += 10.0  # these eight fire on every token
    groups = moe.shared_and_routed(features, experts=8, shared=1)
    assert len(groups) == 8 and all(g.numel() == 8 for g in groups)
    assert groups[0].tolist() == busy.tolist()
    assert sorted(torch.cat(groups).tolist()) == list(range(64))  # every neuron exactly once


@pytest.mark.parametrize("key,shape", [("moe-8x1-s2", (8, 1, 1, 2)), ("moe-8x2", (8, 2, 1, 0)),
                                       ("moe-16x2-s4-d0", (16, 2, 0, 4))])
def test_shared_keys_round_trip(key, shape):
    assert moe.parse_technique_key(key) == shape
    assert moe.technique_key(shape[0], shape[1], shape[2], shape[3]) == key
    assert techniques.get(key).config == moe.MoEConfig(experts=shape[0], top_k=shape[1], dense_layers=shape[2],
                                                       shared=shape[3])


def test_shared_experts_always_run_and_every_expert_still_reproduces_the_dense_model(tiny, calibration):
    shared = moe.convert_to_moe(tiny[0], moe.MoEConfig(experts=8, top_k=1, shared=2), calibration)
    layer = moe.moe_layers(shared)[0]
    assert layer.shared == 2 and layer.router.out_features == 6
    x = torch.randn(5, 64)
    chosen = layer.select_experts(x)
    assert chosen.shape == (5, 3) and (chosen[:, :2] == torch.tensor([0, 1])).all() and (chosen[:, 2] >= 2).all()
    with torch.inference_mode():
        expected = layer.mean_total + sum(layer.expert(x[:1], e) for e in chosen[0].tolist())
        assert torch.allclose(layer(x[:1][None])[0], expected, atol=1e-5)  # the one-token decode path
        assert torch.allclose(layer.dispatch(x, chosen)[:1], expected, atol=1e-5)  # the many-token path agrees
    assert moe.expert_groups(shared)[0].inactive_share() == pytest.approx(5 / 8)
    moe.set_top_k(shared, 6)
    assert (logits(shared) - logits(tiny[0])).abs().max() < 1e-4
    with pytest.raises(ValueError, match="the 6 routed experts, got top_k=7"):
        moe.set_top_k(shared, 7)


# ---------------------------------------------------------------- healing a carve by distillation


def moved(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether training changed a weight: more than float noise between two loads (1e-6), far less than a step."""
    return float((a - b).abs().max()) > 1e-6


def test_healing_trains_only_the_experts_saves_them_and_measures_dense_carve_and_healed(data_dir, monkeypatch):
    from core.experiments import sweep
    from core.techniques import distillation

    now = [0.0]
    monkeypatch.setattr(distillation.time, "perf_counter", lambda: now.__setitem__(0, now[0] + 2.0) or now[0])
    settings = sweep.SweepSettings(new_tokens=4, repeats=1, warmup_runs=0, mc_max_items=4, ppl_window_tokens=64,
                                   ppl_max_tokens=128)
    config = moe.MoEConfig(experts=4, top_k=1, shared=1)
    dense, carve, healed = moe_sweep.heal_and_measure("tiny-random-llama", config, 1, settings, answer_tokens=8)
    assert (dense.technique, carve.technique) == ("fp32", "moe-4x1-s1")
    assert healed.technique.startswith("moe-4x1-s1-healed-") and healed.family == "moe"
    facts = healed.variant_facts["healed"]
    assert facts["heal_curve"][-1]["train_minutes"] >= 1 and facts["steps"] > 0
    assert healed.variant_facts["shared_experts"] == 1 and healed.variant_facts["top_k"] == 1
    assert healed.kld_mean != carve.kld_mean  # the experts changed
    built = techniques.get(healed.technique)
    assert built.label.startswith("MoE 1 shared + 1 of 3 routed experts, healed")
    model = built.make(moe.plan.models.prepare(moe.plan.models.resolve("tiny-random-llama")))
    carved = techniques.get("moe-4x1-s1").make(moe.plan.models.prepare(moe.plan.models.resolve("tiny-random-llama")))
    first, plain = moe.moe_layers(model)[0], moe.moe_layers(carved)[0]
    # two loads of the carve: compare with a tolerance far below what one training step moves a weight
    assert moved(first.gate_up, plain.gate_up) and not moved(first.router.weight, plain.router.weight)


def test_healing_everything_but_the_router_and_embeddings_saves_and_restores_those_tensors(data_dir, monkeypatch,
                                                                                            tmp_path):
    from core.experiments import sweep
    from core.techniques import distillation

    now = [0.0]
    monkeypatch.setattr(distillation.time, "perf_counter", lambda: now.__setitem__(0, now[0] + 2.0) or now[0])
    monkeypatch.setattr(distillation, "bf16_steps", lambda _settings, _device: True)  # the expert dispatch in bf16 too
    text = tmp_path / "heal.txt"
    text.write_text("\n\n".join(f"Paragraph {i} says the river rose and the town moved uphill." for i in range(40)))
    settings = sweep.SweepSettings(new_tokens=4, repeats=1, warmup_runs=0, mc_max_items=4, ppl_window_tokens=64,
                                   ppl_max_tokens=128)
    config = moe.MoEConfig(experts=4, top_k=1, shared=1)
    _, _, healed = moe_sweep.heal_and_measure("tiny-random-llama", config, 1, settings, answer_tokens=8,
                                              scope="all", corpus_path=text)
    facts = healed.variant_facts["healed"]
    assert facts["scope"] == "all" and "heal.txt" in facts["corpus"]
    built = techniques.get(healed.technique)
    assert built.label.endswith("(all layers)") and "router and embeddings frozen" in built.explanation
    checkpoint = moe.plan.models.prepare(moe.plan.models.resolve("tiny-random-llama"))
    model, carved = built.make(checkpoint), techniques.get("moe-4x1-s1").make(checkpoint)
    attention = lambda m: m.model.layers[1].self_attn.q_proj.weight  # noqa: E731
    assert moved(attention(model), attention(carved))  # attention trained and came back from disk
    assert not moved(moe.moe_layers(model)[0].router.weight, moe.moe_layers(carved)[0].router.weight)
    assert not moved(model.get_input_embeddings().weight, carved.get_input_embeddings().weight)


def test_heal_scope_all_trains_attention_and_norms_but_never_the_router_or_token_table(converted):
    try:
        trained = {id(p) for p in moe.healed.heal_parameters(converted, "all")}
        layer = moe.moe_layers(converted)[0]
        assert id(layer.gate_up) in trained and id(layer.down_t) in trained
        assert id(converted.model.layers[1].self_attn.o_proj.weight) in trained
        assert id(converted.model.norm.weight) in trained
        assert id(layer.router.weight) not in trained
        assert id(converted.get_input_embeddings().weight) not in trained
        experts_only = moe.healed.heal_parameters(converted, "experts")
        assert not converted.model.layers[1].self_attn.o_proj.weight.requires_grad  # the narrower scope re-froze it
        assert len(experts_only) == 2 * len(moe.moe_layers(converted))
        with pytest.raises(ValueError, match="What heals is one of"):
            moe.healed.heal_parameters(converted, "router")
    finally:
        for p in converted.parameters():
            p.requires_grad_(False)


def test_healing_is_refused_for_several_settings_at_once_or_a_budget_under_a_minute():
    from core.launch.kinds import MoeArgs

    with pytest.raises(ValueError, match="Heal one setting at a time"):
        MoeArgs("smollm2-135m-instruct", 8, (1, 2), heal_minutes=5)
    with pytest.raises(ValueError, match="at least 1 minute"):
        MoeArgs("smollm2-135m-instruct", 8, (1,), heal_minutes=0.5)
    with pytest.raises(ValueError, match="no carved experts to heal"):
        moe.healed.heal_parameters(torch.nn.Linear(2, 2), "experts")
    with pytest.raises(ValueError, match="What heals is one of"):
        MoeArgs("smollm2-135m-instruct", 8, (1,), heal_minutes=5, heal_scope="router")
    with pytest.raises(ValueError, match="only counts with a healing budget"):
        MoeArgs("smollm2-135m-instruct", 8, (1,), heal_corpus=__file__)
    with pytest.raises(ValueError, match="is not a file"):
        MoeArgs("smollm2-135m-instruct", 8, (1,), heal_minutes=5, heal_corpus="/no/such/text.txt")


# ---------------------------------------------------------------- routing ceiling (an oracle router, for analysis)


def test_the_oracle_runs_each_tokens_largest_experts_and_equals_dense_with_every_expert(tiny, converted):
    layer = moe.moe_layers(converted)[0]
    x = torch.randn(5, 64)
    moe.set_top_k(converted, 2)
    try:
        with torch.inference_mode():
            outputs = torch.stack([layer.expert(x, e) for e in range(8)], 1)  # [5, 8, d], means removed
            best = outputs.norm(dim=-1).topk(2, dim=-1).indices
            expected = layer.mean_total + outputs.gather(1, best[..., None].expand(-1, -1, 64)).sum(1)
            assert torch.allclose(layer.oracle(x[None])[0], expected, atol=1e-5)
        moe.set_top_k(converted, 8)
        with torch.inference_mode():
            assert torch.allclose(layer.oracle(x[None])[0], tiny[0].model.layers[1].mlp(x[None])[0], atol=1e-4)
    finally:
        moe.set_top_k(converted, 8)


def test_routing_ceiling_is_measured_once_and_no_worse_than_the_router(data_dir, capsys):
    from core.experiments import moe_ceiling

    out = data_dir / "ceiling.json"
    code = main(["moe", "--model", "tiny-random-llama", "--experts", "8", "--top-k", "2", "--routing-ceiling",
                 "--json", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    (row,) = json.loads(out.read_text())
    assert row["technique"] == "moe-8x2" and row["positions"] > 0
    # the oracle picks, per token, the experts whose output differs most from their mean: on the measured text it
    # is at least as close to the dense model as a router fitted on other text (allowing float noise)
    assert 0 <= row["kld_oracle_nats"] <= row["kld_router_nats"] * 1.05
    assert "with an oracle router" in capsys.readouterr().err
    (cached,) = moe_ceiling.cached_ceilings(models.resolve("tiny-random-llama").key)
    assert cached.kld_router_nats == row["kld_router_nats"]  # the page reads what the command kept


def test_the_oracle_needs_a_mixture_of_experts(tiny):
    from core.experiments import moe_ceiling

    with pytest.raises(ValueError, match="no carved experts"):
        with moe_ceiling.oracle_routing(tiny[0]):
            pass
