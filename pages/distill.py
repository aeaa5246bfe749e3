"""Distill: cut a smaller student from the model's own layers, train it to mimic the model, and use it as a draft."""

from dataclasses import asdict

import plotly.graph_objects as go
import streamlit as st

from core import models
from core.experiments import speculative
from core.launch.jobs import on_torch_thread
from core.launch.uploads import fmt_seconds
from core.models import saved
from core.techniques import distillation
from core.views.tables import distill_rows, speculative_rows
from pages.common import choice, save_upload, show_error, store, visible
from pages.panel import job_panel, submit_job

st.title("Distill a smaller student")
st.write("Knowledge distillation trains a small **student** to give the same next-token probabilities as a large "
         "**teacher**. Here the student starts as the teacher with some of its layers removed, which on its own "
         "breaks the model; training it to match the teacher's outputs repairs much of the damage. The student "
         "is then measured like every other variant, and can serve as the teacher's **draft** in speculative "
         "decoding.")
picked = choice()
d = distillation.DistillSettings()

try:
    spec = models.resolve(picked.model)
    with st.spinner(f"Preparing {spec.label} (converted once, then reused)"):
        checkpoint = on_torch_thread(models.prepare, spec)
    teacher_layers = len(distillation.decoder_layers(distillation.meta_model(checkpoint)))
except (models.ModelError, ValueError, OSError) as e:
    st.info(visible(f"Pick a teacher model in the sidebar first. ({e})"))
    st.stop()
if teacher_layers < 2:
    st.info(f"{spec.label} has a single decoder layer: there is nothing to remove. Pick a deeper teacher.")
    st.stop()

st.subheader("1 · Shape the student")
c1, c2 = st.columns([2, 1])
if teacher_layers == 2:
    layers = 1
    c1.write("The teacher has 2 decoder layers: the student keeps 1.")
else:
    layers = c1.slider("Decoder layers the student keeps", 1, teacher_layers - 1,
                       min(d.student_layers, teacher_layers - 1), help=f"The teacher, {spec.label}, has {teacher_layers}.")
how = c2.radio("Which layers", distillation.LAYER_CHOICES, horizontal=True,
               format_func={"spread": "evenly spread", "first": "the first ones", "every-other": "every other"}.get,
               help="Evenly spread keeps the first and last layers, which matter most; DistilBERT kept every other.")
try:
    shape = distillation.plan(checkpoint, layers, how)
except ValueError as e:
    show_error(e)
    st.stop()
m1, m2, m3, m4 = st.columns(4)
m1.metric("Student parameters", f"{shape.student_params / 1e6:.1f} M", delta=f"{shape.params_pct - 100:.0f}% vs teacher",
          delta_color="off")
m2.metric("Size in float32", f"{shape.student_mb_fp32:.0f} MB", delta=f"teacher {shape.teacher_mb_fp32:.0f} MB", delta_color="off")
m3.metric("Expected decode speed-up", f"{shape.expected_speedup:.2f}x",
          help="Bytes read per decoded token, teacher over student: single-stream decoding is limited by memory "
               "bandwidth, so this is the ceiling. The embedding table stays whole, so halving the layers gives "
               "less than 2x. Measured after training.")
m4.metric("Layers kept", f"{layers} of {teacher_layers}")
st.caption(f"Kept teacher layers: {', '.join(map(str, shape.kept_layers))}. Estimated from the model's configuration, "
           "before anything is loaded.")

st.subheader("2 · Train it")
source = st.radio("Training text", ["teacher's answers to the bundled prompts", "your own text"], horizontal=True,
                  help="The teacher answers 360 prompts written for this project (once; cached). A fixed tenth of "
                       "the prompts is held out and never trained on.")
upload = st.file_uploader("UTF-8 text (paragraphs split by blank lines) or JSONL of {\"text\": ...} lines",
                          type=["txt", "jsonl"]) if source == "your own text" else None
