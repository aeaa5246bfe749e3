"""Render helper for the Mixture-of-experts page: activation sparsity, the training-free form of "run only what each
token needs", measured beside the experts."""

from __future__ import annotations

import streamlit as st

from core.experiments.moe_ceiling import cached_ceilings
from core.experiments.sweep import SweepSettings
from core.launch.kinds import SweepArgs
from core.store.records import VariantRecord
from core.techniques import REFERENCE, keys_of_family
from core.views.moe_text import ceiling_sentence
from core.views.tables import sparsity_rows
from ui.estimates import estimated
from ui.panel import submit_job
from ui.roles import show_error
from ui.tables import show_table


def sparsity_section(model: str, records: list[VariantRecord], dense: VariantRecord | None, picked) -> None:
    st.subheader("Activation sparsity: skip the neurons that are nearly silent")
    st.write("Instead of fixed experts, each token zeroes the feed-forward activations closest to zero (a threshold "
             "per layer, set on calibration text) and, when decoding, reads only the surviving neurons' weights. No "
             "training, no router. Its quality cost is small at moderate targets; its speed on a CPU is the "
             "question, because finding the survivors costs time too. Both are measured here.")
    keys = (REFERENCE, *keys_of_family("sparsity"))
    args, estimate, refused = estimated(lambda: SweepArgs(model, keys, SweepSettings(
        hardware_preset=picked.preset.key, usd_per_hour=picked.preset.usd_per_hour, launched_from="dashboard")))
    if st.button("Measure activation sparsity", key="measure_sparsity"):
        if refused is not None:
            show_error(refused)
        else:
            submit_job(args, f"Activation sparsity of {model}", estimate)
    rows = sparsity_rows(records, dense)
    if rows:
        show_table(rows, {"activations zeroed %": "%d", "seen while decoding %": "%.0f", "MLP weights read %": "%.0f",
                          "KLD vs dense (nats)": "%.3f", "top-1 agreement": "%.1%", "MC accuracy": "%.1%",
                          "decode tok/s": "%.1f", "speed-up vs dense": "%.2fx"},
                   {"speed-up vs dense": "dense not measured on this machine"})
        st.caption("A speed-up below 1.00x means the sparse model decoded slower than the dense one on this machine: "
                   "an ordinary matrix multiply does the same work for a zero as for any number, so only skipping "
                   "the zeroed neurons' weights can gain, and picking them costs a few small steps per layer.")


def routing_ceiling_notes(model_key: str, labels: dict[str, str]) -> None:
    """Each carve's routing ceiling measured here (`python -m core moe --routing-ceiling`), in words."""
    for ceiling in cached_ceilings(model_key):
        if ceiling.technique in labels:
            st.markdown(ceiling_sentence(ceiling, labels[ceiling.technique]))
