"""Render helpers: Decide's decoding-trick options and its Narrow task tab (measured cascades). The options
themselves come from core.views.hybrids.with_tricks."""

from __future__ import annotations

import streamlit as st

from core.hybrids import curve
from core.views import cascades, hybrids
from core.views.recommend import Recommendation


def prompt_kind(container) -> str:
    return container.radio("My prompts are mostly", list(hybrids.PROMPT_KINDS), format_func=hybrids.PROMPT_KINDS.get,
                           help="Decoding tricks such as prompt lookup gain where the answer repeats the prompt; "
                                "Decide uses the speed-up measured on prompts of the kind you pick.")


def trick_notes(rec: Recommendation, found: hybrids.TrickOptions) -> None:
    """Why a trick was chosen (and the condition it holds under), and which measured tricks were left out."""
    if rec.chosen is not None and rec.chosen.technique in found.by_key:
        st.info(hybrids.reason(found.by_key[rec.chosen.technique]))
    if found.left_out:
        with st.expander("Decoding tricks measured here but not offered"):
            st.markdown("\n".join(f"- {line}" for line in found.left_out))


def narrow_task_tab(machine: str, usd_per_hour: float) -> None:
    """Pick the cheapest measured cascade point (or either stage alone) that meets an accuracy and a budget."""
    saved = cascades.on_machine(curve.saved_results(), machine)
    if not saved:
        st.info("For a narrow task (such as routing support messages) a cheap first stage can answer most requests. "
                "Measure a cascade first: `python -m core cascade --second fp32`; the **Hybrids** page shows it.")
        return
    result = st.selectbox("Task and stages", saved, format_func=cascades.result_label)
    points = curve.repriced(result, usd_per_hour)
    _, second = curve.ends(points)
    a, b = st.columns(2)
    floor = a.slider("Accuracy at least, %", 0.0, 100.0, max(0.0, round(second.accuracy * 100 - 1, 1)), 0.5,
                     help="Default: one point under the second stage alone.") / 100
    use_budget = b.checkbox("Budget per 1,000 requests")
    budget = b.number_input("$ per 1,000 requests at most", 0.0, 1000.0, float(round(second.usd_per_1k_requests, 4)),
                            format="%.6f", disabled=not use_budget)
    choice = cascades.choose(points, floor, budget if use_budget else None)
    words = cascades.verdict(choice, result)
    (st.success if choice.chosen is not None else st.warning)(f"**{words}**")
    st.write(cascades.explain(choice, result))
    st.plotly_chart(cascades.figure({**result, "usd_per_hour": usd_per_hour}, points, choice.chosen), width="stretch")
    st.caption(f"Measured {result['created_at'][:16].replace('T', ' ')} on this machine, {result['n_items']} test "
               f"items; priced at US${usd_per_hour:.4f}/hour. Accuracy is the task's, not agreement with a reference.")
