"""llama-perplexity's KLD rule in the lab: chunks, BOS, the second half scored, its statistics, its printed output.

Hand-made log-prob tensors here; the bundled model against llama.cpp's own tool in test_llamacpp_kld_bundled.py.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct

import pytest
import torch

from core.experiments import sweep
from core.measure import evaluate
from core.measure.llamacpp_kld import ScoreboardError, parse_kld_output, read_base_tokens, relative_gap
from core.store import ResultStore
from core.store.records import VariantRecord
from core.views import chart_parts, chart_quantities, tables, tradeoff_map
from tests.factories import make_record

V = 6  # vocabulary of the hand-made log-probs


class TableRunner:
    """A Runner whose log-probs are a fixed function of (window index, position): no model needed."""

    def __init__(self, seed: int, shift: float = 0.0):
        self.seed, self.shift, self.calls = seed, shift, 0

    def window_logprobs(self, window: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 10**6 + hash(tuple(window[0].tolist())) % 10**6)
        logits = torch.randn(window.shape[-1], V, generator=g) * 2
        logits[:, 0] += self.shift
        self.calls += 1
        return torch.log_softmax(logits, -1)


# --- chunks and rows ---------------------------------------------------------------------------------


def test_chunks_drop_the_remainder_and_keep_every_text_token_without_bos():
    chunks = evaluate.perplexity_chunks(list(range(10, 30)), n_ctx=8)
    assert [c.tolist()[0] for c in chunks] == [list(range(10, 18)), list(range(18, 26))]  # 4 left over: dropped
    assert evaluate.perplexity_chunks(list(range(7)), 8) == []
    assert len(evaluate.perplexity_chunks(list(range(100)), 8, max_tokens=20)) == 2  # as llama-perplexity --chunks


def test_bos_starts_the_text_and_is_written_over_each_chunks_first_token():
    """llama-perplexity tokenizes with BOS, then writes BOS over the first token of every chunk (perplexity.cpp)."""
    chunks = evaluate.perplexity_chunks(list(range(10, 30)), n_ctx=8, bos_id=1)
    # 17 is neither read nor scored: BOS took its place
    assert [c.tolist()[0] for c in chunks] == [[1, *range(10, 17)], [1, *range(18, 25)]]
    assert len(evaluate.perplexity_chunks(list(range(10, 17)), 8, bos_id=1)) == 1  # BOS counts toward the chunk


def test_scored_rows_are_the_second_half_less_the_last_position():
    assert evaluate.scored_rows(512, "llama-perplexity") == slice(256, 511)  # 255 positions, as n_ctx - 1 - n_ctx/2
    assert evaluate.scored_rows(512, "every-position") == slice(0, 512)
    assert evaluate.text_windows(list(range(50)), 16, None, "every-position")[-1].shape[-1] == 2


def test_bos_per_chunk_follows_the_tokenizer(tiny):
    _, tokenizer = tiny
    assert evaluate.bos_per_chunk(tokenizer) is None  # the tiny byte-level tokenizer adds no BOS

    class AddsBos:
        bos_token_id = 7

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": ([7] if add_special_tokens else []) + [ord(c) for c in text]}

    assert evaluate.bos_per_chunk(AddsBos()) == 7


# --- the statistics ----------------------------------------------------------------------------------


def _llama_percentile(values: list[float], fraction: float) -> float:
    """perplexity.cpp's percentile lambda, transcribed."""
    values = sorted(values)
    p = fraction * (len(values) - 1)
    ip = int(p)
    p -= ip
    return (1 - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)]


