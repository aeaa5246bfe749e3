"""The one cost model: a measured service rate and a traffic profile in; machines, busy hours and a monthly bill out.

Every monthly bill the lab shows (Decide's tabs, the Report, `python -m core bill`) comes from `make_bill`. A rate is
what one machine was measured doing: `concurrency` requests at once, each getting its first token after `ttft_s` and
then `per_user_tokens_per_s`. Little's law ties requests, tokens and concurrency together:

    requests/s per machine = concurrency / (TTFT s + answer tokens / tok/s per user)
    tokens/s per machine   = requests/s per machine x answer tokens

Machines cover the peak and are never busy longer than a month has hours (720 = 24 x 30 days); past that, more
machines. Always on bills every machine for all 720 hours (what live traffic costs); busy only bills the machine-hours
the month's requests take (per-second billing, scale to zero). Each bill carries an interval: the same bill at the
slow and the fast end of the rate's measured spread.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, get_args

from core.measure import cost
from core.store.records import ServingRecord, VariantRecord

Billing = Literal["always_on", "busy_only"]
BILLINGS: tuple[str, ...] = get_args(Billing)
BILLING_WORDS = {"always_on": "always on", "busy_only": "busy only"}
SECONDS_PER_DAY = 86_400
HOURS_PER_MONTH = 24 * cost.DAYS_PER_MONTH  # 720: the most one machine can be busy in a billing month
PEAK_TO_AVERAGE = 2.0  # busiest hour vs the day's average, when only requests per day are known
FORMULA = "requests/s per machine = concurrency / (TTFT s + answer tokens / tok/s per user)"
_ROUNDING = 1e-9  # 3.0000000001 machines' worth of peak is 3 machines, not 4


def _check(name: str, value: float, minimum: float, strict: bool = False) -> None:
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        sign = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {sign} {minimum:g}, got {value!r}")


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@dataclass(frozen=True)
class Traffic:
    requests_per_day: float
    answer_tokens: int
    prompt_tokens: int = 128
    peak_to_average: float = PEAK_TO_AVERAGE
    peak_requests_per_s: float | None = None  # None: the day's average x peak_to_average

    def __post_init__(self) -> None:
        _check("requests_per_day", self.requests_per_day, 0)
        if self.answer_tokens < 1 or self.prompt_tokens < 1:
            raise ValueError(f"prompt and answer must be >= 1 token, got {self.prompt_tokens}, {self.answer_tokens}")
        _check("peak_to_average", self.peak_to_average, 1)  # the busiest hour is never quieter than the average
        if self.peak_requests_per_s is not None:
            _check("peak_requests_per_s", self.peak_requests_per_s, 0, strict=True)

    @property
    def average_rps(self) -> float:
        return self.requests_per_day / SECONDS_PER_DAY

    @property
    def peak_rps(self) -> float:
        if self.peak_requests_per_s is not None:
            return self.peak_requests_per_s
        return self.average_rps * self.peak_to_average

    @property
    def requests_per_month(self) -> float:
        return self.requests_per_day * cost.DAYS_PER_MONTH


@dataclass(frozen=True)
class LatencyTarget:
    max_ttft_ms_p90: float | None = None  # None: any time to first token will do
    min_user_tokens_per_s: float | None = None  # None: any speed per user will do

    def __post_init__(self) -> None:
        for name in ("max_ttft_ms_p90", "min_user_tokens_per_s"):
            if (value := getattr(self, name)) is not None:
                _check(name, value, 0)

    def met_by(self, ttft_ms_p90: float, per_user_tokens_per_s: float) -> bool:
        quick = self.max_ttft_ms_p90 is None or ttft_ms_p90 <= self.max_ttft_ms_p90
        fast = self.min_user_tokens_per_s is None or per_user_tokens_per_s >= self.min_user_tokens_per_s
        return quick and fast


@dataclass(frozen=True)
class ServiceRate:
    concurrency: int  # requests one machine serves at once
    per_user_tokens_per_s: float  # median speed each request gets after its first token
    ttft_s: float  # median time to first token
    source: str  # where it was measured, in plain words
    slow: tuple[float, float] | None = None  # (tok/s per user, TTFT s) at the slow end of the measured spread
    fast: tuple[float, float] | None = None  # the same at the fast end

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency!r}")
        _check("per_user_tokens_per_s", self.per_user_tokens_per_s, 0, strict=True)
        _check("ttft_s", self.ttft_s, 0)
        for end in (self.slow, self.fast):
            if end is not None:
                _check("per_user_tokens_per_s", end[0], 0, strict=True)
                _check("ttft_s", end[1], 0)

    def seconds_per_request(self, answer_tokens: int) -> float:
        return self.ttft_s + answer_tokens / self.per_user_tokens_per_s

    def requests_per_s(self, answer_tokens: int) -> float:
        """Little's law: requests in flight / seconds each one takes."""
        return self.concurrency / self.seconds_per_request(answer_tokens)

    def at(self, end: tuple[float, float] | None) -> ServiceRate:
        """This rate at one end of its spread (itself when no spread was measured)."""
        return self if end is None else replace(self, per_user_tokens_per_s=end[0], ttft_s=end[1], slow=None, fast=None)


