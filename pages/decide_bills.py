"""Decide's money tabs (render helpers, not a page): the bill for a traffic profile at load and per month."""

from __future__ import annotations

import streamlit as st

from core.measure import cost, fit
from core.views import capacity, recommend
from pages import serve_view
from pages.common import store


def traffic_tab(spec, machine: str, picked) -> None:
    results = store()
    served = results.serving(spec.key, machine) if results else []
    serve_view.traffic_section(capacity.reprice(capacity.latest_points(served), picked.preset))


def cost_tab(records: list, picked) -> None:
    a, b = st.columns(2)
    per_day = a.number_input("Requests per day", 0, 100_000_000, 10_000, step=1000)
    per_request = b.number_input("Tokens generated per request", 1, 100_000, 200, step=50)
    monthly = fit.monthly_costs(records, picked.preset.usd_per_hour, per_day, per_request)
    reference = next((m for m in monthly if m.technique == recommend.REFERENCE), None)
    rows = []
    for m in monthly:
        saving = reference.usd_per_month - m.usd_per_month if reference else float("nan")
        months = fit.break_even_months(m.one_off_usd, saving) if m.one_off_usd is not None and reference else None
        rows.append({"variant": m.label, "$ per month": m.usd_per_month, "busy hours per month": m.busy_hours_per_month,
                     "$ per 1M tokens": m.usd_per_1m_tokens, "one-off training $": m.one_off_usd,
                     "break-even, months": months})
    st.dataframe(rows, hide_index=True, column_config={
        "$ per month": st.column_config.NumberColumn(format="$%.2f"), "$ per 1M tokens": st.column_config.NumberColumn(format="$%.4f"),
        "one-off training $": st.column_config.NumberColumn(format="$%.4f"), "busy hours per month": st.column_config.NumberColumn(format="%.1f"),
        "break-even, months": st.column_config.NumberColumn(format="%.1f")})
    st.caption(f"{per_day:,} requests/day x {per_request:,} tokens x {cost.DAYS_PER_MONTH} days, one request at a time, "
               "billed only while generating (per-second billing, scale to zero). An always-on machine costs "
               f"${picked.preset.usd_per_hour * 24 * cost.DAYS_PER_MONTH:,.2f} a month whatever the load. Break-even: "
               "months until a training run's one-off cost is paid back by what the variant saves against the "
               "reference each month; empty where it never is on serving cost alone (a fine-tune buys task accuracy, not speed).")
    if caveat := cost.cost_caveat(picked.preset.kind, records[0].device):
        st.warning(caveat)
