"""How many machines a traffic profile needs, from measured load-benchmark points (ServingRecord).

A machine serving at concurrency C makes `throughput` output tokens per second in all, so it finishes
throughput / answer_tokens requests per second. Peak traffic over that is the number of machines. A point is
usable only if its measured p90 time to first token and its per-user speed meet the latency target. The
cheapest usable point wins. Machines serving live traffic are billed around the clock, not per busy second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.measure import cost
from core.serving.stats import usd_per_1m_output_tokens
from core.store.records import ServingRecord

SECONDS_PER_DAY = 86_400
PEAK_TO_AVERAGE = 2.0  # traffic in the busiest hour vs the day's average, when only requests per day are known
HOURS_PER_MONTH = 24 * cost.DAYS_PER_MONTH  # always on


@dataclass(frozen=True)
class TrafficProfile:
    requests_per_day: float
    prompt_tokens: int
    answer_tokens: int
    max_ttft_ms_p90: float
    min_user_tokens_per_s: float
    peak_requests_per_s: float | None = None  # None: requests_per_day / 86400 x PEAK_TO_AVERAGE

    def __post_init__(self) -> None:
        for name in ("requests_per_day", "max_ttft_ms_p90", "min_user_tokens_per_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.prompt_tokens < 1 or self.answer_tokens < 1:
            raise ValueError(f"prompt and answer must be >= 1 token, got {self.prompt_tokens}, {self.answer_tokens}")
        if self.peak_requests_per_s is not None and not self.peak_requests_per_s > 0:
            raise ValueError(f"peak_requests_per_s must be > 0, got {self.peak_requests_per_s!r}")

    @property
    def peak_rps(self) -> float:
        if self.peak_requests_per_s is not None:
            return self.peak_requests_per_s
        return self.requests_per_day / SECONDS_PER_DAY * PEAK_TO_AVERAGE


@dataclass(frozen=True)
class Option:
    record: ServingRecord
    requests_per_s_per_machine: float
    machines: int
    usd_per_month: float
    meets_latency: bool


@dataclass(frozen=True)
class CapacityPlan:
    profile: TrafficProfile
    chosen: Option | None
    options: tuple[Option, ...]  # every point at the prompt length used, cheapest first
    prompt_tokens_used: int  # the measured prompt length nearest the profile's (>= when there is one)
    relax_ttft_ms_p90: float | None  # the p90 TTFT target that would let some point pass (speed target kept)
    relax_user_tokens_per_s: float | None  # the per-user speed target that would let some point pass (TTFT kept)

    @property
    def one_machine_enough(self) -> bool:
        return self.chosen is not None and self.chosen.machines <= 1

    def summary(self) -> str:
        p = self.profile
        if not self.options:
            return "No load-benchmark points for this model on this machine yet: run one on the Serve page."
        if self.chosen is None:
            parts = [f"No measured point gives p90 TTFT ≤ {p.max_ttft_ms_p90:.0f} ms and ≥ "
                     f"{p.min_user_tokens_per_s:.1f} tok/s per user at {self.prompt_tokens_used}-token prompts."]
            if self.relax_ttft_ms_p90 is not None:
                parts.append(f"Relax the TTFT target to {self.relax_ttft_ms_p90:.0f} ms "
                             f"(+{self.relax_ttft_ms_p90 - p.max_ttft_ms_p90:.0f} ms), or")
            if self.relax_user_tokens_per_s is not None:
                parts.append(f"accept {self.relax_user_tokens_per_s:.1f} tok/s per user "
                             f"(-{p.min_user_tokens_per_s - self.relax_user_tokens_per_s:.1f}).")
            return " ".join(parts)
        c = self.chosen
        r = c.record
        text = (f"Serve {r.label} on {r.runtime} at {r.concurrency} concurrent requests: each user gets "
                f"{r.per_user_tokens_per_s_median:.1f} tok/s with p90 TTFT {r.ttft_ms_p90:.0f} ms, and one machine "
                f"answers {c.requests_per_s_per_machine:.2f} requests/s of {p.answer_tokens} tokens. Peak traffic of "
                f"{p.peak_rps:.2f} requests/s needs {c.machines} machine{'s' if c.machines != 1 else ''}, "
                f"${c.usd_per_month:,.0f} a month always on. It is the cheapest measured point that meets the target.")
        if c.machines > 1:
            text += f" One machine is not enough: it handles {c.requests_per_s_per_machine / p.peak_rps:.0%} of the peak."
        return text


def _nearest_prompt(records: Sequence[ServingRecord], prompt_tokens: int) -> int:
    lengths = sorted({r.prompt_tokens for r in records})
    longer = [n for n in lengths if n >= prompt_tokens]
    return longer[0] if longer else lengths[-1]


def _option(record: ServingRecord, profile: TrafficProfile) -> Option | None:
    if not (math.isfinite(record.throughput_tokens_per_s) and record.throughput_tokens_per_s > 0):
        return None
    # Throughput was measured at record.new_tokens per request; the profile's answers may be longer or shorter.
    rps = record.throughput_tokens_per_s / profile.answer_tokens
    machines = max(1, math.ceil(profile.peak_rps / rps)) if profile.peak_rps > 0 else 1
    meets = record.ttft_ms_p90 <= profile.max_ttft_ms_p90 and \
        record.per_user_tokens_per_s_median >= profile.min_user_tokens_per_s
    return Option(record, rps, machines, machines * record.usd_per_hour * HOURS_PER_MONTH, meets)


def plan(records: Sequence[ServingRecord], profile: TrafficProfile) -> CapacityPlan:
    if not records:
        return CapacityPlan(profile, None, (), profile.prompt_tokens, None, None)
    used = _nearest_prompt(records, profile.prompt_tokens)
    options = [o for o in (_option(r, profile) for r in records if r.prompt_tokens == used) if o is not None]
    options.sort(key=lambda o: (o.usd_per_month, -o.record.per_user_tokens_per_s_median))
    chosen = next((o for o in options if o.meets_latency), None)
    fast = [o.record for o in options if o.record.per_user_tokens_per_s_median >= profile.min_user_tokens_per_s]
    quick = [o.record for o in options if o.record.ttft_ms_p90 <= profile.max_ttft_ms_p90]
    relax_ttft = min((r.ttft_ms_p90 for r in fast), default=None) if chosen is None else None
    relax_speed = max((r.per_user_tokens_per_s_median for r in quick), default=None) if chosen is None else None
    return CapacityPlan(profile, chosen, tuple(options), used, relax_ttft, relax_speed)


def reprice(records: Sequence[ServingRecord], preset: cost.HardwarePreset) -> list[ServingRecord]:
    """The same load points priced at another hourly price (the sidebar's); speeds untouched."""
    return [replace(r, hardware_preset=preset.key, usd_per_hour=preset.usd_per_hour,
                    usd_per_1m_tokens=usd_per_1m_output_tokens(r.throughput_tokens_per_s, preset.usd_per_hour))
            for r in records]


# --- the plain-words explanation of batching ------------------------------------------------------


@dataclass(frozen=True)
class ScalingStory:
    label: str
    prompt_tokens: int
    alone_tokens_per_s: float  # one user, alone on the machine
    top_concurrency: int
    each_tokens_per_s: float  # per user at top_concurrency
    tokens_per_dollar_gain: float  # throughput at top / throughput alone (same price, so also tokens per $)

    def sentence(self) -> str:
        gain = self.tokens_per_dollar_gain
        makes = (f"makes {gain:.1f} times more tokens per dollar" if gain >= 1 else
                 f"makes only {gain:.2f} times as many tokens per dollar (more users made it slower in all)")
        return (f"{self.label}: one user gets {self.alone_tokens_per_s:.1f} tok/s; {self.top_concurrency} users "
                f"each get {self.each_tokens_per_s:.1f}, and the machine {makes}.")


def scaling_story(records: Sequence[ServingRecord]) -> ScalingStory | None:
    """From one variant's points at one prompt length: concurrency 1 against the highest concurrency measured."""
    by_c = {r.concurrency: r for r in records}
    if 1 not in by_c or len(by_c) < 2:
        return None
    alone, top = by_c[1], by_c[max(by_c)]
    if not (alone.throughput_tokens_per_s > 0):
        return None
    return ScalingStory(alone.label, alone.prompt_tokens, alone.per_user_tokens_per_s_median, top.concurrency,
                        top.per_user_tokens_per_s_median, top.throughput_tokens_per_s / alone.throughput_tokens_per_s)


def latest_points(records: Sequence[ServingRecord]) -> list[ServingRecord]:
    """Newest point per (technique, runtime, concurrency, prompt length); records come newest first."""
    seen: dict[tuple, ServingRecord] = {}
    for r in records:
        seen.setdefault((r.technique, r.runtime, r.concurrency, r.prompt_tokens), r)
    return list(seen.values())
