"""Rendering helpers for serving results, shared by the Serve and Decide pages (widgets and formatting only)."""

from __future__ import annotations

import streamlit as st

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


def traffic_section(records: list[ServingRecord]) -> None:
    """Decide for a traffic profile: cheapest variant and concurrency that meets a latency target."""
    if not records:
        st.info("No load-benchmark points for this model on this machine yet: open **Serve** and press **Measure**.")
        return
    a, b, c = st.columns(3)
    per_day = a.number_input("Requests per day", 0, 1_000_000_000, 100_000, step=10_000, key="cap_day")
    peak = a.number_input("Peak requests per second (0 = from the daily count)", 0.0, 1e6, 0.0, key="cap_peak",
                          help=f"0 takes the daily average x {capacity.PEAK_TO_AVERAGE:g} as the busiest hour.")
    prompt = b.number_input("Typical prompt, tokens", 1, 131072, 128, key="cap_prompt")
    answer = b.number_input("Typical answer, tokens", 1, 100_000, 200, key="cap_answer")
    ttft = c.number_input("p90 time to first token at most, ms", 1.0, 1e6, 2000.0, key="cap_ttft")
    speed = c.number_input("Each user gets at least, tok/s", 0.0, 1e4, 5.0, key="cap_speed")
    try:
        profile = capacity.TrafficProfile(per_day, int(prompt), int(answer), ttft, speed, peak or None)
    except ValueError as e:
        st.error(str(e))
        return
    result = capacity.plan(records, profile)
    if result.chosen is None:
        st.warning("**Nothing measured meets this target.**")
    elif result.one_machine_enough:
        st.success(f"**{result.chosen.record.label} at concurrency {result.chosen.record.concurrency}, one machine.**")
    else:
        st.warning(f"**One machine is not enough: {result.chosen.machines} machines.**")
    st.write(result.summary())
    st.caption(f"From load points at {result.prompt_tokens_used}-token prompts (the measured length nearest yours). "
               "Requests per second per machine = measured output tok/s / your answer length. Machines serving live "
               f"traffic are billed always on ({capacity.HOURS_PER_MONTH} h a month) at the sidebar's price.")
    st.dataframe([{"variant": o.record.label, "runtime": o.record.runtime, "concurrency": o.record.concurrency,
                   "p90 TTFT ms": o.record.ttft_ms_p90, "tok/s per user": o.record.per_user_tokens_per_s_median,
                   "requests/s per machine": o.requests_per_s_per_machine, "machines": o.machines,
                   "$ per month": o.usd_per_month, "meets target": o.meets_latency} for o in result.options],
                 hide_index=True, column_config={"$ per month": st.column_config.NumberColumn(format="$%.0f"),
                                                 "p90 TTFT ms": st.column_config.NumberColumn(format="%.0f"),
                                                 "tok/s per user": st.column_config.NumberColumn(format="%.1f"),
                                                 "requests/s per machine": st.column_config.NumberColumn(format="%.2f")})