@dataclass(frozen=True)
class Bill:
    machines: int
    requests_per_s_per_machine: float
    tokens_per_s_per_machine: float
    busy_hours_per_month: float  # machine-hours the month's requests take, all machines together
    busy_hours_per_machine_per_month: float  # never above HOURS_PER_MONTH
    usd_per_month_always_on: float  # machines x 720 h x price
    usd_per_month_busy_only: float  # busy machine-hours x price
    billing: Billing  # which of the two is the headline
    usd_per_hour: float
    rate: ServiceRate
    traffic: Traffic
    machines_range: tuple[int, int]  # (fast end, slow end) of the rate's spread
    usd_per_month_always_on_range: tuple[float, float]  # (low, high)
    usd_per_month_busy_only_range: tuple[float, float]

    @property
    def usd_per_month(self) -> float:
        return self.usd_per_month_always_on if self.billing == "always_on" else self.usd_per_month_busy_only

    @property
    def usd_per_month_range(self) -> tuple[float, float]:
        return self.usd_per_month_always_on_range if self.billing == "always_on" else self.usd_per_month_busy_only_range

    @property
    def usd_per_1m_tokens(self) -> float | None:
        """The headline bill over the month's answer tokens; None when there is no traffic."""
        tokens = self.traffic.requests_per_month * self.traffic.answer_tokens
        return self.usd_per_month / tokens * cost.TOKENS_PER_MILLION if tokens > 0 else None

    @property
    def utilisation(self) -> float:
        return self.busy_hours_per_machine_per_month / HOURS_PER_MONTH


def _size(traffic: Traffic, rate: ServiceRate) -> tuple[int, float, float]:
    """(machines, requests/s per machine, busy machine-hours per month) for one rate."""
    rps = rate.requests_per_s(traffic.answer_tokens)
    busy_hours = traffic.requests_per_month / rps / cost.SECONDS_PER_HOUR
    machines = max(1, math.ceil(traffic.peak_rps / rps - _ROUNDING), math.ceil(busy_hours / HOURS_PER_MONTH))
    return machines, rps, busy_hours


def make_bill(traffic: Traffic, rate: ServiceRate, usd_per_hour: float, billing: Billing = "always_on") -> Bill:
    """The bill for serving `traffic` at `rate` on machines that cost `usd_per_hour` each."""
    if billing not in BILLINGS:
        raise ValueError(f"billing must be one of {BILLINGS}, got {billing!r}")
    _check("usd_per_hour", usd_per_hour, 0)
    machines, rps, busy = _size(traffic, rate)
    ends = [_size(traffic, rate.at(end)) for end in (rate.fast, rate.slow)] + [(machines, rps, busy)]
    always_on = [m * HOURS_PER_MONTH * usd_per_hour for m, _, _ in ends]
    busy_only = [b * usd_per_hour for _, _, b in ends]
    return Bill(
        machines=machines, requests_per_s_per_machine=rps, tokens_per_s_per_machine=rps * traffic.answer_tokens,
        busy_hours_per_month=busy,
        # ceil() keeps this within 720 h; min() only absorbs float rounding in the last digit
        busy_hours_per_machine_per_month=min(busy / machines, float(HOURS_PER_MONTH)),
        usd_per_month_always_on=machines * HOURS_PER_MONTH * usd_per_hour, usd_per_month_busy_only=busy * usd_per_hour,
        billing=billing, usd_per_hour=usd_per_hour, rate=rate, traffic=traffic,
        machines_range=(min(m for m, _, _ in ends), max(m for m, _, _ in ends)),
        usd_per_month_always_on_range=(min(always_on), max(always_on)),
        usd_per_month_busy_only_range=(min(busy_only), max(busy_only)))


