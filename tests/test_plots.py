import math

import plotly.graph_objects as go
import pytest

from core.views import axes, chart_parts, tradeoff_map
from core.views.chart_quantities import COST_AXES, QUALITY_METRICS, cost_interval, latency_interval, pareto_front
from core.views.speed_bars import ROOFLINE_NAME, speed_bars_figure
from core.views.tradeoff_map import FRONTIER_NAME, tradeoff_figure, what_you_give_up
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
    fig = tradeoff_figure(sweep(), "kld_mean", "latency", log=False)
    frontier = trace_named(fig, FRONTIER_NAME)
    assert frontier.line.dash == "dash"
    # dynamic int8 (30.3 ms), nf4 (35.7 ms), fp32 (50 ms); int8 (100 ms, worse kld) is dominated.
    assert list(frontier.x) == pytest.approx([1000 / 33, 1000 / 28, 1000 / 20])
    assert list(frontier.y) == pytest.approx([1.5, 0.12, 0.0])


def test_tradeoff_figure_kld_axis_reversed_and_titled():
    for log in (True, False):
        fig = tradeoff_figure(sweep(), "kld_mean", "latency", log=log)
        low, high = fig.layout.yaxis.range
        assert low > high  # reversed: the smallest divergence at the top
        assert "↑ better" in fig.layout.yaxis.title.text and "nats" in fig.layout.yaxis.title.text
        assert "ms/token" in fig.layout.xaxis.title.text
    higher = tradeoff_figure(sweep(), "top1_agreement", "latency")
    assert higher.layout.yaxis.range[0] < higher.layout.yaxis.range[1]


def test_tradeoff_figure_traces_per_family_with_bubbles_and_error_bars():
    fig = tradeoff_figure(sweep(), "mc_accuracy", "cost")
    quant = trace_named(fig, "quantization")
    assert quant.text is None  # labels are the frontier's annotations; INT8, dominated, has hover text only
    assert {a.text for a in fig.layout.annotations} == {"NF4", "Dynamic INT8", "FP32"}
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


# --- readable at 25+ points ------------------------------------------------------------------------

FAMILIES = ["reference", "quantization", "gguf", "moe", "distillation", "lora"]
RUNTIMES = ["transformers", "transformers-compiled", "llama.cpp"]


