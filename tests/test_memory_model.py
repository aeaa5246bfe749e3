"""The one memory model (core/measure/memory.py) against hand-worked numbers, the KV cache type as a llama-server
lever (flags, refusals before launch), the memory views, and one slow test that starts llama-server with a Q8_0 cache
and reads its KV size back."""

from __future__ import annotations

import math

import pytest

from core import models
from core.measure import fit, memory
from core.runtimes import llamacpp_build
from core.serving import engines, memory_bench
from core.serving import bench
from core.serving.bench import ServeSettings
from core.serving.limits import ServingError, check_context
from core.serving.memory_bench import CacheQuality, MemoryPoint, MemoryRun
from core.serving.server import Server, peak_rss_bytes
from core.serving.torch_peak import TorchPoint
from core.views import memory_plots
from tests.conftest import needs_bundled
from tests.test_fit import make_record

SMOL = fit.KVShape(layers=30, kv_heads=3, head_dim=64)  # SmolLM2-135M's config.json: 30 layers, 3 KV heads, 576 / 9
MIB = 2**20
needs_tools = pytest.mark.skipif(llamacpp_build.why_not_tools() is not None,
                                 reason=f"llama.cpp's tools are not built here: {llamacpp_build.why_not_tools()}")


# --- hand-worked numbers ---------------------------------------------------------------------------


def test_kv_bytes_by_cache_type_match_hand_worked_numbers():
    # F16: 30 x 3 x 64 x 2048 cells x (2 + 2) bytes = 47,185,920 B = 45.00 MiB, llama-server's own figure
    assert memory.kv_bytes(SMOL, 2048, "f16", "f16") == 30 * 3 * 64 * 2048 * 4 == 45 * MIB
    # Q8_0: blocks of 32 int8 + one f16 scale = 34 bytes per 32; 2 slots x 2048 cells: 47.81 MiB as the server says
    assert memory.kv_bytes(SMOL, 4096, "q8_0", "q8_0") == 30 * 3 * 64 * 4096 * 2 * 34 / 32
    assert memory.kv_bytes(SMOL, 4096, "q8_0", "q8_0") / MIB == pytest.approx(47.81, abs=0.01)
    # Q4_0: 18 bytes per 32; 4 slots x 8192 cells = 202.50 MiB
    assert memory.kv_bytes(SMOL, 4 * 8192, "q4_0", "q4_0") / MIB == pytest.approx(202.5)
    # Q8_0 holds 34 / 64 = 53.1% of F16; mixed K and V add up per element
    assert memory.kv_bytes(SMOL, 512, "q8_0", "q8_0") / memory.kv_bytes(SMOL, 512) == pytest.approx(34 / 64)
    assert memory.kv_bytes(SMOL, 512, "q8_0", "f16") == 30 * 3 * 64 * 512 * (34 / 32 + 2)


def test_llama_cpp_rounds_each_slot_to_whole_256_cell_blocks():
    assert [memory.slot_cells(n) for n in (1, 256, 257, 2000, 2048)] == [256, 256, 512, 2048, 2048]
    with pytest.raises(ValueError, match=">= 1 token"):
        memory.slot_cells(0)


def _calibration() -> memory.Calibration:
    # llama-server here at 512 tokens, 1 slot, F16 (Q8_0 GGUF of 136.40 MiB): KV 11.25 MiB, compute 14.01 MiB,
    # output 0.19 MiB, VmHWM 188,472 kB
    return memory.calibrate(188_472 * 1024 / 1e6, 136.40 * MIB / 1e6, 11.25 * MIB / 1e6, 14.01 * MIB / 1e6,
                            0.19 * MIB / 1e6, 1, 512, "test machine", "512 x 1, f16", "2026-12-07")


