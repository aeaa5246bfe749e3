"""Depth pruning by measured redundancy on tiny models: block influence, its cache, and the layers it keeps."""

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from core.cli import main
from core.models import build_tiny_model, load_model, load_tokenizer
from core.techniques import depth, distillation as D
from core.views import distill as distill_view

TOKENS = 128  # two windows of the calibration text on the byte-level tiny tokenizer: milliseconds


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory):
    """A 6-layer tiny Llama (random weights) whose layer 2 is an identity: its attention and MLP write nothing."""
    _, tokenizer = build_tiny_model(seed=0)
    config = build_tiny_model(seed=0)[0].config
    config.num_hidden_layers = 6
    torch.manual_seed(1)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    target = tmp_path_factory.mktemp("deep") / "tiny-deep-llama"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def test_scores_one_per_layer_in_range_and_deterministic(tiny_dir, data_dir):
    scores = depth.layer_scores(tiny_dir, TOKENS)
    assert scores.layers == 2 and all(0 <= s <= 2 for s in scores.influence)
    assert scores.calibration_tokens == TOKENS and len(scores.calibration_sha256) == 64
    again = depth.block_influence(load_model(tiny_dir), torch.tensor(_ids(tiny_dir)))
    assert again == depth.block_influence(load_model(tiny_dir), torch.tensor(_ids(tiny_dir)))
    assert again == pytest.approx(scores.influence, abs=1e-9)


def _ids(checkpoint):
    return depth.calibration_ids(load_tokenizer(checkpoint), TOKENS).tolist()


