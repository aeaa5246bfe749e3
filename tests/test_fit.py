
import pytest

from core.measure import fit
from tests.factories import make_record

SMOL = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "hidden_size": 576}


def test_kv_shape_reads_llama_config_and_defaults():
    assert fit.kv_shape_from_config(SMOL) == fit.KVShape(30, 3, 64)
    # no kv heads: multi-head attention; no head_dim: hidden / heads
    assert fit.kv_shape_from_config({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}) == fit.KVShape(2, 4, 16)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        fit.kv_shape_from_config({"num_attention_heads": 4})


def test_read_kv_shape_from_a_checkpoint(tiny_dir):
    assert fit.read_kv_shape(tiny_dir) == fit.KVShape(layers=2, kv_heads=2, head_dim=16)


def test_kv_cache_bytes_by_hand():
    shape = fit.KVShape(30, 3, 64)
    # 2 (K and V) x 30 layers x 3 heads x 64 wide x 2048 tokens x 4 bytes
    assert fit.kv_cache_bytes(shape, 2048, 4) == 2 * 30 * 3 * 64 * 2048 * 4 == 94_371_840
    assert fit.kv_cache_bytes(shape, 2048, 2, batch=3) == 3 * 2 * 30 * 3 * 64 * 2048 * 2
    assert fit.kv_cache_bytes(shape, 0, 4) == 0
    with pytest.raises(ValueError):
        fit.kv_cache_bytes(shape, -1, 4)


@pytest.mark.parametrize("dtype,expected", [("float32", 4), ("bfloat16", 2), ("torch.float16", 2), ("uint8", 4)])
def test_kv_element_bytes_follow_the_compute_dtype(dtype, expected):
    assert fit.kv_element_bytes(dtype) == expected


def test_device_presets_are_the_issue_list():
    assert set(fit.DEVICE_PRESETS) == {"phone-4gb", "phone-8gb", "rpi-8gb", "laptop-16gb", "t4-16gb", "a100-80gb"}
    phone = fit.get_device("phone-4gb")
    assert phone.memory_gb == 4 and phone.usable_mb == pytest.approx(2000.0)
    with pytest.raises(ValueError, match="choose one of"):
        fit.get_device("toaster")
    with pytest.raises(ValueError):
        fit.DevicePreset("x", "x", 4.0, 4.0, "reserves everything")


def test_device_fit_adds_weights_kv_and_overhead():
    shape = fit.KVShape(30, 3, 64)
    record = make_record(size_mb=538.0, dtype="float32")
    f = fit.device_fit(record, fit.get_device("phone-4gb"), shape, 2048, overhead_mb=200.0)
    assert f.kv_cache_mb == pytest.approx(94.37184)
    assert f.need_mb == pytest.approx(538.0 + 94.37184 + 200.0)
    assert f.fits and f.headroom_mb == pytest.approx(2000.0 - f.need_mb)
    big = fit.device_fit(record, fit.get_device("phone-4gb"), shape, 40_000, overhead_mb=200.0)
    assert not big.fits  # 1.84 GB of fp32 KV cache at 40k tokens
    half = fit.device_fit(make_record(size_mb=269.0, dtype="bfloat16"), fit.get_device("phone-4gb"), shape, 40_000)
    assert half.kv_cache_mb == pytest.approx(big.kv_cache_mb / 2)


def test_fit_table_and_smallest_device():
    shape = fit.KVShape(30, 3, 64)
    records = [make_record(size_mb=538.0), make_record(technique="huge", size_mb=30_000.0)]
    devices = list(fit.DEVICE_PRESETS.values())
    table = fit.fit_table(records, devices, shape, 2048)
    assert len(table) == 2 and len(table[0]) == len(devices)
    assert all(f.fits for f in table[0])
    assert [f.fits for f in table[1]] == [d.key == "a100-80gb" for d in devices]
    assert fit.smallest_device_that_fits(records[0], shape, 2048).key == "phone-4gb"
    assert fit.smallest_device_that_fits(records[1], shape, 2048).key == "a100-80gb"
    assert fit.smallest_device_that_fits(make_record(size_mb=1e6), shape, 2048) is None
