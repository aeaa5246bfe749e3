"""Render helper: how the last job ended, on the job panel. A finished job says how long it took
against its estimate and links to the page that shows what it made; a failed or stopped one says why."""

from __future__ import annotations

import time

import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.launch import jobs
from core.launch.jobqueue import QueuedJob
from ui.roles import session_id, visible

ENDED_SHOWN_S = 600  # anyone's ended job stays on the panel this long; this session's own stays until its next
RESULTS_AT = {  # job kind (core/launch/worker.py JOB_KINDS) -> the page that shows what it made, and the link's words
    "sweep": ("pages/tradeoff_map.py", "See it on the Trade-off Map"),
    "moe": ("pages/moe.py", "See it on Mixture of experts"),
    "lora": ("pages/lora.py", "See it on Fine-tune (LoRA)"),
    "distill": ("pages/distill.py", "See it on Distill"),
    "speculate": ("pages/distill.py", "See it on Distill"),
    "serve-bench": ("pages/serve.py", "See it on Serve"),
    "serve-context": ("pages/serve.py", "See it on Serve"),
    "serve-memory": ("pages/serve.py", "See it on Serve"),
    "budget": ("pages/quantize.py", "See it on Quantize (Fit my budget)"),
    "task": ("pages/task.py", "See it on Your task"),
    **{k: ("pages/hybrids.py", "See it on Hybrids") for k in ("cascade", "model-cascade", "prompt-lookup", "gguf-draft")},
}
_SWEPT = "Each variant is saved as soon as it is measured; you can leave this page."
_HYBRID = ("A cascade is stored when both stages have answered every item; prompt lookup and a draft store each "
           "runtime's result as it ends.")
_SERVED = "Each point is saved as soon as it is measured; Stop ends the server and keeps them."
KEPT = {  # job kind -> what a stopped job of that kind keeps: the panel words a job by its own kind, on any page
    "sweep": _SWEPT,
    "budget": "Each searched file is stored as soon as it is measured.",
    "task": "A task run is stored when every variant has answered every prompt; a stopped run keeps nothing.",
    "moe": "The conversion is saved once made; each variant is saved as soon as it is measured.",
    "lora": "A stopped run saves nothing half-written: its adapter is written in one step at the end.",
    "distill": "Checkpoints are written whole: a stopped run keeps its last complete checkpoint, or nothing.",
    "speculate": "A stopped comparison stores nothing.",
    "serve-bench": _SERVED, "serve-context": _SERVED,
    "serve-memory": "A stopped memory run saves nothing: the calibration needs every point of the grid.",
    **{k: _HYBRID for k in ("cascade", "model-cascade", "prompt-lookup", "gguf-draft")},
}


def page_of(kind: str) -> str:
    """The page a job kind belongs to, by its title ("Distill"), or "" for a kind no page starts."""
    words = RESULTS_AT.get(kind, ("", ""))[1]
    return words.removeprefix("See it on ").split(" (Fit")[0]


def kept_words(kind: str, page_note: str, page_kinds: tuple[str, ...] | None) -> str:
    """What a job of `kind` keeps, in its own kind's words; a job another page started says which page."""
    note = KEPT.get(kind, page_note)
    if page_kinds is None or kind in page_kinds or not page_of(kind):
        return note
    return f"This job was started on the {page_of(kind)} page. {note}"


def ended_to_show(recent: tuple[QueuedJob, ...]) -> QueuedJob | None:
    """This session's last ended job, else the machine's last one if it ended within ENDED_SHOWN_S. A job cancelled
    before it started is not one: it just left the queue (the Cancel button said so)."""
    recent = tuple(j for j in recent if j.started_s is not None)
    mine = next((j for j in recent if j.owner_session == session_id()), None)
    last = recent[0] if recent else None
    return mine or (last if last and time.time() - (last.ended_s or 0) <= ENDED_SHOWN_S else None)


def _results_link(kind: str) -> None:
    if kind not in RESULTS_AT:
        return
    page, words = RESULTS_AT[kind]
    try:
        st.page_link(page, label=words, icon=":material/arrow_forward:")
    except StreamlitAPIException:  # a page run on its own (no app.py navigation) cannot link: say where instead
        st.caption(f"{words.replace('See it on', 'Open')} from the menu to see it.")


def draw_ended(job: QueuedJob, kept_note: str, page_kinds: tuple[str, ...] | None = None) -> None:
    kept_note = kept_words(job.kind, kept_note, page_kinds)
    who = f"{job.label} ({job.owner})"
    if job.state == "done":
        st.success(jobs.done_words(who, job.elapsed_s, job.estimated_s))
        _results_link(job.kind)
    elif job.state == "failed":
        st.error(f"{who} stopped: {visible(job.error)}")
    elif job.state in ("cancelled", "interrupted"):
        st.warning(f"{who}: {visible(job.error).rstrip('.')}. {kept_note}")