def test_kld_stats_interpolate_percentiles_as_llama_perplexity_does():
    kld = torch.tensor([0.5, 0.1, 0.3, 0.0, 0.9, 0.2, 0.7])
    same = torch.tensor([True, True, False, True, True, False, True])
    dp = torch.tensor([0.1, -0.2, 0.05])
    s = evaluate.kld_stats(kld, same, dp)
    values = kld.tolist()
    assert s.kld_mean == pytest.approx(sum(values) / 7)
    assert s.kld_median == pytest.approx(0.3)
    assert s.kld_p99 == pytest.approx(_llama_percentile(values, 0.99))
    assert s.kld_p999 == pytest.approx(_llama_percentile(values, 0.999))
    assert s.kld_max == pytest.approx(0.9) and s.same_top == pytest.approx(5 / 7) and s.positions == 7
    assert s.delta_p_mean == pytest.approx(-0.05 / 3) and s.delta_p_rms == pytest.approx(math.sqrt(0.0525 / 3))
    even = evaluate.kld_stats(torch.tensor([0.1, 0.2, 0.4, 0.8]), torch.ones(4, dtype=torch.bool), torch.zeros(4))
    assert even.kld_median == pytest.approx(0.3)  # the mean of the two middle values, as llama-perplexity's median


def test_llama_rule_counts_only_reference_tokens_above_minus_16_nats():
    reference = torch.log(torch.tensor([[0.7, 0.3 - 1e-8, 1e-8]]))  # log(1e-8) = -18.4: below the floor
    variant = torch.log(torch.tensor([[0.6, 0.2, 0.2]]))
    full = float((reference.exp() * (reference - variant)).sum())
    floored = float(evaluate.position_kld(reference, variant, "llama-perplexity")[0])
    assert floored == pytest.approx(0.7 * math.log(0.7 / 0.6) + (0.3 - 1e-8) * math.log((0.3 - 1e-8) / 0.2), rel=1e-5)
    assert floored != full and abs(floored - full) < 1e-6
    assert float(evaluate.position_kld(variant, variant, "every-position")[0]) == 0.0


def test_text_quality_by_the_llama_rule_against_a_hand_computation():
    ids = [(7 * i) % V for i in range(1, 33)]  # token ids within the hand-made vocabulary
    windows = evaluate.perplexity_chunks(ids, n_ctx=8)  # 4 chunks of 8, positions 4..6 scored
    base, quant = TableRunner(seed=1), TableRunner(seed=2, shift=0.5)
    own_quality, reference = evaluate.text_quality(base, windows, None, rule="llama-perplexity")
    assert [r.shape for r in reference] == [torch.Size([3, V])] * 4  # only the scored rows are kept
    assert own_quality.kld_mean == 0.0 and own_quality.top1_agreement == 1.0 and own_quality.delta_p_mean == 0.0
    quality, _ = evaluate.text_quality(quant, windows, reference, rule="llama-perplexity")

    klds, same, dps, nll = [], [], [], []
    for w in windows:
        ref, lp = base.window_logprobs(w)[4:7], quant.window_logprobs(w)[4:7]
        targets = w[0, 5:8]
        for row in range(3):
            terms = [ref[row, v].exp() * (ref[row, v] - lp[row, v]) for v in range(V) if ref[row, v] > -16]
            klds.append(float(sum(terms)))
            same.append(int(ref[row].argmax() == lp[row].argmax()))
            t = int(targets[row])
            dps.append(float(lp[row, t].exp() - ref[row, t].exp()))
            nll.append(-float(lp[row, t]))
    assert quality.rule == "llama-perplexity" and quality.positions == 12 and quality.nll_tokens == 12
    assert quality.kld_mean == pytest.approx(sum(klds) / 12, rel=1e-5)
    assert quality.kld_max == pytest.approx(max(klds), rel=1e-5)
    assert quality.kld_p99 == pytest.approx(_llama_percentile(klds, 0.99), rel=1e-5)
    assert quality.top1_agreement == pytest.approx(sum(same) / 12)
    assert quality.delta_p_mean == pytest.approx(sum(dps) / 12, rel=1e-5, abs=1e-7)
    assert quality.perplexity == pytest.approx(math.exp(sum(nll) / 12), rel=1e-5)


