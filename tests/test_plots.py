import math

import plotly.graph_objects as go
import pytest

from core.plots import (
    COST_AXES,
    FRONTIER_NAME,
    QUALITY_METRICS,
    ROOFLINE_NAME,
    cost_interval,
    latency_interval,
    pareto_front,
    speed_bars_figure,
    tradeoff_figure,
    what_you_give_up,
)
from tests.factories import make_record


def sweep():
    """fp32 reference, a fast slightly-worse nf4, a dominated int8, and a faster but bad dynamic int8."""
    return [
        make_record(technique="fp32", label="FP32", family="reference", size_mb=538.0,
                    decode_tokens_per_s_median=20.0, decode_tokens_per_s_p10=16.0, decode_tokens_per_s_p90=25.0,
                    usd_per_1m_tokens=2.5, kld_mean=0.0, top1_agreement=1.0, perplexity=22.1, mc_accuracy=0.40),
        make_record(technique="nf4", label="NF4", family="quantization", size_mb=193.7,
                    decode_tokens_per_s_median=28.0, decode_tokens_per_s_p10=25.0, decode_tokens_per_s_p90=30.0,
                    usd_per_1m_tokens=2.5 * 20 / 28, kld_mean=0.12, top1_agreement=0.91, perplexity=28.5,
                    mc_accuracy=0.38, mc_accuracy_ci95=[0.28, 0.48]),
        make_record(technique="int8", label="INT8", family="quantization", size_mb=220.0,
                    decode_tokens_per_s_median=10.0, decode_tokens_per_s_p10=9.0, decode_tokens_per_s_p90=11.0,
                    usd_per_1m_tokens=5.0, kld_mean=0.30, top1_agreement=0.85, perplexity=22.7, mc_accuracy=0.39),
        make_record(technique="dyn-int8", label="Dynamic INT8", family="quantization", size_mb=248.0,
                    decode_tokens_per_s_median=33.0, decode_tokens_per_s_p10=30.0, decode_tokens_per_s_p90=35.0,
                    usd_per_1m_tokens=2.5 * 20 / 33, kld_mean=1.5, top1_agreement=0.6, perplexity=75.0,
                    mc_accuracy=0.30),
    ]


def trace_named(fig: go.Figure, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, [t.name for t in fig.data]
    return matches[0]


# --- registries ------------------------------------------------------------------------------------

def test_metric_registry():
    assert set(QUALITY_METRICS) == {"kld_mean", "top1_agreement", "perplexity", "mc_accuracy"}
    assert not QUALITY_METRICS["kld_mean"].higher_is_better
    assert not QUALITY_METRICS["perplexity"].higher_is_better
    assert QUALITY_METRICS["top1_agreement"].higher_is_better
    assert QUALITY_METRICS["mc_accuracy"].error_fields == ("mc_accuracy_ci95",)
    assert all("↑ better" in m.axis_title for m in QUALITY_METRICS.values())
    assert set(COST_AXES) == {"latency", "cost"}


def test_latency_interval_is_asymmetric_from_p10_p90():
    iv = latency_interval(make_record(decode_tokens_per_s_median=20.0, decode_tokens_per_s_p10=16.0,
                                      decode_tokens_per_s_p90=25.0))
    assert (iv.value, iv.low, iv.high) == pytest.approx((50.0, 40.0, 62.5))
    assert (iv.minus, iv.plus) == pytest.approx((10.0, 12.5))


def test_cost_interval_has_the_same_relative_spread():
    iv = cost_interval(make_record(usd_per_1m_tokens=2.0, decode_tokens_per_s_median=20.0,
                                   decode_tokens_per_s_p10=16.0, decode_tokens_per_s_p90=25.0))
    assert (iv.value, iv.low, iv.high) == pytest.approx((2.0, 1.6, 2.5))


# --- Pareto front ------------------------------------------------------------------------------------

def test_pareto_front_higher_is_better():
    points = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (0.5, 0.1), (2.5, 0.95)]
    # (3.0, 0.8) is dominated by (2.0, 0.9); the rest trade off.
    assert pareto_front(points, higher_is_better=True) == [3, 0, 1, 4]


def test_pareto_front_lower_is_better():
    points = [(1.0, 0.5), (2.0, 0.1), (3.0, 0.3), (0.5, 2.0)]
    # y is a loss here: (3.0, 0.3) is dominated by (2.0, 0.1).
    assert pareto_front(points, higher_is_better=False) == [3, 0, 1]
    # The same points read as higher-is-better give a different front.
    assert pareto_front(points, higher_is_better=True) == [3]


def test_pareto_front_ties():
    # Exact duplicates both stay; equal x with worse y is dominated; equal y with larger x is dominated.
    points = [(1.0, 0.8), (1.0, 0.8), (1.0, 0.7), (2.0, 0.8), (2.0, 0.9)]
    assert pareto_front(points, higher_is_better=True) == [0, 1, 4]


def test_pareto_front_edge_cases():
    assert pareto_front([], True) == []
    assert pareto_front([(1.0, 1.0)], True) == [0]
    assert pareto_front([(math.nan, 1.0), (2.0, 0.5)], True) == [1]


# --- trade-off figure -------------------------------------------------------------------------------

def test_tradeoff_figure_has_frontier_through_the_right_points():
    fig = tradeoff_figure(sweep(), "kld_mean", "latency")
    frontier = trace_named(fig, FRONTIER_NAME)
    assert frontier.line.dash == "dash"
    # dynamic int8 (30.3 ms), nf4 (35.7 ms), fp32 (50 ms); int8 (100 ms, worse kld) is dominated.
    assert list(frontier.x) == pytest.approx([1000 / 33, 1000 / 28, 1000 / 20])
    assert list(frontier.y) == pytest.approx([1.5, 0.12, 0.0])


