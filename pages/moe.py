"""Mixture of experts: split the model's feed-forward layers into experts and choose how many run per token."""

import json
import streamlit as st

from core import models, techniques
from core.experiments.sweep import SweepSettings
from core.launch.kinds import MoeArgs
from core.measure import benchmark
from core.paths import ASSETS, shared_wikitext
from core.techniques import moe
from core.views import chart_quantities, moe_curve, moe_text
from core.views.tables import moe_rows, moe_view
from ui.estimates import estimated
from ui.moe_parts import routing_ceiling_notes, sparsity_section
from ui.frame import choice, store
from ui.panel import job_panel, submit_job
from ui.roles import show_error, visible
from ui.tables import show_table

PROMPTS = json.loads((ASSETS / "prompts.json").read_text())
EXPERT_CHOICES = [4, 8, 16]
DEFAULTS = SweepSettings()

st.title("Mixture of experts")
st.write("A mixture-of-experts model runs only a few parts of each feed-forward layer for every token. Here the "
         "dense model is split into experts the way MoEfication and CMoE do it: each layer's neurons are grouped "
         "into E equal experts; optionally a few **shared** experts, made of the neurons busy on almost every token, "
         "always run; a small router fitted on calibration text picks the k other experts that matter most for each "
         "token. Fewer neurons per token read fewer weights; the price is quality, because this model was never "
         "trained to work in pieces.")
picked = choice()
try:
    native = moe.native_moe_for_name(picked.model)
except models.ModelError as e:
    st.info(visible(str(e)))
    st.stop()

c1, c2 = st.columns([1, 2])
if native:
    experts = native[0]
    c1.metric("Experts per layer (E)", experts, help="Fixed: this model was trained as a mixture of experts.")
    st.info(f"This model is already a mixture of experts ({native[0]} experts per layer, {native[1]} per token as "
            "shipped): nothing is converted, only the number of experts each token runs is changed.")
else:
    experts = c1.selectbox("Experts per layer (E)", EXPERT_CHOICES, index=1,
                           help="Each layer's neurons are split into E equal groups; E must divide them.")