def test_every_position_rule_is_the_lab_first_rule():
    windows = evaluate.token_windows([(5 * i) % V for i in range(1, 21)], 8)  # 8, 8 and a short 4
    base, quant = TableRunner(seed=3), TableRunner(seed=4)
    _, reference = evaluate.text_quality(base, windows, None)
    quality, _ = evaluate.text_quality(quant, windows, reference)
    assert quality.rule == "every-position" and quality.positions == 20 and quality.nll_tokens == 17
    kl = torch.cat([(r.exp() * (r - quant.window_logprobs(w))).sum(-1).clamp_min(0)
                    for r, w in zip(reference, windows)])
    assert quality.kld_mean == pytest.approx(float(kl.mean()), rel=1e-5)
    with pytest.raises(ValueError, match="Unknown scoring rule"):
        evaluate.text_quality(quant, windows, reference, rule="half")  # type: ignore[arg-type]


# --- the sweep's settings and records ---------------------------------------------------------------


def test_sweep_scores_by_the_llama_rule_and_falls_back_for_a_short_text(tiny):
    _, tokenizer = tiny
    assert sweep.SweepSettings().kld_rule == "llama-perplexity"
    with pytest.raises(ValueError, match="Unknown kld_rule"):
        sweep.SweepSettings(kld_rule="half")  # type: ignore[arg-type]
    settings = sweep.SweepSettings(ppl_window_tokens=32, ppl_max_tokens=100)
    windows, rule, bos = sweep.text_windows(tokenizer, "Some plain words. " * 20, settings)
    assert rule == "llama-perplexity" and bos is None and [w.shape[-1] for w in windows] == [32, 32, 32]
    windows, rule, _ = sweep.text_windows(tokenizer, "Too short.", settings)
    assert rule == "every-position" and len(windows) == 1


def test_records_from_before_the_scoreboard_fields_still_load(tmp_path):
    old = make_record(technique="gguf-q4_k_m").to_dict()
    for name in ("kld_median", "kld_p999", "kld_max", "delta_p_mean", "delta_p_rms"):
        old.pop(name)
    record = VariantRecord.from_dict(old)
    assert record.kld_p999 is None and record.delta_p_mean is None
    assert chart_quantities.kld_rule(record) == "every-position"
    store = ResultStore(tmp_path / "results.sqlite")
    new = make_record(technique="gguf-q8_0", kld_mean=0.0035, kld_p99=0.014, kld_p999=0.021, delta_p_mean=-0.0007,
                      settings={"kld_rule": "llama-perplexity"})
    store.add(record)
    store.add(new)
    with sqlite3.connect(tmp_path / "results.sqlite") as db:  # the row as an older lab wrote it: no new keys
        db.execute("UPDATE results SET record_json = ? WHERE technique = 'gguf-q4_k_m'", (json.dumps(old),))
    back = {r.technique: r for r in store.all()}
    assert back["gguf-q8_0"].kld_p999 == 0.021 and back["gguf-q8_0"].delta_p_mean == -0.0007
    assert back["gguf-q4_k_m"].kld_p999 is None


def test_p99_beside_the_mean_in_the_hover_and_the_tables():
    record = make_record(technique="gguf-q4_k_m", kld_mean=0.0469, kld_p99=0.2077, kld_p999=0.61,
                         settings={"kld_rule": "llama-perplexity"})
    hover = chart_parts.hover_text(record)
    assert "KL divergence: 0.0469 nats/token (p99 0.2077, p99.9 0.6100; llama-perplexity rule)" in hover
    assert "(p99 0.0000; every-position rule)" in chart_parts.hover_text(make_record())  # an old record: no p99.9
    assert tables.summary_rows([record])[0]["KLD p99 (nats)"] == 0.2077
    assert tradeoff_map.map_rows([make_record(), record], "kld_mean", "latency")[-1]["KLD p99 (nats)"] in (0.0, 0.2077)
    assert "llama-perplexity" in tables.provenance_lines([record])[2]
    assert "mixed scoring rules" in tables.provenance_lines([record, make_record()])[2]


