"""The measured results a page shows: one model's newest results on one machine, and the presenter's clear button."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core import models
from core.launch import roles
from core.measure import benchmark, cost
from pages.common import SidebarChoice, resolve_or_stop, store
from pages.roles_ui import is_presenter


@dataclass(frozen=True)
class MeasuredSet:
    spec: models.ModelSpec
    machine: str  # hardware fingerprint the records were measured on
    records: list  # newest record per technique on that machine, priced at the sidebar's price
    history: list  # every record of the model on that machine, newest first (for what a headline moved from)


def measured_set(picked: SidebarChoice, empty_hint: str) -> MeasuredSet:
    """The chosen model's results on one machine (the user picks which); stops the page with a hint if none."""
    results = store()
    spec = resolve_or_stop(picked.model)
    machines = results.hardware_seen(spec.key) if results else []
    if not machines:
        st.info(f"Nothing measured for {spec.label} yet. {empty_hint}")
        st.stop()
    here = benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
    machine = st.selectbox("Machine the numbers were measured on", machines,
                           index=machines.index(here) if here in machines else 0,
                           help="Numbers from different machines are never mixed on one chart.")
    history = results.all(model=spec.key, hardware=machine)
    latest = list({r.technique: r for r in reversed(history)}.values())[::-1]  # newest per technique, newest first
    return MeasuredSet(spec, machine, cost.reprice(latest, picked.preset), history)


def clear_results_control() -> None:
    """The presenter's "clear every result" (with a confirmation); viewers never see it."""
    if not is_presenter():
        return
    with st.expander("Clear every result"):
        sure = st.checkbox("Yes, delete every measured result and vote on this machine", key="clear_sure")
        if st.button("Clear results", disabled=not sure, key="clear_results") and (target := store()):
            roles.clear_results(target, presenter=True)
            st.rerun()
