"""The lab's KLD by the llama-perplexity rule against llama.cpp's own `llama-perplexity --kl-divergence`.

The bundled model's F32 GGUF export is the tool's base; the lab's Q8_0 and Q4_K_M files are the quants, scored by
the tool and by the lab (its llama.cpp runner against its transformers FP32 reference) on the same text and chunks.
Both run with flash attention, the lab's runner as llama.cpp's tools do by default
(core.experiments.llamacpp_kld.LAB_FLASH_ATTN).
"""

from __future__ import annotations

import pytest

from core.experiments import llamacpp_kld
from core.runtimes import llamacpp_build
from core.techniques import gguf
from tests.conftest import needs_bundled, place_bundled

pytestmark = [
    pytest.mark.slow, needs_bundled,
    pytest.mark.skipif(llamacpp_build.why_not_tools() is not None, reason=f"{llamacpp_build.why_not_tools()}"),
    pytest.mark.skipif(gguf.llama_cpp_problem() is not None, reason=f"{gguf.llama_cpp_problem()}"),
]

QUANTS = ("q8_0", "q4_k_m")


@pytest.fixture(scope="module")
def agreements(tmp_path_factory, bundled_once):
    """Computed once: the GGUF files are built in this module's own data folder (export and quantize, ~10 s), from
    the session's prepared checkpoint."""
    patch = pytest.MonkeyPatch()
    patch.setenv("LAB_DATA_DIR", str(tmp_path_factory.mktemp("kld-data")))
    try:
        place_bundled(bundled_once)
        yield {a.quant: a for a in llamacpp_kld.compare(quants=QUANTS, threads=2,
                                                        work_dir=tmp_path_factory.mktemp("kld-work"))}
    finally:
        patch.undo()


def test_the_lab_reads_the_text_as_llama_cpp_tokenizes_it(agreements):
    assert all(a.tokens_identical for a in agreements.values())
    assert {a.tool.chunks for a in agreements.values()} == {6}  # prose.txt: 3384 tokens, 6 chunks of 512
    assert {a.lab.positions for a in agreements.values()} == {6 * 255}


@pytest.mark.parametrize("quant", QUANTS)
def test_mean_kld_and_same_top_agree_with_llama_perplexity(agreements, quant):
    a = agreements[quant]
    assert abs(a.lab.kld_mean - a.tool.kld_mean) <= max(0.03 * a.tool.kld_mean, 0.0005), llamacpp_kld.table([a])
    assert a.same_top_gap_points <= 0.5, llamacpp_kld.table([a])
    assert a.lab.kld_p99 == pytest.approx(a.tool.kld_p99, rel=0.1), llamacpp_kld.table([a])
    assert a.lab.kld_median == pytest.approx(a.tool.kld_median, rel=0.1), llamacpp_kld.table([a])
    assert abs(a.lab.delta_p_mean - a.tool.delta_p_mean) < 0.002, llamacpp_kld.table([a])


def test_the_scoreboard_ranks_the_quants_as_expected(agreements):
    q8, q4 = agreements["q8_0"], agreements["q4_k_m"]
    assert 0 < q8.tool.kld_mean < q4.tool.kld_mean < 0.5
    assert q8.tool.same_top > q4.tool.same_top > 0.5