# --- llama-perplexity's own output ---------------------------------------------------------------------

OUTPUT = """\
0.00.233.241 I kl_divergence: computing over 6 chunks, n_ctx=512, batch_size=2048, n_seq=4
0.07.951.462 I kl_divergence: 7.72 seconds per pass - ETA 0.18 minutes

chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p
   1      20.0882 ±    3.1876      -0.00262 ±    0.00545       0.00350 ±    0.00016     1.186 ±  0.083 %    96.078 ±  1.218 %

====== Perplexity statistics ======
Mean PPL(Q)                   :  19.757824 ±   1.336958
Mean PPL(base)                :  19.577197 ±   1.323653
Cor(ln(PPL(Q)), ln(PPL(base))):  99.94%

====== KL divergence statistics ======
Mean    KLD:   0.003502 ±   0.000071
Maximum KLD:   0.022933
99.9%   KLD:   0.021114
99.0%   KLD:   0.013949
95.0%   KLD:   0.008587
Median  KLD:   0.002903
Minimum KLD:  -0.000003

====== Token probability statistics ======
Mean    Δp: -0.073 ± 0.032 %
Maximum Δp:  8.084%
Median  Δp: -0.001%
RMS Δp    :  1.256 ± 0.046 %
Same top p: 95.752 ± 0.516 %
"""


def test_parse_llama_perplexity_kld_output():
    s = parse_kld_output(OUTPUT)
    assert (s.kld_mean, s.kld_mean_uncertainty, s.kld_median, s.kld_p99, s.kld_p999, s.kld_max) == (
        0.003502, 0.000071, 0.002903, 0.013949, 0.021114, 0.022933)
    assert s.same_top == pytest.approx(0.95752) and s.same_top_uncertainty == pytest.approx(0.00516)
    assert s.delta_p_mean == pytest.approx(-0.00073) and s.delta_p_rms == pytest.approx(0.01256)
    assert (s.ppl_quant, s.ppl_base, s.chunks, s.n_ctx) == (19.757824, 19.577197, 6, 512)


def test_a_failed_run_is_named_not_parsed():
    failed = ("perplexity: tokenizing the input ..\n"
              "perplexity: you need at least 1024 tokens to evaluate perplexity with a context of 512\n")
    with pytest.raises(ScoreboardError, match="you need at least 1024 tokens"):
        parse_kld_output(failed)
    with pytest.raises(ScoreboardError, match="Same top p|same_top"):
        parse_kld_output(OUTPUT.split("Same top p")[0])


def test_read_the_tokens_of_a_kl_divergence_base_file(tmp_path):
    path = tmp_path / "base.kld"
    tokens = list(range(100, 108))
    path.write_bytes(b"_logits_" + struct.pack("<Iii", 4, 49152, 2) + struct.pack("<8i", *tokens) + b"\0" * 64)
    base = read_base_tokens(path)
    assert (base.n_ctx, base.n_vocab, base.n_chunk, base.tokens) == (4, 49152, 2, tokens)
    (tmp_path / "other").write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(ScoreboardError, match="not a llama-perplexity"):
        read_base_tokens(tmp_path / "other")
    assert relative_gap(0.0351, 0.0350) == pytest.approx(1 / 350) and relative_gap(0.0, 0.0) == 0.0


def test_the_cli_picks_the_rule():
    from core.cli import build_parser, measure

    default = build_parser().parse_args(["sweep", "--techniques", "fp32"])
    assert measure.sweep_settings(default).kld_rule == "llama-perplexity"
    chosen = build_parser().parse_args(["sweep", "--techniques", "fp32", "--kld-rule", "every-position"])
    assert measure.sweep_settings(chosen).kld_rule == "every-position"
