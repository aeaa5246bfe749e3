"""Serve: many users at once. Load a real server on 127.0.0.1 with concurrent streams and see what batching buys."""

import streamlit as st

from core import techniques
from core.launch.kinds import ServeBenchArgs, ServeContextArgs, ServeMemoryArgs
from core.measure import benchmark, memory
from core.serving import engines, kv, memory_bench
from core.serving.bench import SLOT_CONTEXT_ROOM_TOKENS, ServeSettings
from core.serving.limits import MAX_CONCURRENCY, REQUEST_TIMEOUT_S
from core.views import capacity, serving_plots
from ui import memory as memory_ui
from ui import serving
from ui.estimates import estimated
from ui.frame import choice, resolve_or_stop, store
from ui.panel import job_panel, submit_job
from ui.roles import show_error

st.title("Serve")
st.write("A service answers many people at once. Each decoding step reads the weights once however many requests "
         "share it, so the machine makes more tokens per second, and per dollar, as more users arrive, while each "
         "user waits a little longer. Here the lab starts a real server on this machine (127.0.0.1 only), sends it "
         "concurrent streaming requests, and times every token as it arrives.")
picked = choice()
spec = resolve_or_stop(picked.model)

bundled_gguf = engines.bundled_gguf(spec)
options = engines.servable(bundled_gguf)  # from the registries: every variant a server can serve, then the model's file
default = [techniques.REFERENCE] + ([engines.gguf_key(bundled_gguf)] if bundled_gguf else [])
keys = st.multiselect("Variants to serve", list(options), default=default, format_func=options.get)
a, b, c = st.columns(3)
conc = a.multiselect("Concurrent requests", [1, 2, 4, 8, 16, 32], default=[1, 2, 4, 8, 16])
prompts = b.multiselect("Prompt lengths, tokens (cut from real text)", [128, 512, 1024, 2048], default=[128])
new_tokens = c.number_input("New tokens per request", 8, 1024, 64, step=8)
repeats = c.number_input("Waves per point (error bars)", 1, 10, 2)
cache = a.selectbox("KV cache type on llama-server", memory.OFFERED_CACHE_TYPES, format_func=str.upper,
                    help="-ctk/-ctv, K and V alike; a quantized cache runs with flash attention on")
context = int(b.number_input("Context per user on llama-server, tokens (0: sized to the request)", 0, 131072, 0,
                             step=256))
top, per_slot = max(conc, default=1), context or max(prompts, default=0) + int(new_tokens) + SLOT_CONTEXT_ROOM_TOKENS
if top > 1:
    st.caption(f"llama-server splits -c across its slots: -c {top * per_slot:,} for {top} slots gives each user "
               f"{per_slot:,} tokens of context (rounded up to {memory.LLAMA_CELL_BLOCK}-token blocks).")
st.caption(f"Every request is bounded ({REQUEST_TIMEOUT_S:.0f} s), each point sends exactly concurrency x "
           f"waves requests, at most {MAX_CONCURRENCY} at once, and the server is stopped when the run ends "
           "or you press Stop.")

what = st.radio("Measure", ["load", "context", "memory"], horizontal=True, format_func={
    "load": "Load: throughput, latency and cost at each concurrency",
    "context": "Context: KV cache and decode speed as the context grows (in process, fp32)",
    "memory": "Memory: KV cache types x contexts x users on llama-server, against the memory model"}.get)
JOBS = {"context": lambda: ServeContextArgs(picked.model), "memory": lambda: ServeMemoryArgs(picked.model),
        "load": lambda: ServeBenchArgs(picked.model, tuple(keys), ServeSettings(
            concurrency=tuple(conc), prompt_tokens=tuple(sorted(prompts)), new_tokens=int(new_tokens),
            repeats=int(repeats), hardware_preset=picked.preset.key, usd_per_hour=picked.preset.usd_per_hour,
            cache_type=cache, context_tokens=context))}
args, estimate, refused = estimated(JOBS[what]) if what != "load" or (keys and conc and prompts) else (None, None, None)
if st.button("Measure", type="primary", disabled=not picked.model or (what == "load" and not (keys and conc and prompts))):
    # Measured by the worker process, never in this web server (core/launch/worker.py).
    if refused is not None:
        show_error(refused)
    else:
        submit_job(args, {"load": "Serving load", "context": "Context sweep", "memory": "Memory grid"}[what]
                   + f" of {spec.label}", estimate)

job_panel("Each point is saved as soon as it is measured; Stop ends the server and keeps them.",
          kinds=("serve-bench", "serve-context", "serve-memory"))

results = store()
here = benchmark.hardware_fingerprint("cpu")
records = capacity.reprice(capacity.latest_points(results.serving(spec.key, here)), picked.preset) if results else []
if not records:
    st.info("No load points for this model on this machine yet: pick variants and press **Measure**.")
else:
    st.subheader("What batching buys")
    serving.stories(records)
    st.caption(f"Priced at {picked.preset.label}, US${picked.preset.usd_per_hour:.4f}/hour (the sidebar's price). "
               f"Measured on {here}.")
    serving.frontier(records)
    st.caption("Each point is one concurrency; error bars span the waves. Up is cheaper per token, right is faster "
               "for each user. The star marks the knee: past it, another step of concurrency adds less than "
               f"{serving_plots.KNEE_GAIN:.0%} throughput, so users mostly wait longer.")
    serving.points_table(records)
    serving.servers_and_disagreements(records)
    first = records[0].settings
    st.caption(f"End of sequence: {first.get('eos', '?')}. ITL: {first.get('itl', '')}. Peak memory: "
               f"{first.get('peak_mem', '')}. KV measured as: {first.get('kv_measured_how', '')}.")

st.subheader("Context length")
run = kv.saved_context(spec.key)
if run is None or run.hardware != here:
    st.info("Not measured on this machine yet: choose **Context** above and press **Measure**.")
else:
    st.plotly_chart(serving_plots.context_figure(run.points, spec.label), width="stretch")
    st.caption(f"One sequence, fp32, in process, {run.threads} threads, measured {run.created_at}. Measured: bytes "
               "of the key/value tensors in the model's cache after reading the context. Estimated: 2 x layers x KV "
               "heads x head width x context x 4 bytes, from config.json.")

memory_ui.memory_section(memory_bench.saved_memory(spec.key), here)
