"""Intervals for the headline numbers a decision rests on: a speed-up, a share of tokens, a speed.

A headline like "decodes 7.6x faster" is a ratio of two medians of a handful of timed runs; this machine's speed
drifts, so the ratio comes with a bootstrap interval over those runs. A share of next tokens that agree is a count
over the scored positions, so it gets a binomial (Wilson) interval. Every function takes plain numbers and returns an
`Estimate`; formatting belongs to the views.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

BOOTSTRAP_DRAWS = 2000
LEVEL = 0.95
Z_95 = 1.959964  # two-sided 95% normal quantile, for the Wilson interval


@dataclass(frozen=True)
class Estimate:
    """A value with the interval it is known to; low == high == value where nothing says more."""
    value: float
    low: float
    high: float
    how: str  # where the interval comes from, in words ("bootstrap over 5 x 5 timed runs")

    @property
    def known(self) -> bool:
        return all(math.isfinite(x) for x in (self.value, self.low, self.high))

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def scaled(self, factor: float) -> Estimate:
        """The same estimate times a positive constant (a price, a unit change): the interval scales with it."""
        return Estimate(self.value * factor, self.low * factor, self.high * factor, self.how)

    def inverted(self, numerator: float = 1.0) -> Estimate:
        """numerator / x: a speed's interval turned into a latency's or a cost's (the ends swap)."""
        def inv(x: float) -> float:
            return numerator / x if x > 0 else math.nan
        return Estimate(inv(self.value), inv(self.high), inv(self.low), self.how)


def _clean(samples: Sequence[float]) -> list[float]:
    return [float(s) for s in samples if isinstance(s, (int, float)) and math.isfinite(s) and s > 0]


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float], seed: int = 0,
                     draws: int = BOOTSTRAP_DRAWS, level: float = LEVEL) -> Estimate:
    """median(numerator) / median(denominator), with a percentile bootstrap that resamples each side's runs.

    Both sides are resampled independently: they are separate timed runs, often of separate processes.
    With fewer than 2 runs on a side there is no spread to resample, and the interval is unknown (NaN).
    """
    a, b = _clean(numerator), _clean(denominator)
    if not a or not b:
        return Estimate(math.nan, math.nan, math.nan, "no timed runs")
    value = statistics.median(a) / statistics.median(b)
    if len(a) < 2 or len(b) < 2:
        return Estimate(value, math.nan, math.nan, "too few timed runs for an interval")
    rng = random.Random(seed)
    ratios = sorted(statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
                    for _ in range(draws))
    low = ratios[int((1 - level) / 2 * draws)]
    high = ratios[min(draws - 1, int((1 + level) / 2 * draws))]
    return Estimate(value, low, high, f"{level:.0%} bootstrap over {len(a)} and {len(b)} timed runs")


def median_of(samples: Sequence[float], seed: int = 0, draws: int = BOOTSTRAP_DRAWS, level: float = LEVEL) -> Estimate:
    """The median of timed runs with a percentile bootstrap interval (a speed in tok/s, a latency in ms)."""
    a = _clean(samples)
    if not a:
        return Estimate(math.nan, math.nan, math.nan, "no timed runs")
    value = statistics.median(a)
    if len(a) < 2:
        return Estimate(value, math.nan, math.nan, "one timed run: no interval")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(a, k=len(a))) for _ in range(draws))
    return Estimate(value, medians[int((1 - level) / 2 * draws)], medians[min(draws - 1, int((1 + level) / 2 * draws))],
                    f"{level:.0%} bootstrap over {len(a)} timed runs")


def share(share_value: float, count: int, z: float = Z_95, unit: str = "tokens") -> Estimate:
    """A share of `count` positions with the Wilson score interval (95%).

    Next-token positions in one text are not independent, so the true spread is somewhat wider; the interval says
    how much the count alone pins the share down.
    """
    if not (math.isfinite(share_value) and 0 <= share_value <= 1) or count < 1:
        return Estimate(share_value, math.nan, math.nan, "no count to size an interval")
    n, p = count, share_value
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), f"95% Wilson interval over {n:,} {unit}")


def ratio_of_sums(pairs: Sequence[tuple[float, float]], seed: int = 0, draws: int = BOOTSTRAP_DRAWS,
                  level: float = LEVEL, unit: str = "prompts") -> Estimate:
    """sum(a) / sum(b) over items (a speed-up: tokens per second with a trick over without, summed over prompts),
    with a percentile bootstrap that resamples the items, so a few prompts that gain a lot cannot hide the rest."""
    items = [(float(a), float(b)) for a, b in pairs if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0]
    if not items:
        return Estimate(math.nan, math.nan, math.nan, f"no timed {unit}")
    value = sum(a for a, _ in items) / sum(b for _, b in items)
    if len(items) < 2:
        return Estimate(value, math.nan, math.nan, f"one timed item of {unit}: no interval")
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        sample = rng.choices(items, k=len(items))
        ratios.append(sum(a for a, _ in sample) / sum(b for _, b in sample))
    ratios.sort()
    return Estimate(value, ratios[int((1 - level) / 2 * draws)], ratios[min(draws - 1, int((1 + level) / 2 * draws))],
                    f"{level:.0%} bootstrap over {len(items)} {unit}")


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test on paired right/wrong answers: `only_a` items only A got right, `only_b` only B.

    Under "no difference" each discordant item is a fair coin, so the smaller count is binomial(n, 1/2) with
    n = only_a + only_b; the p-value doubles its lower tail (capped at 1). Items both got right or both got wrong say
    nothing about the difference and do not enter. No discordant item: p = 1."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a} and {only_b}")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)
