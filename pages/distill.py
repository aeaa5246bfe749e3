"""Distill: cut a smaller student from the model's own layers, train it to mimic the model, and use it as a draft."""

import streamlit as st

from core import models
from core.experiments import distill_run, speculative
from core.launch.jobs import on_torch_thread
from core.launch.kinds import DistillArgs, SpeculateArgs
from core.launch.uploads import distill_corpus, fmt_seconds
from core.models import saved
from core.techniques import distillation
from core.views import distill as distill_view
from core.views.tables import DISTILL_FORMATS, distill_rows, speculative_rows
from ui.estimates import estimated, show_job_estimate
from ui.frame import choice, store
from ui.panel import job_panel, submit_job
from ui.roles import show_error, visible
from ui.tables import show_table
from ui.uploads import blocked_by, checked_upload

st.title("Distill a smaller student")
st.write("Knowledge distillation trains a small **student** to give the same next-token probabilities as a large "
         "**teacher**. Here the student starts as the teacher with some of its layers removed, which on its own "
         "breaks the model; training it to match the teacher's outputs repairs much of the damage. The student is "
         "then measured like every other variant, and can serve as the teacher's **draft** in speculative decoding.")
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
               format_func=distill_view.LAYER_LABELS.get, help=distill_view.LAYER_HELP)
try:
    with st.spinner("Planning the student (the least-redundant choice scores each layer once per model)"):
        shape = on_torch_thread(distillation.plan, checkpoint, layers, how)  # may run the model: the torch thread
except ValueError as e:
    show_error(e)
    st.stop()
for column, metric in zip(st.columns(4), distill_view.plan_metrics(shape, layers, teacher_layers)):
    column.metric(**metric)
chosen = "; layers chosen by their measured influence on the calibration text" if how == "redundancy" else ""
st.caption(f"Kept teacher layers: {', '.join(map(str, shape.kept_layers))}. Sizes and speed-up estimated from the "
           f"model's configuration{chosen}.")

st.subheader("2 · Train it")
source = st.radio("Training text", ["teacher's answers to the bundled prompts", "your own text"], horizontal=True,
                  help="The teacher answers 360 prompts written for this project (once; cached). A fixed tenth of "
                       "the prompts is held out and never trained on.")
upload = st.file_uploader("UTF-8 text (paragraphs split by blank lines) or JSONL of {\"text\": ...} lines",
                          type=["txt", "jsonl"]) if source == "your own text" else None
mine = checked_upload(upload, "distill_corpus", distill_corpus(checkpoint), depends_on=str(checkpoint))  # on choosing
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
    if (figure := distill_view.loss_figure(live)) is not None:
        st.plotly_chart(figure, width="stretch")
    if line := distill_view.progress_line(live, fmt_seconds):
        st.caption(line)


corpus = mine.path
args, estimate, refused = estimated(lambda: DistillArgs(picked.model, distillation.DistillSettings(
    student_layers=layers, layer_choice=how, steps=int(steps), batch_size=int(batch), seq_len_tokens=int(seq_len),
    learning_rate=float(lr), temperature=float(temperature), kd_weight=float(kd_weight)),
    str(corpus) if corpus else None, picked.preset.usd_per_hour, picked.preset.key))
if st.button("Distill", type="primary", disabled=mine.refused, help=blocked_by(mine)):
    try:
        if refused is not None:
            raise refused
        if source == "your own text" and corpus is None:
            raise ValueError("Upload a text or JSONL file first, or train on the teacher's answers.")
        distill_run.prepare_run(picked.model, args.settings, corpus)  # refuse bad input before the job starts
        submit_job(args, f"Distilling a {layers}-layer student of {spec.label}", estimate)
    except (ValueError, models.ModelError) as e:
        show_error(e)

job_panel("Checkpoints are written whole: a stopped run keeps its last complete checkpoint, or nothing.", live_curve,
          kinds=("distill", "speculate"))

st.subheader("3 · Teacher, pruned student, distilled student")
results = store()
run = distill_view.latest_run(results.all(model=spec.key) if results else [])
if run is None:
    st.info("No distilled student of this model measured yet: press **Distill**. The run shows its progress and the "
            "time left as it goes; the teacher's answers are written once and reused by later runs.")
else:
    latest, trio = run.latest, run.trio
    show_table(distill_rows(trio, run.teacher), DISTILL_FORMATS, {"speed-up vs teacher": "teacher not measured"})
    st.caption(visible(distill_view.run_caption(run, fmt_seconds)))
    for column, metric in zip(st.columns(2), distill_view.run_metrics(run, fmt_seconds)):
        column.metric(**metric)
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
    speculate = SpeculateArgs(picked.model, str(draft.path), int(draft_tokens), int(max_new))
    speculate_estimate = show_job_estimate(speculate)
    if st.button("Compare on 10 bundled prompts"):
        submit_job(speculate, f"Speculative decoding of {spec.label}", speculate_estimate)
    saved = [r for r in speculative.saved_results() if r["model"] == spec.key]
    if saved:
        last = saved[0]
        for column, metric in zip(st.columns(4), distill_view.speculative_metrics(last)):
            column.metric(**metric)
        show_table(speculative_rows(last), {"alone s": "%.2f", "with draft s": "%.2f", "speed-up": "%.2fx"})
        st.caption(distill_view.speculative_caption(last))
