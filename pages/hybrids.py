"""Hybrids: a cheap stage in front of the LLM (cascades), and decoding tricks that keep the model's own answers."""

import streamlit as st

from core.hybrids import curve
from core.measure import benchmark
from core.views import cascades, hybrids
from ui.frame import choice
from ui.hybrid_forms import measure_forms
from ui.panel import job_panel
from ui.tables import show_table

st.title("Hybrids")
st.write("Two ways to combine the LLM with something cheaper. A **cascade** lets a cheap first stage (a classical "
         "classifier, or a smaller model) answer the requests it is sure of and sends only the rest to the LLM: it "
         "trades a little task accuracy for a lot of cost. A **decoding trick** (prompt lookup, a draft model) lets "
         "the model check several guessed tokens in one pass: the answers stay the model's own, only the speed moves.")
picked = choice()
here = benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
st.caption(f"This machine: {here}. Priced at {picked.preset.label}, US${picked.preset.usd_per_hour:.4f}/hour "
           "(change it in the sidebar).")

saved = cascades.on_machine(curve.saved_results(), here)
tricks = hybrids.measured_hybrids(here)
measure_forms(picked.model, picked.preset.key, picked.preset.usd_per_hour, expanded=not saved and not tricks)
job_panel("A cascade is stored when both stages have answered every item; prompt lookup stores each runtime's "
          "result as it ends.", kinds=("cascade", "model-cascade", "prompt-lookup", "gguf-draft"))

st.subheader("Cascades")
if not saved:
    st.info("No cascade measured on this machine yet: press **Measure the cascade** under *Measure a hybrid* above.")
    st.caption("From a terminal instead: `python -m core cascade --second fp32` (a TF-IDF classifier in front of the "
               "model, on the bundled support-routing task) or `python -m core model-cascade --first gguf-q2_k "
               "--second fp32 --task mc` (a small GGUF file in front of the full model).")
else:
    result = st.selectbox("Measured cascade", saved, format_func=cascades.result_label)
    st.write(cascades.one_sentence(result))
    points = curve.repriced(result, picked.preset.usd_per_hour)
    path = sorted((p for p in points if p.role == "cascade"), key=lambda p: p.threshold)
    by_threshold = {p.threshold: p for p in path}
    best = curve.best_point(points) or path[len(path) // 2]
    threshold = st.select_slider(
        "Send a request to the second stage when the first stage's confidence is below", list(by_threshold),
        value=best.threshold, format_func=lambda t: f"{t:.2f}",
        help="Every position is a measured point: each stage answered each test item once, and the threshold only "
             "decides whose answer counts. Moving it re-measures nothing.")
    chosen = by_threshold[threshold]
    first, second = curve.ends(points)
    a, b, c, d = st.columns(4)
    a.metric("Accuracy", f"{chosen.accuracy:.1%}", f"{(chosen.accuracy - second.accuracy) * 100:+.1f} points vs "
             "the second stage alone", help=f"95% Wilson interval {chosen.accuracy_low:.1%} to "
             f"{chosen.accuracy_high:.1%} over {result['n_items']} test items.")
    b.metric("Sent to the second stage", f"{chosen.share_escalated:.0%}")
    c.metric("Mean time per request", f"{chosen.mean_latency_ms:,.0f} ms",
             f"{chosen.mean_latency_ms - second.mean_latency_ms:+,.0f} ms", delta_color="inverse")
    d.metric("$ per 1,000 requests", f"${chosen.usd_per_1k_requests:.4f}",
             f"{chosen.usd_per_1k_requests / second.usd_per_1k_requests - 1:+.0%}" if second.usd_per_1k_requests
             else None, delta_color="inverse")
    st.plotly_chart(cascades.figure({**result, "usd_per_hour": picked.preset.usd_per_hour}, points, chosen),
                    width="stretch")
    with st.expander("Every measured point"):
        show_table(cascades.point_rows(points, result), {
            "sent to the second stage": "percent", "accuracy": "percent", "ms per request": "%.0f",
            "$ per 1,000 requests": "$%.6f"})
    st.caption(f"Confidence: {result['confidence']}. Times are per request, one at a time, measured "
               f"{result['created_at'][:16].replace('T', ' ')} on this machine; the bill is that time at the hourly "
               "price. Decide's **Narrow task** tab picks the point for your accuracy and budget.")

st.subheader("Decoding tricks: the same answers, another speed")
if not tricks:
    st.info("No decoding trick measured on this machine yet: press **Compare prompt lookup** under *Measure a "
            "hybrid* above.")
    st.caption("From a terminal instead: `python -m core prompt-lookup` (drafts copied from the prompt, on "
               "transformers and llama.cpp) or `python -m core gguf-draft` (a distilled student drafting for a GGUF "
               "target on llama-server).")
else:
    show_table(hybrids.speed_rows(tricks), {"speed-up": "%.2fx", "drafts kept": "percent"})
    for h in tricks:
        st.markdown(f"- **{h.trick}, {h.technique} on {h.runtime}, {h.prompt_set} prompts.** {hybrids.sentence(h)}")
    st.caption("Speed-up: decode tokens per second with the trick over plain greedy decoding of the same file on the "
               "same runtime, summed over the prompts; its interval resamples the prompts. Decide offers a trick "
               "only where every answer was identical and the whole interval is above 1x.")
