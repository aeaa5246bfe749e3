"""Overview and guided tour: the four techniques in plain words, a glossary, and a demo path to a decision."""

import streamlit as st

from core import models, runtimes, techniques
from core.measure import benchmark, fit
from core.paths import ASSETS
from core.words import plural
from core.views import recommend
from ui.frame import choice, store
from ui.lesson import lesson_path

TOUR = ASSETS / "tour"
TECHNIQUE_TOUR = (
    ("Quantization", "quantization.svg", "Store each weight in fewer bits (16, 8 or 4 instead of 32). The model "
     "gets 2-8x smaller and may read memory faster; it answers a little differently because every number is rounded."),
    ("Distillation", "distillation.svg", "Train a smaller student model to copy a big teacher's predictions. The "
     "student is cheaper to run; how much it keeps of the teacher's quality depends on training. The Distill page "
     "cuts a student from the model's own layers, trains it here, and tries it as a speculative-decoding draft."),
    ("LoRA", "lora.svg", "Teach the model a new task by training two thin matrices beside each frozen weight, a "
     "few percent of the parameters. Cheap to train and to store; merged into the weights, it costs nothing extra "
     "per token. The Fine-tune page measures all of this on this machine."),
    ("Mixture of experts", "moe.svg", "Split each feed-forward layer into experts and let a router run only a few per "
     "token. The model holds the same bytes but reads and computes less per token."),
)
GLOSSARY = {
    "Token": "A piece of text, often a word or part of one. Models read and write text one token at a time.",
    "Time to first token (TTFT)": "How long until the first word of the answer appears: the model reads the whole prompt first.",
    "Decode tokens/s": "How many tokens per second the model writes once it has started (after the time to first token).",
    "Bytes held": "Memory the model's numbers occupy. Fewer bits per weight means fewer bytes.",
    "KV cache": "Memory the model keeps about the text so far, so it need not reread it; it grows with the context length.",
    "Reference": "The unmodified model in 32-bit floats (FP32): every variant is compared against it.",
    "KL divergence": "How far a variant's next-token probabilities move from the reference's, in nats: 0 means identical.",
    "Top-1 agreement": "Share of positions where a variant's most likely next token is the reference's.",
    "Perplexity": "How surprised the model is by real text: lower is better.",
    "Speculative decoding": "A small draft model guesses a few tokens; the big model checks them in one pass and keeps "
                            "those it agrees with. Same text, faster only when the draft is cheap and usually right.",
    "Pareto frontier": "The variants no other variant beats on both quality and cost at once: the only ones worth choosing from.",
    "Memory-bandwidth limit": "Writing one token reads every weight once, so memory speed / model size caps tokens/s.",
    "Runtime": "The software that runs a model: eager PyTorch (transformers), compiled PyTorch, or llama.cpp on a GGUF file.",
    "GGUF": "The file format llama.cpp reads: weights already quantized in blocks (Q8_0, Q4_K_M, ...), plus the tokenizer.",
    "$ per 1M tokens": "What generating a million tokens costs at the chosen hardware's hourly price.",
}

st.title("LLM Trade-off Lab")
st.write(
    "Make a language model smaller and faster, then see, measured live on this machine, what each technique "
    "costs in quality and buys in speed, memory and money. Every number on these pages is measured here, "
    "with its spread, the settings that produced it and the hardware it ran on."
)
picked = choice()
spec = models.BUNDLED.get(picked.model)
if spec:
    st.info(f"**Model: {spec.label}.** {spec.weights_note}")
results = store()
here = benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
records = results.latest_per_technique(spec.key, here) if results and spec else []

st.subheader("Demo: quantize, compare, decide")
c1, c2, c3 = st.columns(3)
c1.markdown("**1. Quantize.** Measure 4-bit, 8-bit and 16-bit variants against the full-precision model "
            "(the page shows progress and the time left while it measures).")
c1.page_link("pages/quantize.py", label="Go to Quantize", icon=":material/compress:")
c2.markdown("**2. Compare** quality against speed and dollars on the map, or watch variants answer side by side.")
c2.page_link("pages/tradeoff_map.py", label="Go to the Trade-off Map", icon=":material/scatter_plot:")
c2.page_link("pages/arena.py", label="Go to the Arena", icon=":material/sports_score:")
c3.markdown("**3. Decide** under your budget, see the monthly bill and which devices it fits, then export a report.")
c3.page_link("pages/decide.py", label="Go to Decide", icon=":material/task_alt:")
c3.page_link("pages/report.py", label="Go to Report", icon=":material/description:")
if records:
    reference = recommend.find_reference(records)
    fastest = max(records, key=lambda r: r.decode_tokens_per_s_median)
    c1.caption(f"Already measured here: {plural(len(records), 'variant')}, newest {max(r.created_at for r in records)}.")
    c2.caption(f"Fastest: {fastest.label}, {fastest.decode_tokens_per_s_median:.1f} tokens/s"
               + (f" against {reference.decode_tokens_per_s_median:.1f} for {reference.label}." if reference else "."))
    try:
        shape = fit.read_kv_shape(models.checkpoint_dir(spec.key))
        example = recommend.Constraints(min_top1_agreement=0.95, device="phone-4gb", objective="cheapest")
        answer = recommend.recommend(records, example, shape, history=results.all(model=spec.key, hardware=here))
        c3.caption(f"Example: “{recommend.describe_constraints(example)}” → " + answer.summary())
        if answer.warning:
            c3.warning(answer.warning)
    except (OSError, ValueError) as e:
        c3.caption(f"No example recommendation yet: {e}")
else:
    st.caption("Nothing is measured on this machine yet: start with step 1, then come back here.")

if spec:
    st.subheader("Lesson path (50 minutes)")
    lesson_path(picked, spec, here)

st.subheader("The four techniques in plain words")
for col, (name, picture, words) in zip(st.columns(4), TECHNIQUE_TOUR):
    col.image(str(TOUR / picture), width="stretch")
    col.markdown(f"**{name}.** {words}")
with st.expander("Glossary"):
    st.markdown("\n".join(f"- **{term}**: {meaning}" for term, meaning in GLOSSARY.items()))

st.subheader("How quality is measured")
st.markdown(
    "- **KL divergence** and **top-1 agreement**: how far each variant's next-token predictions move from the "
    "full-precision reference on the same text. For a small model this shows damage long before task accuracy does.\n"
    "- **Perplexity** on a few thousand tokens of prose written for this project: lower is better.\n"
    "- **Multiple-choice accuracy** on questions written for this project, scored by log-likelihood, "
    "with a 95% bootstrap confidence interval."
)

st.subheader("Where a variant runs: the runtimes")
st.write("The same weights run at very different speeds depending on the software that runs them. Each "
         "measurement says which runtime produced it, and the map draws each runtime with its own symbol.")
for r in runtimes.all_runtimes().values():
    st.markdown(f"**{r.label}**: {r.explanation}")

st.subheader("The variants")
for t in techniques.TECHNIQUES.values():
    st.markdown(f"**{t.label}**: {t.explanation}")
