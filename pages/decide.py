"""Decide: which variant to deploy under a budget, what it costs per month, and which devices it fits."""

import streamlit as st

from core.measure import fit
from core.views import hybrids, recommend
from core.serving import memory_bench
from ui import bills, decide_hybrids, task_parts, verdict
from ui import memory as memory_ui
from ui.frame import choice, kv_shape
from ui.results import measured_set
from ui.roles import show_error, visible
from ui.tables import show_table

st.title("Decide")
st.write("State what you need, and get the measured variant that meets it best, with the reason and what you "
         "give up against the full-precision reference. Below: what each variant costs per month for your traffic, "
         "and which devices it fits on.")
picked = choice()
measured = measured_set(picked, "Open **Quantize** and press **Measure** first.")
spec, machine, records = measured.spec, measured.machine, measured.records
shape, problem = kv_shape(spec)
served = memory_bench.saved_memory(spec.key)  # the memory model's calibration and llama-server's measured grid
served = served if served and served.hardware == machine else None
if problem:
    st.warning(visible(problem))
st.caption(f"Speeds measured on: {machine}. Priced at {picked.preset.label}, US${picked.preset.usd_per_hour:.4f}/hour "
           "(change it in the sidebar).")

money = bills.traffic_inputs(spec, machine, records, picked)  # one traffic profile, one bill per variant
recommend_tab, traffic_tab, cost_tab, fit_tab, task_tab = st.tabs(
    ["Recommend", "Traffic at load", "Monthly cost", "Device fit", "Narrow task"])

with traffic_tab:
    bills.traffic_tab(money)

with recommend_tab:
    objective = st.radio("I want the", recommend.OBJECTIVES, horizontal=True,
                         format_func={"cheapest": "cheapest", "fastest": "fastest", "best_quality": "best quality"}.get)
    a, b, c = st.columns(3)
    floor = verdict.floor_input(a)
    use_top1 = a.checkbox("Minimum top-1 agreement", True, help="Share of next tokens equal to the reference's.")
    top1 = a.slider("Top-1 agreement at least", 0.5, 1.0, 0.95, 0.01, disabled=not use_top1)
    use_mc = a.checkbox("Minimum multiple-choice accuracy (share of the reference's)")
    mc = a.slider("MC accuracy, share of reference", 0.5, 1.0, 0.95, 0.01, disabled=not use_mc)
    use_device = b.checkbox("Must fit on a device", True, disabled=shape is None)
    device = b.selectbox("Device", list(fit.DEVICE_PRESETS), format_func=lambda k: fit.DEVICE_PRESETS[k].label,
                         disabled=not use_device)
    context = int(b.number_input("Context length per user, tokens", 128, 131072, fit.DEFAULT_CONTEXT_TOKENS, step=512))
    users, cache = memory_ui.fit_inputs(b, served, "decide")
    use_ms = c.checkbox("Maximum latency per token")
    ms = c.number_input("ms per token at most", 1.0, 10000.0, 50.0, disabled=not use_ms)
    use_ttft = c.checkbox("Maximum time to first token")
    ttft = c.number_input("TTFT ms at most", 1.0, 100000.0, 200.0, disabled=not use_ttft)
    kind = decide_hybrids.prompt_kind(b)
    use_usd = c.checkbox("Maximum $ per 1M tokens")
    usd = c.number_input("$ per 1M tokens at most", 0.0, 10000.0, 2.0, format="%.4f", disabled=not use_usd)
    task_runs = task_parts.saved_runs(spec.key, machine)
    task_floor = task_parts.floor_input(c, task_runs)  # last in its column: the widgets above keep their places
    constraints = recommend.Constraints(
        max_ms_per_token=ms if use_ms else None, max_ttft_ms=ttft if use_ttft else None,
        max_usd_per_1m_tokens=usd if use_usd else None, min_top1_agreement=top1 if use_top1 else None,
        min_mc_share=mc if use_mc else None, min_task_pass_rate=task_floor, device=device if use_device and shape else None,
        context_tokens=context, users=users, cache_type=cache, calibration=served.calibration if served else None,
        objective=objective, floor_top1=floor)
    st.session_state["decide_question"] = constraints  # the Report answers the question last asked here
    st.session_state["decide_prompt_kind"] = kind
    try:
        options, tricks = hybrids.with_tricks(records, machine, kind)
        options = task_parts.options_for(options, task_floor, task_runs)
        rec = recommend.recommend(options, constraints, shape, history=measured.history)
    except ValueError as e:
        show_error(e)
        st.stop()
    verdict.show_verdict(rec)
    decide_hybrids.trick_notes(rec, tricks)
    verdict.quality_scale(records, rec.reference)
    st.caption("Speeds and costs were measured on the machine above, not on the target device; the device "
               "constraint checks memory only.")
    if served and use_device:
        memory_ui.device_answer(served, users, cache, device)
    elif use_device:
        st.info("Measure GGUF variants at several contexts and users (Serve > Memory) to see memory against context "
                "here, checked against what llama-server really holds.")

with task_tab:
    decide_hybrids.narrow_task_tab(machine, picked.preset.usd_per_hour)

with cost_tab:
    bills.cost_tab(money)

with fit_tab:
    if shape is None:
        st.info("Device fit needs the model's config.json (layers and heads) from a prepared checkpoint.")
        st.stop()
    a, b = st.columns(2)
    fit_context = int(a.number_input("Context length for the KV cache, tokens", 0, 131072, context, step=512, key="fit_ctx"))
    overhead = b.number_input("Runtime overhead, MB", 0.0, 10000.0, fit.RUNTIME_OVERHEAD_MB, step=50.0)
    devices = list(fit.DEVICE_PRESETS.values())
    table = fit.fit_table(records, devices, shape, fit_context, overhead, users, cache, served and served.calibration)
    show_table([{"variant": r.label, "weights MB": row[0].weights_mb, "KV cache MB": row[0].kv_cache_mb,
                 "total MB": row[0].need_mb, **{d.label: "fits" if f.fits else "too big" for d, f in zip(devices, row)}}
                for r, row in zip(records, table)], {c: "%.0f" for c in ("weights MB", "KV cache MB", "total MB")})
    st.caption(f"Total = bytes the variant's tensors hold + KV cache (2 x {shape.layers} layers x {shape.kv_heads} KV heads "
               f"x {shape.head_dim} wide x {fit_context:,} tokens x {users} users x bytes per element: the {cache.upper()} "
               "cache type on llama.cpp, the compute dtype on transformers) + compute buffers and runtime ("
               + ("measured once here for llama.cpp, see Serve > Memory; " if served else "")
               + f"{overhead:.0f} MB stated otherwise), against each device's memory minus what its system keeps:")
    for d in devices:
        st.caption(f"{d.label}: {d.memory_gb:.0f} GB, {d.memory_gb - d.reserved_gb:.0f} GB usable. {d.source}")