def many(n: int = 30):
    """n variants over every family and runtime, one 0.6 tok/s outlier and KL divergences over 4 decades."""
    records = []
    for i in range(n):
        tps = 0.6 if i == 7 else 8.0 + 2.5 * i
        records.append(make_record(
            technique=f"v{i}" if i else "fp32", label=f"Variant {i}" if i else "FP32",
            family=FAMILIES[i % len(FAMILIES)] if i else "reference", runtime=RUNTIMES[(i // 6) % len(RUNTIMES)],
            decode_tokens_per_s_median=tps, decode_tokens_per_s_p10=0.9 * tps, decode_tokens_per_s_p90=1.1 * tps,
            usd_per_1m_tokens=50.0 / tps, kld_mean=0.0 if i == 0 else 10 ** (-3 + (i * 7 % 30) / 8),
            top1_agreement=1.0 - 0.01 * i, perplexity=22.0 + i, size_mb=538.0 / (1 + i % 5)))
    return records


def labelled_points(fig: go.Figure) -> dict[tuple[float, float], str]:
    """Where each label's arrow points, in the axis units plotly uses (log10 on a log axis)."""
    assert all(t.text is None for t in fig.data if t.type == "scatter")  # no text on any point itself
    return {(round(a.x, 9), round(a.y, 9)): a.text for a in fig.layout.annotations}


def axis_units(values, axis) -> list[float]:
    return [round(math.log10(v) if axis.type == "log" else v, 9) for v in values]


@pytest.mark.parametrize("metric", list(QUALITY_METRICS))
@pytest.mark.parametrize("axis", list(COST_AXES))
def test_only_frontier_points_are_labelled_and_every_point_has_hover(metric, axis):
    records = many()
    fig = tradeoff_figure(records, metric, axis)
    frontier = trace_named(fig, FRONTIER_NAME)
    points = set(zip(axis_units(frontier.x, fig.layout.xaxis), axis_units(frontier.y, fig.layout.yaxis)))
    assert set(labelled_points(fig)) == points
    assert 0 < len(points) < len(records)
    hovers = [h for t in fig.data if t.customdata is not None for h in t.customdata]
    assert len(hovers) == len(records) and all("runtime" in h for h in hovers)


def test_frontier_labels_sit_in_separate_slots_in_the_order_of_their_points():
    fig = tradeoff_figure(many(), "kld_mean", "latency")
    bottom, top = fig.layout.yaxis.range
    labels = list(fig.layout.annotations)
    height_px = fig.layout.height - 300  # roughly the plot area
    gaps = [abs(a.ay - b.ay) / abs(top - bottom) * height_px for a, b in zip(labels, labels[1:])]
    assert min(gaps) >= 20  # at least a line of 11 px text apart: they cannot overlap
    assert all(a.ax > fig.layout.xaxis.range[1] for a in labels)  # in the column right of the plot
    screen = [(a.y - bottom) / (top - bottom) for a in labels]
    slots = [(a.ay - bottom) / (top - bottom) for a in labels]
    assert sorted(range(len(labels)), key=screen.__getitem__) == sorted(range(len(labels)), key=slots.__getitem__)


def test_log_axes_by_default_with_the_kld_floor_named_and_a_linear_toggle():
    records = many()
    fig = tradeoff_figure(records, "kld_mean", "latency")
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert f"+ {tradeoff_map.KLD_LOG_FLOOR:g} floor" in fig.layout.yaxis.title.text
    ref = trace_named(fig, "reference")
    assert ref.y[0] == pytest.approx(tradeoff_map.KLD_LOG_FLOOR)  # KLD 0 drawn at the floor; the hover keeps 0.0000
    assert "KL divergence: 0.0000" in ref.customdata[0]
    assert tradeoff_figure(records, "kld_mean", "cost").layout.xaxis.type == "log"
    linear = tradeoff_figure(records, "kld_mean", "latency", log=False)
    assert linear.layout.xaxis.type == "linear" and linear.layout.yaxis.type == "linear"
    assert trace_named(linear, "reference").y[0] == 0.0


def test_an_outlier_stays_inside_the_range_without_squeezing_the_rest():
    records = many()
    fig = tradeoff_figure(records, "kld_mean", "latency")
    lo, hi = fig.layout.xaxis.range  # log10 units
    latencies = [1000 / r.decode_tokens_per_s_median for r in records]
    assert lo < math.log10(min(latencies)) and math.log10(max(latencies)) < hi  # 1667 ms outlier included
    assert hi - math.log10(max(latencies)) < 0.5  # no room for the error bars' far end: range is from the points
    others = sorted(math.log10(v) for v in latencies if v < 1000)
    assert (others[-1] - others[0]) / (hi - lo) > 0.3  # the other 29 spread over a third of the width or more


def test_colour_by_family_and_symbol_by_runtime():
    fig = tradeoff_figure(many(), "top1_agreement", "latency")
    assert trace_named(fig, "gguf").marker.color == chart_parts.FAMILY_COLORS["gguf"]
    assert trace_named(fig, "quantization").marker.color == chart_parts.FAMILY_COLORS["quantization"]
    legend = {t.name: t.marker.symbol for t in fig.data if t.legendgroup == "runtime"}
    assert legend == {rt: chart_parts.RUNTIME_SYMBOLS[rt] for rt in RUNTIMES}
    moe = trace_named(fig, "moe")
    assert set(moe.marker.symbol) <= set(chart_parts.RUNTIME_SYMBOLS.values()) and len(set(moe.marker.symbol)) > 1


def test_map_rows_list_every_point_frontier_first():
    records = many()
    rows = tradeoff_map.map_rows(records, "kld_mean", "latency")
    assert sorted(r["technique"] for r in rows) == sorted(r.technique for r in records)
    flags = [r["on frontier"] for r in rows]
    assert flags == sorted(flags, reverse=True) and any(flags) and not all(flags)
    assert {r["runtime"] for r in rows} == set(RUNTIMES)


def test_the_sentence_names_the_runtime_when_the_best_variant_runs_elsewhere():
    records = sweep() + [make_record(technique="gguf-q4_k_m", label="GGUF Q4_K_M", family="gguf", runtime="llama.cpp",
                                     size_mb=105.0, decode_tokens_per_s_median=70.0, decode_tokens_per_s_p10=65.0,
                                     decode_tokens_per_s_p90=74.0, usd_per_1m_tokens=2.5 * 20 / 70, kld_mean=0.09)]
    sentence = what_you_give_up(records, "kld_mean", "latency")
    assert "GGUF Q4_K_M (on llama.cpp), decodes 3.5x faster than FP32" in sentence
    assert "(on " not in what_you_give_up(sweep(), "kld_mean", "latency")


# --- axes that stay readable wherever they are drawn (issue #31) -----------------------------------

def kld_wide():
    """The case that broke: a reference at KLD 0 and variants from 0.0004 to 0.4 nats."""
    return [make_record(technique="fp32", label="FP32", kld_mean=0.0)] + [
        make_record(technique=f"q{i}", family="quantization", label=f"Q{i}", kld_mean=k,
                    decode_tokens_per_s_median=20.0 + 5 * i, usd_per_1m_tokens=2.5 * 20 / (20.0 + 5 * i))
        for i, k in enumerate((0.0004, 0.004, 0.04, 0.4), start=1)]


@pytest.mark.parametrize("log_range", [(-4.15, -0.25), (1.15, 1.99), (-0.05, 0.55), (-4.15, -3.85), (1.69, 1.71),
                                       (-0.3, 12.0), (3.0, 3.2)])
def test_log_ticks_give_at_least_three_plain_labels_inside_the_range(log_range):
    ticks = axes.log_ticks(log_range)
    labels = [axes.plain_number(t) for t in ticks]
    assert axes.MIN_TICKS <= len(ticks) <= axes.MAX_TICKS
    assert all(log_range[0] <= math.log10(t) <= log_range[1] for t in ticks)
    assert len(set(labels)) == len(labels) and all(labels)
    assert not any("e" in label or "^" in label or "−" in label for label in labels)  # no exponents
    assert axes.log_ticks(log_range[::-1]) == ticks  # a reversed axis gets the same ticks


def test_plain_numbers():
    assert [axes.plain_number(v) for v in (0.0001, 0.02, 1.5, 20.0, 12000.0, 0.1 * 3, 0.0)] == [
        "0.0001", "0.02", "1.5", "20", "12,000", "0.3", "0"]


def test_wrapped_titles_keep_their_phrases_whole():
    title = "KLD + 0.0001 floor, nats/token, log (↑ better)"
    wrapped = axes.wrap_title(title)
    assert "<br>" in wrapped and wrapped.replace("<br>", " ").replace(",  ", ", ") == title
    assert all(len(line) <= axes.TITLE_LINE_CHARS for line in wrapped.split("<br>"))
    assert "(↑ better)" in wrapped and axes.wrap_title("Variant") == "Variant"


def test_the_wide_kld_map_labels_its_log_axis_in_plain_decimals():
    fig = tradeoff_figure(kld_wide(), "kld_mean", "latency")
    y = fig.layout.yaxis
    assert y.type == "log" and y.range[0] > y.range[1]  # still reversed: the smallest divergence on top
    assert list(y.ticktext) == ["0.0001", "0.001", "0.01", "0.1"]
    assert all(min(y.range) <= math.log10(v) <= max(y.range) for v in y.tickvals)
    x = fig.layout.xaxis
    assert len(x.tickvals) >= 3 and all(min(x.range) <= math.log10(v) <= max(x.range) for v in x.tickvals)
    assert "+ 0.0001 floor" in y.title.text and "↑ better" in y.title.text


def every_figure():
    from core.views import serving_plots
    from core.views.moe_curve import moe_curve_figure
    from tests.factories import make_serving_record

    moe = [make_record(technique=f"moe-{k}", family="moe", label=f"MoE k={k}", variant_facts={"experts": 4, "top_k": k})
           for k in (1, 2, 4)]
    serving = [make_serving_record(concurrency=c, throughput_tokens_per_s=10.0 * c) for c in (1, 2, 4)]
    return {
        **{f"map {m} {a} log={log}": tradeoff_figure(kld_wide(), m, a, log=log)
           for m in QUALITY_METRICS for a in COST_AXES for log in (True, False)},
        "speed bars": speed_bars_figure(kld_wide()),
        "moe curve": moe_curve_figure([*moe, kld_wide()[0]]),
        "serving frontier": serving_plots.frontier_figure(serving, 128),
    }


@pytest.mark.parametrize("name", list(every_figure()))
def test_every_axis_makes_room_for_its_labels_whatever_the_theme(name):
    """automargin is set on the axes themselves: Streamlit's theme replaces plotly's template, which held it."""
    fig = every_figure()[name]
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        assert axis.automargin is True
        assert axis.exponentformat in (None, "none")  # never '10⁻⁴', whose base can be cut off
    assert fig.layout.width is None  # the page sets the width, so the figure follows it
    assert all(len(line) <= axes.TITLE_LINE_CHARS + 2 for line in (fig.layout.yaxis.title.text or "").split("<br>"))


def test_the_context_axis_has_plain_ticks():
    from types import SimpleNamespace

    from core.views import serving_plots

    points = [SimpleNamespace(context_tokens=c, kv_cache_mb_measured=c / 100, kv_cache_mb_estimated=c / 100,
                              decode_tokens_per_s=SimpleNamespace(median=20.0, samples=[19.0, 21.0]))
              for c in (128, 512, 2048)]
    fig = serving_plots.context_figure(points)
    assert list(fig.layout.xaxis.ticktext) == ["200", "500", "1,000", "2,000"]  # not 10^2.3 and unlabelled 2, 5
    assert fig.layout.yaxis.automargin is True and fig.layout.yaxis2.automargin is True
