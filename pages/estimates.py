"""Render helper (not a page): how long the chosen variants will take here, which run far slower, drop them in one click."""

from __future__ import annotations

import streamlit as st

from core import models
from core.experiments import estimate
from core.experiments.sweep import chat_prompt_ids
from core.measure import benchmark
from pages.common import store

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
    prompt_ids = chat_prompt_ids(models.load_tokenizer(checkpoint), "Explain in two sentences why the sky is blue.")
    probes = st.session_state.setdefault(PROBES, {})
    for key in keys:
        with st.spinner(f"Probing {key}: loading it and timing 3 decode steps"):
            probes[key] = estimate.probe_variant(key, checkpoint, prompt_ids, device)


def show_estimate(widget_key: str, model: str, keys: list[str], plan: estimate.SweepPlan, device: str) -> None:
    """A table per chosen variant (estimated time, basis, flag), the total, a probe button and a drop button."""
    results = store()
    if not keys or results is None:
        return
    try:
        spec = models.resolve(model)
    except models.ModelError:
        return  # the page already says what is wrong with the model
    hardware = benchmark.hardware_fingerprint(device)
    est = estimate.estimate_sweep(results.all(model=spec.key), keys, spec.key, hardware, plan,
                                  st.session_state.get(PROBES), estimate.cpu_has_avx512())
    with st.expander(f"Estimated time here: {_fmt_s(est.total_s)}"
                     + (f" plus {len(est.unknown)} never measured here" if est.unknown else "")
                     + (f"; {len(est.slow)} variant(s) run far slower than usual" if est.slow else ""),
                     expanded=bool(est.slow)):
        st.dataframe([{"variant": v.label, "estimated time": _fmt_s(v.seconds),
                       "decode tok/s here": v.decode_tokens_per_s, "based on": v.basis,
                       "flag": "slow here" if v.slow else ""} for v in est.variants],
                     hide_index=True, column_config={"decode tok/s here": st.column_config.NumberColumn(format="%.1f")})
        st.caption(f"Machine: {hardware}. The reference pass and the bandwidth measurement add a little on top.")
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