def test_tradeoff_figure_kld_axis_reversed_and_titled():
    fig = tradeoff_figure(sweep(), "kld_mean", "latency")
    assert fig.layout.yaxis.autorange == "reversed"
    assert "↑ better" in fig.layout.yaxis.title.text and "nats" in fig.layout.yaxis.title.text
    assert "ms/token" in fig.layout.xaxis.title.text
    higher = tradeoff_figure(sweep(), "top1_agreement", "latency")
    assert higher.layout.yaxis.autorange != "reversed"


def test_tradeoff_figure_traces_per_family_with_bubbles_and_error_bars():
    fig = tradeoff_figure(sweep(), "mc_accuracy", "cost")
    quant = trace_named(fig, "quantization")
    assert list(quant.text) == ["NF4", "INT8", "Dynamic INT8"]
    assert quant.marker.sizemode == "area"
    assert list(quant.marker.size) == [193.7, 220.0, 248.0]
    assert quant.error_x.array is not None and quant.error_x.symmetric is False
    # x error bars: nf4 cost has p10/p90 spread -> (30/28 - ... ) relative; check one value.
    nf4_cost = 2.5 * 20 / 28
    assert quant.error_x.array[0] == pytest.approx(nf4_cost * 28 / 25 - nf4_cost)
    assert quant.error_x.arrayminus[0] == pytest.approx(nf4_cost - nf4_cost * 28 / 30)
    # y error bars from the CI: nf4 [0.28, 0.48] around 0.38.
    assert quant.error_y.array[0] == pytest.approx(0.10)
    assert quant.error_y.arrayminus[0] == pytest.approx(0.10)
    assert "bubble size = MB held" in fig.layout.legend.title.text
    assert "USD per 1M" in fig.layout.xaxis.title.text


def test_tradeoff_hover_has_numbers_with_units():
    fig = tradeoff_figure(sweep(), "kld_mean", "latency")
    hover = trace_named(fig, "reference").customdata[0]
    for fragment in ("538.0 MB", "20.0 tokens/s", "50.0 ms/token", "nats/token", "22.10", "$2.5000 per 1M tokens"):
        assert fragment in hover, fragment


def test_tradeoff_figure_empty_and_bad_keys():
    assert len(tradeoff_figure([], "kld_mean", "latency").data) == 0
    with pytest.raises(ValueError, match="kld_mean"):
        tradeoff_figure(sweep(), "bleu", "latency")
    with pytest.raises(ValueError, match="latency"):
        tradeoff_figure(sweep(), "kld_mean", "energy")


def test_tradeoff_figure_refuses_mixed_machines():
    records = sweep()
    records[1].hardware = "another box"
    with pytest.raises(ValueError, match="2 machines"):
        tradeoff_figure(records, "kld_mean", "latency")


# --- what you give up ---------------------------------------------------------------------------------

def test_what_you_give_up_names_the_fastest_frontier_variant_with_numbers():
    # Drop the dynamic int8 so nf4 is the fastest on the frontier.
    records = [r for r in sweep() if r.technique != "dyn-int8"]
    sentence = what_you_give_up(records, "kld_mean", "latency")
    assert "NF4" in sentence
    assert "1.4x faster than FP32" in sentence  # 28 / 20
    assert "0.12 nats" in sentence and "91%" in sentence
    assert "36% of its memory" in sentence  # 193.7 / 538


def test_what_you_give_up_is_honest_about_a_bad_fast_variant():
    sentence = what_you_give_up(sweep(), "perplexity", "latency")
    assert "Dynamic INT8" in sentence and "1.6x faster" in sentence  # 33 / 20
    assert "75.0" in sentence and "22.1" in sentence


def test_what_you_give_up_on_cost_axis():
    records = [r for r in sweep() if r.technique != "dyn-int8"]
    sentence = what_you_give_up(records, "top1_agreement", "cost")
    assert "cheapest" in sentence and "NF4" in sentence and "71%" in sentence  # 20 / 28


def test_what_you_give_up_edge_cases():
    assert "No results" in what_you_give_up([], "kld_mean", "latency")
    no_reference = [r for r in sweep() if r.technique != "fp32"]
    assert "no fp32 reference" in what_you_give_up(no_reference, "kld_mean", "latency")
    only_reference = [sweep()[0]]
    assert "Only FP32" in what_you_give_up(only_reference, "kld_mean", "latency")
    slower_only = [sweep()[0], sweep()[2]]  # int8 is slower and worse
    assert "No variant beats FP32" in what_you_give_up(slower_only, "kld_mean", "latency")


# --- speed bars ------------------------------------------------------------------------------------

def test_speed_bars_show_spread_and_roofline():
    records = sweep()
    for r in records:
        r.roofline_tokens_per_s = 40.0
    fig = speed_bars_figure(records)
    bars = [t for t in fig.data if t.type == "bar"][0]
    assert list(bars.y) == [20.0, 28.0, 10.0, 33.0]
    assert list(bars.error_y.array) == pytest.approx([5.0, 2.0, 1.0, 2.0])
    assert list(bars.error_y.arrayminus) == pytest.approx([4.0, 3.0, 1.0, 3.0])
    assert bars.text[0] == "50% of limit"
    roofline = [t for t in fig.data if t.name.startswith(ROOFLINE_NAME)][0]
    assert list(roofline.y) == [40.0] * 4
    assert "tokens/s" in fig.layout.yaxis.title.text


def test_speed_bars_empty():
    assert len(speed_bars_figure([]).data) == 0
