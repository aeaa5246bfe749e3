"""Render helpers for your own task: where the task file comes from, the run form, one run's results, and the run
the map, Decide and the Report use as "my task" (one choice per session, kept in session_state)."""

from __future__ import annotations

import streamlit as st

from core import techniques
from core.experiments import arena, task_run
from core.launch import uploads
from core.launch.kinds import TaskArgs
from core.measure import taskfile
from core.views import task as task_view
from ui.panel import submit_job
from ui.roles import show_error
from ui.tables import show_table
from ui.uploads import blocked_by, checked_upload

RUN_KEY = "lab_task_run"  # run_id of the task run this session calls "my task"
BUNDLED, OWN = "bundled", "own"
FORMAT_HELP = (
    "One prompt per line of a **JSONL** file (or per row of a **CSV** file with a header row), with one or more "
    "checks; an answer passes when it passes all of them:\n\n"
    "- `exact`: the whole answer (case, spaces, quotes and a final full stop ignored)\n"
    "- `contains` / `not_contains`: words or phrases, as whole words, any case\n"
    "- `regex`: a regular expression found anywhere in the answer\n"
    "- `one_of`: the whole answer is one of these labels\n"
    "- `json_keys`: the answer holds a JSON object with these keys\n"
    "- `number` (with an optional `tolerance`): the first number in the answer\n\n"
    "Optional: `id`, to name the prompt in tables. In CSV, separate list items with `|`. Example line:\n\n"
    f"`{taskfile.EXAMPLE}`")


def task_file_input() -> tuple[str | None, str, str | None]:
    """(the task file's path on the server, its name as the user knows it, why the run cannot start) from the
    bundled example or an upload."""
    source = st.radio("Task", [BUNDLED, OWN], horizontal=True, format_func={
        BUNDLED: f"Bundled example: support desk ({task_run.EXAMPLE_TASK.name})", OWN: "Upload my own"}.get)
    with st.expander("How to write a task file"):
        st.markdown(FORMAT_HELP)
    if source == BUNDLED:
        st.caption(taskfile.load_task(task_run.EXAMPLE_TASK).summary() + " Customer messages routed to a team in free "
                   "text, plus a few extraction prompts (a number, an email address, JSON).")
        return str(task_run.EXAMPLE_TASK), task_run.EXAMPLE_TASK.name, None
    upload = st.file_uploader("Task file (.jsonl or .csv)", type=["jsonl", "csv"], key="task_upload")
    checked = checked_upload(upload, "task", uploads.task_file)
    if upload is None:
        return None, "", "Upload a task file first."
    return (str(checked.path) if checked.path else None), upload.name, blocked_by(checked)


def run_form(model: str, device: str, task_file: str | None, task_name: str, blocked: str | None) -> None:
    options = [k for k in arena.offered(device, {}) if k in techniques.TECHNIQUES]
    defaults = [k for k in task_run.TaskSettings.techniques if k in options]
    a, b = st.columns([3, 1])
    keys = a.multiselect("Variants", options, default=defaults, format_func=lambda k: techniques.get(k).label,
                         help="Each answers every prompt on its own runtime; the first of them (fp32 if chosen) "
                              "is the reference the others are compared with.")
    new_tokens = int(b.number_input("Answer tokens at most", *task_run.NEW_TOKENS_RANGE,
                                    task_run.TaskSettings.new_tokens, step=8,
                                    help="The same limit for every variant; each also stops at its end of turn."))
    if st.button("Run my task", type="primary", disabled=bool(blocked) or not keys or task_file is None,
                 help=blocked or ("Pick at least one variant." if not keys else None)):
        try:
            settings = task_run.TaskSettings(tuple(keys), task_file, new_tokens, task_name=task_name)
        except ValueError as e:
            show_error(e)
            return
        if problem := task_run.context_problem(model, settings):
            show_error(ValueError(problem))
            return
        submit_job(TaskArgs(model, settings), f"My task on {len(keys)} variants")


def saved_runs(model: str, machine: str) -> list[dict]:
    return task_view.runs_of(task_view.saved_runs(task_run.results_path()), model, machine)


def pick_run(runs: list[dict], where=st, key: str = "task_pick") -> dict | None:
    """The task run this session calls "my task" (the newest at first); None when there is none."""
    if not runs:
        return None
    ids = [r["run_id"] for r in runs]
    chosen = st.session_state.get(RUN_KEY)
    run_id = where.selectbox("My task", ids, index=ids.index(chosen) if chosen in ids else 0, key=key,
                             format_func=lambda i: task_view.run_label(runs[ids.index(i)]))
    st.session_state[RUN_KEY] = run_id
    return runs[ids.index(run_id)]


def chosen_run(runs: list[dict]) -> dict | None:
    """The run picked on any page this session, else the newest (for pages that do not offer the choice)."""
    chosen = st.session_state.get(RUN_KEY)
    return next((r for r in runs if r["run_id"] == chosen), runs[0] if runs else None)


def show_run(result: dict, usd_per_hour: float) -> None:
    show_table(task_view.score_rows(result, usd_per_hour), {
        "pass rate": "percent", "95% low": "percent", "95% high": "percent", "s per answer": "%.2f",
        "tokens per answer": "%.1f", "$ per 1,000 answers": "$%.4f"})
    st.caption(f"{task_view.interval_note(result)} Time is the wall time of each answer (prompt pass and decode) "
               f"on {result['hardware']}, {result['threads']} threads; $ at US${usd_per_hour:.4f}/hour. Task file "
               f"sha256 {result['task_sha256'][:12]}; greedy, at most {result['new_tokens']} tokens per answer.")
    for verdict in task_view.verdicts(result):
        st.markdown(f"- {verdict.sentence()}.")
    others = [k for k in task_view.variant_keys(result) if k != result["reference"]]
    if not others:
        return
    key = st.selectbox("Answers that flipped against the reference, for", others,
                       format_func=lambda k: techniques.get(k).label)
    rows = task_view.flip_rows(result, key)
    if rows:
        show_table(rows)
    else:
        st.caption("No answer flipped: it passes and fails the same prompts as the reference.")


def floor_input(where, runs: list[dict]) -> float | None:
    """Decide's "at least X% of my task passes" (None when not asked), on the task run picked here."""
    use = where.checkbox("Minimum pass rate on my task", disabled=not runs, key="task_floor_use",
                         help="Run your task on the **Your task** page first." if not runs else
                         "Only variants that answered this task run can meet it.")
    if not use or not runs:
        return None
    pick_run(runs, where, "decide_task")
    return where.slider("At least this share of my task passes", 0.0, 1.0, 0.8, 0.05, key="task_floor")


def options_for(records: list, asked_floor: float | None, runs: list[dict]) -> list:
    """The variants a question chooses from: with a task floor, those of "my task" run, each with its pass rate."""
    result = chosen_run(runs)
    if asked_floor is None or result is None:
        return records
    return task_view.with_task(records, result)[0]
