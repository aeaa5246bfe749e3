"""Distill: cut a smaller student from the model's own layers, train it to mimic the model, and use it as a draft."""

import streamlit as st

from core import models
from core.experiments import distill_run
from core.launch.jobs import on_torch_thread
from core.launch.kinds import DistillArgs
from core.launch.uploads import distill_corpus, fmt_seconds
from core.paths import shared_wikitext
from core.techniques import distillation
from core.views import distill as distill_view
from core.views.tables import DISTILL_FORMATS, distill_rows
from core.views.distill import PUBLIC_AND_ANSWERS
from ui.distill_parts import ANSWERS, OWN, OWN_AND_ANSWERS, depth_sweep_section, healing_section, speculative_section
from ui.estimates import estimated
from ui.frame import choice, store
from ui.panel import job_panel, submit_job
from ui.roles import show_error, visible
from ui.tables import show_table
from ui.uploads import blocked_by, checked_upload

st.title("Distill a smaller student")
st.write("Knowledge distillation trains a small **student** to give the same next-token probabilities as a large "
         "**teacher**. Here the student starts as the teacher with some of its layers removed; which layers go "
         "decides how much is lost, and training the student to match the teacher's outputs (*healing*) wins back "
         "part of it within the minutes you give it. The student is then measured like every other variant, and "
         "can serve as the teacher's **draft** in speculative decoding.")
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

results = store()
records = results.all(model=spec.key) if results else []
depth_sweep_section(picked.model, spec.label, teacher_layers, records, picked)

st.subheader("2 · Shape the student")
c1, c2 = st.columns([2, 1])
if teacher_layers == 2:
    layers = 1
    c1.write("The teacher has 2 decoder layers: the student keeps 1.")
else:
    layers = c1.slider("Decoder layers the student keeps", 1, teacher_layers - 1,
                       min(d.student_layers, teacher_layers - 1), help=f"The teacher, {spec.label}, has {teacher_layers}.")
how = c2.radio("Which layers", distillation.LAYER_CHOICES, horizontal=True,
               index=distillation.LAYER_CHOICES.index(d.layer_choice), key="layer_choice",
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

st.subheader("3 · Heal it: train it to match the teacher")
public = shared_wikitext()
source = st.radio("Training text", [ANSWERS, OWN, OWN_AND_ANSWERS, *([PUBLIC_AND_ANSWERS] if public else [])],
                  horizontal=True, key="training_text",
                  help="The teacher answers 360 prompts written for this project (once; cached). A fixed tenth of "
                       "each text is held out and never trained on. A long heal overfits the answers alone: "
                       "add a few hundred thousand words of your own prose (any text not in the evaluation).")
upload = st.file_uploader("UTF-8 text (paragraphs split by blank lines) or JSONL of {\"text\": ...} lines",
                          type=["txt", "jsonl"]) if source in (OWN, OWN_AND_ANSWERS) else None
mine = checked_upload(upload, "distill_corpus", distill_corpus(checkpoint), depends_on=str(checkpoint))  # on choosing
with st.expander("Training settings"):
    a, b, c = st.columns(3)
    budget = a.number_input("Budget, minutes (0 = a number of steps)", 0.0, 600.0, d.budget_minutes, step=5.0,
                            help="Training stops when the budget is spent; checkpoints fall at equal shares of it.")
    steps = b.number_input("Steps (without a budget)", 1, 5000, d.steps, disabled=budget > 0)
    last = c.number_input("Train only the last N layers (0 = all)", 0, layers, d.train_last_layers,
                          help="Cheaper steps: the backward pass stops at the first trained layer.")
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


corpus = public if source == PUBLIC_AND_ANSWERS else mine.path
args, estimate, refused = estimated(lambda: DistillArgs(picked.model, distillation.DistillSettings(
    student_layers=layers, layer_choice=how, steps=int(steps), batch_size=int(batch), seq_len_tokens=int(seq_len),
    learning_rate=float(lr), temperature=float(temperature), kd_weight=float(kd_weight),
    budget_minutes=float(budget), train_last_layers=int(last),
    answers_with_text=source in (OWN_AND_ANSWERS, PUBLIC_AND_ANSWERS)),
    str(corpus) if corpus else None, picked.preset.usd_per_hour, picked.preset.key))
if st.button("Distill", type="primary", disabled=mine.refused, help=blocked_by(mine), key="distill"):
    try:
        if refused is not None:
            raise refused
        if source != ANSWERS and corpus is None:
            raise ValueError("Upload a text or JSONL file first, or train on the teacher's answers.")
        distill_run.prepare_run(picked.model, args.settings, corpus)  # refuse bad input before the job starts
        submit_job(args, f"Distilling a {layers}-layer student of {spec.label}", estimate)
    except (ValueError, models.ModelError) as e:
        show_error(e)

job_panel("Checkpoints are written whole: a stopped run keeps its last complete checkpoint, or nothing.", live_curve,
          kinds=("distill", "speculate"))

st.subheader("4 · Teacher, pruned student, distilled student")
run = distill_view.latest_run(records)
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
healing_section(records)

speculative_section(spec.key, spec.label)
