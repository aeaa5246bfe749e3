"""How many machines a traffic profile needs at load, from measured load-benchmark points (ServingRecord).

Every point is billed by the one cost model (core/measure/bill.py): requests/s per machine = concurrency / (TTFT s +
answer tokens / tok/s per user), machines cover the peak. A point is usable when its measured p90 time to first token
and its per-user speed meet the latency target; the cheapest usable point wins. The plan is the same bill the Monthly
cost tab shows for that variant, because both come from `bill.load_point_bills`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.measure import bill, cost
from core.serving.stats import usd_per_1m_output_tokens
from core.store.records import ServingRecord


def usd_text(usd: float) -> str:
    """$1,234 from $100 up, $12.34 below: a small bill rounded to whole dollars would read $0."""
    return f"${usd:,.0f}" if usd >= 100 else f"${usd:,.2f}"


def bill_words(b: bill.Bill) -> str:
    """'3 machines, $386 a month ($322–$451) always on': the same words wherever a bill is shown."""
    low, high = b.usd_per_month_range
    return (f"{b.machines} machine{'s' if b.machines != 1 else ''}, {usd_text(b.usd_per_month)} a month "
            f"({usd_text(low)}–{usd_text(high)}) {bill.BILLING_WORDS[b.billing]}")


def rate_words(b: bill.Bill) -> str:
    """The formula with this bill's numbers in it."""
    r, answer = b.rate, b.traffic.answer_tokens
    return (f"{r.concurrency} / ({r.ttft_s:.2f} s + {answer} tokens / {r.per_user_tokens_per_s:.1f} tok/s) = "
            f"{b.requests_per_s_per_machine:.2f} requests/s ({b.tokens_per_s_per_machine:.0f} tok/s in all)")


def target_words(target: bill.LatencyTarget) -> str:
    parts = []
    if target.max_ttft_ms_p90 is not None:
        parts.append(f"p90 TTFT ≤ {target.max_ttft_ms_p90:.0f} ms")
    if target.min_user_tokens_per_s is not None:
        parts.append(f"≥ {target.min_user_tokens_per_s:.1f} tok/s per user")
    return " and ".join(parts) or "no latency target"


def bill_note(traffic: bill.Traffic, target: bill.LatencyTarget, usd_per_hour: float, billing: bill.Billing) -> str:
    """What a table of bills assumes, in one paragraph (the Decide page's caption, the Report's note)."""
    t = traffic
    return (f"For {t.requests_per_day:,.0f} requests a day ({t.peak_rps:.3f} requests/s at peak), {t.answer_tokens}-token "
            f"answers to {t.prompt_tokens}-token prompts, {target_words(target)}, billed "
            f"{bill.BILLING_WORDS[billing]} at ${usd_per_hour:.4f}/h. {bill.FORMULA}; machines cover the peak and no "
            f"machine is busy longer than the {bill.HOURS_PER_MONTH} hours of a month.")


_RANGE_ENDS = ("$ per month (always on), low", "$ per month (always on), high", "$ per month (busy only), low",
               "$ per month (busy only), high")


def bill_table(bills: Sequence[bill.VariantBill], training: bool = True) -> list[dict[str, object]]:
    """bill.bill_rows for a table on screen: without the interval's ends (the words beside it carry them), the
    technique key and, for load points (`training=False`), the training cost (a load point has none of its own)."""
    drop = {"technique", *_RANGE_ENDS} | (set() if training else {"one-off training $"})
    return [{k: v for k, v in row.items() if k not in drop} for row in bill.bill_rows(bills)]