with st.expander("Training settings"):
    a, b, c = st.columns(3)
    steps = a.number_input("Steps", 1, 5000, d.steps)
    batch = b.number_input("Sequences per step", 1, 64, d.batch_size)
    seq_len = c.number_input("Tokens per sequence", 16, 2048, d.seq_len_tokens, step=16)
    lr = a.number_input("Peak learning rate", 1e-6, 1e-2, d.learning_rate, format="%.5f")
    temperature = b.number_input("Temperature T", 0.1, 10.0, d.temperature, step=0.5,
                                 help="Softens both distributions before comparing them; the KL term is scaled by T².")
    kd_weight = c.slider("Share of the KL term", 0.0, 1.0, d.kd_weight, step=0.05,
                         help="1 = match the teacher only; lower mixes in the ordinary next-token loss on the text.")


def live_curve(live: dict) -> None:
    log = distillation.TrainLog(**live)
    if not log.losses:
        return
    fig = go.Figure(go.Scatter(y=log.losses, mode="lines", name="training loss (KL, nats/token)"))
    if log.heldout:
        fig.add_trace(go.Scatter(x=[s - 1 for s, _, _ in log.heldout], y=[k for _, k, _ in log.heldout],
                                 mode="markers+lines", name="held-out KL at checkpoints"))
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), title="Distillation loss (live)",
                      xaxis_title="step", yaxis_title="nats per token", legend=dict(orientation="h"))
    st.plotly_chart(fig, width="stretch")
    per_step = sorted(log.step_seconds)[len(log.step_seconds) // 2]
    left = log.steps_total - len(log.losses)
    if left > 0:
        st.caption(f"Step {len(log.losses)} of {log.steps_total} · {per_step:.1f} s per step · training ends in about "
                   f"{fmt_seconds(left * per_step)}, then the three models are measured.")


if st.button("Distill", type="primary"):
    try:
        settings = distillation.DistillSettings(student_layers=layers, layer_choice=how, steps=int(steps),
                                                batch_size=int(batch), seq_len_tokens=int(seq_len), learning_rate=float(lr),
                                                temperature=float(temperature), kd_weight=float(kd_weight))
        corpus = None
        if source == "your own text":
            if upload is None:
                raise ValueError("Upload a text or JSONL file first, or train on the teacher's answers.")
            corpus = save_upload(upload, lambda p: distillation.corpus_from_file(p, models.load_tokenizer(checkpoint), 0.1))
        distillation.prepare_run(picked.model, settings, corpus)  # refuse bad input before the job starts
        submit_job("distill", {"teacher": picked.model, "settings": asdict(settings),
                               "corpus": str(corpus) if corpus else None, "usd_per_hour": picked.preset.usd_per_hour,
                               "hardware_preset": picked.preset.key}, f"Distilling a {layers}-layer student of {spec.label}")
    except (ValueError, models.ModelError) as e:
        show_error(e)

job_panel("Checkpoints are written whole: a stopped run keeps its last complete checkpoint, or nothing.", live_curve)

st.subheader("3 · Teacher, pruned student, distilled student")
results = store()
records = results.all(model=spec.key) if results else []
students = [r for r in records if r.family == "distillation"]
distilled = [r for r in students if r.variant_facts.get("distillation", {}).get("role") == "student_distilled"]
if not distilled:
    st.info("No distilled student of this model measured yet: press **Distill**. The run shows its progress and the "
            "time left as it goes; the teacher's answers are written once and reused by later runs.")
else:
    latest = distilled[0]
    facts = latest.variant_facts["distillation"]
    run_records = [r for r in records if r.run_id == latest.run_id]
    teacher = next((r for r in run_records if r.family == "reference"), None)
    pruned = next((r for r in run_records if r.variant_facts.get("distillation", {}).get("role") == "student_pruned"), None)
    trio = [r for r in (teacher, pruned, latest) if r is not None]
    st.dataframe(distill_rows(trio, teacher), hide_index=True)
    dashboard_note = (f" Measured from the dashboard's worker process, apart from the web server, with "
                      f"{latest.settings.get('sessions_connected', '?')} browser sessions connected."
                      if latest.settings.get("launched_from") == "dashboard" else "")
    st.caption(visible(f"Run {facts['student_path']}: {facts['student_layers']} of {facts['teacher_layers']} layers, "
               f"{facts['settings']['steps']} steps, {facts['tokens_seen']:,} tokens seen, "
               f"{fmt_seconds(facts['train_seconds'])} of training on {facts['device']} ({facts['hardware']}), "
               f"{facts['threads']} threads; corpus: {facts['corpus']}. KL divergence and top-1 agreement are "
               "against the teacher on general prose the student never trained on; MC accuracy has a 95% "
               "bootstrap interval." + dashboard_note))
    k1, k2 = st.columns(2)
    k1.metric("Held-out KL divergence, pruned → distilled",
              f"{facts['heldout_kld_pruned']:.2f} → {facts['heldout_kld_distilled']:.2f} nats",
              help="Against the teacher, on the held-out tenth of the training text (never trained on).")
    k2.metric("Training cost", f"US$ {facts['usd_cost']:.4f}", help=f"{fmt_seconds(facts['train_seconds'])} at "
              f"US$ {facts['usd_per_hour']}/hour (the sidebar's price when the run started).")
    st.markdown("**The same prompt, greedy decoding**")
    st.caption(f"Prompt: “{latest.sample_prompt}”")
    for column, record in zip(st.columns(len(trio)), trio):
        column.markdown(f"**{record.label}**  \n{record.decode_tokens_per_s_median:.1f} tok/s")
        column.text(record.sample_generation)

st.subheader("4 · Speculative decoding with the student as draft")
st.write("The student drafts a few tokens; the teacher checks them all in one pass and keeps those it would have "
         "chosen itself, plus one of its own. With greedy decoding the text is exactly the teacher's: only the "
         "speed can change. It pays off when the teacher's pass over several tokens costs about as much as over "
         "one (memory-bound, as on a GPU) and the draft is much cheaper and usually right. On a CPU the check "
         "costs nearly as much per token as generating, so expect little or no gain here.")
drafts = [s for s in saved.saved_students() if s.facts.get("teacher") == spec.key]
if not drafts:
    st.info("No saved student of this model yet: distill one above.")
else:
    e1, e2, e3 = st.columns([3, 1, 1])
    draft = e1.selectbox("Draft model", drafts, format_func=lambda s: s.label)
    draft_tokens = e2.number_input("Tokens drafted per pass", 1, 16, 4)
    max_new = e3.number_input("New tokens per prompt", 8, 256, 64, step=8)
    if st.button("Compare on 10 bundled prompts"):
        submit_job("speculate", {"model": picked.model, "draft": str(draft.path), "draft_tokens": int(draft_tokens),
                                 "max_new_tokens": int(max_new)}, f"Speculative decoding of {spec.label}")
    saved = [r for r in speculative.saved_results() if r["model"] == spec.key]
    if saved:
        last = saved[0]
        s1, s2, s3, s4 = st.columns(4)
        s1.metric("Output identical to the teacher's", "yes" if last["identical_output"] else "NO",
                  help="Token by token, on every prompt.")
        s2.metric("Drafted tokens accepted", f"{last['acceptance_rate']:.0%}")
        s3.metric("Tokens per teacher pass", f"{last['tokens_per_pass']:.2f}", help="1.00 means no gain is possible.")
        s4.metric("Speed-up", f"{last['speedup']:.2f}x", help=f"Per prompt: median {last['speedup_per_prompt']['median']:.2f}x, "
                  f"p10–p90 {last['speedup_per_prompt']['p10']:.2f}–{last['speedup_per_prompt']['p90']:.2f}x")
        st.dataframe(speculative_rows(last), hide_index=True)
        st.caption(f"{last['draft_tokens']} drafted tokens per pass, up to {last['max_new_tokens']} new tokens, greedy; "
                   f"draft {last['draft']}; {last['device']} ({last['hardware']}), {last['threads']} threads; "
                   f"{last['created_at']}. Speed-up = the teacher's time alone / its time with the draft, summed over "
                   "the prompts, after one warm-up of each.")
