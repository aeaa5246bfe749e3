"""One real point of each lever of issue 42 on the bundled model, where language matters: which layers go, shared
experts, healing. Each compares two things measured in the same test on the same text, never a timing."""

import pytest
import torch
import torch.nn.functional as F

from core import models, techniques
from core.experiments import distill_run
from core.measure.evaluate import DEFAULT_PPL_TEXT
from core.techniques import distillation, moe
from core.techniques.moe.plan import CALIBRATION_TEXT
from tests.conftest import needs_bundled

pytestmark = [pytest.mark.slow, needs_bundled]
WINDOW = 256


@torch.inference_mode()
def _kld(reference: torch.nn.Module, variant: torch.nn.Module, ids: torch.Tensor) -> float:
    """Mean KL(reference || variant) in nats per token over ids [1, T]."""
    p = F.log_softmax(reference(input_ids=ids).logits[0].float(), -1)
    q = F.log_softmax(variant(input_ids=ids).logits[0].float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.fixture
def prose(bundled):
    """The first WINDOW tokens of the evaluation prose (never the calibration text the levers were fitted on)."""
    ids = models.load_tokenizer(bundled)(DEFAULT_PPL_TEXT.read_text(), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[:WINDOW])[None]


def test_layers_chosen_by_redundancy_lose_less_than_evenly_spread_ones(bundled, prose):
    full = models.load_model(bundled)
    by_redundancy = techniques.get("depth-24-redundancy").make(bundled)
    spread = techniques.get("depth-24-spread").make(bundled)
    assert _kld(full, by_redundancy, prose) < _kld(full, spread, prose)


def test_shared_experts_stay_closer_to_the_dense_model_at_the_same_share_of_work(bundled, prose):
    dense = models.load_model(bundled)
    # 512 calibration tokens (a quarter of the default) keep the two carves to seconds; the ordering holds at either
    plain = moe.load_moe(bundled, moe.MoEConfig(experts=8, top_k=3, calibration_tokens=512))  # 3 of 8: 37.5% of the MLP
    shared = moe.load_moe(bundled, moe.MoEConfig(experts=8, top_k=1, shared=2, calibration_tokens=512))  # 2 + 1 of 6
    assert moe.active_params(plain) == moe.active_params(shared) + moe.router_params(plain) - moe.router_params(shared)
    assert _kld(dense, shared, prose) < _kld(dense, plain, prose)


def test_a_short_heal_brings_a_pruned_student_closer_to_its_teacher(bundled, tmp_path):
    """A dozen steps, not a budget in minutes: how a budget follows the clock is tested on the tiny model
    (test_distill.py), and steps keep this one short on any machine."""
    corpus = tmp_path / "heal.txt"
    corpus.write_text(CALIBRATION_TEXT.read_text())  # a text the evaluation never uses
    settings = distillation.DistillSettings(student_layers=26, steps=12, warmup_steps=2, batch_size=2,
                                            seq_len_tokens=128, checkpoints=2, heldout_share=0.2)
    result = distill_run.run_distill("smollm2-135m-instruct", settings, corpus)
    curve = result.heal_curve
    assert curve[0].train_minutes == 0 and len(curve) == 1 + 2 and len(result.losses) == 12
    assert curve[-1].heldout_kld_nats < curve[0].heldout_kld_nats
