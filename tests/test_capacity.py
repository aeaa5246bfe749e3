"""Capacity planning from load points, the plain-words story of batching, and the serving figures."""

from __future__ import annotations

import pytest

from core.measure import bill
from core.measure.benchmark import Spread
from core.serving.kv import ContextPoint
from core.views import capacity, serving_plots
from tests.factories import make_record, make_serving_record


def _curve(technique="fp32", label="FP32", price=0.1, speeds=((1, 10.0, 10.0, 100), (4, 36.0, 9.0, 150),
                                                              (16, 60.0, 3.8, 900))):
    return [make_serving_record(technique=technique, label=label, concurrency=c, throughput_tokens_per_s=t,
                                per_user_tokens_per_s_median=u, ttft_ms_p90=ttft, usd_per_hour=price,
                                throughput_tokens_per_s_samples=[t * 0.95, t * 1.05]) for c, t, u, ttft in speeds]


def _plan(records, per_day=0, prompt=128, answer=100, ttft=1000.0, speed=5.0, peak=0.3, price=0.1, billing="always_on"):
    traffic = bill.Traffic(per_day, answer, prompt, peak_requests_per_s=peak)
    return capacity.plan(records, traffic, price, billing, bill.LatencyTarget(ttft, speed))


def test_the_cheapest_point_meeting_the_target_wins_and_machines_follow_the_peak():
    plan = _plan(_curve())
    # Little's law with TTFT p50 100 ms and 100-token answers: C=4 at 9 tok/s each answers 4 / (0.1 + 100 / 9)
    # = 0.357 req/s >= 0.3: one machine. C=16 would be cheaper per token but is too slow per user (3.8 < 5).
    assert plan.chosen.bill.rate.concurrency == 4 and plan.chosen.bill.machines == 1
    assert plan.chosen.bill.requests_per_s_per_machine == pytest.approx(4 / (0.1 + 100 / 9))
    assert plan.one_machine_enough and "1 machine, $72.00 a month ($72.00–$72.00) always on" in plan.summary()
    assert plan.chosen.bill.usd_per_month == pytest.approx(0.1 * 24 * 30)


def test_the_plan_states_the_formula_with_its_numbers():
    text = _plan(_curve()).summary()
    # each user's 9.0 tok/s and the machine's 0.36 requests/s are tied by the one formula, on screen
    assert "each user gets 9.0 tok/s" in text and "4 / (0.10 s + 100 tokens / 9.0 tok/s) = 0.36 requests/s" in text


def test_one_machine_not_enough_is_said_plainly():
    plan = _plan(_curve(), peak=1.0)
    assert plan.chosen.bill.machines == 3  # 1.0 / 0.357 rounded up
    assert not plan.one_machine_enough and "One machine is not enough" in plan.summary()


def test_nothing_meets_the_target_says_which_limit_to_relax():
    plan = _plan(_curve(), ttft=50.0, speed=5.0)
    assert plan.chosen is None
    assert plan.relax_ttft_ms_p90 == 100  # the fastest-TTFT point that still gives 5 tok/s per user
    assert plan.relax_user_tokens_per_s is None  # no point reaches 50 ms whatever the speed
    assert "Relax the TTFT target to 100 ms" in plan.summary()


def test_the_plan_bills_a_variant_as_the_monthly_cost_does():
    curve = _curve()
    traffic = bill.Traffic(10_000, 100, peak_requests_per_s=0.3)
    target = bill.LatencyTarget(1000.0, 5.0)
    plan = capacity.plan(curve, traffic, 0.1, "always_on", target)
    [same] = bill.variant_bills([make_record(technique="fp32")], curve, traffic, 0.1, "always_on", target)
    assert same.bill == plan.chosen.bill


def test_nearest_longer_prompt_length_is_used():
    recs = _curve() + [make_serving_record(prompt_tokens=1024, concurrency=1)]
    assert _plan(recs, prompt=500).prompt_tokens_used == 1024
    assert _plan(recs, prompt=4000).prompt_tokens_used == 1024


