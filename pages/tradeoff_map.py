"""Trade-off Map: quality against speed and against money, for every variant measured on one machine."""

import streamlit as st

from core import cost, plots
from core.tables import provenance_lines
from pages.common import choice, clear_results_control, measured_set

st.title("Trade-off Map")
st.write("Each bubble is one variant of the model, measured on one machine. Up is better quality; left is "
         "faster or cheaper; bigger bubbles hold more memory. Variants on the dashed line are the ones worth "
         "considering: every other variant is beaten on both axes by one of them.")
picked = choice()
measured = measured_set(picked, "Open **Quantize** and press **Measure**; the variants appear here as soon as each one finishes.")
spec, records = measured.spec, measured.records

c1, c2 = st.columns([2, 1])
metric = c1.radio("Quality measure", list(plots.QUALITY_METRICS), horizontal=True,
                  format_func=lambda k: plots.QUALITY_METRICS[k].label)
c2.caption(plots.QUALITY_METRICS[metric].axis_title)

left, right = st.columns(2)
with left:
    st.plotly_chart(plots.tradeoff_figure(records, metric, "latency"), width="stretch")
    st.caption(plots.what_you_give_up(records, metric, "latency"))
with right:
    st.plotly_chart(plots.tradeoff_figure(records, metric, "cost"), width="stretch")
    st.caption(plots.what_you_give_up(records, metric, "cost"))
    if caveat := cost.cost_caveat(picked.preset.kind, records[0].device):
        st.warning(caveat)
    st.caption(f"Priced at {picked.preset.label}, US${picked.preset.usd_per_hour:.4f}/hour "
               f"({picked.preset.source}, as of {picked.preset.as_of}). Change it in the sidebar.")

st.subheader("How close each variant gets to the memory-bandwidth limit")
st.plotly_chart(plots.speed_bars_figure(records), width="stretch")
st.caption("Generating one token at a time reads every weight it uses once per token, so memory bandwidth ÷ bytes "
           "read per token caps tokens/s (bytes held for dense models; only the chosen experts for a mixture of "
           "experts). Variants far below the cap spend their time computing (for example converting 4- or 8-bit "
           "weights back to floats), not reading memory.")
for line in provenance_lines(records):
    st.caption(line)
clear_results_control()
