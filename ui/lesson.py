"""Render helper: the Overview's lesson path, one bordered box per step (core/launch/lesson.py): what it teaches, its
quick setting and what that gives up, its estimated time here (ui/estimates.py), a button that queues it with that
estimate, and where its result shows."""

from __future__ import annotations

import streamlit as st

from core import models
from core.experiments import speculative
from core.launch import lesson
from core.models.saved import saved_students
from ui.estimates import show_job_estimate
from ui.frame import SidebarChoice, store
from ui.panel import job_panel, submit_job


def _step(number: int, step: lesson.LessonStep, done: bool) -> None:
    with st.container(border=True, key=f"lesson_step_{step.key}"):
        status = " · :green[:material/check_circle: done]" if done else ""
        st.markdown(f"**{number}. {step.title}**{status}")
        st.write(step.teaches)
        st.caption(f"**Quick setting:** {step.quick} **What it gives up:** {step.gives_up}")
        estimate = show_job_estimate(step.args) if step.args is not None else None  # its line: time here, from what
        left, right = st.columns([1, 2])
        if step.args is not None:
            if left.button("Run this step", key=f"lesson_run_{step.key}", type="secondary" if done else "primary"):
                submit_job(step.args, step.label, estimate)
        elif not done and step.waits_for:
            left.caption(step.waits_for)
        with right:
            st.page_link(step.page, label=step.page_label, icon=":material/arrow_forward:")


def lesson_path(picked: SidebarChoice, spec: models.ModelSpec, hardware: str) -> None:
    """The path in class order for the sidebar's model, with the job panel under it."""
    results = store()
    records = results.all(model=spec.key, hardware=hardware) if results else []
    done = lesson.done_steps(records, speculative.saved_results(), spec.key, hardware)
    students = lesson.students_of(saved_students(), spec.key)
    steps = lesson.lesson_steps(spec.key, picked.preset.key, picked.preset.usd_per_hour, students)
    st.write(f"Every lever, live, in one class: run each step from here in order ({len(done & set(lesson.STEPS))} "
             f"of {len(steps)} done on this machine). Each runs a quick setting that finishes in a few minutes on a "
             "laptop, and says what it gives up against a full run; its page shows the result.")
    for number, step in enumerate(steps, 1):
        _step(number, step, step.key in done)
    job_panel("Each step keeps what it finished; run it again to redo it.")
