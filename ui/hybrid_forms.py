"""Render helper: the Hybrids page's forms that queue a measurement for the worker."""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from core import models, techniques
from core.hybrids import classical, gguf_draft, model_cascade, prompt_lookup
from core.launch.job import JobArgs
from core.launch.kinds import CascadeArgs, GGUFDraftArgs, ModelCascadeArgs, PromptLookupArgs
from ui.panel import submit_job
from ui.roles import show_error

GGUF = [k for k in techniques.TECHNIQUES if k.startswith("gguf-")]  # the registry's GGUF variants, best first
SMALL_FIRSTS = ["gguf-q2_k", "gguf-q4_k_m"]  # always buildable from the model itself


def _link(page: str, words: str) -> None:
    """A link to the page that makes what is missing; a page run alone (page tests) cannot link, so it says where."""
    try:
        st.page_link(page, label=words, icon=":material/arrow_forward:")
    except StreamlitAPIException:
        st.caption(f"{words}: open it from the menu.")


def _has_student(model: str) -> bool:
    try:
        gguf_draft.newest_student(models.resolve(model).key)
        return True
    except (ValueError, models.ModelError):
        return False


def _has_lora(model: str) -> bool:
    try:
        classical.find_lora(classical.ClassicalSettings(model=model), models.resolve(model).key)
        return True
    except (ValueError, models.ModelError):
        return False


def _missing_student() -> None:
    st.caption("No distilled student of this model is saved here yet, so none is offered. Distil one on the Distill "
               "page (a short run is enough), then come back.")
    _link("pages/distill.py", "Distil a student")


def _queue(check, settings, args: JobArgs, label: str) -> None:
    """Refuse bad settings before anything is queued (nothing is written), else queue the job."""
    try:
        check(settings)
    except ValueError as e:
        show_error(e)
        return
    submit_job(args, label)


def classical_form(model: str, hardware_preset: str, usd_per_hour: float) -> None:
    a, b, c = st.columns([2, 1, 1])
    lora = _has_lora(model)
    second = a.selectbox("LLM behind the classifier", ["fp32", *(["lora"] if lora else []), *GGUF],
                         format_func=lambda k: {"fp32": "the base model, few-shot",
                                                "lora": "the LoRA-tuned model (Fine-tune page)"}.get(k, k))
    shots = int(b.number_input("Worked examples (few-shot)", 0, 20, 5))
    if c.button("Measure the cascade", help="Trains the classifier (seconds), then the LLM answers all 100 test "
                                             "messages once; every threshold's point follows from those answers."):
        settings = classical.ClassicalSettings(second=second, shots=shots, model=model,
                                               hardware_preset=hardware_preset, usd_per_hour=usd_per_hour)
        _queue(classical.check_request, settings, CascadeArgs(settings),
               f"Classifier → {second} cascade on support-routing")
    if not lora:
        st.caption("A LoRA-tuned model is offered once one is trained on support-routing for this model.")
        _link("pages/lora.py", "Fine-tune one")


def model_form(model: str, hardware_preset: str, usd_per_hour: float) -> None:
    a, b, c = st.columns([2, 1, 1])
    student = _has_student(model)
    first = a.selectbox("Small model first", [*(["student"] if student else []), *SMALL_FIRSTS],
                        format_func=lambda k: "the newest distilled student" if k == "student" else k)
    task = b.selectbox("Task", list(model_cascade.TASKS))
    if c.button("Measure the model cascade"):
        settings = model_cascade.ModelCascadeSettings(first=first, task=task, model=model, hardware=hardware_preset,
                                                      usd_per_hour=usd_per_hour)
        _queue(model_cascade.check_request, settings, ModelCascadeArgs(settings),
               f"{first} → fp32 cascade on {task}")
    if not student:
        _missing_student()


def lookup_form(model: str) -> None:
    a, b, c = st.columns([2, 1, 1])
    technique = a.selectbox("GGUF file for llama.cpp", GGUF, index=GGUF.index("gguf-q8_0"))
    draft = int(b.number_input("Tokens copied per pass", 1, 64, 3))
    if c.button("Compare prompt lookup"):
        settings = prompt_lookup.LookupSettings(technique=technique, draft_tokens=draft, new_tokens=48)
        _queue(prompt_lookup.check_request, settings, PromptLookupArgs(model, settings),
               f"Prompt lookup ({technique}, {draft} tokens)")


def draft_form(model: str) -> None:
    if not _has_student(model):
        _missing_student()
        return
    a, b, c = st.columns([2, 1, 1])
    target = a.selectbox("GGUF target on llama-server", GGUF, index=GGUF.index("gguf-q8_0"), key="draft_target")
    most = int(b.number_input("Most tokens drafted per pass", 1, 32, 3))
    if c.button("Compare the GGUF draft", help="The newest distilled student, exported to GGUF, drafts for the "
                                                "target; llama-server runs with and without it on the same prompts."):
        settings = gguf_draft.DraftSettings(target=target, draft_max_tokens=(most,))
        _queue(lambda s: gguf_draft.check_request(s, model), settings, GGUFDraftArgs(model, settings),
               f"GGUF draft for {target} ({most} tokens)")


def measure_forms(model: str, hardware_preset: str, usd_per_hour: float, expanded: bool = False) -> None:
    """Every hybrid's button, offering only stages that exist here; `expanded` while nothing is measured yet."""
    with st.expander("Measure a hybrid", expanded=expanded):
        st.markdown("**A classifier in front of the LLM** (support-routing, 100 test messages)")
        classical_form(model, hardware_preset, usd_per_hour)
        st.markdown("**A small model first, the full model when unsure**")
        model_form(model, hardware_preset, usd_per_hour)
        st.markdown("**Prompt lookup** (both runtimes, the bundled input-grounded and open-ended prompts)")
        lookup_form(model)
        st.markdown("**A draft model on llama.cpp** (the distilled student drafting for a GGUF file, same prompts)")
        draft_form(model)
