import itertools
import math
import re

import pytest

from core.measure import bill
from core.measure.cost import (
    HARDWARE_PRESETS,
    HardwarePreset,
    cost_caveat,
    get_preset,
    laptop_usd_per_hour,
    usd_per_1m_tokens,
    with_price,
)
from tests.factories import make_record, make_serving_record

EXPECTED_KEYS = {"laptop-cpu", "cloud-cpu", "t4", "a10g", "a100", "h100"}


def test_usd_per_1m_tokens_on_known_numbers():
    # $3.60/h at 1 token/s: 3,600 tokens cost $3.60, so 1M tokens cost $1,000.
    assert usd_per_1m_tokens(1.0, 3.6) == pytest.approx(1000.0)
    # $0.36/h at 100 tokens/s: 360,000 tokens per hour -> $1 per 1M tokens.
    assert usd_per_1m_tokens(100.0, 0.36) == pytest.approx(1.0)


def test_usd_per_1m_tokens_is_free_on_free_hardware():
    assert usd_per_1m_tokens(10.0, 0.0) == 0.0


@pytest.mark.parametrize("speed", [0.0, -5.0, math.nan, math.inf])
def test_usd_per_1m_tokens_rejects_bad_speed_and_names_it(speed):
    with pytest.raises(ValueError, match="tokens_per_s.*" + re.escape(repr(speed))):
        usd_per_1m_tokens(speed, 1.0)


@pytest.mark.parametrize("price", [-0.01, math.nan, math.inf])
def test_usd_per_1m_tokens_rejects_bad_price_and_names_it(price):
    with pytest.raises(ValueError, match="usd_per_hour.*" + re.escape(repr(price))):
        usd_per_1m_tokens(10.0, price)


def test_presets_have_the_expected_keys_and_consistent_fields():
    assert set(HARDWARE_PRESETS) == EXPECTED_KEYS
    for key, preset in HARDWARE_PRESETS.items():
        assert preset.key == key
        assert preset.usd_per_hour > 0
        assert re.fullmatch(r"\d{4}-\d{2}", preset.as_of), preset.as_of
        assert preset.source
    assert {k for k, p in HARDWARE_PRESETS.items() if p.kind == "cpu"} == {"laptop-cpu", "cloud-cpu"}


@pytest.mark.parametrize(
    "key, memory_gb, bandwidth_gb_s",
    [("t4", 16, 320), ("a10g", 24, 600), ("a100", 40, 1555), ("h100", 80, 3350)],
)
def test_gpu_presets_use_spec_sheet_figures(key, memory_gb, bandwidth_gb_s):
    assert HARDWARE_PRESETS[key].memory_gb == memory_gb
    assert HARDWARE_PRESETS[key].bandwidth_gb_s == bandwidth_gb_s


def test_per_gpu_presets_are_an_eighth_of_the_instance_and_say_so():
    for key, instance in (("a100", "p4d.24xlarge"), ("h100", "p5.48xlarge")):
        preset = HARDWARE_PRESETS[key]
        assert instance in preset.source and "on-demand" in preset.source and "us-east-1" in preset.source
        instance_price = float(re.search(r"\$(\d+\.\d+)/h / 8 GPUs", preset.source).group(1))
        assert preset.usd_per_hour == pytest.approx(instance_price / 8, abs=1e-4)


def test_laptop_price_is_the_amortisation_shown_in_its_source():
    # $1,500 / (3 y x 365 d x 8 h) = $0.1712/h, plus 45 W x $0.17/kWh = $0.00765/h.
    assert laptop_usd_per_hour() == pytest.approx(1500 / 8760 + 0.045 * 0.17)
    preset = HARDWARE_PRESETS["laptop-cpu"]
    assert preset.usd_per_hour == pytest.approx(0.1789, abs=1e-4)
    assert "8,760 h" in preset.source and "45 W" in preset.source