# --- rates from what the lab measured ----------------------------------------------------------------


def _when(created_at: str) -> str:
    try:
        moment = datetime.fromisoformat(created_at)
    except (TypeError, ValueError):
        return created_at or "an unknown date"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the lab writes UTC
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _or(value: float, fallback: float) -> float:
    """A time that was measured (finite, >= 0), else the fallback."""
    return value if math.isfinite(value) and value >= 0 else fallback


def _speed_or(value: float, fallback: float) -> float:
    return value if _positive(value) else fallback


def sweep_rate(record: VariantRecord) -> ServiceRate | None:
    """One request at a time at the sweep's decode speed; None when the sweep measured no speed."""
    speed = record.decode_tokens_per_s_median
    if not _positive(speed):
        return None
    ttft_ms = _or(record.ttft_ms_median, 0.0)
    slow = (_speed_or(record.decode_tokens_per_s_p10, speed), _or(record.ttft_ms_p90, ttft_ms) / 1000)
    fast = (_speed_or(record.decode_tokens_per_s_p90, speed), _or(record.ttft_ms_p10, ttft_ms) / 1000)
    origin = "dashboard" if record.settings.get("launched_from") == "dashboard" else "CLI"
    return ServiceRate(1, speed, ttft_ms / 1000, f"one request at a time, sweep of {_when(record.created_at)} ({origin})",
                       slow, fast)


def serving_rate(record: ServingRecord) -> ServiceRate | None:
    """A load-benchmark point; its spread is the spread of its repeated waves' throughput, applied per user."""
    per_user = record.per_user_tokens_per_s_median
    if not _positive(per_user):
        return None
    waves = [t for t in record.throughput_tokens_per_s_samples if _positive(t)]
    typical = statistics.median(waves) if len(waves) >= 2 else 0.0
    low, high = (min(waves) / typical, max(waves) / typical) if typical > 0 else (1.0, 1.0)
    ttft_ms = _or(record.ttft_ms_p50, 0.0)
    return ServiceRate(
        record.concurrency, per_user, ttft_ms / 1000,
        f"load benchmark, {record.concurrency} concurrent, {record.prompt_tokens}-token prompts, "
        f"{_when(record.created_at)}",
        slow=(per_user * low, _or(record.ttft_ms_p90, ttft_ms) / 1000), fast=(per_user * high, ttft_ms / 1000))


# --- one bill per variant ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantBill:
    technique: str
    label: str
    runtime: str
    bill: Bill
    meets_target: bool
    load_point: ServingRecord | None = None  # None: priced from the single-stream sweep
    one_off_usd: float | None = None  # training cost (LoRA, distillation), None when the variant needed none

    @property
    def source(self) -> str:
        return self.bill.rate.source

    @property
    def per_user_tokens_per_s(self) -> float:
        return self.bill.rate.per_user_tokens_per_s


def training_cost_usd(record: VariantRecord) -> float | None:
    """One-off cost of making this variant, if a training run stored it (e.g. variant_facts["finetune"])."""
    for facts in record.variant_facts.values():
        if isinstance(facts, dict) and isinstance(facts.get("usd_cost"), (int, float)):
            return float(facts["usd_cost"])
    return None


def break_even_months(one_off_usd: float, monthly_saving_usd: float) -> float | None:
    """Months of serving until a one-off cost is paid back by a monthly saving; None if it never is."""
    if one_off_usd < 0:
        raise ValueError(f"one_off_usd must be >= 0, got {one_off_usd!r}")
    if monthly_saving_usd <= 0:
        return None if one_off_usd > 0 else 0.0
    return one_off_usd / monthly_saving_usd


def _nearest_prompt(lengths: set[int], prompt_tokens: int) -> int:
    """The shortest measured prompt at least as long as the traffic's, else the longest measured."""
    longer = sorted(n for n in lengths if n >= prompt_tokens)
    return longer[0] if longer else max(lengths)


