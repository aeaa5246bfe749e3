"""Quantize: measure quantized variants of the chosen model, watch progress, read the results."""

import json
import streamlit as st

from core import models, techniques
from core.experiments.estimate import SweepPlan
from core.experiments.sweep import QUICK_MC_ITEMS, QUICK_PPL_TOKENS, QUICK_REPEATS, SweepSettings
from core.launch import cluster, uploads
from core.launch.kinds import SweepArgs
from core.measure import benchmark, evaluate
from core.paths import ASSETS
from core.techniques.gguf import saved_gguf_keys
from core.techniques.gguf.searched import searched_keys
from core.views.tables import provenance_lines, summary_rows
from ui.budget_fit import fit_budget_section
from ui.estimates import first_look, show_estimate
from ui.frame import choice, store
from ui.panel import job_panel, submit_job
from ui.roles import show_error, visible
from ui.tables import show_table
from ui.uploads import blocked_by, checked_upload

PROMPTS = json.loads((ASSETS / "prompts.json").read_text())
DEFAULT_PICK = techniques.defaults_for("sweep")
DEFAULTS = SweepSettings()

st.title("Quantize")
st.write("Store the same model's weights in fewer bits, then measure what that buys in speed and memory "
         "and what it costs in quality, all on this machine, with the same prompts for every variant.")
picked = choice()
device = benchmark.pick_device("auto")

# Quantization on every runtime: bitsandbytes and torch in transformers, compiled decode, llama.cpp's GGUF files.
# Students distilled here and merged fine-tunes can be exported to GGUF too, and measured against this model.
QUANT_KEYS = [k for k, t in techniques.TECHNIQUES.items() if t.family in ("reference", "quantization", "gguf")] + \
    saved_gguf_keys(picked.model) + searched_keys(picked.model)  # files made by Fit my budget, below
keys = st.multiselect("Variants to measure", QUANT_KEYS, default=DEFAULT_PICK, key="quantize_keys",
                      format_func=lambda k: techniques.get(k).label)
for k in keys:
    if reason := techniques.get(k).why_not(device):
        st.warning(f"{techniques.get(k).label} cannot run here and will be skipped: {reason}")

with st.expander("Measurement settings"):
    c1, c2, c3 = st.columns(3)
    prompt_id = c1.selectbox("Prompt for speed and side-by-side text", [p["id"] for p in PROMPTS],
                             format_func=lambda i: next(p["title"] for p in PROMPTS if p["id"] == i))
    new_tokens = c2.number_input("New tokens per run", 8, 256, DEFAULTS.new_tokens, step=8)
    repeats = c3.number_input(f"Timed runs (after {DEFAULTS.warmup_runs} warm-up)", 1, 20, DEFAULTS.repeats)
    mc_file = c1.file_uploader("Your multiple-choice set (JSONL)", type=["jsonl"],
                               help='One {"question": str, "choices": [str, ...], "answer": int} per line.')
    text_file = c2.file_uploader("Your text for perplexity and KLD (.txt)", type=["txt"])
    # Checked the moment a file is chosen, so that a bad one is refused here rather than after Measure.
    mc_up = checked_upload(mc_file, "quantize_mc", uploads.mc_set, c1)
    text_up = checked_upload(text_file, "quantize_text", uploads.ppl_text, c2)
    blocked = blocked_by(mc_up, text_up)  # Measure stays off while a chosen file is refused
    mc_max = c3.number_input("Questions to score (0 = all)", 0, 10000, 0)

quick = st.toggle("Quick first look", value=first_look(picked.model), help=(
    f"{QUICK_REPEATS} timed runs, {QUICK_MC_ITEMS} questions and {QUICK_PPL_TOKENS:,} tokens of text per variant: the "
    "first dot within about a minute, with wider intervals. Measure again without it for the full numbers."))
if quick:
    repeats, mc_max = min(int(repeats), QUICK_REPEATS), min(int(mc_max) or QUICK_MC_ITEMS, QUICK_MC_ITEMS)
sweep_estimate = show_estimate("quantize_keys", picked.model, keys,
                               SweepPlan(int(new_tokens), DEFAULTS.warmup_runs, int(repeats), int(mc_max) or None,
                                         QUICK_PPL_TOKENS if quick else DEFAULTS.ppl_max_tokens), device)
if st.button("Measure", type="primary", disabled=not keys or not picked.model or bool(blocked), help=blocked):
    try:
        settings = SweepSettings(
            prompt=next(p["prompt"] for p in PROMPTS if p["id"] == prompt_id), new_tokens=int(new_tokens),
            repeats=int(repeats), mc_max_items=int(mc_max), hardware_preset=picked.preset.key,
            usd_per_hour=picked.preset.usd_per_hour, launched_from="dashboard",
            eval_set=str(mc_up.path or evaluate.DEFAULT_MC_SET), ppl_text=str(text_up.path or evaluate.DEFAULT_PPL_TEXT),
        )
        settings = settings.quick_look() if quick else settings
        # Measured by the worker process, never in this web server (core/launch/worker.py); the worker sends it to the
        # Ray cluster when LAB_RAY_ADDRESS is set (core/launch/cluster.py).
        submit_job(SweepArgs(picked.model, tuple(keys), settings),
                   f"Quantization sweep of {picked.model}{cluster.where()}",
                   None if cluster.where() else sweep_estimate)  # the estimate is for this machine, kept to compare
    except ValueError as e:
        show_error(e)


job_panel("Each variant is saved as soon as it is measured; you can leave this page.")
hardware = benchmark.hardware_fingerprint(device)
fit_budget_section(picked.model, hardware)

results = store()
try:
    spec = models.resolve(picked.model)
    records = [r for r in (results.latest_per_technique(spec.key, hardware) if results else []) if r.technique in QUANT_KEYS]
except models.ModelError as e:
    st.info(visible(str(e)))
    records = []
if not records:
    st.info("No measurements of this model on this machine yet: pick variants and press **Measure**.")
    st.stop()

st.subheader("Results on this machine")
show_table(summary_rows(records), {c: "%.3g" for c in summary_rows(records)[0]
                                   if c not in ("variant", "technique", "runtime", "measured", "measured from")})
for line in provenance_lines(records):
    st.caption(line)

st.subheader("Side by side: the same prompt, greedy decoding")
st.caption(f"Prompt: “{records[0].sample_prompt}”")
for row_start in range(0, len(records), 4):
    for col, r in zip(st.columns(4), records[row_start:row_start + 4]):
        col.markdown(f"**{r.label}**  \n{r.decode_tokens_per_s_median:.1f} tok/s · {r.size_mb:.0f} MB")
        col.text(r.sample_generation)

st.subheader("What each variant does, and what may surprise you")
for k in [r.technique for r in records if r.technique in techniques.TECHNIQUES]:
    t = techniques.get(k)
    with st.expander(t.label):
        st.write(t.explanation)
        if t.surprise:
            st.info(t.surprise)