@dataclass(frozen=True)
class CapacityPlan:
    traffic: bill.Traffic
    target: bill.LatencyTarget
    chosen: bill.VariantBill | None
    options: tuple[bill.VariantBill, ...]  # every point at its variant's prompt length used, cheapest first
    prompt_tokens_used: int  # the chosen's measured prompt length (nearest the traffic's, >= when there is one)
    relax_ttft_ms_p90: float | None  # the p90 TTFT target that would let some point pass (speed target kept)
    relax_user_tokens_per_s: float | None  # the per-user speed target that would let some point pass (TTFT kept)

    @property
    def one_machine_enough(self) -> bool:
        return self.chosen is not None and self.chosen.bill.machines <= 1

    def summary(self) -> str:
        t = self.traffic
        if not self.options:
            return "No load-benchmark points for this model on this machine yet: run one on the Serve page."
        if self.chosen is None:
            return self._nothing_meets()
        c, x = self.chosen, self.chosen.bill
        point = c.load_point
        text = (f"Serve {c.label} on {c.runtime} at {x.rate.concurrency} concurrent request{'s' if x.rate.concurrency != 1 else ''}: each user gets "
                f"{x.rate.per_user_tokens_per_s:.1f} tok/s after a first token in {x.rate.ttft_s:.2f} s (p90 "
                f"{point.ttft_ms_p90:.0f} ms), so one machine answers {rate_words(x)}. "
                f"Peak traffic of {t.peak_rps:.2f} requests/s needs {bill_words(x)}; each machine is busy "
                f"{x.busy_hours_per_machine_per_month:.0f} of {bill.HOURS_PER_MONTH} hours a month. It is the cheapest "
                "measured point that meets the target.")
        if x.machines > 1 and t.peak_rps > 0:
            text += f" One machine is not enough: it handles {x.requests_per_s_per_machine / t.peak_rps:.0%} of the peak."
        return text

    def _nothing_meets(self) -> str:
        target = self.target
        parts = [f"No measured point gives {target_words(target)} at {self.prompt_tokens_used}-token prompts."]
        if self.relax_ttft_ms_p90 is not None and target.max_ttft_ms_p90 is not None:
            parts.append(f"Relax the TTFT target to {self.relax_ttft_ms_p90:.0f} ms "
                         f"(+{self.relax_ttft_ms_p90 - target.max_ttft_ms_p90:.0f} ms), or")
        if self.relax_user_tokens_per_s is not None and target.min_user_tokens_per_s is not None:
            parts.append(f"accept {self.relax_user_tokens_per_s:.1f} tok/s per user "
                         f"(-{target.min_user_tokens_per_s - self.relax_user_tokens_per_s:.1f}).")
        return " ".join(parts)


def plan(records: Sequence[ServingRecord], traffic: bill.Traffic, usd_per_hour: float,
         billing: bill.Billing = "always_on", target: bill.LatencyTarget | None = None) -> CapacityPlan:
    target = target or bill.LatencyTarget()
    options = bill.load_point_bills(records, traffic, usd_per_hour, billing, target)
    chosen = next((o for o in options if o.meets_target), None)
    first = chosen or (options[0] if options else None)
    used = first.load_point.prompt_tokens if first else traffic.prompt_tokens
    if chosen is not None:
        return CapacityPlan(traffic, target, chosen, tuple(options), used, None, None)
    # Which single limit to move: keep one target, find the least the other must give for some point to pass.
    points = [o.load_point for o in options]
    fast = [r for r in points if bill.LatencyTarget(None, target.min_user_tokens_per_s).met_by(
        r.ttft_ms_p90, r.per_user_tokens_per_s_median)]
    quick = [r for r in points if bill.LatencyTarget(target.max_ttft_ms_p90, None).met_by(
        r.ttft_ms_p90, r.per_user_tokens_per_s_median)]
    return CapacityPlan(traffic, target, None, tuple(options), used,
                        min((r.ttft_ms_p90 for r in fast), default=None),
                        max((r.per_user_tokens_per_s_median for r in quick), default=None))


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
    """Newest point per (technique, runtime, concurrency, prompt length); records come newest first.

    One server per variant: the newest record's. A curve never mixes llama-server's continuous batching with the
    one-at-a-time server GGUF variants were once measured on (or any two servers), whatever the dates."""
    newest_server: dict[tuple, str] = {}
    seen: dict[tuple, ServingRecord] = {}
    for r in records:
        kind = newest_server.setdefault((r.technique, r.runtime), server_kind(r))
        if server_kind(r) == kind:
            seen.setdefault((r.technique, r.runtime, r.concurrency, r.prompt_tokens), r)
    return list(seen.values())


def server_kind(record: ServingRecord) -> str:
    """'llama-server', 'transformers serve', 'llama.cpp server': the server without its settings."""
    return record.server.split(" (")[0].strip()
