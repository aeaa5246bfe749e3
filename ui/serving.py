"""Rendering helpers for serving results, shared by the Serve and Decide pages (widgets and formatting only)."""

from __future__ import annotations

import streamlit as st

from core.measure import bill
from core.store.records import ServingRecord
from core.views import capacity, serving_plots

TABLE_COLUMNS = {  # field -> (heading, format)
    "label": ("variant", None), "runtime": ("runtime", None), "concurrency": ("concurrency", "%d"),
    "prompt_tokens": ("prompt tokens", "%d"), "throughput_tokens_per_s": ("tok/s in all", "%.1f"),
    "per_user_tokens_per_s_median": ("tok/s per user", "%.1f"), "ttft_ms_p50": ("TTFT p50 ms", "%.0f"),
    "ttft_ms_p90": ("TTFT p90 ms", "%.0f"), "itl_ms_p50": ("ITL p50 ms", "%.0f"), "itl_ms_p90": ("ITL p90 ms", "%.0f"),
    "e2e_ms_p90": ("end-to-end p90 ms", "%.0f"), "kv_cache_mb_measured": ("KV MB measured", "%.2f"),
    "kv_cache_mb_estimated": ("KV MB estimated", "%.2f"), "peak_mem_mb": ("server peak MB", "%.0f"),
    "usd_per_1m_tokens": ("$ per 1M tokens", "$%.4f"), "errors": ("failed requests", "%d"),
}


def points_table(records: list[ServingRecord]) -> None:
    rows = [{heading: getattr(r, f) for f, (heading, _) in TABLE_COLUMNS.items()}
            for r in sorted(records, key=lambda r: (r.technique, r.runtime, r.prompt_tokens, r.concurrency))]
    st.dataframe(rows, hide_index=True, column_config={
        heading: st.column_config.NumberColumn(format=fmt) for heading, fmt in TABLE_COLUMNS.values() if fmt})


def servers_and_disagreements(records: list[ServingRecord]) -> None:
    """Which server served each variant (slots, context per slot), and where its own figures and the client's
    differ by more than 5%."""
    servers = {}
    for r in records:
        per_slot = r.settings.get("ctx_per_slot_tokens")
        servers[r.label] = r.server + (f", {per_slot} tokens of context per slot" if per_slot else "")
    st.caption("Served by: " + "; ".join(f"{label} on {server}" for label, server in sorted(servers.items())) + ".")
    apart = [f"{r.label} at {r.concurrency} concurrent: {note}" for r in records
             for note in r.settings.get("server_vs_client") or []]
    if apart:
        st.warning("**The server's own timings and the client's differ by more than 5%:**\n\n- " + "\n- ".join(apart))


def stories(records: list[ServingRecord]) -> None:
    curves: dict[tuple, list[ServingRecord]] = {}
    for r in records:
        curves.setdefault((r.technique, r.runtime, r.prompt_tokens), []).append(r)
    for (_, _, prompt), rs in sorted(curves.items()):
        if story := capacity.scaling_story(rs):
            st.markdown(f"- {story.sentence()} ({prompt}-token prompts)")


def frontier(records: list[ServingRecord]) -> None:
    for n in sorted({r.prompt_tokens for r in records}):
        st.plotly_chart(serving_plots.frontier_figure(records, n), width="stretch")


def traffic_section(records: list[ServingRecord], traffic: bill.Traffic, usd_per_hour: float, billing: bill.Billing,
                    target: bill.LatencyTarget) -> None:
    """The cheapest variant and concurrency that meets the latency target at load, billed by the one cost model."""
    if not records:
        st.info("No load-benchmark points for this model on this machine yet: open **Serve** and press **Measure**.")
        return
    result = capacity.plan(records, traffic, usd_per_hour, billing, target)
    if result.chosen is None:
        st.warning("**Nothing measured meets this target.**")
    elif result.one_machine_enough:
        st.success(f"**{result.chosen.label} at concurrency {result.chosen.bill.rate.concurrency}, one machine.**")
    else:
        st.warning(f"**One machine is not enough: {result.chosen.bill.machines} machines.**")
    st.write(result.summary())
    st.caption(f"From load points at {result.prompt_tokens_used}-token prompts (the measured length nearest yours), "
               "newest of each. Each point is billed as in the Monthly cost tab.")
    st.dataframe(capacity.bill_table(result.options, training=False), hide_index=True, column_config=BILL_COLUMNS)


BILL_COLUMNS = {heading: st.column_config.NumberColumn(format=fmt) for heading, fmt in (
    ("tok/s per user", "%.1f"), ("TTFT s", "%.2f"), ("requests/s per machine", "%.3f"), ("tokens/s per machine", "%.1f"),
    ("busy hours per machine per month", "%.0f"), ("$ per month (always on)", "$%.2f"),
    ("$ per month (busy only)", "$%.2f"), ("one-off training $", "$%.4f"))}