def test_with_price_returns_an_edited_copy():
    t4 = HARDWARE_PRESETS["t4"]
    cheaper = with_price(t4, 0.2)
    assert cheaper.usd_per_hour == 0.2
    assert cheaper.bandwidth_gb_s == t4.bandwidth_gb_s and cheaper.key == "t4"
    assert t4.usd_per_hour == 0.526  # the preset itself is unchanged
    assert with_price(t4, 0).usd_per_hour == 0


def test_with_price_rejects_negative_price():
    with pytest.raises(ValueError, match="-1"):
        with_price(HARDWARE_PRESETS["t4"], -1)


def test_preset_validates_its_kind():
    with pytest.raises(ValueError, match="tpu"):
        HardwarePreset("x", "X", "tpu", 1.0, 1.0, 1.0, "s", "2025-06")


def test_get_preset_lists_allowed_keys():
    assert get_preset("h100").kind == "gpu"
    with pytest.raises(ValueError, match="laptop-cpu"):
        get_preset("v100")


def test_cost_caveat_is_none_when_kinds_match():
    assert cost_caveat("cpu", "cpu") is None
    assert cost_caveat("gpu", "cuda:0 (NVIDIA H100 80GB HBM3)") is None


def test_cost_caveat_warns_on_gpu_price_with_cpu_speed():
    caveat = cost_caveat("gpu", "cpu")
    assert caveat is not None and "GPU" in caveat and "CPU" in caveat
    assert caveat.count(".") == 1  # one sentence


def test_cost_caveat_warns_on_cpu_price_with_gpu_speed():
    caveat = cost_caveat("cpu", "cuda:0")
    assert caveat is not None and "understated" in caveat


def test_cost_caveat_warns_on_unknown_device_and_rejects_unknown_kind():
    assert "tpu:0" in cost_caveat("gpu", "tpu:0")
    with pytest.raises(ValueError, match="preset_kind"):
        cost_caveat("fpga", "cpu")


# --- the one cost model (core/measure/bill.py) --------------------------------------------------------


def test_bill_worked_by_hand_single_stream():
    # One request at a time at 20 tok/s after a 0.5 s first token; 200-token answers.
    # Seconds per request = 0.5 + 200 / 20 = 10.5 s, so requests/s per machine = 1 / 10.5 = 0.0952, and
    # tokens/s per machine = 0.0952 x 200 = 19.05.
    # 10,000 requests a day = 0.1157 req/s on average; x 2 at peak = 0.2315 req/s -> 0.2315 / 0.0952 = 2.43 -> 3 machines.
    # A month: 10,000 x 30 = 300,000 requests x 10.5 s = 3,150,000 s = 875 busy machine-hours > 720, so at least 2
    # machines anyway; the peak asks for 3, each busy 875 / 3 = 291.7 h <= 720.
    # At $1.50/h: always on = 3 x 720 h x $1.50 = $3,240; busy only = 875 h x $1.50 = $1,312.50.
    rate = bill.ServiceRate(concurrency=1, per_user_tokens_per_s=20.0, ttft_s=0.5, source="by hand")
    traffic = bill.Traffic(requests_per_day=10_000, answer_tokens=200, peak_to_average=2.0)
    b = bill.make_bill(traffic, rate, usd_per_hour=1.5)
    assert b.requests_per_s_per_machine == pytest.approx(1 / 10.5)
    assert b.tokens_per_s_per_machine == pytest.approx(200 / 10.5)
    assert traffic.peak_rps == pytest.approx(0.2315, abs=1e-4)
    assert b.machines == 3
    assert b.busy_hours_per_month == pytest.approx(875.0)
    assert b.busy_hours_per_machine_per_month == pytest.approx(875.0 / 3)
    assert b.usd_per_month_always_on == pytest.approx(3 * 720 * 1.5)
    assert b.usd_per_month_busy_only == pytest.approx(875 * 1.5)
    assert b.usd_per_month == b.usd_per_month_always_on  # always on is the default headline
    busy = bill.make_bill(traffic, rate, 1.5, billing="busy_only")
    assert busy.usd_per_month == pytest.approx(1312.5) and busy.machines == 3


