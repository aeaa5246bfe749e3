"""A cascade's curve, computed from what each model did on each item, measured once.

A cascade runs a cheap first stage on every request and hands the request to a stronger second stage when the first
stage's confidence is below a threshold. Each item is answered and timed once by each stage; a threshold then only
decides, item by item, whose answer counts and whose time is spent. So every point of the curve is exact arithmetic
over the same measurements (no re-measuring per threshold, and a slider can move over the points for free).

Costs are per 1,000 requests served one at a time on one machine billed by the hour: the mean seconds a request
keeps the machine busy, times the hourly price. The first stage always runs; an escalated request pays for both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from core.measure import benchmark, intervals
from core.paths import data_dir
from core.store import jsonl

SECONDS_PER_HOUR = 3600.0
REQUESTS_PER_BILL = 1000
MAX_ACCURACY_DROP_POINTS = 1.0  # the bar: the best cascade may lose at most this much against the second stage
Kind = Literal["classical", "model"]


@dataclass(frozen=True)
class ItemOutcome:
    """One test item, answered by both stages (answers are normalised labels or choice letters)."""
    label: str
    first_answer: str
    first_confidence: float  # in [0, 1]: the first stage's probability for its own answer; higher = surer
    first_ms: float
    second_answer: str
    second_ms: float

    def __post_init__(self) -> None:
        check_threshold(self.first_confidence, "first_confidence")
        if not (self.first_ms >= 0 and self.second_ms >= 0):
            raise ValueError(f"times must be >= 0 ms, got {self.first_ms!r} and {self.second_ms!r}")


@dataclass(frozen=True)
class CascadePoint:
    threshold: float  # escalate when the first stage's confidence is below this; -1 / 2 mark the two ends
    role: Literal["first alone", "second alone", "cascade"]
    accuracy: float
    accuracy_low: float  # 95% Wilson interval over the items
    accuracy_high: float
    share_escalated: float  # of requests sent to the second stage
    mean_latency_ms: float
    usd_per_1k_requests: float

    @property
    def accuracy_estimate(self) -> intervals.Estimate:
        return intervals.Estimate(self.accuracy, self.accuracy_low, self.accuracy_high, "95% Wilson interval")


def check_threshold(value: float, name: str = "threshold") -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"The {name} must be a confidence between 0 and 1, got {value!r}: a request is sent to the "
                         "second stage when the first stage's probability for its answer is below it.")


def usd_per_1k(mean_ms: float, usd_per_hour: float) -> float:
    return mean_ms / 1000.0 / SECONDS_PER_HOUR * usd_per_hour * REQUESTS_PER_BILL


def _point(outcomes: Sequence[ItemOutcome], picks_second: Sequence[bool], first_runs: bool, threshold: float,
           role: str, usd_per_hour: float) -> CascadePoint:
    n = len(outcomes)
    right = sum((o.second_answer if s else o.first_answer) == o.label for o, s in zip(outcomes, picks_second))
    ms = [(o.first_ms if first_runs else 0.0) + (o.second_ms if s else 0.0) for o, s in zip(outcomes, picks_second)]
    acc = intervals.share(right / n, n)
    mean_ms = sum(ms) / n
    return CascadePoint(threshold, role, acc.value, acc.low, acc.high, sum(picks_second) / n, mean_ms,
                        usd_per_1k(mean_ms, usd_per_hour))


def _check(outcomes: Sequence[ItemOutcome]) -> None:
    if not outcomes:
        raise ValueError("No items to draw a cascade from: the test split is empty.")


def at_threshold(outcomes: Sequence[ItemOutcome], threshold: float, usd_per_hour: float) -> CascadePoint:
    """The cascade that escalates every item whose first-stage confidence is below `threshold`."""
    _check(outcomes)
    check_threshold(threshold)
    return _point(outcomes, [o.first_confidence < threshold for o in outcomes], True, threshold, "cascade",
                  usd_per_hour)


def first_alone(outcomes: Sequence[ItemOutcome], usd_per_hour: float) -> CascadePoint:
    _check(outcomes)
    return _point(outcomes, [False] * len(outcomes), True, -1.0, "first alone", usd_per_hour)


def second_alone(outcomes: Sequence[ItemOutcome], usd_per_hour: float) -> CascadePoint:
    """The second stage without the first in front of it (it does not pay the first stage's time)."""
    _check(outcomes)
    return _point(outcomes, [True] * len(outcomes), False, 2.0, "second alone", usd_per_hour)


def thresholds_for(outcomes: Sequence[ItemOutcome], steps: int = 21) -> list[float]:
    """An even grid over [0, 1] plus every distinct confidence seen, so no change of the curve falls between points."""
    grid = {round(i / (steps - 1), 6) for i in range(steps)}
    seen = {round(min(1.0, o.first_confidence + 1e-9), 9) for o in outcomes}
    return sorted(grid | seen)


def curve(outcomes: Sequence[ItemOutcome], usd_per_hour: float, thresholds: Sequence[float] | None = None
          ) -> list[CascadePoint]:
    """Both ends, then the cascade at each threshold (ascending: more escalated as it grows)."""
    ts = thresholds_for(outcomes) if thresholds is None else sorted(thresholds)
    for t in ts:
        check_threshold(t)
    return [first_alone(outcomes, usd_per_hour), second_alone(outcomes, usd_per_hour),
            *(at_threshold(outcomes, t, usd_per_hour) for t in ts)]


def ends(points: Sequence[CascadePoint]) -> tuple[CascadePoint, CascadePoint]:
    by_role = {p.role: p for p in points if p.role != "cascade"}
    return by_role["first alone"], by_role["second alone"]


def best_point(points: Sequence[CascadePoint], max_drop_points: float = MAX_ACCURACY_DROP_POINTS
               ) -> CascadePoint | None:
    """The cheapest cascade point within `max_drop_points` of the second stage alone's accuracy, if any."""
    _, second = ends(points)
    ok = [p for p in points if p.role == "cascade" and p.accuracy >= second.accuracy - max_drop_points / 100 - 1e-12]
    return min(ok, key=lambda p: (p.usd_per_1k_requests, -p.accuracy)) if ok else None


def beats_both_ends(point: CascadePoint, first: CascadePoint, second: CascadePoint) -> bool:
    """More accurate than either model alone, or as accurate as the better one for less money."""
    better = max((first, second), key=lambda p: (p.accuracy, -p.usd_per_1k_requests))
    return point.accuracy > better.accuracy or (point.accuracy >= better.accuracy
                                                 and point.usd_per_1k_requests < better.usd_per_1k_requests)


def winning_points(points: Sequence[CascadePoint]) -> list[CascadePoint]:
    first, second = ends(points)
    return [p for p in points if p.role == "cascade" and beats_both_ends(p, first, second)]


@dataclass
class CascadeResult(benchmark.Provenance):
    """One measured cascade: both stages on every item of one test set, and the curve that follows."""
    kind: Kind
    task: str  # "support-routing", "mc_general", or the user's file name
    first: str  # what the first stage is, in words a reader knows ("TF-IDF + logistic regression")
    second: str  # the key or label of the second stage ("SmolLM2-135M few-shot", "gguf-q4_k_m")
    confidence: str  # how the first stage's confidence is read, in words
    usd_per_hour: float
    hardware_preset: str
    n_items: int
    outcomes: list[dict]
    points: list[dict]
    settings: dict = field(default_factory=dict)
    run_id: str = ""
    model: str = ""  # the lab's key of the model whose variant(s) the LLM stage(s) run
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def curve_points(self) -> list[CascadePoint]:
        return [CascadePoint(**p) for p in self.points]


def build_result(kind: Kind, task: str, first: str, second: str, confidence: str, outcomes: Sequence[ItemOutcome],
                 usd_per_hour: float, hardware_preset: str, provenance: dict, settings: dict | None = None,
                 run_id: str = "", model: str = "") -> CascadeResult:
    points = curve(outcomes, usd_per_hour)
    return CascadeResult(**provenance, kind=kind, task=task, first=first, second=second, confidence=confidence,
                         usd_per_hour=usd_per_hour, hardware_preset=hardware_preset, n_items=len(outcomes),
                         outcomes=[asdict(o) for o in outcomes], points=[asdict(p) for p in points],
                         settings=dict(settings or {}), run_id=run_id, model=model)


def repriced(result: dict, usd_per_hour: float) -> list[CascadePoint]:
    """A stored result's curve at another hourly price (the times are the measurement; the price is the user's)."""
    points = [CascadePoint(**p) for p in result["points"]]
    return [replace(p, usd_per_1k_requests=usd_per_1k(p.mean_latency_ms, usd_per_hour)) for p in points]


def results_path() -> Path:
    return data_dir() / "hybrids" / "cascades.jsonl"


def save_result(result: CascadeResult) -> None:
    """Appended as one line; earlier results are never rewritten, so a crash cannot lose them."""
    jsonl.append(results_path(), [result.to_dict()])


def saved_results() -> list[dict]:
    """Newest first; a line cut short by a crash is skipped."""
    return [r for r in jsonl.read_newest_first(results_path()) if math.isfinite(r.get("usd_per_hour", math.nan))]
