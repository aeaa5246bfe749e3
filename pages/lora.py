"""Fine-tune: LoRA, QLoRA or full fine-tuning on a task, and what each costs against the others."""

import plotly.graph_objects as go
import streamlit as st

from core import models
from core.experiments import finetune_run
from core.launch import uploads
from core.launch.kinds import LoraArgs
from core.measure import benchmark
from core.techniques import lora
from ui.estimates import estimated
from ui.frame import choice, store
from ui.panel import job_panel, submit_job
from ui.roles import show_error
from ui.uploads import blocked_by, checked_upload

st.title("Fine-tune with LoRA")
st.write("Teach the model a narrow task by training small low-rank adapters (LoRA) instead of every weight. "
         "Compare with QLoRA (adapters on a 4-bit base) and with full fine-tuning: parameters trained, memory, "
         "time, dollars, disk, and how much the task improves on examples the model never trained on.")
picked = choice()
device = benchmark.pick_device("auto")

c1, c2 = st.columns(2)
source = c1.radio("Task", ["support-routing", "your own JSONL"], horizontal=True,
                  help="support-routing: send a shop's customer message to one of five teams, answered with the team's name.")
upload = c1.file_uploader("Your {prompt, completion} JSONL", type=["jsonl"]) if source == "your own JSONL" else None
mine = checked_upload(upload, "lora_data", uploads.lora_data, c1)  # checked when chosen, not when Train is pressed
method = c2.radio("Method", lora.METHODS, horizontal=True, format_func={"lora": "LoRA", "qlora": "QLoRA", "full": "Full fine-tuning"}.get)
if method == "qlora" and (reason := lora.qlora_problem(device)):
    st.warning(f"QLoRA is not available here: {reason}")

with st.expander("Training settings", expanded=False):
    d = lora.FinetuneSettings()
    a, b, c = st.columns(3)
    rank = a.number_input("Rank r", 1, 256, d.rank, disabled=method == "full")
    alpha = b.number_input("Alpha", 1, 512, d.alpha, disabled=method == "full")
    dropout = c.number_input("Dropout", 0.0, 0.9, d.dropout, step=0.05, disabled=method == "full")
    steps = a.number_input("Steps", 1, 2000, d.steps)
    batch = b.number_input("Batch size", 1, 64, d.batch_size)
    lr = c.number_input("Learning rate (0 = method default)", 0.0, 1.0, 0.0, format="%.5f")
    targets = st.multiselect("Target modules", lora.ALL_LINEAR, default=list(d.target_modules), disabled=method == "full")


def live_loss(live: dict) -> None:
    log = lora.TrainLog(**live)
    if log.losses:
        fig = go.Figure(go.Scatter(y=log.losses, mode="lines", name="training loss"))
        fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Training loss (live)",
                          xaxis_title="step", yaxis_title="cross-entropy (nats/token)")
        st.plotly_chart(fig, width="stretch")


data = mine.path
args, estimate, refused = estimated(lambda: LoraArgs(picked.model, lora.FinetuneSettings(
    method=method, rank=int(rank), alpha=int(alpha), dropout=float(dropout), target_modules=tuple(targets),
    learning_rate=float(lr), steps=int(steps), batch_size=int(batch)), "support-routing",
    str(data) if data else None, picked.preset.usd_per_hour, picked.preset.key))
if st.button("Train", type="primary", disabled=mine.refused, help=blocked_by(mine)):
    try:
        if refused is not None:
            raise refused
        if source == "your own JSONL" and data is None:
            raise ValueError("Upload a JSONL file of {\"prompt\": ..., \"completion\": ...} lines first.")
        lora.load_task(None if data else "support-routing", data)  # refuse bad data before the job starts
        submit_job(args, f"{method.upper()} fine-tuning of {picked.model}", estimate)
    except (ValueError, models.ModelError) as e:
        show_error(e)

job_panel("A stopped run saves nothing half-written: its adapter is written in one step at the end.", live_loss)

results = store()
runs = [r for r in (results.all(model=models.resolve(picked.model).key) if results and picked.model else [])
        if r.family == "lora" and "finetune" in r.variant_facts]
if not runs:
    st.info("No fine-tuning runs of this model yet: choose a method and press **Train**.")
    st.stop()

st.subheader("Runs, newest first")
rows = [finetune_run.summary_row(r.variant_facts["finetune"]) for r in runs]
st.dataframe(rows, hide_index=True)
latest = runs[0].variant_facts["finetune"]
st.caption(f"Latest run: {latest['method']} on {latest['device']} ({latest['hardware']}), {latest['threads']} threads; "
           f"accuracy is exact match of the first word on {len(latest['examples'])}+ held-out messages never trained on, "
           "with a 95% bootstrap interval. Cost = training time × the sidebar's hourly price.")
st.subheader("Held-out examples, before and after (latest run)")
st.dataframe(latest["examples"], hide_index=True)
