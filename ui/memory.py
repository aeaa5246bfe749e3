"""Memory at long context and many users: the Serve page's section and Decide's device answer (widgets only)."""

from __future__ import annotations

import streamlit as st

from core.measure import fit, memory
from core.serving.memory_bench import MemoryRun
from core.views import memory_plots
from ui.tables import show_table

VALIDATION_FORMATS = {"KV MB reported": "%.2f", "KV MB model": "%.2f", "peak MB measured": "%.1f",
                      "peak MB model": "%.1f", "error %": "%+.1f", "tok/s per user": "%.1f", "tok/s in all": "%.1f",
                      "TTFT ms": "%.0f"}
QUALITY_FORMATS = {"KV bytes vs F16": "percent", "KLD mean, nats": "%.5f", "± (KLD)": "%.5f", "KLD p99": "%.4f",
                   "same top token": "percent", "perplexity": "%.3f"}


def fit_inputs(container, run: MemoryRun | None, key: str) -> tuple[int, str]:
    """Users and KV cache type, as Decide's device question and the Serve chart take them."""
    a, b = container.columns(2)
    users = int(a.number_input("Users at once (one slot each)", 1, 4096, 1, key=f"{key}_users"))
    offered = memory_plots.cache_types(run) if run else list(memory.OFFERED_CACHE_TYPES)
    cache = b.selectbox("KV cache type (llama.cpp -ctk/-ctv)", offered, key=f"{key}_cache",
                        index=offered.index("q8_0") if "q8_0" in offered else 0, format_func=memory_plots.cache_words)
    return users, cache


def device_answer(run: MemoryRun, users: int, cache: str, device_key: str, chart: bool = True) -> None:
    """The sentence for every GGUF variant measured, then the chart with the device's line."""
    device = fit.get_device(device_key)
    for technique in memory_plots.variants(run):
        st.markdown(f"- {memory_plots.fit_answer(run, technique, cache, users, device).sentence()}")
    if chart:
        st.plotly_chart(memory_plots.memory_figure(run, users, [device]), width="stretch")
    st.caption(f"From the memory model (weights + KV cache + compute buffers + runtime), calibrated on this machine "
               f"on {run.calibration.point} ({run.calibration.measured_at}) and within "
               f"{memory_plots.worst_error_pct(run):.1f}% of llama-server's measured peak at every other point; the "
               "runtime and compute buffers are this machine's build of llama.cpp, assumed alike on the device.")


def memory_section(run: MemoryRun | None, here: str) -> None:
    st.subheader("Memory at long context and many users")
    if run is None or run.hardware != here:
        st.info("Not measured on this machine yet: choose **Memory** above and press **Measure**.")
        return
    users, cache = fit_inputs(st, run, "serve_mem")
    device = st.selectbox("Device", list(fit.DEVICE_PRESETS), format_func=lambda k: fit.DEVICE_PRESETS[k].label,
                          key="serve_mem_device")
    st.plotly_chart(memory_plots.memory_figure(run, users, list(fit.DEVICE_PRESETS.values())), width="stretch")
    device_answer(run, users, cache, device, chart=False)
    for line in memory_plots.summary_lines(run):
        st.markdown(f"- {line}")
    st.markdown("**KV cache type: bytes and quality** (llama-perplexity --kl-divergence against the same GGUF with an "
                f"F16 cache, text {run.text})")
    show_table(memory_plots.quality_rows(run.quality, memory_plots.kv_ratios(run)), QUALITY_FORMATS)
    st.markdown("**The memory model against llama-server's measured peak**")
    show_table(memory_plots.validation_rows(run), VALIDATION_FORMATS)
    st.caption(f"Measured {run.created_at}, {run.threads} threads, on {run.hardware}. Server: {run.notes.get('server', '')}; "
               f"-c is users x context, so each slot holds context tokens (llama.cpp rounds it up to "
               f"{memory.LLAMA_CELL_BLOCK}-token blocks). Peak: {run.notes.get('peak', '')}; llama.cpp allocates the "
               "whole KV cache at start, so the slots need not be full. Speeds are from that one short burst. Transformers: "
               f"{run.notes.get('torch', 'not measured')}. The model leaves out llama-server's RAM prompt cache (turned "
               "off here), a torch process's loading, other processes, and the page cache.")