def test_busy_hours_beyond_a_month_add_machines():
    # A peak set below the average (a flat day): the peak alone asks for 1 machine, but 875 busy hours do not fit
    # in one 720-hour month, so 2 machines, each busy 437.5 h.
    rate = bill.ServiceRate(1, 20.0, 0.5, "by hand")
    b = bill.make_bill(bill.Traffic(10_000, 200, peak_requests_per_s=0.05), rate, 1.0)
    assert b.machines == 2 and b.busy_hours_per_machine_per_month == pytest.approx(437.5)


def test_littles_law_ties_per_user_speed_to_requests_per_second():
    # The example: 102.9 tok/s per user, one at a time, 200-token answers -> about 0.5 requests/s, not 0.33.
    rate = bill.ServiceRate(1, 102.9, 0.0, "x")
    assert rate.requests_per_s(200) == pytest.approx(0.5145, abs=1e-4)
    # 4 at once at 25 tok/s each after 0.2 s: 4 / (0.2 + 8) = 0.488 requests/s, 97.6 tok/s in all.
    assert bill.ServiceRate(4, 25.0, 0.2, "x").requests_per_s(200) == pytest.approx(4 / 8.2)


def test_busy_hours_per_machine_never_exceed_a_month_over_a_grid():
    grid = itertools.product([0, 1, 500, 10_000, 1e6, 3e7], [1, 64, 200, 4000], [0.5, 20.0, 300.0], [1, 4, 32],
                             [0.0, 0.5, 3.0], [1.0, 2.0, 10.0], [None, 0.01, 50.0])
    for per_day, answer, speed, concurrency, ttft, ratio, peak in grid:
        traffic = bill.Traffic(per_day, answer, peak_to_average=ratio, peak_requests_per_s=peak)
        b = bill.make_bill(traffic, bill.ServiceRate(concurrency, speed, ttft, "grid"), 1.0)
        assert b.busy_hours_per_machine_per_month <= bill.HOURS_PER_MONTH
        assert b.machines >= 1 and b.machines * b.requests_per_s_per_machine >= traffic.peak_rps * (1 - 1e-9)
        assert b.usd_per_month_busy_only <= b.usd_per_month_always_on * (1 + 1e-9)
        low, high = b.usd_per_month_range
        assert low <= b.usd_per_month <= high


def test_the_interval_comes_from_the_measured_spread():
    # Sweep: p10 16 tok/s with p90 TTFT 90 ms (slow end), p90 25 tok/s with p10 TTFT 75 ms (fast end).
    record = make_record(decode_tokens_per_s_median=20.0, decode_tokens_per_s_p10=16.0, decode_tokens_per_s_p90=25.0,
                         ttft_ms_median=80.0, ttft_ms_p10=75.0, ttft_ms_p90=90.0, created_at="2026-12-05T01:49:30+00:00")
    rate = bill.sweep_rate(record)
    assert (rate.concurrency, rate.per_user_tokens_per_s, rate.ttft_s) == (1, 20.0, 0.08)
    assert rate.source == "one request at a time, sweep of 2026-12-05 01:49 UTC (CLI)"
    b = bill.make_bill(bill.Traffic(10_000, 200), rate, 1.0, "busy_only")
    # busy hours = 300,000 x (TTFT + 200 / speed) / 3600 at each end
    assert b.usd_per_month_range == pytest.approx((300_000 * (0.075 + 8) / 3600, 300_000 * (0.09 + 12.5) / 3600))
    # Load point: waves of 9.5 and 10.5 tok/s around 10 -> per-user speed x 0.95 .. x 1.05.
    point = make_serving_record(concurrency=4, per_user_tokens_per_s_median=20.0, ttft_ms_p50=100.0, ttft_ms_p90=300.0,
                                throughput_tokens_per_s_samples=[9.5, 10.5])
    served = bill.serving_rate(point)
    assert served.slow == pytest.approx((19.0, 0.3)) and served.fast == pytest.approx((21.0, 0.1))
    assert served.source.startswith("load benchmark, 4 concurrent, 128-token prompts")


