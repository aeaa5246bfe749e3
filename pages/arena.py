"""Arena: two to four variants answer the same prompt side by side, streamed live; optionally blind, with votes."""

import json
import random
import time
import uuid
from pathlib import Path

import streamlit as st
import torch

from core import models, runtimes, techniques
from core.experiments import arena
from core.experiments.sweep import chat_prompt_ids
from core.launch.jobs import iterate_on_torch_thread, on_torch_thread
from core.measure import benchmark
from core.models import saved
from core.paths import ASSETS
from core.techniques import distillation
from pages.common import choice, is_presenter, queue, session_id, store, visible

PROMPTS = {p["id"]: p for p in json.loads((ASSETS / "prompts.json").read_text())}
OWN = "own"
REDRAW_S = 0.5  # redraw a column at most this often: the browser and server draw on the same cores the models use
DEFAULT_KEYS = ("fp32", "bf16", "dyn-int8")


def saved_students(model_key: str) -> dict[str, saved.SavedStudent]:
    """Finished students distilled from this model, by the technique key their measurements are stored under."""
    return {distillation.student_key(s.facts["student_layers"], s.facts["run"]): s
            for s in saved.saved_students() if s.facts.get("teacher") == model_key and s.facts.get("complete")}


def variant_labels(students: dict[str, saved.SavedStudent]) -> dict[str, str]:
    """Every variant the arena can build, by key: the registry's, then this model's distilled students."""
    return {k: t.label for k, t in techniques.TECHNIQUES.items()} | {
        k: distillation.student_label(s.facts["student_layers"], s.facts["run"]) for k, s in students.items()}


def build(checkpoint: str, key: str, student_dir: str, device: str) -> runtimes.Runner:
    if key in techniques.TECHNIQUES:
        technique = techniques.get(key)
        return runtimes.load(technique, technique.runtime, Path(checkpoint), device, torch.get_num_threads())
    return runtimes.as_runner(models.load_model(Path(student_dir), torch.float32, device), device)


@st.cache_resource(show_spinner="Loading the variant (once per server)...")
def load_variant(checkpoint: str, key: str, device: str, student_dir: str = "") -> runtimes.Runner:
    """Built once per (checkpoint, technique, device), shared by every session, and only ever read."""
    model = on_torch_thread(build, checkpoint, key, student_dir, device)
    on_torch_thread(arena.warm_up, model, torch.arange(1, 9).unsqueeze(0).to(device), device)
    return model


@st.cache_resource
def load_tokenizer(checkpoint: str):
    return models.load_tokenizer(Path(checkpoint))


def stats_line(stats: arena.LiveStats) -> str:
    tps = "…" if stats.decode_tokens_per_s != stats.decode_tokens_per_s else f"{stats.decode_tokens_per_s:.1f}"
    return f"TTFT **{stats.ttft_ms:.0f} ms** · decode **{tps} tok/s** · {stats.tokens} tokens"


def draw(boxes, name: str, log: arena.RaceLog, key: str, reference: str, tokenizer, show_stats: bool) -> None:
    head, text = boxes
    head.markdown(f"#### {name}\n\n" + (stats_line(log.stats(key)) if show_stats else "*timings hidden until you vote*"))
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
students = saved_students(spec.key)  # read once per run: the labels below would otherwise rescan the folder
labels_of = variant_labels(students)


def label(key: str) -> str:
    return labels_of.get(key, key)


