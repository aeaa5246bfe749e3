"""Render helpers for the Distill page: the training-free depth sweep, the healing curve, and speculative decoding
with a saved student as draft. Each is one section of the page; the page keeps the flow."""

from __future__ import annotations

import streamlit as st

from core.experiments import speculative
from core.experiments.sweep import SweepSettings
from core.launch.kinds import SpeculateArgs, SweepArgs
from core.models import saved
from core.store.records import VariantRecord
from core.techniques import REFERENCE
from core.techniques.depth import PRUNE_CHOICES, prune_key
from core.views import depth_curve
from core.views import distill as distill_view
from core.views.chart_quantities import QUALITY_METRICS
from core.views.tables import speculative_rows
from ui.estimates import estimated
from ui.panel import submit_job
from ui.roles import show_error
from ui.tables import show_table

# The Distill page's training-text choices (the labels are what a user reads and what the browser tests click)
ANSWERS, OWN, OWN_AND_ANSWERS = ("teacher's answers to the bundled prompts", "your own text",
                                 "your own text and the teacher's answers")


def depth_sweep_section(model: str, label: str, teacher_layers: int, records: list[VariantRecord], picked) -> None:
    """What removing layers costs before any training: redundancy against spread at several depths, measured."""
    st.subheader("1 · What removing layers costs, before any training")
    st.write("Each decoder layer's influence is measured on a calibration text (how much it turns the hidden state "
             "it is given). Removing the least influential layers first, and for comparison evenly spaced ones, at "
             "several depths shows what the student starts from, and that *which* layers go matters as much as how "
             "many. Every point is measured like any variant: KL divergence, multiple-choice accuracy with its "
             "interval, decode speed.")
    depths = depth_curve.sweep_depths(teacher_layers)
    keys = (REFERENCE, *(prune_key(n, c) for n in depths for c in PRUNE_CHOICES))
    args, estimate, refused = estimated(lambda: SweepArgs(model, keys, SweepSettings(
        hardware_preset=picked.preset.key, usd_per_hour=picked.preset.usd_per_hour, launched_from="dashboard")))
    if st.button(f"Measure the depth sweep ({', '.join(map(str, depths))} of {teacher_layers} layers)",
                 key="depth_sweep"):
        if refused is not None:
            show_error(refused)
        else:
            submit_job(args, f"Depth sweep of {label}", estimate)
    metric = st.radio("Quality measure", ["kld_mean", "mc_accuracy", "top1_agreement"], horizontal=True,
                      format_func=lambda k: QUALITY_METRICS[k].label, key="depth_metric")
    healed = depth_curve.healed_records(records)[:3]
    st.plotly_chart(depth_curve.depth_curve_figure(records, metric, healed), width="stretch")
    if sentence := depth_curve.redundancy_wins(records):
        st.caption(sentence)
    rows = depth_curve.depth_rows(records)
    if rows:
        with st.expander("Every pruned variant measured"):
            show_table(rows, depth_curve.DEPTH_FORMATS, {"speed-up": "full model not measured here"})


def healing_section(records: list[VariantRecord]) -> None:
    """Held-out quality per minute of training, and why the seed's figure took days of GPUs."""
    if depth_curve.healed_records(records):
        st.plotly_chart(depth_curve.heal_curve_figure(records), width="stretch")
        st.caption("Measured at each checkpoint on the held-out tenth of the training text (never trained on). "
                   "Minutes are wall time on this machine, checkpoint measurements included.")
    with st.expander("Why the seed's \"97% of the performance\" is not what you see here"):
        st.write(depth_curve.SEED_CLAIM)


def speculative_section(model: str, label: str) -> None:
    st.subheader("5 · Speculative decoding with the student as draft")
    st.write("The student drafts a few tokens; the teacher checks them all in one pass and keeps those it would have "
             "chosen itself, plus one of its own. With greedy decoding the text is exactly the teacher's: only the "
             "speed can change. It pays off when the teacher's pass over several tokens costs about as much as over "
             "one (memory-bound, as on a GPU) and the draft is much cheaper and usually right. On a CPU the check "
             "costs nearly as much per token as generating, so expect little or no gain here.")
    drafts = [s for s in saved.saved_students() if s.facts.get("teacher") == model]
    if not drafts:
        st.info("No saved student of this model yet: distill one above.")
        return
    e1, e2, e3 = st.columns([3, 1, 1])
    draft = e1.selectbox("Draft model", drafts, format_func=lambda s: s.label)
    draft_tokens = e2.number_input("Tokens drafted per pass", 1, 16, 4)
    max_new = e3.number_input("New tokens per prompt", 8, 256, 64, step=8)
    args, estimate, _ = estimated(lambda: SpeculateArgs(model, str(draft.path), int(draft_tokens), int(max_new)))
    if st.button("Compare on 10 bundled prompts"):
        submit_job(args, f"Speculative decoding of {label}", estimate)
    results = [r for r in speculative.saved_results() if r["model"] == model]
    if results:
        last = results[0]
        for column, metric in zip(st.columns(4), distill_view.speculative_metrics(last)):
            column.metric(**metric)
        show_table(speculative_rows(last), {"alone s": "%.2f", "with draft s": "%.2f", "speed-up": "%.2fx"})
        st.caption(distill_view.speculative_caption(last))