def test_calibration_splits_the_peak_and_predicts_another_point_within_ten_percent():
    c = _calibration()
    # compute base = 14.01 MiB - its 512 x 512 x 2-byte mask; runtime = what the four parts leave of the peak
    assert c.compute_base_mb == pytest.approx(14.01 * MIB / 1e6 - 512 * 512 * 2 / 1e6)
    assert c.runtime_mb == pytest.approx((188_472 * 1024 - (136.40 + 11.25 + 14.01 + 0.19) * MIB) / 1e6)
    assert c.output_mb_per_slot == pytest.approx(0.19 * MIB / 1e6)
    # the same server at 8192 tokens x 4 slots, F16, peaked at 920,880 kB here; the model gets within 10%
    need = memory.predict_llamacpp(136.40 * MIB / 1e6, SMOL, 8192, 4, "f16", c)
    assert need.kv_cache_mb == pytest.approx(720 * MIB / 1e6)
    assert need.compute_mb == pytest.approx(c.compute_base_mb + 512 * 8192 * 2 / 1e6 + 4 * c.output_mb_per_slot)
    assert abs(memory.error_pct(need.total_mb, 920_880 * 1024 / 1e6)) < 10
    assert need.total_mb == pytest.approx(need.weights_mb + need.kv_cache_mb + need.compute_mb + need.runtime_mb)
    assert need.calibrated and not memory.predict_llamacpp(100.0, SMOL, 512).calibrated


def test_longest_context_and_most_users_by_bisection():
    # uncalibrated: 100 MB weights + 200 MB stated overhead + 23,040 B per F16 cell per user
    need = lambda ctx: memory.predict_llamacpp(100.0, SMOL, ctx, 2, "f16")  # noqa: E731
    per_cell_mb = 2 * 23_040 / 1e6
    usable = 300 + 1000 * per_cell_mb  # room for 1,000 cells per user: 768 whole blocks fit, 1,024 do not
    assert memory.longest_context(usable, need, 8192) == 768
    assert memory.longest_context(1e9, need, 8192) == 8192  # capped at the trained length
    assert memory.longest_context(250.0, need, 8192) == 0  # not one block beside weights and runtime
    users = memory.most_users(300 + 10 * 2048 * 23_040 / 1e6, lambda n: memory.predict_llamacpp(100.0, SMOL, 2048, n))
    assert users == 10


def test_device_fit_uses_the_cache_type_and_users_for_a_gguf_variant():
    gguf = make_record(size_mb=145.0, dtype="q8_0", runtime="llama.cpp")
    phone = fit.get_device("phone-4gb")
    f16 = fit.device_fit(gguf, phone, SMOL, 2048, users=4)
    q8 = fit.device_fit(gguf, phone, SMOL, 2048, users=4, cache_type="q8_0")
    assert f16.kv_cache_mb == pytest.approx(4 * 45 * MIB / 1e6)
    assert q8.kv_cache_mb / f16.kv_cache_mb == pytest.approx(34 / 64)
    calibrated = fit.device_fit(gguf, phone, SMOL, 2048, users=4, cache_type="q8_0", calibration=_calibration())
    assert calibrated.overhead_mb < f16.overhead_mb  # llama.cpp's measured runtime is far below the stated 200 MB
    torch_variant = fit.device_fit(make_record(size_mb=538.0, dtype="float32"), phone, SMOL, 2048, users=2)
    assert torch_variant.kv_cache_mb == pytest.approx(2 * 30 * 3 * 64 * 2 * 2048 * 4 / 1e6)


# --- refusals before anything starts ---------------------------------------------------------------


def test_bad_cache_input_is_refused_in_words():
    with pytest.raises(ValueError, match="unknown KV cache type 'q9'.*q8_0"):
        memory.check_cache_type("q9")
    with pytest.raises(ValueError, match="q8_0 V cache needs flash attention"):
        memory.check_cache_pair("f16", "q8_0", flash_attn=False)
    memory.check_cache_pair("q8_0", "f16", flash_attn=False)  # a quantized K alone runs without it
    with pytest.raises(ServingError, match="unknown KV cache type"):
        ServeSettings(cache_type="q9")
    with pytest.raises(ServingError, match="cannot hold a 128-token prompt"):
        ServeSettings(prompt_tokens=(128,), new_tokens=64, context_tokens=100)
    with pytest.raises(ServingError, match="above the 8,192 tokens this model was trained on"):
        check_context(9000, 8192)
    with pytest.raises(ServingError, match="unknown KV cache type"):
        memory_bench.MemorySettings(cache_types=("f16", "q3"))