options = [k for k, t in techniques.TECHNIQUES.items() if not t.why_not(device)] + list(students)
keys = st.multiselect("Variants (2 to 4)", options, default=[k for k in DEFAULT_KEYS if k in options],
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
# Live runs happen here, in the web server, so they must never overlap a timed job: an Arena run starts only
# when the worker is idle (for a viewer: also nothing waiting), and while it runs it holds a lease that keeps
# the worker from starting the next job. Two Arena runs never overlap either.
snap = queue().snapshot()
busy = snap.running is not None or (bool(snap.waiting) and not is_presenter())
if busy:
    st.warning("A measurement job is running or waiting on this machine: generating now would spoil its timings. "
               "The Arena opens again when the queue is empty.")
LEASE = f"arena:{session_id()}"
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
    input_ids = chat_prompt_ids(tokenizer, prompt).to(device)
    # Loading, warm-up and generation all run on the lab's one torch thread, as sweeps do (core/launch/jobs.py).
    loaded = {k: load_variant(checkpoint, k, device, str(students[k].path) if k in students else "") for k in keys}
    reference = techniques.REFERENCE if techniques.REFERENCE in keys else keys[0]
    labels = (arena.blind_labels(keys, random.randrange(2**31)) if blind else {k: label(k) for k in keys})
    names = {k: f"Answer {labels[k]}" if blind else labels[k] for k in keys}
    log = arena.RaceLog(tuple(keys))
    boxes = {k: (col.empty(), col.empty()) for k, col in zip(keys, st.columns(len(keys)))}
    for k in keys:  # the browser lays out the columns now, while the untimed warm-ups run, not during timing
        boxes[k][0].markdown(f"#### {names[k]}\n\n*warming up…*")
    for model in loaded.values():  # untimed, on this very prompt, as the sweep's warm-up run
        on_torch_thread(arena.warm_up, model, input_ids, device)
    drawn, renewed = dict.fromkeys(keys, 0.0), time.perf_counter()
    streams = {k: iterate_on_torch_thread(loaded[k].stream(input_ids, new_tokens)) for k in keys}
    for step in arena.race(streams, schedule):
        log.add(step)
        now = time.perf_counter()
        if now - renewed > 20:  # a long run keeps its hold on the machine (it lapses by itself if this server dies)
            queue().hold(LEASE)
            renewed = now
        if step.index == 0:  # a draw right after prefill slowed the next decode step 2x: start the clock instead
            drawn[step.key] = now
        if now - drawn[step.key] > REDRAW_S or step.index == new_tokens - 1:
            draw(boxes[step.key], names[step.key], log, step.key, reference, tokenizer, not blind)
            drawn[step.key] = now
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
        for pair, winner in arena.vote_pairs(last["keys"], letters.get(verdict)):
            results.add_vote(last["model"], last["prompt"], pair, winner, session)
        last["voted"] = True
        st.rerun()
    st.stop()

names = {k: label(k) for k in last["keys"]}
st.plotly_chart(arena.timeline_figure({names[k]: log.stats(k).step_ms for k in last["keys"]}), width="stretch")
compared = [arena.compare_with_sweep(k, log.stats(k), last["prompt_tokens"], swept[k]) for k in last["keys"] if k in swept]
if compared:
    st.subheader("Live speed against the sweep's median")
    st.dataframe([{"variant": names[c.technique], "live decode tok/s": c.live_tokens_per_s,
                   "sweep median tok/s": c.sweep_tokens_per_s, "live / sweep": c.ratio,
                   "same prompt length and token count": c.like_for_like} for c in compared],
                 hide_index=True, column_config={"live / sweep": st.column_config.NumberColumn(format="%.2f"),
                                                 "live decode tok/s": st.column_config.NumberColumn(format="%.1f"),
                                                 "sweep median tok/s": st.column_config.NumberColumn(format="%.1f")})
    st.caption("Live: one greedy run of this prompt (after one warm-up at load). Sweep: median of its timed runs "
               f"on its own prompt ({compared[0].sweep_prompt_tokens} tokens, {compared[0].sweep_new_tokens} new). "
               "The numbers agree closely only for the same prompt length and token count.")
if results and (tally := results.tally(model=last["model"])):
    st.subheader("Blind votes so far")
    st.dataframe([{"variant": label(t.technique),
                   "wins": t.wins, "losses": t.losses, "ties": t.ties, "win rate": t.win_rate} for t in tally],
                 hide_index=True)