def _newest(records: Sequence[ServingRecord]) -> list[ServingRecord]:
    newest: dict[tuple, ServingRecord] = {}
    for r in sorted(records, key=lambda r: r.created_at, reverse=True):
        newest.setdefault((r.technique, r.runtime, r.concurrency, r.prompt_tokens), r)
    return list(newest.values())


def load_point_bills(serving: Sequence[ServingRecord], traffic: Traffic, usd_per_hour: float,
                     billing: Billing = "always_on", target: LatencyTarget | None = None) -> list[VariantBill]:
    """A bill for every newest load point at its variant's prompt length nearest the traffic's; cheapest first."""
    target = target or LatencyTarget()
    points = _newest(serving)
    used = {t: _nearest_prompt({r.prompt_tokens for r in points if r.technique == t}, traffic.prompt_tokens)
            for t in {r.technique for r in points}}
    out = []
    for r in points:
        if r.prompt_tokens == used[r.technique] and (rate := serving_rate(r)) is not None:
            out.append(VariantBill(r.technique, r.label, r.runtime, make_bill(traffic, rate, usd_per_hour, billing),
                                   target.met_by(r.ttft_ms_p90, r.per_user_tokens_per_s_median), r))
    # ties (one machine each, always on) go to the point that gives each user more speed
    return sorted(out, key=lambda b: (b.bill.usd_per_month, -b.per_user_tokens_per_s, b.bill.rate.concurrency))


def variant_bills(records: Sequence[VariantRecord], serving: Sequence[ServingRecord], traffic: Traffic,
                  usd_per_hour: float, billing: Billing = "always_on",
                  target: LatencyTarget | None = None) -> list[VariantBill]:
    """One bill per variant, in the order given: from its cheapest load point that meets the target (its cheapest
    load point when none does), else from its single-stream sweep speed. Variants with no measured speed are left out."""
    target = target or LatencyTarget()
    points = load_point_bills(serving, traffic, usd_per_hour, billing, target)
    out = []
    for r in records:
        mine = [p for p in points if p.technique == r.technique]
        if mine:
            pick = next((p for p in mine if p.meets_target), mine[0])
            out.append(replace(pick, label=r.label, one_off_usd=training_cost_usd(r)))
        elif (rate := sweep_rate(r)) is not None:
            out.append(VariantBill(r.technique, r.label, r.runtime, make_bill(traffic, rate, usd_per_hour, billing),
                                   target.met_by(r.ttft_ms_p90, r.decode_tokens_per_s_median),
                                   one_off_usd=training_cost_usd(r)))
    return out


def break_even(bills: Sequence[VariantBill], reference: str) -> dict[str, float | None]:
    """Months until each trained variant's one-off cost is paid back by its saving on the reference's headline bill;
    None: never (no saving on serving). Variants without a training cost, or without a reference bill, are absent."""
    ref = next((b for b in bills if b.technique == reference), None)
    if ref is None:
        return {}
    return {b.technique: break_even_months(b.one_off_usd, ref.bill.usd_per_month - b.bill.usd_per_month)
            for b in bills if b.one_off_usd is not None}


def bill_rows(bills: Sequence[VariantBill]) -> list[dict[str, object]]:
    """Plain rows, one per bill, with the unit in every heading: for tables, the Report and the CLI's JSON."""
    rows = []
    for b in bills:
        x = b.bill
        rows.append({
            "variant": b.label, "technique": b.technique, "runtime": b.runtime, "concurrency": x.rate.concurrency,
            "tok/s per user": x.rate.per_user_tokens_per_s, "TTFT s": x.rate.ttft_s,
            "requests/s per machine": x.requests_per_s_per_machine, "tokens/s per machine": x.tokens_per_s_per_machine,
            "machines": x.machines, "busy hours per machine per month": x.busy_hours_per_machine_per_month,
            "$ per month (always on)": x.usd_per_month_always_on,
            "$ per month (always on), low": x.usd_per_month_always_on_range[0],
            "$ per month (always on), high": x.usd_per_month_always_on_range[1],
            "$ per month (busy only)": x.usd_per_month_busy_only,
            "$ per month (busy only), low": x.usd_per_month_busy_only_range[0],
            "$ per month (busy only), high": x.usd_per_month_busy_only_range[1],
            "meets latency target": b.meets_target, "one-off training $": b.one_off_usd, "source": b.source,
        })
    return rows
