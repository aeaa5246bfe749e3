"""Report: export the results of one model on one machine as a self-contained HTML report, CSV and JSON."""

import json

import streamlit as st

from core.launch import roles
from core.measure import bill
from core.store.records import drawn_key
from core.serving import memory_bench
from core.views import capacity, chart_quantities, hybrids, memory_plots, recommend, report
from core.views import task as task_view
from ui import task_parts
from core.words import plural
from ui.frame import choice, kv_shape, shared, shared_tradeoff, store
from ui.results import measured_set
from ui.roles import is_presenter, visible
from ui.tables import show_table

st.title("Report")
st.write("One click gives a report you can send to someone who has not seen this app: the Trade-off Map, every "
         "variant with where its numbers came from, and a manifest (library versions, hardware, seeds, settings, "
         "app commit) so that they can reproduce it. The HTML file carries its charts inside and opens offline.")
picked = choice()
measured = measured_set(picked, "Open **Quantize** and press **Measure** first.")
spec, machine = measured.spec, measured.machine
metric = st.radio("Quality measure on the map", list(chart_quantities.QUALITY_METRICS), horizontal=True,
                  format_func=lambda k: chart_quantities.QUALITY_METRICS[k].label)
records = measured.records
settings = {"model": spec.key, "machine": machine, "quality_metric": metric, "hardware_preset": picked.preset.key,
            "usd_per_hour": picked.preset.usd_per_hour, "price_source": picked.preset.source,
            "price_as_of": picked.preset.as_of, "selection": "newest record per technique on this machine"}
results = store()
serving = capacity.reprice(capacity.latest_points(results.serving(spec.key, machine)), picked.preset) if results else []
presenter = is_presenter()
asked = st.session_state.get("decide_question")
question = asked or recommend.Constraints(min_top1_agreement=0.95, objective="cheapest")
kind = st.session_state.get("decide_prompt_kind", "open")  # decoding tricks count only for the prompts asked about
options, tricks = hybrids.with_tricks(records, machine, kind)
task_runs = task_parts.saved_runs(spec.key, machine)
options = task_parts.options_for(options, question.min_task_pass_rate, task_runs)
try:
    answer = recommend.recommend(options, question, kv_shape(spec)[0], history=measured.history)
    decision = recommend.decision_lines(answer, "asked on Decide" if asked else "the default; ask another on Decide")
    if answer.chosen is not None and answer.chosen.technique in tricks.by_key:
        decision.append(hybrids.reason(tricks.by_key[answer.chosen.technique]))
    warning = answer.warning
except ValueError as e:  # e.g. a device question while the model's config is not on this machine
    decision, warning = [f"No decision: the question cannot be answered here ({e}).", ""], None
decided = st.session_state.get("decide_bill")
if decided and decided[0] == (spec.key, machine):  # the bill last shown on Decide, for the traffic asked there
    _, bill_rows, bill_note = decided
else:  # the default traffic, said as such
    default = bill.Traffic(10_000, 200)
    bill_rows = bill.bill_rows(bill.variant_bills(records, serving, default, picked.preset.usd_per_hour))
    bill_note = "The default traffic (ask for yours on Decide): " + capacity.bill_note(
        default, bill.LatencyTarget(), picked.preset.usd_per_hour, "always_on")
st.subheader("The decision the report opens with")
st.markdown(f"**{decision[0]}** {decision[1]}")
if warning:
    st.warning(warning)
if busy_note := report.busy_alert(records, decision):
    st.warning(busy_note)  # the report says it too, beside the decision


hybrid_lines, hybrid_figures = hybrids.report_parts(machine, spec.key, picked.preset.usd_per_hour)
memory_parts = memory_plots.report_parts_for(memory_bench.saved_memory(spec.key), machine, question.device,
                                             question.users, question.cache_type)
my_task = task_parts.chosen_run(task_runs)  # the task run picked on Your task, the map or Decide; else the newest
task_section = task_view.report_html(my_task, picked.preset.usd_per_hour) if my_task else ""


def build() -> report.ReportBundle:
    extra = {"hybrid_lines": hybrid_lines, "hybrid_figures": hybrid_figures, **memory_parts, "task_section": task_section}
    if presenter:
        return report.build_report(records, spec.label, metric, settings, serving=serving, decision=decision,
                                   warning=warning, bill_rows=bill_rows, bill_note=bill_note, **extra)
    # a viewer's files carry no server path (records' settings name the eval files they were measured on)
    return report.build_report([roles.without_paths(r) for r in records], spec.label, metric, settings,
                               serving=[roles.without_paths(r) for r in serving], decision=decision, warning=warning,
                               bill_rows=bill_rows, bill_note=bill_note, **extra)


# Built once per set of results, settings, question and role for every session; files are sent only when downloaded.
# on_click="ignore": a click that also reran the page could drop the deferred file before the browser fetched it.
bundle = shared("report", (drawn_key(records), drawn_key(serving), *sorted(settings.items()), presenter,
                           *decision, bill_note, str(bill_rows), *hybrid_lines, *memory_parts["memory_lines"],
                           task_section), build)

stem = f"tradeoff-report-{spec.key.replace('/', '--')}"
a, b, c = st.columns(3)
a.download_button("Download HTML report", lambda: bundle.html, f"{stem}.html", "text/html", type="primary",
                  icon=":material/description:", on_click="ignore")
b.download_button("Download results CSV", lambda: bundle.csv, f"{stem}.csv", "text/csv", icon=":material/table:",
                  on_click="ignore")
c.download_button("Download results + manifest JSON", lambda: bundle.json, f"{stem}.json", "application/json",
                  icon=":material/data_object:", on_click="ignore")
st.caption(f"{plural(len(records), 'variant')}, {plural(len(serving), 'serving point')}; HTML {len(bundle.html) / 1e6:.1f} MB (plotly.js is embedded so it needs no network).")

st.subheader("What the report contains")
if my_task:
    st.caption(f"My task: {task_view.run_label(my_task)} (pass rates, paired verdicts and three flipped answers).")
st.plotly_chart(shared_tradeoff(records, metric, "latency"), width="stretch")
show_table([{h: cell(r)[0] for h, cell in report.VARIANT_COLUMNS} for r in records])  # as the HTML shows it
with st.expander("Manifest"):
    st.code(visible(json.dumps(bundle.manifest, indent=2, default=str)), language="json")