def test_scaling_story_numbers():
    story = capacity.scaling_story(_curve())
    assert (story.alone_tokens_per_s, story.top_concurrency, story.each_tokens_per_s) == (10.0, 16, 3.8)
    assert story.tokens_per_dollar_gain == pytest.approx(6.0)
    assert "16 users each get 3.8" in story.sentence() and "6.0 times more tokens per dollar" in story.sentence()
    assert capacity.scaling_story(_curve()[1:]) is None  # no concurrency-1 point to compare with


def test_latest_points_keeps_the_newest_of_each_point():
    old = make_serving_record(throughput_tokens_per_s=1.0, created_at="2025-01-01T00:00:00+00:00")
    new = make_serving_record(throughput_tokens_per_s=2.0, created_at="2025-02-01T00:00:00+00:00")
    assert [r.throughput_tokens_per_s for r in capacity.latest_points([new, old])] == [2.0]


def test_knee_is_where_gains_fall_below_the_threshold():
    assert serving_plots.knee_index([10, 20, 40, 44, 46]) == 2
    assert serving_plots.knee_index([10, 10.5]) == 0


def test_frontier_has_one_curve_per_variant_with_error_bars_and_a_knee():
    recs = _curve() + _curve("gguf-q4_1", "GGUF Q4_1", speeds=((1, 30.0, 30.0, 50), (4, 31.0, 8.0, 300)))
    fig = serving_plots.frontier_figure(recs, 128)
    curves = [t for t in fig.data if t.mode == "lines+markers+text"]
    knees = [t for t in fig.data if t.name.startswith(serving_plots.KNEE_NAME)]
    assert len(curves) == 2 and len(knees) == 2
    fp32 = next(t for t in curves if t.name.startswith("FP32"))
    assert list(fp32.y) == pytest.approx([t * 3600 / 0.1 for t in (10.0, 36.0, 60.0)])
    assert fp32.error_y.array[0] == pytest.approx(10.0 * 0.05 * 3600 / 0.1)
    gguf_knee = next(t for t in knees if "GGUF" in t.name)
    assert list(gguf_knee.x) == [30.0]  # 30 -> 31 tok/s is no gain: the knee is at concurrency 1


def test_context_figure_draws_measured_estimated_and_speed():
    pts = [ContextPoint(n, n * 0.01, n * 0.01, Spread((20.0 - n / 1000, 21.0 - n / 1000)), 5.0) for n in (128, 2048)]
    fig = serving_plots.context_figure(pts)
    assert [t.name for t in fig.data] == ["KV cache, measured", "KV cache, estimated from the config", "decode tok/s"]
    assert fig.data[2].yaxis == "y2" and list(fig.data[0].x) == [128, 2048]


def test_report_includes_serving_points():
    from core.views import report

    bundle = report.build_report([make_record()], "SmolLM2", "kld_mean", {}, commit="abc", serving=_curve())
    assert 'id="serving"' in bundle.html and "Serving frontier, 128-token prompts" in bundle.html
    assert '"serving"' in bundle.json and "times more tokens per dollar" in bundle.html


def test_scaling_story_says_when_more_users_made_it_slower():
    story = capacity.scaling_story(_curve(speeds=((1, 50.0, 50.0, 30), (8, 7.0, 45.0, 8000))))
    assert "only 0.14 times as many tokens per dollar" in story.sentence()


def test_bill_note_says_what_the_bills_assume():
    note = capacity.bill_note(bill.Traffic(10_000, 200), bill.LatencyTarget(2000.0, None), 0.5, "busy_only")
    assert note.startswith("For 10,000 requests a day (0.231 requests/s at peak), 200-token answers")
    assert "p90 TTFT ≤ 2000 ms" in note and "billed busy only at $0.5000/h" in note and bill.FORMULA in note


def test_bill_table_drops_the_interval_ends_and_a_load_points_training_cost():
    bills = bill.variant_bills([make_record(technique="fp32")], _curve(), bill.Traffic(10_000, 100), 0.1, "always_on",
                               bill.LatencyTarget(1000.0, 5.0))
    [full] = bill.bill_rows(bills)
    [row] = capacity.bill_table(bills)
    assert "technique" not in row and not any(k.endswith((", low", ", high")) for k in row)
    assert row == {k: v for k, v in full.items() if k in row} and "one-off training $" in row
    [load_point] = capacity.bill_table(bills, training=False)
    assert "one-off training $" not in load_point and set(load_point) == set(row) - {"one-off training $"}