def test_memory_that_cannot_hold_one_slot_is_refused(monkeypatch):
    class Little:
        available = 100e6
    monkeypatch.setattr(bench.psutil, "virtual_memory", lambda: Little)
    with pytest.raises(ServingError, match="one slot of 8,192 tokens with a f16 cache needs about .* MB, more than"):
        memory_bench.check_fits_here(145.0, SMOL, 8192, "f16")


@needs_tools
def test_the_engine_passes_the_cache_type_with_flash_attention(tmp_path):
    gguf = tmp_path / "m.Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    argv = engines.llama_server_engine(gguf, "gguf-q8_0", 2, 512, cache_type="q4_0").argv(8123)
    opt = {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
    assert opt["--cache-type-k"] == opt["--cache-type-v"] == "q4_0" and opt["--flash-attn"] == "on"
    assert opt["--cache-ram"] == "0"
    with pytest.raises(ServingError, match="needs flash attention"):
        engines.llama_server_engine(gguf, "gguf-q8_0", 2, 512, cache_type="q8_0", flash_attn=False)


# --- the views -------------------------------------------------------------------------------------


def _run() -> MemoryRun:
    c = _calibration()
    points = []
    for cache in ("f16", "q8_0"):
        for ctx, slots in ((512, 1), (2048, 4)):
            n = memory.predict_llamacpp(143.0, SMOL, ctx, slots, cache, c)
            points.append(MemoryPoint("gguf-q8_0", "GGUF Q8_0", cache, ctx, slots, ctx, 143.0, n.kv_cache_mb,
                                      14.0, 0.2, n.total_mb * (1.03 if slots == 4 else 1.0), 50.0, 30.0, 60.0))
    quality = (CacheQuality("gguf-q8_0", "GGUF Q8_0", "q8_0", 2048, 2, 0.002, 0.0003, 0.02, 0.99, 18.0),)
    # a transformers process: 538 MB of weights, 24 / 94 MB of KV; 880 MB of runtime at 512 tokens, 900 at 2,048
    torch = (TorchPoint(512, 275.0, 538.0, 23.6, 16.5, 538 + 23.59296 + 16.5 + 880, 1100.0),
             TorchPoint(2048, 275.0, 538.0, 94.4, 66.0, 538 + 94.37184 + 66.0 + 900))
    return MemoryRun("m", "hw", 2, "2026-12-07", 8192, SMOL, c, tuple(points), quality, "prose.txt", {}, torch)


def test_the_views_state_the_fit_the_errors_and_the_ratios():
    run = memory_bench.MemoryRun.from_dict(_run().to_dict())  # what the Serve page reads back from disk
    rows = memory_plots.validation_rows(run)
    assert rows[0]["note"] == "calibration point" and abs(rows[0]["error %"]) < 1e-9
    # the transformers runtime comes from its 512-token point (880 MB), so the 2,048-token one is 20 MB over
    assert rows[-2]["error %"] == pytest.approx(0, abs=1e-9) and "calibration" in rows[-2]["note"]
    assert rows[-1]["peak MB model"] == pytest.approx(538 + 94.37184 + 66.0 + 880)
    assert "1,100 MB right after loading" in rows[-2]["note"]
    assert memory_plots.worst_error_pct(run) == pytest.approx(100 * (1 / 1.03 - 1) * -1, rel=1e-6)
    assert memory_plots.kv_ratios(run)["q8_0"] == pytest.approx(34 / 64)
    answer = memory_plots.fit_answer(run, "gguf-q8_0", "q8_0", 4, fit.get_device("phone-4gb"))
    assert answer.max_context_tokens == 8192 and answer.users_at_full_context > 4
    assert answer.sentence().startswith("On a Phone, 4 GB (2,000 MB usable), GGUF Q8_0 with a Q8_0 cache serves 4 "
                                        "users at up to 8,192 tokens each (the model's trained length)")
    fig = memory_plots.memory_figure(run, 4, [fit.get_device("phone-4gb")])
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].y0 == pytest.approx(2000)
    assert any(t.mode == "markers" and list(t.x) == [2048] for t in fig.data)  # measured 4-slot peaks on the chart
    lines = memory_plots.summary_lines(run)
    assert any("53.1% of the F16 cache" in line for line in lines) and any("KLD 0.0020" in line for line in lines)
    parts = memory_plots.report_parts_for(run, "hw", None, 1, "f16")
    assert "4 GB" in parts["memory_lines"][0] and "Q8_0 cache" in parts["memory_lines"][0]
    assert memory_plots.report_parts_for(run, "another machine", None, 1, "f16")["memory_lines"] == []
    from core.views import report
    from tests.factories import make_record as stored_record

    page = report.build_report([stored_record()], "m", "kld_mean", {}, "abc", **parts).html
    assert "Memory at long context and many users" in page and "calibration point" in page
    assert "serves 1 user at up to 8,192 tokens each" in page
    assert math.isnan(memory.error_pct(1.0, 0.0))