shared = 0 if native else c1.number_input("Shared experts (always on)", 0, experts - 2, 0, help=moe_text.SHARED_HELP)
routed = experts - int(shared)
ks = c2.multiselect("Routed experts per token (k) to measure", list(range(1, routed + 1)),
                    default=sorted({1, 2, max(1, routed // 2), routed}),
                    help=f"k = {routed} runs every expert: exactly the dense model's arithmetic.")

with st.expander("Measurement settings"):
    s1, s2, s3 = st.columns(3)
    prompt_id = s1.selectbox("Prompt for speed and side-by-side text", [p["id"] for p in PROMPTS],
                             format_func=lambda i: next(p["title"] for p in PROMPTS if p["id"] == i))
    new_tokens = s2.number_input("New tokens per run", 8, 256, DEFAULTS.new_tokens, step=8)
    repeats = s3.number_input(f"Timed runs (after {DEFAULTS.warmup_runs} warm-up)", 1, 20, DEFAULTS.repeats)
    mc_max = s1.number_input("Questions to score (0 = all)", 0, 10000, 0)
    heal = s3.number_input("Heal the carve, minutes (one k only; 0 = no training)", 0.0, 240.0, 0.0, step=5.0,
                           disabled=bool(native), help=moe_text.HEAL_HELP)
    heal_scope = s1.selectbox("What heals", list(moe_text.HEAL_SCOPE_NAMES), format_func=moe_text.HEAL_SCOPE_NAMES.get,
                              disabled=bool(native) or not heal, help=moe_text.HEAL_SCOPE_HELP)
    public = shared_wikitext()
    heal_text = s2.selectbox("Heal on", [moe_text.HEAL_ANSWERS, *([moe_text.HEAL_PUBLIC] if public else [])],
                             disabled=bool(native) or not heal, help=moe_text.HEAL_TEXT_HELP)
    dense_layers = s2.number_input("First MLP layers kept whole", 0, 8, moe.DEFAULT_DENSE_LAYERS,
                                   disabled=bool(native), help="The first MLP writes most of the residual stream in "
                                   "small models, so splitting it hurts far more than any other layer.")

measured_as = lambda: SweepSettings(  # noqa: E731 (built inside `estimated`, which shows what it refuses)
    prompt=next(p["prompt"] for p in PROMPTS if p["id"] == prompt_id), new_tokens=int(new_tokens),
    repeats=int(repeats), mc_max_items=int(mc_max), hardware_preset=picked.preset.key,
    usd_per_hour=picked.preset.usd_per_hour, launched_from="dashboard")
args, estimate, refused = estimated(lambda: MoeArgs(
    picked.model, int(experts), tuple(sorted(ks)), int(dense_layers), measured_as(), int(shared), float(heal),
    heal_scope, str(public) if heal and heal_text == moe_text.HEAL_PUBLIC else None)) if ks else (None, None, None)
if st.button("Convert and measure", type="primary", disabled=not ks or not picked.model):
    if refused is not None:
        show_error(refused)
    else:
        submit_job(args, f"Mixture of experts ({experts} experts) of {picked.model}", estimate)


job_panel("The conversion is saved once made; each variant is saved as soon as it is measured.", kinds=("moe",))

results = store()
hardware = benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
spec = models.resolve(picked.model)
here = results.all(spec.key, hardware) if results else []
dense, measured = moe_view(here, experts, None if native else int(dense_layers))
if not measured:
    st.info(f"No mixture-of-experts measurements with {experts} experts on this machine yet: pick the numbers of "
            "experts per token and press **Convert and measure**. The first run converts the model once; "
            "later runs reuse the conversion.")
    sparsity_section(picked.model, here, dense, picked)
    st.stop()

st.subheader("Quality against speed as the share of work per token changes")
metric = st.radio("Quality measure", list(chart_quantities.QUALITY_METRICS), horizontal=True,
                  format_func=lambda k: chart_quantities.QUALITY_METRICS[k].label)
st.plotly_chart(moe_curve.moe_curve_figure([*measured, *([dense] if dense else [])], metric), width="stretch")
if dense is None:
    st.warning("No dense reference measured on this machine: speed-ups cannot be computed.")

by_work = {moe_text.setting_name(r.variant_facts): r for r in measured}  # measured is sorted by (shared, k)
names = list(by_work)
chosen = by_work[st.select_slider("Setting", options=names, value=names[len(names) // 2],
                                  help="Move it to see what each setting buys and costs.")]
facts = chosen.variant_facts
m1, m2, m3, m4 = st.columns(4)
m1.metric("Active parameters", f"{facts['active_params_pct']:.0f}%", help="of the dense model's, per token")
m2.metric("GFLOPs per token", f"{facts['flops_per_token'] / 1e9:.3f}",
          delta=f"{facts['flops_per_token'] / facts['dense_flops_per_token'] - 1:+.0%} vs dense", delta_color="inverse")
m3.metric("Decode tokens/s", f"{chosen.decode_tokens_per_s_median:.1f}",
          delta=f"{chosen.decode_tokens_per_s_median / dense.decode_tokens_per_s_median:.2f}x dense" if dense else None)
m4.metric("KL divergence from dense", f"{chart_quantities.fmt_nats(chosen.kld_mean)} nats", help=f"top-1 agreement {chosen.top1_agreement:.0%}")

st.subheader("Side by side: the same prompt, greedy decoding")
st.caption(f"Prompt: “{chosen.sample_prompt}”")
left, right = st.columns(2)
if dense:
    left.markdown(f"**{dense.label}**  \n{dense.decode_tokens_per_s_median:.1f} tok/s")
    left.text(dense.sample_generation)
right.markdown(f"**{chosen.label}**  \n{chosen.decode_tokens_per_s_median:.1f} tok/s")
right.text(chosen.sample_generation)

st.subheader("Every setting measured")
rows = moe_rows(measured, dense)
show_table(rows, {c: "%.3g" for c in rows[0] if c not in ("variant", "experts per token (k)")})
st.caption("Active parameters include the embeddings and attention, which every token uses; FLOPs count "
           "2 per weight multiplied (attention projections, router, chosen experts, output head), not the "
           "attention over the context. Bytes held do not shrink: every expert stays in memory.")
with st.expander("What this does, and what may surprise you"):
    st.write(techniques.moe_technique(experts, max(1, experts // 4)).surprise)
    st.write(moe_text.SHARED_WHY)
    routing_ceiling_notes(models.resolve(picked.model).key, {r.technique: r.label for r in measured})
sparsity_section(picked.model, here, dense, picked)
