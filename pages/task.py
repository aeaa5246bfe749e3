"""Your task: your own prompts with the answers they need, every variant's generated answers checked."""

import streamlit as st

from core.measure import benchmark
from ui import task_parts
from ui.frame import choice, resolve_or_stop
from ui.panel import job_panel

st.title("Your task")
st.write("Does a cheaper variant still do *your* job? Write your prompts with what a right answer must contain (or "
         "use the bundled example), and every variant you pick answers each prompt, greedily, with the model's chat "
         "template and the same token limit. Each answer is checked; you get the pass rate with its 95% interval, "
         "the answers that went from right to wrong against the reference, whether the difference is beyond "
         "chance, and what 1,000 answers cost.")
picked = choice()
spec = resolve_or_stop(picked.model)
device = benchmark.pick_device("auto")
here = benchmark.hardware_fingerprint(device)

task_file, task_name, blocked = task_parts.task_file_input()
task_parts.run_form(picked.model, device, task_file, task_name, blocked)
job_panel("A task run is stored when every variant has answered every prompt.", kinds=("task",))

st.subheader("Results")
runs = task_parts.saved_runs(spec.key, here)
result = task_parts.pick_run(runs)
if result is None:
    st.info("No task run of this model on this machine yet: press **Run my task** above.")
    st.caption("From a terminal instead: `python -m core task --task my_task.jsonl --techniques "
               "fp32,gguf-q8_0,gguf-q4_k_m,gguf-q2_k`.")
    st.stop()
task_parts.show_run(result, picked.preset.usd_per_hour)
st.caption("Pick **My task: pass rate** as the quality measure on the Trade-off Map, and set Decide's floor on it "
           "(\"at least X% of my task passes\").")
