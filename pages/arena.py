"""Arena: two to four variants answer the same prompt side by side, streamed live; optionally blind, with votes."""

import json
import random
import uuid
from pathlib import Path

import streamlit as st
import torch

from core import models, runtimes
from core.experiments import arena
from core.launch import worker
from core.launch.arena_gate import arena_gate, other_lease_left_s
from core.launch.jobs import iterate_on_torch_thread, on_torch_thread
from core.measure import benchmark
from core.paths import ASSETS
from core.views.tables import sweep_comparison_note, sweep_comparison_rows, tally_rows
from ui.frame import choice, store
from ui.roles import is_presenter, queue, session_id, visible
from ui.tables import show_table

PROMPTS = {p["id"]: p for p in json.loads((ASSETS / "prompts.json").read_text())}
OWN = "own"


@st.cache_resource(show_spinner="Loading the variant (once per server)...")
def load_variant(checkpoint: str, key: str, device: str, student_dir: str = "") -> runtimes.Runner:
    """Built once per (checkpoint, technique, device), shared by every session, and only ever read."""
    model = on_torch_thread(arena.build_variant, checkpoint, key, student_dir, device)
    on_torch_thread(arena.warm_up, model, torch.arange(1, 9).unsqueeze(0).to(device), device)
    return model


@st.cache_resource
def load_tokenizer(checkpoint: str):
    return models.load_tokenizer(Path(checkpoint))


def draw(boxes, name: str, log: arena.RaceLog, key: str, reference: str, tokenizer, show_stats: bool) -> None:
    head, text = boxes
    head.markdown(f"#### {name}\n\n" + (arena.stats_line(log.stats(key)) if show_stats else "*timings hidden until you vote*"))
    tokens = log.tokens.get(key, [])
    flags = arena.differs(tokens, log.tokens.get(reference, [])) if key != reference else [False] * len(tokens)
    text.html(f"<div style='line-height:1.5'>{arena.tokens_html(arena.token_pieces(tokenizer, tokens), flags)}</div>")


st.title("Arena")
st.write("Pick two to four variants and one prompt, and watch them answer side by side, one token at a time, "
         "with time to first token (TTFT) and decode speed measured live. Highlighted tokens differ from the "
         "reference's answer at the same position. Blind mode hides which answer is which, so you can vote honestly.")
picked = choice()
device = benchmark.pick_device("auto")
try:
    spec = models.resolve(picked.model)
except models.ModelError as e:
    st.info(visible(str(e)))
    st.stop()
results = store()
swept = {r.technique: r for r in (results.latest_per_technique(spec.key, benchmark.hardware_fingerprint(device))
                                  if results else [])}
variants = arena.variants(spec.key, device)  # read once per run: each label would otherwise rescan the folder
label, options = variants.label, variants.options
keys = st.multiselect("Variants (2 to 4)", options, default=[k for k in arena.DEFAULT_KEYS if k in options],
                      max_selections=arena.MAX_VARIANTS, format_func=lambda k: label(k)
                      + (" · in the sweep" if k in swept else ""))
c1, c2, c3 = st.columns([3, 1, 1])
prompt_id = c1.selectbox("Prompt", [*PROMPTS, OWN], format_func=lambda i: PROMPTS[i]["title"] if i in PROMPTS else "Type my own")
prompt = c1.text_area("Your prompt", "What is a language model?", max_chars=arena.MAX_PROMPT_CHARS) \
    if prompt_id == OWN else PROMPTS[prompt_id]["prompt"]
new_tokens = int(c2.number_input("New tokens", 8, 256, 32, step=8, help="The sweep times 32: keep 32 to compare."))
schedule = c3.radio("Run order", arena.SCHEDULES, help="One after another disturbs the timings least on a small CPU. "
                    "Round-robin: one token each in turn, so the answers grow together; each variant's timings count "
                    "only its own steps, but drawing competes with them for the cores.")
blind = c3.toggle("Blind mode", help="Answers are labelled A, B, ... in a random order; vote, then see which is which.")
if len(keys) < arena.MIN_VARIANTS:
    st.info("Pick at least two variants.")
    st.stop()
