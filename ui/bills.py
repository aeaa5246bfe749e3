"""Decide's money (render helpers): the traffic, asked once above the tabs, and the one bill per variant
that both the Traffic at load and the Monthly cost tabs show (core/measure/bill.py)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.measure import bill, cost
from core.views import capacity, recommend
from ui import serving
from ui.frame import store
from ui.roles import show_error

DEFAULTS = {"bill_day": 10_000, "bill_ratio": bill.PEAK_TO_AVERAGE, "bill_peak": 0.0, "bill_prompt": 128,
            "bill_answer": 200, "bill_ttft": 2000.0, "bill_speed": 5.0, "bill_mode": "always_on"}
BILLING_CHOICES = {"always_on": "always on: machines ready for live traffic, billed every hour",
                   "busy_only": "busy only: per-second billing, scaled to zero when idle"}


@dataclass(frozen=True)
class Money:
    traffic: bill.Traffic
    target: bill.LatencyTarget
    billing: bill.Billing
    usd_per_hour: float
    serving: list  # newest load points of the model on the machine
    bills: list[bill.VariantBill]  # one per measured variant: the same bill in every tab
    preset_kind: str
    measured_device: str


def _assumptions(money: Money) -> None:
    t = money.traffic
    st.caption(f"For {t.requests_per_day:,.0f} requests a day ({t.peak_rps:.3f} requests/s at peak), {t.answer_tokens}-token "
               f"answers to {t.prompt_tokens}-token prompts, {capacity.target_words(money.target)}, billed "
               f"{bill.BILLING_WORDS[money.billing]} at ${money.usd_per_hour:.4f}/h. Change it in **Your traffic** above.")


def traffic_inputs(spec, machine: str, records: list, picked) -> Money | None:
    """The traffic profile, latency target and billing, asked once; None (with a message) when they do not add up."""
    results = store()
    served = capacity.latest_points(results.serving(spec.key, machine)) if results else []
    with st.expander("Your traffic: requests a day, answer length, latency target, billing (for Traffic at load "
                     "and Monthly cost)"):
        a, b, c, d = st.columns(4)
        per_day = a.number_input("Requests per day", 0, 1_000_000_000, DEFAULTS["bill_day"], step=1000, key="bill_day")
        ratio = a.number_input("Busiest hour vs the day's average", 1.0, 100.0, DEFAULTS["bill_ratio"], step=0.5,
                               key="bill_ratio", help="Traffic is rarely flat: 2 means the peak is twice the average.")
        peak = a.number_input("Peak requests per second (0 = from the two above)", 0.0, 1e6, 0.0, key="bill_peak")
        prompt = b.number_input("Typical prompt, tokens", 1, 131072, DEFAULTS["bill_prompt"], key="bill_prompt")
        answer = b.number_input("Typical answer, tokens", 1, 100_000, DEFAULTS["bill_answer"], key="bill_answer")
        ttft = c.number_input("p90 time to first token at most, ms", 1.0, 1e6, DEFAULTS["bill_ttft"], key="bill_ttft")
        speed = c.number_input("Each user gets at least, tok/s (0 = any)", 0.0, 1e4, DEFAULTS["bill_speed"],
                               key="bill_speed")
        billing = d.selectbox("Billing", list(BILLING_CHOICES), format_func=BILLING_CHOICES.get, key="bill_mode",
                              help="The headline bill everywhere; the other one is shown as a column.")
    try:
        traffic = bill.Traffic(per_day, int(answer), int(prompt), ratio, peak or None)
        target = bill.LatencyTarget(ttft, speed or None)
        bills = bill.variant_bills(records, served, traffic, picked.preset.usd_per_hour, billing, target)
    except ValueError as e:
        show_error(e)
        return None
    # for the Report page: the bill last shown here, as rows with units in the headings and the note on what it assumes,
    # with the model and machine it prices, so that a report of another model or machine never borrows it
    st.session_state["decide_bill"] = ((spec.key, machine), bill.bill_rows(bills),
                                       capacity.bill_note(traffic, target, picked.preset.usd_per_hour, billing))
    return Money(traffic, target, billing, picked.preset.usd_per_hour, served, bills, picked.preset.kind,
                 records[0].device if records else "")


def formula_caption(money: Money) -> None:
    t, price = money.traffic, money.usd_per_hour
    peak = (f"{t.peak_rps:.3f} requests/s as you set it" if t.peak_requests_per_s is not None else
            f"{t.requests_per_day:,.0f} requests a day / 86,400 s x {t.peak_to_average:g} = {t.peak_rps:.3f} requests/s")
    st.caption(
        f"One formula for every bill (Little's law): **{bill.FORMULA}**; tokens/s per machine = that x answer tokens. "
        f"Peak = {peak}. Machines = the largest of 1, peak / requests/s per machine, and busy hours / "
        f"{bill.HOURS_PER_MONTH}, rounded up: no machine is busy longer than the {bill.HOURS_PER_MONTH} hours of a "
        f"{cost.DAYS_PER_MONTH}-day month. Always on = machines x {bill.HOURS_PER_MONTH} h x ${price:.4f}/h; busy only "
        f"(per-second billing, scale to zero) = {t.requests_per_month:,.0f} requests a month x seconds each / "
        f"concurrency / 3600 busy hours x ${price:.4f}/h. A variant is priced from its cheapest load-benchmark point "
        "that meets the latency target (its cheapest point if none does), else from its sweep speed, one request at a "
        "time. The interval: the same bill at the slow and the fast end of the measured spread.")


def traffic_tab(money: Money | None) -> None:
    if money is None:
        st.info("Fix the traffic above first.")
        return
    _assumptions(money)
    serving.traffic_section(money.serving, money.traffic, money.usd_per_hour, money.billing, money.target)
    formula_caption(money)


def _break_even_text(b: bill.VariantBill, months: dict[str, float | None]) -> str:
    if b.one_off_usd is None:
        return "no training run"
    if b.technique not in months:
        return "no reference measured"
    m = months[b.technique]
    return "never (no saving on serving)" if m is None else f"{m:.1f}"


def cost_tab(money: Money | None) -> None:
    if money is None:
        st.info("Fix the traffic above first.")
        return
    if not money.bills:
        st.info("No variant has a measured speed to price yet.")
        return
    _assumptions(money)
    lines = [f"- **{b.label}**: {capacity.bill_words(b.bill)}; measured: {b.source}"
             + ("" if b.meets_target else " (misses the latency target)")
             for b in sorted(money.bills, key=lambda b: b.bill.usd_per_month)]
    st.markdown("\n".join(lines))
    months = bill.break_even(money.bills, recommend.REFERENCE)
    rows = capacity.bill_table(money.bills)
    for row, b in zip(rows, money.bills):
        row["$ per 1M tokens"] = b.bill.usd_per_1m_tokens
        row["break-even, months"] = _break_even_text(b, months)
    st.dataframe(rows, hide_index=True, column_config=serving.BILL_COLUMNS | {
        "$ per 1M tokens": st.column_config.NumberColumn(format="$%.4f")})
    formula_caption(money)
    st.caption("$ per 1M tokens: the headline bill over the month's answer tokens. Break-even: months until a training "
               "run's one-off cost is paid back by what the variant saves against the reference each month.")
    if caveat := cost.cost_caveat(money.preset_kind, money.measured_device):
        st.warning(caveat)
