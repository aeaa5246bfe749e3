import math

import pytest

from core.measure import intervals
from core.views import quality
from tests.factories import make_record


def test_ratio_of_medians_brackets_the_value_and_narrows_with_steadier_runs():
    wide = intervals.ratio_of_medians([100, 130, 160, 120, 140], [17, 19, 21, 18, 20])
    steady = intervals.ratio_of_medians([129, 130, 131, 130, 130], [18.9, 19, 19.1, 19, 19])
    assert wide.value == pytest.approx(130 / 19) and steady.value == pytest.approx(130 / 19)
    assert wide.low <= wide.value <= wide.high and steady.low <= steady.value <= steady.high
    assert (steady.high - steady.low) < (wide.high - wide.low) / 5
    assert intervals.ratio_of_medians([100, 130], [17, 19]) == intervals.ratio_of_medians([100, 130], [17, 19])  # seeded


def test_one_run_has_a_value_and_no_interval():
    one = intervals.ratio_of_medians([120.0], [20.0, 21.0])
    assert one.value == pytest.approx(120 / 20.5) and math.isnan(one.low) and not one.known
    assert not intervals.ratio_of_medians([], [20.0]).known


def test_wilson_share_of_tokens():
    est = intervals.share(0.957, 3384)
    assert est.low == pytest.approx(0.9497, abs=5e-4) and est.high == pytest.approx(0.9634, abs=5e-4)
    assert intervals.share(1.0, 3384).high == pytest.approx(1.0) and intervals.share(1.0, 3384).low > 0.998
    assert not intervals.share(0.9, 0).known


def test_inverting_a_speed_gives_a_cost_with_the_ends_swapped():
    speed = intervals.Estimate(20.0, 16.0, 25.0, "test")
    per_million = 0.18 / 3600 * 1e6  # $ per 1M tokens at 1 tok/s
    usd = speed.inverted(per_million)
    assert usd.value == pytest.approx(2.5) and usd.low == pytest.approx(2.0) and usd.high == pytest.approx(3.125)


@pytest.mark.parametrize("top1, band, words", [
    (1.0, "indistinguishable", "every time"), (0.957, "very close", "1 next token in 23"),
    (0.866, "close", "1 next token in 7"), (0.715, "often different", "1 next token in 4"),
    (0.641, "often different", "1 next token in 3"), (0.438, "a different model", "1 next token in 2")])
def test_quality_words_for_the_variants_the_lab_measured(top1, band, words):
    assert quality.band_of(top1).name == band and words in quality.scale_words(top1)


def test_answer_flips_count_changed_picks_against_the_reference():
    ref = make_record(mc_per_item=[{"index": i, "pick": 0} for i in range(10)])
    variant = make_record(technique="q", mc_per_item=[{"index": i, "pick": 1 if i < 3 else 0} for i in range(10)])
    assert quality.answer_flips(variant, ref) == pytest.approx(0.3)
    assert quality.answer_flips(variant, None) is None
    assert quality.floor_warning(make_record(top1_agreement=0.9), ref, 0.85) is None
    assert "changed 30% of multiple-choice answers" in quality.floor_warning(
        make_record(technique="q", label="Q", top1_agreement=0.7, mc_per_item=variant.mc_per_item), ref, 0.85)
    assert "no quality measurement" in quality.floor_warning(make_record(top1_agreement=math.nan), ref, 0.85)