def test_scores_are_cached_and_the_second_call_runs_no_model(tiny_dir, data_dir, monkeypatch):
    runs = []
    real = depth.block_influence
    monkeypatch.setattr(depth, "block_influence", lambda *a, **k: runs.append(1) or real(*a, **k))
    first = depth.layer_scores(tiny_dir, TOKENS)
    second = depth.layer_scores(tiny_dir, TOKENS)
    assert runs == [1] and second == first
    cached = list((data_dir / "depth").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["influence"] == first.influence
    assert not list((data_dir / "depth").glob("*.tmp"))  # the atomic write leaves no temp file behind
    depth.layer_scores(tiny_dir, TOKENS + 64)  # another token count is another measurement
    assert runs == [1, 1]


def test_a_cut_cache_file_is_measured_again(tiny_dir, data_dir):
    first = depth.layer_scores(tiny_dir, TOKENS)
    (path,) = (data_dir / "depth").glob("*.json")
    path.write_text('{"influence": [0.1')
    assert depth.layer_scores(tiny_dir, TOKENS).influence == first.influence


def test_identity_layer_scores_lowest_and_is_dropped_first(deep_dir, data_dir):
    scores = depth.layer_scores(deep_dir, TOKENS)
    assert scores.layers == 6
    assert scores.influence[2] == pytest.approx(0, abs=1e-6)
    assert min(s for i, s in enumerate(scores.influence) if i != 2) > 1e-3
    assert scores.most_redundant_first()[0] == 2
    assert D.pick_layers(6, 5, "redundancy", scores.influence) == [0, 1, 3, 4, 5]
    assert D.plan(deep_dir, 5, "redundancy").kept_layers == [0, 1, 3, 4, 5]


@pytest.mark.parametrize("keep", range(2, 8))
def test_redundancy_keeps_first_last_and_n_layers(keep):
    influence = [0.0, 0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.0]  # the ends score lowest and are kept anyway
    kept = depth.keep_by_influence(influence, keep)
    assert len(kept) == keep and kept == sorted(set(kept)) and kept[0] == 0 and kept[-1] == 7
    middle_dropped = set(range(1, 7)) - set(kept)
    assert all(influence[d] <= influence[k] for d in middle_dropped for k in kept[1:-1])


def test_one_layer_keeps_the_more_influential_end():
    assert depth.keep_by_influence([0.2, 0.9, 0.5], 1) == [2]
    assert depth.keep_by_influence([0.6, 0.9, 0.5], 1) == [0]


@pytest.mark.parametrize("keep", [0, -1, 6, 7])
def test_depth_outside_one_to_l_minus_one_is_refused(keep, deep_dir, data_dir):
    with pytest.raises(ValueError, match=r"between 1 and 5 layers \(the teacher has 6\); got"):
        depth.keep_by_influence([0.5] * 6, keep)
    with pytest.raises(ValueError, match="between 1 and 5 layers"):
        D.plan(deep_dir, keep, "redundancy")
    assert not (data_dir / "depth").exists()  # refused before the model ran


def test_redundancy_needs_one_score_per_layer():
    with pytest.raises(ValueError, match="one measured score per layer"):
        D.pick_layers(6, 3, "redundancy")
    with pytest.raises(ValueError, match="one measured score per layer"):
        D.pick_layers(6, 3, "redundancy", [0.1] * 5)


def test_too_few_calibration_tokens_are_refused(tiny_dir, data_dir):
    with pytest.raises(ValueError, match="at least 64 calibration tokens"):
        depth.layer_scores(tiny_dir, 10)


def test_every_layer_choice_has_a_label_and_settings_accept_redundancy():
    assert set(distill_view.LAYER_LABELS) == set(D.LAYER_CHOICES)
    assert "redundancy" in D.LAYER_CHOICES
    assert D.DistillSettings(layer_choice="redundancy").layer_choice == "redundancy"


def test_cli_prints_scores_and_kept_layers(data_dir, tmp_path, capsys):
    out = tmp_path / "depth.json"
    assert main(["depth", "--model", "tiny-random-llama", "--keep", "1", "--tokens", str(TOKENS),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    influence = result["scores"]["influence"]
    assert len(influence) == 2 and result["scores"]["calibration_tokens"] == TOKENS
    assert result["kept"] == [{"keep": 1, "redundancy": [max((0, 1), key=lambda i: influence[i])], "spread": [1]}]
    assert f"{influence[0]:.4f}" in printed and "keep 1: by redundancy" in printed


@pytest.mark.parametrize("keep, message", [("1,2", "between 1 and 1 layers"), ("0", "between 1 and 1 layers"),
                                           ("one", "comma-separated whole numbers")])
def test_cli_refuses_a_bad_depth_before_scoring(keep, message, data_dir, capsys):
    assert main(["depth", "--model", "tiny-random-llama", "--keep", keep, "--tokens", str(TOKENS)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not (data_dir / "depth").exists()


@pytest.mark.usefixtures("fresh_caches")
def test_distill_page_offers_least_redundant_and_shows_its_layers(tiny_dir, data_dir, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core import models

    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "distill.py"), default_timeout=60)
    at.run()
    which = at.radio(key="layer_choice")
    assert which.options[-1] == "least redundant"  # the labels the page shows, not the keys
    assert which.value == "redundancy"  # the default: it measured better than an even spread at every depth
    which.set_value("redundancy").run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    scores = depth.layer_scores(tiny_dir)  # what the page measured, now read back from the cache
    kept = depth.keep_by_influence(scores.influence, 1)
    assert any(f"Kept teacher layers: {kept[0]}." in c.value for c in at.caption)


# ---------------------------------------------------------------- pruned variants and the depth sweep's curve


def test_pruned_variant_keeps_the_least_redundant_layers_and_says_which(deep_dir, data_dir):
    from core import techniques

    technique = techniques.get("depth-4-redundancy")
    assert technique.family == "depth pruning" and "4 layers by measured redundancy" in technique.label
    model = technique.make(deep_dir)
    facts = technique.facts(model)
    assert facts["kept_layers"] == depth.keep_by_influence(depth.layer_scores(deep_dir).influence, 4)
    assert 2 not in facts["kept_layers"]  # the identity layer goes first
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    spread = techniques.get("depth-4-spread").make(deep_dir)
    assert techniques.get("depth-4-spread").facts(spread)["kept_layers"] == D.pick_layers(6, 4, "spread")
    with torch.inference_mode():
        assert torch.isfinite(model(input_ids=torch.tensor([[3, 4, 5]])).logits).all()


def test_a_depth_the_model_cannot_have_is_refused_by_name(deep_dir, data_dir):
    from core import techniques

    with pytest.raises(ValueError, match="between 1 and 5 layers \\(the teacher has 6\\); got 6"):
        techniques.get("depth-6-redundancy").make(deep_dir)
    with pytest.raises(ValueError, match="Unknown technique 'depth-3-first'"):
        techniques.get("depth-3-first")


def test_sweep_depths_are_shares_of_the_teachers_layers():
    from core.views.depth_curve import sweep_depths

    assert sweep_depths(30) == [28, 24, 20, 15, 10]
    assert sweep_depths(2) == [1] and sweep_depths(6) == [5, 4, 3, 2]


def _pruned(n: int, choice: str, kld: float, speed: float):
    from tests.factories import make_record

    return make_record(technique=f"depth-{n}-{choice}", family="depth pruning", label=f"{n} {choice}", kld_mean=kld,
                       decode_tokens_per_s_median=speed,
                       variant_facts={"kept_layers": list(range(n)), "teacher_layers": 30, "layer_choice": choice})


def test_depth_curve_draws_both_choices_the_full_model_and_counts_the_wins():
    from core.views import depth_curve
    from tests.factories import make_record

    records = [make_record(decode_tokens_per_s_median=20.0), _pruned(24, "redundancy", 1.0, 24.0),
               _pruned(24, "spread", 2.3, 24.5), _pruned(15, "redundancy", 3.4, 30.0), _pruned(15, "spread", 3.0, 30.0)]
    fig = depth_curve.depth_curve_figure(records)
    assert [t.name for t in fig.data] == [*depth_curve.CHOICE_NAMES.values(), "full model"]
    assert list(fig.data[0].x) == [24, 15] and list(fig.data[0].y) == [1.0, 3.4]
    assert "1.20x the full model" in fig.data[0].customdata[0]
    sentence = depth_curve.redundancy_wins(records)
    assert sentence.startswith("Layers chosen by measured redundancy gave the lower KL divergence at 1 of 2 depths")
    rows = depth_curve.depth_rows(records)
    assert rows[0]["layers kept"] == 24 and rows[0]["speed-up"] == pytest.approx(1.2)
    assert "No pruned variants" in depth_curve.depth_curve_figure([make_record()]).layout.annotations[0].text


def test_heal_curve_draws_minutes_against_held_out_divergence():
    from core.views import depth_curve
    from tests.factories import make_record

    curve = [{"step": 0, "train_minutes": 0.0, "heldout_kld_nats": 1.4, "heldout_top1": 0.5},
             {"step": 90, "train_minutes": 10.0, "heldout_kld_nats": 0.6, "heldout_top1": 0.7}]
    healed = make_record(technique="student-x", family="distillation", label="healed 20",
                         variant_facts={"distillation": {"heal_curve": curve, "student_layers": 20, "role": "student_distilled"}})
    fig = depth_curve.heal_curve_figure([make_record(), healed])
    assert list(fig.data[0].x) == [0.0, 10.0] and list(fig.data[0].y) == [1.4, 0.6]
    assert "No healed student" in depth_curve.heal_curve_figure([make_record()]).layout.annotations[0].text