# --- llama-server itself ---------------------------------------------------------------------------


@pytest.mark.slow
@needs_bundled
@needs_tools
def test_llama_server_with_a_q8_0_cache_reports_the_kv_bytes_the_model_predicts():
    gguf = models.gguf_path(models.BUNDLED["smollm2-135m-instruct"])
    engine = engines.llama_server_engine(gguf, "gguf-q4_1", slots=2, ctx_per_slot=300, cache_type="q8_0")
    with Server(engine) as server:
        reported = server.kv_cache_bytes_reported()
        peak = peak_rss_bytes(server.proc.pid)
        cells = server.slot_context_reported()
    assert cells == 512  # 300 asked, rounded up to whole 256-cell blocks
    assert reported == pytest.approx(memory.kv_bytes(SMOL, 2 * 512, "q8_0", "q8_0"), rel=0.01)
    assert reported == pytest.approx(memory.kv_bytes(SMOL, 2 * 512) * 34 / 64, rel=0.01)  # about half of F16
    assert peak > gguf.stat().st_size  # the mapped weights are read whole at start


# --- the pages -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_caches")
def test_serve_decide_and_report_show_the_memory_grid():
    from streamlit.testing.v1 import AppTest

    from core.measure import benchmark
    from core.store import ResultStore
    from tests.factories import make_record as stored_record
    from tests.test_serve_pages import ROOT, _no_errors

    here = benchmark.hardware_fingerprint("cpu")
    run = _run()
    memory_bench._save(MemoryRun(models.DEFAULT_MODEL, here, *list(run.__dict__.values())[2:]))
    at = AppTest.from_file(str(ROOT / "pages/serve.py"), default_timeout=60).run()
    _no_errors(at)
    text = " ".join(m.value for m in at.markdown)
    assert "GGUF Q8_0 with a Q8_0 cache serves 1 user at up to 8,192 tokens each" in text
    assert "53.1% of the F16 cache" in text
    assert any("Memory against context" in c.proto.spec for c in at.get("plotly_chart"))

    ResultStore().add(stored_record(hardware=here))
    at = AppTest.from_file(str(ROOT / "pages/decide.py"), default_timeout=60).run()
    _no_errors(at)
    next(n for n in at.number_input if n.key == "decide_users").set_value(4).run()
    _no_errors(at)
    assert "with a Q8_0 cache serves 4 users" in " ".join(m.value for m in at.markdown)

    at = AppTest.from_file(str(ROOT / "pages/report.py"), default_timeout=60).run()
    _no_errors(at)
