"""The cascade curve is arithmetic over per-item outcomes: checked against hand-counted cases."""

import pytest

from core.hybrids import curve
from core.hybrids.curve import ItemOutcome


def outcomes():
    # first stage: right on a, b (sure), wrong on c (unsure), wrong on d (sure); second stage right on all but b
    return [
        ItemOutcome("x", "x", 0.9, 1.0, "x", 100.0),
        ItemOutcome("y", "y", 0.8, 1.0, "z", 100.0),
        ItemOutcome("z", "q", 0.3, 1.0, "z", 100.0),
        ItemOutcome("w", "q", 0.95, 1.0, "w", 100.0),
    ]


def test_ends_and_a_middle_threshold_count_by_hand():
    points = curve.curve(outcomes(), usd_per_hour=3.6, thresholds=[0.5])
    first, second = curve.ends(points)
    assert first.accuracy == 0.5 and first.share_escalated == 0 and first.mean_latency_ms == 1.0
    assert second.accuracy == 0.75 and second.share_escalated == 1 and second.mean_latency_ms == 100.0
    mid = points[-1]
    assert mid.role == "cascade" and mid.share_escalated == 0.25  # only c escalates
    assert mid.accuracy == 0.75  # a, b from the first stage, c from the second; d stays wrong
    assert mid.mean_latency_ms == pytest.approx(1.0 + 100.0 / 4)
    # 26 ms a request at $3.6/h: 0.026 s * $0.001/s * 1000 requests
    assert mid.usd_per_1k_requests == pytest.approx(0.026)
    assert mid.accuracy_low < mid.accuracy < mid.accuracy_high


def test_the_middle_point_beats_both_ends_and_is_the_best_within_a_point():
    points = curve.curve(outcomes(), usd_per_hour=3.6)
    wins = curve.winning_points(points)
    assert wins and all(p.accuracy >= 0.75 and p.mean_latency_ms < 100 for p in wins)
    best = curve.best_point(points)
    assert best is not None and best.accuracy == 0.75 and best.share_escalated == 0.25


def test_every_threshold_grid_point_is_in_range_and_escalation_grows_with_it():
    points = [p for p in curve.curve(outcomes(), usd_per_hour=1.0) if p.role == "cascade"]
    shares = [p.share_escalated for p in points]
    assert shares == sorted(shares) and shares[0] == 0 and shares[-1] == 1


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5"])
def test_a_threshold_out_of_range_is_refused_in_words(bad):
    with pytest.raises(ValueError, match="between 0 and 1"):
        curve.at_threshold(outcomes(), bad, usd_per_hour=1.0)


def test_a_stored_result_round_trips_and_reprices(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path))
    prov = {"device": "cpu", "threads": 2, "hardware": "test machine", "versions": {}}
    result = curve.build_result("classical", "t", "clf", "llm", "probability", outcomes(), 3.6, "cloud-cpu", prov)
    curve.save_result(result)
    saved = curve.saved_results()
    assert len(saved) == 1 and saved[0]["n_items"] == 4
    doubled = curve.repriced(saved[0], 7.2)
    assert doubled[0].usd_per_1k_requests == pytest.approx(2 * result.curve_points()[0].usd_per_1k_requests)