@pytest.mark.parametrize("kwargs, word", [({"requests_per_day": -1}, "requests_per_day"),
                                          ({"requests_per_day": math.nan}, "requests_per_day"),
                                          ({"answer_tokens": 0}, "answer"), ({"peak_to_average": 0.5}, "peak_to_average"),
                                          ({"peak_requests_per_s": 0.0}, "peak_requests_per_s")])
def test_traffic_refuses_bad_input_and_names_it(kwargs, word):
    with pytest.raises(ValueError, match=word):
        bill.Traffic(**{"requests_per_day": 10, "answer_tokens": 10} | kwargs)


def test_rate_and_billing_refuse_bad_input():
    with pytest.raises(ValueError, match="per_user_tokens_per_s"):
        bill.ServiceRate(1, 0.0, 0.1, "x")
    with pytest.raises(ValueError, match="concurrency"):
        bill.ServiceRate(0, 10.0, 0.1, "x")
    with pytest.raises(ValueError, match="billing"):
        bill.make_bill(bill.Traffic(10, 10), bill.ServiceRate(1, 10.0, 0.1, "x"), 1.0, "monthly")
    with pytest.raises(ValueError, match="usd_per_hour"):
        bill.make_bill(bill.Traffic(10, 10), bill.ServiceRate(1, 10.0, 0.1, "x"), -1.0)


def test_variant_bills_use_the_load_point_when_there_is_one_else_the_sweep():
    records = [make_record(technique="fp32", label="FP32"), make_record(technique="nf4", label="NF4")]
    points = [make_serving_record(technique="fp32", concurrency=c, per_user_tokens_per_s_median=u, ttft_ms_p90=ttft)
              for c, u, ttft in ((1, 20.0, 100.0), (4, 15.0, 300.0), (16, 4.0, 900.0))]
    traffic = bill.Traffic(100_000, 200)
    target = bill.LatencyTarget(max_ttft_ms_p90=1000.0, min_user_tokens_per_s=5.0)
    fp32, nf4 = bill.variant_bills(records, points, traffic, 1.0, target=target)
    # C=16 is too slow per user; C=4 makes 4 / (0.1 + 200 / 15) = 0.298 req/s vs C=1's 0.099: C=4 is cheaper.
    assert fp32.load_point is points[1] and fp32.bill.rate.concurrency == 4 and fp32.meets_target
    assert "load benchmark, 4 concurrent" in fp32.source
    assert nf4.load_point is None and nf4.source.startswith("one request at a time")
    rows = bill.bill_rows([fp32, nf4])
    assert rows[0]["machines"] == fp32.bill.machines and rows[0]["$ per month (always on)"] == fp32.bill.usd_per_month
    assert {"source", "busy hours per machine per month", "$ per month (busy only)"} <= set(rows[0])


def test_break_even_against_the_reference_bill():
    lora = make_record(technique="lora-x", label="LoRA", variant_facts={"finetune": {"usd_cost": 12.0}})
    slow = make_record(technique="fp32", decode_tokens_per_s_median=10.0)
    bills = bill.variant_bills([slow, lora], [], bill.Traffic(100_000, 200), 1.0, "busy_only")
    months = bill.break_even(bills, "fp32")
    saving = bills[0].bill.usd_per_month - bills[1].bill.usd_per_month
    assert saving > 0 and months == {"lora-x": pytest.approx(12.0 / saving)}
    same = bill.variant_bills([make_record(), lora], [], bill.Traffic(100_000, 200), 1.0)
    assert bill.break_even(same, "fp32") == {"lora-x": None}  # same speed: never paid back by serving
    assert bill.break_even_months(0.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        bill.break_even_months(-1.0, 1.0)


def test_training_cost_comes_from_variant_facts():
    lora = make_record(technique="lora-x", variant_facts={"finetune": {"usd_cost": 0.5, "train_seconds": 10}})
    assert bill.training_cost_usd(lora) == 0.5
    assert bill.training_cost_usd(make_record()) is None
    assert bill.training_cost_usd(make_record(variant_facts={"finetune": {"usd_cost": "n/a"}})) is None
    [b] = bill.variant_bills([lora], [], bill.Traffic(10, 10), 1.0)
    assert b.one_off_usd == 0.5
