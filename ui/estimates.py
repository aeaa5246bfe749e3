"""Render helper: how long the chosen variants will take here, which run far slower, drop them in one click,
and how far the last estimates here were off (which corrects this one)."""

from __future__ import annotations

from typing import Callable

import streamlit as st

from core import models, techniques
from core.experiments import estimate
from core.launch import estimates, machine_load
from core.launch.job import JobArgs
from core.launch.jobqueue import JobEstimate
from core.measure import benchmark
from ui.frame import store
from ui.roles import queue

PROBES = "estimate_probes"  # session_state: technique -> Probe, measured on this machine during this session


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _drop(widget_key: str, slow: tuple[str, ...]) -> None:
    # a callback runs before the rerun, so the multiselect is redrawn without the slow variants
    st.session_state[widget_key] = [k for k in st.session_state.get(widget_key, []) if k not in slow]


def _probe(model: str, keys: tuple[str, ...], device: str) -> None:
    spec = models.resolve(model)
    checkpoint = models.prepare(spec)
    prompt_ids = models.chat_prompt_ids(models.load_tokenizer(checkpoint), "Explain in two sentences why the sky is blue.")
    probes = st.session_state.setdefault(PROBES, {})
    for key in keys:
        with st.spinner(f"Probing {key}: loading it and timing 3 decode steps"):
            probes[key] = estimate.probe_variant(key, checkpoint, prompt_ids, device)


def _show_past(est: estimate.SweepEstimate, past: list[estimate.PastRun]) -> None:
    """The last sweeps here, estimate against time taken: what the correction of this estimate learned from."""
    if not est.correction.runs:
        return
    st.caption(f"This estimate is {est.correction.words}. Recent sweeps on this machine (error %: negative when "
               "it took longer than estimated):")
    st.dataframe(estimate.past_rows(past, est.hardware), hide_index=True, column_config={
        "estimated s": st.column_config.NumberColumn(format="%.0f s"),
        "actual s": st.column_config.NumberColumn(format="%.0f s"),
        "error %": st.column_config.NumberColumn(format="%+.0f%%")})


def _for_the_queue(est: estimate.SweepEstimate) -> JobEstimate | None:
    """Stored with the job only when every variant has one: a partial sum would teach the correction nonsense."""
    if est.unknown or est.total_s <= 0:
        return None
    return JobEstimate(est.total_s, est.uncorrected_s, est.hardware)


def show_estimate(widget_key: str, model: str, keys: list[str], plan: estimate.SweepPlan,
                  device: str) -> JobEstimate | None:
    """A table per chosen variant (estimated time, basis, flag), the total, a probe button and a drop button;
    returns the estimate to queue with the sweep (None when some variant has none)."""
    results = store()
    keys = [k for k in keys if not techniques.get(k).why_not(device)]  # the sweep skips these: no time to count
    if not keys or results is None:
        return None
    try:
        spec = models.resolve(model)
    except models.ModelError:
        return None  # the page already says what is wrong with the model
    hardware = benchmark.hardware_fingerprint(device)
    past = estimate.past_runs(queue().estimated_jobs("sweep", hardware, estimate.LEARN_FROM_LAST))
    est = estimate.estimate_sweep(results.all(model=spec.key), keys, spec.key, hardware, plan,
                                  st.session_state.get(PROBES), estimate.cpu_has_avx512(), past)
    with st.expander(f"Estimated time here: {_fmt_s(est.total_s)}"
                     + (f" plus {len(est.unknown)} never measured here" if est.unknown else "")
                     + (f"; {len(est.slow)} variant(s) run far slower than usual" if est.slow else ""),
                     expanded=bool(est.slow)):
        st.dataframe([{"variant": v.label, "estimated time": _fmt_s(v.seconds),
                       "decode tok/s here": v.decode_tokens_per_s, "based on": v.basis,
                       "flag": "slow here" if v.slow else ""} for v in est.variants],
                     hide_index=True, column_config={"decode tok/s here": st.column_config.NumberColumn(format="%.1f")})
        st.caption(f"Machine: {hardware}. The reference pass and the bandwidth measurement add a little on top"
                   + (", which the correction below counts." if est.correction.runs else "."))
        _show_past(est, past)
        for v in est.variants:
            if v.slow:
                st.warning(f"**{v.label}** {v.why_slow}")
        c1, c2 = st.columns(2)
        if est.slow:
            c1.button(f"Drop slow variants ({', '.join(est.slow)})", on_click=_drop, args=(widget_key, est.slow))
        if est.unknown and c2.button(f"Probe {len(est.unknown)} unmeasured variant(s), a few seconds each"):
            try:
                _probe(spec.key, est.unknown, device)
            except (ValueError, RuntimeError, OSError) as e:
                st.error(f"The probe could not run: {e}")
            st.rerun()
    return _for_the_queue(est)


def show_job_estimate(args: JobArgs) -> JobEstimate:
    """The estimate line above a job's button (any kind but the sweep, which has its table above): how long it will
    take here, from what, and whether a busy machine makes that uncertain. Returns what to queue with the job."""
    device = benchmark.pick_device("auto")
    hardware = benchmark.hardware_fingerprint(device)
    snap = queue().snapshot()
    est = estimates.estimate_job(args, queue(), hardware,
                                 others_share=machine_load.recent_share(job_running=snap.running is not None))
    (st.warning if est.busy else st.caption)(est.words() + ".")
    return est.for_queue(hardware)


def estimated(build: Callable[[], JobArgs]) -> tuple[JobArgs | None, JobEstimate | None, ValueError | None]:
    """(args, estimate, refusal) for the job a button will queue, built from the widgets before the button so that
    its estimate shows above it; settings the dataclasses refuse give (None, None, the error) to show on a click."""
    try:
        args = build()
    except ValueError as e:
        return None, None, e
    return args, show_job_estimate(args), None
