"""Render helper: the Quantize page's "fit my budget": a size, a button, progress (the job panel), and
the measured result placed among llama.cpp's presets with its recipe in words."""

from __future__ import annotations

import streamlit as st

from core.experiments import budget_search
from core.launch.kinds import BudgetArgs
from core.measure import fit
from core.views import budget
from ui.panel import submit_job
from ui.roles import show_error
from ui.tables import show_table


def _size_mb(model: str, column) -> float:
    """The budget: typed in, or what a device from the fit presets leaves for the weights."""
    names = {"size": "a file size I give"} | {k: d.label for k, d in fit.DEVICE_PRESETS.items()}
    device = column.selectbox("Budget from", list(names), format_func=names.get)
    if device == "size":
        return column.number_input("File size budget, MB", min_value=1.0, max_value=1e6, value=100.0, step=1.0,
                                   help="1 MB = 10^6 bytes. The search picks a type per tensor so the file fits.")
    try:
        room = fit.weights_budget(fit.DEVICE_PRESETS[device], budget_search.kv_shape(model))
    except ValueError as e:
        show_error(e)
        return 0.0
    column.caption(room.words())
    return room.weights_mb


def budget_form(model: str) -> None:
    a, b, c = st.columns([1, 1, 1])
    size_mb = _size_mb(model, a)
    imatrix = b.checkbox("Use the importance matrix", value=True,
                         help="Rounding steered by how strongly each weight column is used on the calibration text.")
    if c.button("Search, write and measure", help="Minutes on a laptop CPU: the sensitivity table and calibration "
                                                   "are built once per model and reused."):
        budgets = [round(size_mb * 1e6)]
        try:
            budget_search.check_request(model, budgets, imatrix)
        except ValueError as e:
            show_error(e)
            return
        submit_job(BudgetArgs(model, tuple(budgets), imatrix),
                   f"Fit {size_mb:g} MB{' with importance matrix' if imatrix else ''} ({model})")


def show_result(result: dict) -> None:
    st.caption(budget.calibration_sentence(result))
    st.plotly_chart(budget.figure(result), width="stretch")
    for row in budget.searched_rows(result):
        st.markdown(f"**{budget.compare_sentence(row, result)}**")
        st.markdown("Recipe: " + "; ".join(row["recipe_words"]) + ".")
    if types := budget.heat_types(result):
        with st.expander("Which tensors hurt most: the sensitivity map"):
            qtype = st.selectbox("Each tensor alone at", types, index=types.index(budget.widest_type(result)),
                                 format_func=str.upper)
            st.plotly_chart(budget.heat_map(result, qtype), width="stretch")
            how = "Predicted from the calibrated estimate; the search spends bytes where a cell is darkest per MB saved."
            st.caption(" · ".join([*budget.outside_blocks(result, qtype), how]))
    with st.expander("Every file of this run"):
        show_table(budget.table_rows(result), {"size MB": "%.2f", "KLD": "%.4f", "± KLD": "%.4f",
                                               "predicted KLD": "%.4f", "p99 KLD": "%.3f", "same top token": "percent",
                                               "decode tok/s": "%.0f"})
    st.caption(f"KLD by llama-perplexity on {result['text']} ({result['n_ctx']}-token chunks) against the F32 file; "
               f"decode by llama-bench; measured on {result['provenance']['hardware']} in {result['elapsed_s']:.0f} s.")


def fit_budget_section(model: str, hardware: str) -> None:
    st.subheader("Fit my budget")
    st.write("Give a file size; the lab picks a llama.cpp type for every tensor so the file fits with the least "
             "damage it predicts, writes it with llama.cpp's own quantizer, and measures it beside the presets.")
    budget_form(model)
    found = budget.on_machine(budget_search.saved_results(), hardware)
    if not found:
        st.info("No searched file measured on this machine yet. From a terminal: `python -m core budget "
                "--match-presets q3_k_m,q4_k_m,q5_k_m` (one file at each preset's size).")
        return
    show_result(st.selectbox("Measured search", found, format_func=budget.label))