# Live runs never overlap a timed job (core/launch/arena_gate.py): while one runs it holds a lease that keeps the
# worker from starting the next job. Two Arena runs never overlap either.
LEASE = f"arena:{session_id()}"
gate = arena_gate(queue().snapshot(), is_presenter(), other_lease_left_s(queue(), LEASE), worker.is_running())
busy = gate.locked
if busy:
    st.warning(gate.reason)
queue().release(LEASE)  # this session is not generating now (its runs are sequential): drop a lease left by an error

if st.button("Generate", type="primary", disabled=busy or not prompt.strip()):
    if problem := arena.prompt_problem(prompt):
        st.error(problem)
        st.stop()
    if not queue().hold(LEASE):
        st.warning("Another Arena run or a job started a moment ago; try again when it ends.")
        st.stop()
    checkpoint = str(models.prepare(spec))
    tokenizer = load_tokenizer(checkpoint)
    input_ids = models.chat_prompt_ids(tokenizer, prompt).to(device)
    # Loading, warm-up and generation all run on the lab's one torch thread, as sweeps do (core/launch/jobs.py).
    loaded = {k: load_variant(checkpoint, k, device, variants.student_dir(k)) for k in keys}
    reference, names = arena.reference_of(keys), arena.answer_names(keys, blind, label, random.randrange(2**31))
    log = arena.RaceLog(tuple(keys))
    boxes = {k: (col.empty(), col.empty()) for k, col in zip(keys, st.columns(len(keys)))}
    for k in keys:  # the browser lays out the columns now, while the untimed warm-ups run, not during timing
        boxes[k][0].markdown(f"#### {names[k]}\n\n*warming up…*")
    for model in loaded.values():  # untimed, on this very prompt, as the sweep's warm-up run
        on_torch_thread(arena.warm_up, model, input_ids, device)
    streams = {k: iterate_on_torch_thread(loaded[k].stream(input_ids, new_tokens)) for k in keys}
    for step in arena.run_race(streams, schedule, log, new_tokens, renew=lambda: queue().hold(LEASE)):
        draw(boxes[step.key], names[step.key], log, step.key, reference, tokenizer, not blind)
    st.session_state["arena"] = dict(model=spec.key, prompt=prompt, keys=list(keys), names=names, blind=blind,
                                     reference=reference, log=log, checkpoint=checkpoint, voted=False,
                                     prompt_tokens=int(input_ids.shape[-1]), schedule=schedule)
    queue().release(LEASE)
    st.rerun()

last = st.session_state.get("arena")
if not last or last["model"] != spec.key:
    st.stop()
tokenizer = load_tokenizer(last["checkpoint"])
log: arena.RaceLog = last["log"]
hidden = last["blind"] and not last["voted"]
st.caption(f"Prompt ({last['prompt_tokens']} tokens): “{last['prompt']}” · {last['schedule']} · reference for "
           f"highlights: {'hidden' if hidden else label(last['reference'])}")
for key, col in zip(last["keys"], st.columns(len(last["keys"]))):
    name = last["names"][key] + ("" if not last["blind"] or hidden else f" = {label(key)}")
    draw((col.container(), col.container()), name, log, key, last["reference"], tokenizer, not hidden)

if hidden:
    st.subheader("Which answer is better?")
    letters = {name: key for key, name in last["names"].items()}
    verdict = st.radio("Your vote", [*sorted(letters), "About the same"], horizontal=True)
    if st.button("Vote", disabled=results is None, help=None if results else "The results store cannot be opened."):
        session = st.session_state.setdefault("arena_session", uuid.uuid4().hex)
        arena.store_votes(results, last["model"], last["prompt"], last["keys"], letters.get(verdict), session)
        last["voted"] = True
        st.rerun()
    st.stop()

names = {k: label(k) for k in last["keys"]}
st.plotly_chart(arena.timeline_figure({names[k]: log.stats(k).step_ms for k in last["keys"]}), width="stretch")
compared = arena.compare_all(last["keys"], log, last["prompt_tokens"], swept)
if compared:
    st.subheader("Live speed against the sweep's median")
    show_table(sweep_comparison_rows(compared, names), {"live / sweep": "%.2f", "live decode tok/s": "%.1f",
                                                        "sweep median tok/s": "%.1f"})
    st.caption(sweep_comparison_note(compared))
if results and (tally := results.tally(model=last["model"])):
    st.subheader("Blind votes so far")
    show_table(tally_rows(tally, label), {"win rate": "percent"})
