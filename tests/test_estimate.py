"""Sweep time estimates and slow-kernel flags from fake records (no timing here)."""

import pytest

from core.experiments import estimate
from core.experiments.estimate import Probe, SweepPlan, estimate_sweep
from tests.factories import make_record

AMD = "AMD EPYC 7B13, 2 cores, 8 GiB RAM"
XEON = "Intel Xeon, 2 cores, 8 GiB RAM"
SETTINGS = {"new_tokens": 32, "warmup_runs": 1, "repeats": 5, "prompt_tokens": 40, "ppl_tokens": 4096, "mc_items": 194}


def rec(technique, tps, hardware=AMD, ttft_ms=100.0, measure_s=None, roofline_pct=50.0, **kw):
    facts = {"measure_s": measure_s} if measure_s is not None else {}
    return make_record(technique=technique, hardware=hardware, decode_tokens_per_s_median=tps, ttft_ms_median=ttft_ms,
                       settings=dict(SETTINGS), variant_facts=facts, roofline_pct=roofline_pct, **kw)


def test_measured_wall_time_is_rescaled_to_the_new_generation_settings():
    history = [rec("fp32", 10.0, measure_s=60.0)]
    same = estimate_sweep(history, ["fp32"], "smollm2-135m-instruct", AMD).variants[0]
    assert same.seconds == pytest.approx(60.0)  # same settings: the wall time it took
    generation = 6 * (0.1 + 31 / 10.0)  # 6 runs of prefill + 31 decode steps
    longer = estimate_sweep(history, ["fp32"], "smollm2-135m-instruct", AMD, SweepPlan(new_tokens=64)).variants[0]
    assert longer.seconds == pytest.approx(60.0 - generation + 6 * (0.1 + 63 / 10.0))
    assert "60 s run here" in longer.basis


def test_without_wall_time_the_estimate_comes_from_speed_and_prefill_rate():
    [v] = estimate_sweep([rec("fp32", 10.0)], ["fp32"], "smollm2-135m-instruct", AMD).variants
    scoring = (4096 + 194 * estimate.MC_TOKENS_PER_ITEM) / (40 / 0.1)
    assert v.seconds == pytest.approx(6 * (0.1 + 3.1) + scoring)
    assert "from its speed here" in v.basis


def test_bitsandbytes_int8_far_below_fp32_is_flagged_with_the_reason_and_nf4_is_not():
    history = [rec("fp32", 9.8), rec("int8", 0.6, ttft_ms=14000.0, measure_s=500.0), rec("nf4", 6.0),
               rec("fp32", 25.0, hardware=XEON), rec("int8", 16.0, hardware=XEON)]
    est = estimate_sweep(history, ["fp32", "int8", "nf4", "bf16"], "smollm2-135m-instruct", AMD, avx512=False)
    by = {v.technique: v for v in est.variants}
    assert est.slow == ("int8",)
    why = by["int8"].why_slow
    assert "0.6 tokens/s" in why and "6% of the fp32 reference's 9.8" in why
    assert "64% of fp32" in why  # its usual speed, from the Xeon records
    assert "AVX-512" in why
    assert not by["nf4"].slow and by["nf4"].why_slow == ""
    assert by["bf16"].seconds is None and est.unknown == ("bf16",)
    assert est.total_s == pytest.approx(sum(v.seconds for v in est.variants if v.seconds is not None))
    assert by["int8"].seconds > 5 * by["nf4"].seconds


def test_records_from_other_machines_or_models_never_give_an_estimate_here():
    history = [rec("fp32", 25.0, hardware=XEON), rec("nf4", 20.0, model="other-model")]
    est = estimate_sweep(history, ["fp32", "nf4"], "smollm2-135m-instruct", AMD)
    assert est.unknown == ("fp32", "nf4")


def test_without_a_reference_the_flag_uses_the_bandwidth_limit():
    history = [rec("int8", 0.6, roofline_pct=0.8), rec("nf4", 6.0, roofline_pct=30.0)]
    est = estimate_sweep(history, ["int8", "nf4"], "smollm2-135m-instruct", AMD, avx512=True)
    assert est.slow == ("int8",)
    assert "0.8% of what this machine's memory bandwidth allows" in est.variants[0].why_slow
    assert "AVX-512" not in est.variants[0].why_slow  # this CPU has it: not the reason


def test_a_probe_gives_an_estimate_and_a_flag_for_a_variant_never_measured_here():
    history = [rec("fp32", 10.0)]
    probe = Probe("int8", AMD, load_s=2.0, ttft_ms=14000.0, decode_tokens_per_s=0.6, prompt_tokens=40)
    elsewhere = Probe("bf16", XEON, 1.0, 100.0, 9.0, 40)
    est = estimate_sweep(history, ["int8", "bf16"], "smollm2-135m-instruct", AMD, probes={"int8": probe, "bf16": elsewhere})
    int8, bf16 = est.variants
    assert int8.slow and "probe" in int8.basis
    assert int8.seconds == pytest.approx(2.0 + 6 * (14.0 + 31 / 0.6) + (4096 + 194 * 80) / (40 / 14.0))
    assert bf16.seconds is None  # a probe from another machine says nothing about this one


def test_probe_loads_the_real_variant_and_times_a_few_steps(tiny_dir):
    import torch

    p = estimate.probe_variant("fp32", tiny_dir, torch.tensor([[5, 6, 7, 8]]))
    assert p.technique == "fp32" and p.prompt_tokens == 4
    assert p.load_s > 0 and p.ttft_ms > 0 and p.decode_tokens_per_s > 0
