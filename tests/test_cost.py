import math
import re

import pytest

from core.measure.cost import (
    HARDWARE_PRESETS,
    HardwarePreset,
    cost_caveat,
    get_preset,
    laptop_usd_per_hour,
    monthly_cost_usd,
    usd_per_1m_tokens,
    with_price,
)

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


def test_monthly_cost_counts_only_busy_time_over_30_days():
    # 1,000 requests/day x 500 tokens x 30 days = 15M tokens; at 100 tokens/s that is
    # 150,000 s = 41.67 h busy; at $3.60/h -> $150.
    assert monthly_cost_usd(100.0, 3.6, 1000, 500) == pytest.approx(150.0)
    assert monthly_cost_usd(100.0, 3.6, 0, 500) == 0.0


def test_monthly_cost_rejects_negative_traffic():
    with pytest.raises(ValueError, match="requests_per_day"):
        monthly_cost_usd(100.0, 3.6, -1, 500)
    with pytest.raises(ValueError, match="tokens_per_request"):
        monthly_cost_usd(100.0, 3.6, 10, -500)


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
