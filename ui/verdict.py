"""Render helper: a recommendation as a verdict a non-expert can trust, with its warning, its
numbers' intervals, the records it rests on, and what the quality words mean."""

from __future__ import annotations

import streamlit as st

from core.views import busy, chart_quantities, quality, recommend
from core.views.recommend import Recommendation
from ui.tables import show_table


def floor_input(container) -> float:
    """The quality floor, a share of next tokens: under it a verdict carries a warning instead of a green light."""
    return container.slider(
        "Quality floor: top-1 agreement", 0.5, 1.0, quality.DEFAULT_FLOOR_TOP1, 0.01,
        help="A variant under the floor is never shown as a plain 'Deploy': it comes with a warning in words. "
             f"The default, {quality.DEFAULT_FLOOR_TOP1:.0%}, is where variants measured here began to change "
             "multiple-choice answers beyond the accuracy interval (see 'What the quality words mean').")


def show_verdict(rec: Recommendation) -> None:
    """Green only for a variant at or above the floor and timed on a quiet machine; amber, with the reason, for one
    under the floor, one timed on a busy machine, or for none."""
    words = recommend.verdict(rec)
    if rec.chosen is None:
        st.warning(f"**{words}**")
    elif rec.warning or busy.is_busy(rec.chosen):
        st.warning(f"**{words}** {rec.warning or ''}")
    else:
        st.success(f"**{words}**")
    st.write(rec.summary())
    if rec.busy:
        st.warning(rec.busy)
    if rec.headline is None:
        return
    if rec.headline.moved:
        st.info(rec.headline.moved)
    st.caption("Measured: " + "; ".join(rec.headline.sources) + f". Intervals: speed-up, {rec.headline.speedup.how}; "
               f"top-1, {rec.headline.top1_agreement.how}; multiple choice, {rec.headline.mc_accuracy.how}.")


def quality_scale(records: list, reference) -> None:
    """The bands in words, and the evidence for them from this store: top-1 next to the answers it changed."""
    with st.expander("What the quality words mean"):
        st.markdown("\n".join(f"- **{b.name}**: top-1 agreement of {b.min_top1_agreement:.0%} or more; {b.meaning}."
                              for b in quality.BANDS))
        st.caption("Top-1 agreement is the share of next tokens on which a variant picks the full model's most likely "
                   "token. The bands were set from the lab's own sweeps of SmolLM2-135M: above 93% almost no "
                   "multiple-choice answer changed; under 85% one in eight or more did and accuracy fell beyond its "
                   "interval. The same evidence for the variants measured here:")
        show_table(quality.calibration_rows(records, reference), {
            "top-1 agreement": "percent", "MC answers changed": "percent", "KLD nats": chart_quantities.fmt_nats,
            "MC accuracy change, points": "%+.1f"}, blanks={"MC answers changed": "not scored"})
