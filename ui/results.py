"""The measured results a page shows: one model's newest results on one machine, and the presenter's clear button."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import streamlit as st

from core import models
from core.launch import quiet, roles
from core.measure import benchmark, cost
from ui.frame import SidebarChoice, resolve_or_stop, store
from ui.panel import queue_snapshot
from ui.roles import is_presenter, queue
from ui.turns import takes_turns


@dataclass(frozen=True)
class MeasuredSet:
    spec: models.ModelSpec
    machine: str  # hardware fingerprint the records were measured on
    records: list  # newest record per technique on that machine, priced at the sidebar's price
    history: list  # every record of the model on that machine, newest first (for what a headline moved from)


@st.fragment(run_every=quiet.PANEL_EVERY_S)
@takes_turns
def follow_new_records(model_key: str) -> None:
    """While a job runs or waits, redraw the page the moment a record of this model is stored: each variant joins
    the map as soon as it is measured, not when the whole sweep ends. Costs one count query per tick."""
    snap = queue_snapshot(str(queue().path))
    if snap.running is None and not snap.waiting:
        return
    seen_key, count = f"records_seen_{model_key}", store().count(model=model_key)
    before = st.session_state.get(seen_key)
    st.session_state[seen_key] = count
    if before is not None and before != count:
        st.rerun(scope="app")


def measured_set(picked: SidebarChoice, empty_hint: str) -> MeasuredSet:
    """The chosen model's results on one machine (the user picks which); stops the page with a hint if none."""
    results = store()
    spec = resolve_or_stop(picked.model)
    if results is not None:
        follow_new_records(spec.key)
    machines = results.hardware_seen(spec.key) if results else []
    if not machines:
        st.info(f"Nothing measured for {spec.label} yet. {empty_hint}")
        st.stop()
    device = benchmark.pick_device("auto")
    here = benchmark.hardware_fingerprint(device)
    shown = here
    if here not in machines:  # say so, rather than show another machine's numbers as if they were this one's
        newest_first = results.all(model=spec.key)
        shown = newest_first[0].hardware
        _say_measured_elsewhere(spec.label, here, Counter(r.hardware for r in newest_first),
                                benchmark.old_style_fingerprint(device))
    machine = st.selectbox("Machine the numbers were measured on", machines, index=machines.index(shown),
                           help="Numbers from different machines are never mixed on one chart.")
    history = results.all(model=spec.key, hardware=machine)
    latest = list({r.technique: r for r in reversed(history)}.values())[::-1]  # newest per technique, newest first
    return MeasuredSet(spec, machine, cost.reprice(latest, picked.preset), history)


def _say_measured_elsewhere(label: str, here: str, counts: Counter, old_name_here: str) -> None:
    def line(machine: str, n: int) -> str:
        older = (" (named before the lab told CPUs apart by family and instruction sets: this machine's, or another's "
                 "with the same CPU name, cores and RAM)" if machine == old_name_here else "")
        return f"- {machine}: {n} record{'s' * (n != 1)}{older}"

    st.info(f"{label} was never measured on this machine ({here}). Its records were measured on other machines:\n"
            + "\n".join(line(m, n) for m, n in sorted(counts.items()))
            + "\n\nPick one below to view its numbers (the one measured most recently is selected); machines are "
              "shown one at a time, as their speeds are not comparable.")


def clear_results_control() -> None:
    """The presenter's "clear every result" (with a confirmation); viewers never see it."""
    if not is_presenter():
        return
    with st.expander("Clear every result"):
        sure = st.checkbox("Yes, delete every measured result and vote on this machine", key="clear_sure")
        if st.button("Clear results", disabled=not sure, key="clear_results") and (target := store()):
            roles.clear_results(target, presenter=True)
            st.rerun()
