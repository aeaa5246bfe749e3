"""Overview: what the lab measures, on which model, and where to start."""

import streamlit as st

from core import models, techniques
from pages.common import choice

st.title("LLM Trade-off Lab")
st.write(
    "Make a language model smaller and faster, then see, measured live on this machine, what each technique "
    "costs in quality and buys in speed, memory and money. Every number on these pages is measured here, "
    "with its spread, the settings that produced it and the hardware it ran on."
)
picked = choice()
spec = models.BUNDLED.get(picked.model)
if spec:
    st.info(f"**Model: {spec.label}.** {spec.weights_note}")

st.subheader("Three steps")
c1, c2, c3 = st.columns(3)
c1.markdown("**1. Pick** a model and a hardware price in the sidebar.")
c2.markdown("**2. Measure** quantized variants on the **Quantize** page; a progress bar shows how far it is.")
c3.markdown("**3. Decide** on the **Trade-off Map**: quality against latency and against dollars.")
c1.page_link("pages/quantize.py", label="Go to Quantize", icon=":material/compress:")
c3.page_link("pages/tradeoff_map.py", label="Go to the Trade-off Map", icon=":material/scatter_plot:")

st.subheader("How quality is measured")
st.markdown(
    "- **KL divergence** and **top-1 agreement**: how far each variant's next-token predictions move from the "
    "full-precision reference on the same text. For a small model this shows damage long before task accuracy does.\n"
    "- **Perplexity** on a few thousand tokens of prose written for this project: lower is better.\n"
    "- **Multiple-choice accuracy** on questions written for this project, scored by log-likelihood, "
    "with a 95% bootstrap confidence interval."
)

st.subheader("The variants")
for t in techniques.TECHNIQUES.values():
    st.markdown(f"**{t.label}**: {t.explanation}")
