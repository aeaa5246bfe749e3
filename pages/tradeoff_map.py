"""Trade-off Map: quality against speed and against money, for every variant measured on one machine."""

import streamlit as st

from core.launch.kinds import SweepArgs
from core.measure import cost
from core.store.records import drawn_key
from core.views import busy, chart_quantities, hybrids, speed_bars, tradeoff_map
from core.views import task as task_view
from ui import task_parts
from core.views.tables import provenance_lines
from ui.frame import choice, shared, shared_tradeoff
from ui.panel import submit_job
from ui.results import clear_results_control, measured_set
from ui.tables import show_table

st.title("Trade-off Map")
st.write("Each bubble is one variant of the model, measured on one machine. Up is better quality; left is "
         "faster or cheaper; bigger bubbles hold more memory. Variants on the dashed line are the ones worth "
         "considering: every other variant is beaten on both axes by one of them.")
picked = choice()
measured = measured_set(picked, "Open **Quantize** and press **Measure**; the variants appear here as soon as each one finishes.")
spec, records = measured.spec, measured.records

c1, c2 = st.columns([2, 1])
task_runs = task_parts.saved_runs(spec.key, measured.machine)  # "my task" is offered once a task run is stored
metric = c1.radio("Quality measure", [*chart_quantities.QUALITY_METRICS, *([task_view.METRIC_KEY] if task_runs else [])],
                  horizontal=True, format_func=lambda k: chart_quantities.get_metric(k).label)
if metric == task_view.METRIC_KEY:
    records, left_out = task_view.with_task(records, task_parts.pick_run(task_runs, c1, "map_task"))
    if left_out:
        st.caption(f"Not drawn (not both in the task run and in a sweep here): {', '.join(left_out)}.")
    if not records:
        st.info("No variant of this task run was measured by a sweep here: measure them on **Quantize** first.")
        st.stop()
scale = c2.radio("Axes", ["log", "linear"], horizontal=True,
                 help="Log axes keep a very slow variant, or KL divergences from 0.001 to 8 nats, from squeezing "
                      "the rest into a corner. On a log axis KL divergence is drawn as KLD + "
                      f"{tradeoff_map.KLD_LOG_FLOOR:g} nats so that the reference's 0 can be shown; hover "
                      "and the table give the measured value.")
log = scale == "log"
tricks_for = st.selectbox("Decoding tricks on the map", ["none", *hybrids.PROMPT_KINDS],
                          format_func=lambda k: "none" if k == "none" else f"for {hybrids.PROMPT_KINDS[k]} prompts",
                          help="A variant with prompt lookup or a draft model gives its own answers (the same quality) "
                               "at another speed. Shown where it kept every answer and was clearly faster on prompts "
                               "of that kind, measured on this machine (see **Hybrids**).")
if tricks_for != "none" and metric != task_view.METRIC_KEY:  # a task run answers without decoding tricks
    records, tricks = hybrids.with_tricks(records, measured.machine, tricks_for)
    for line in tricks.left_out:
        st.caption(f"Not drawn: {line}")
# one map per row: with 25+ variants a half-width column is too narrow to tell them apart
st.plotly_chart(shared_tradeoff(records, metric, "latency", log), width="stretch")
st.caption(tradeoff_map.what_you_give_up(records, metric, "latency"))
st.plotly_chart(shared_tradeoff(records, metric, "cost", log), width="stretch")
st.caption(tradeoff_map.what_you_give_up(records, metric, "cost"))


def measure_again(again, key: str, help_text: str) -> None:
    if again and st.button(f"Measure again: {', '.join(again.labels)}", key=key, help=help_text):
        if (job := submit_job(SweepArgs(picked.model, again.techniques, again.settings),
                              again.job_label(picked.model))) is not None:
            st.success(f"Queued as job {job}: the map redraws them when they are measured (progress on **Quantize**).")


if busy_note := busy.note(measured.records):  # hollow bubbles: timed while other processes took the CPU
    st.warning(busy_note)
    measure_again(busy.remeasure(measured.records), "map_measure_again", "Queues a sweep of just these variants, "
                  "with the settings they were measured with. Close what else is running first, or the machine "
                  "will be busy again.")
if quick_note := busy.quick_note(measured.records):  # a first look: fewer timed runs and questions
    st.info(quick_note)
    measure_again(busy.refine(measured.records), "map_measure_full", "Queues the full pass of these variants.")
if caveat := cost.cost_caveat(picked.preset.kind, records[0].device):
    st.warning(caveat)
st.caption(f"Priced at {picked.preset.label}, US${picked.preset.usd_per_hour:.4f}/hour "
           f"({picked.preset.source}, as of {picked.preset.as_of}). Change it in the sidebar.")
st.caption("Colour is the technique family, symbol the runtime. Only the frontier is labelled; hover over any "
           "bubble for its numbers, or find it in the table.")
show_table(tradeoff_map.map_rows(records, metric, "latency"), {
    "decode ms/token": "%.1f", "USD per 1M tokens": "%.4f", "KLD (nats)": chart_quantities.fmt_nats,
    "KLD p99 (nats)": chart_quantities.fmt_nats, "top-1 agreement": "percent",
    "perplexity": "%.2f", "MC accuracy": "percent", "MB held": "%.1f", "my task pass rate": "percent"}, width="stretch")

st.subheader("How close each variant gets to the memory-bandwidth limit")
st.plotly_chart(shared("speed bars", drawn_key(records), lambda: speed_bars.speed_bars_figure(records)),
                width="stretch")
st.caption("Generating one token at a time reads every weight it uses once per token, so memory bandwidth ÷ bytes "
           "read per token caps tokens/s (bytes held for dense models; only the chosen experts for a mixture of "
           "experts). Variants far below the cap spend their time computing (for example converting 4- or 8-bit "
           "weights back to floats), not reading memory.")
for line in provenance_lines(records):
    st.caption(line)
clear_results_control()
