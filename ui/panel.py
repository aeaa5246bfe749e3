"""The job panel every job page shows: the machine's queue, the running job's progress, and how the last one ended.

An open panel redraws itself every `quiet.PANEL_EVERY_S` from one queue snapshot that all sessions share. A viewer's
redraw during a timed run waits for its turn (core/launch/quiet.py) and costs the lab's machine only the server's part:
the viewer's browser runs on the viewer's own machine. The presenter's tab (and the one person's at 127.0.0.1) runs
on the lab's machine, where each redraw is a round trip through the browser's whole app: with that tab open the
timed decode lost about a tenth. So while the worker is in a timing phase (a variant's warm-up and timed runs) the
presenter's panel has no timer at all: its next tick sees the phase and redraws the page once with a paused panel,
and the sidebar's keep-alive (every 20 s) redraws it live once the phase is over. Viewers' panels keep ticking, so
that thirty of them do not all switch to paused and back with whole-page runs. Whether that is better than pausing
every panel is not settled: one load-test round with this rule (30 viewers) was no better than three rounds with
every panel paused (medians 0.74-0.90 of the CLI's against 0.79-0.98, page p90 4.3 s against 3.8 s), and this
machine's speed drifts by a third within minutes. A paused panel says so where the remaining time would be.
"""

from __future__ import annotations

import streamlit as st

from core.launch import jobqueue, jobs, launch, quiet, worker
from core.launch.job import Job, JobArgs
from core.launch.jobqueue import JobEstimate, JobQueue, NotAllowed, QueueFull
from core.launch.uploads import fmt_seconds
from ui.ended import draw_ended, ended_to_show, kept_words
from ui.roles import heartbeat, is_presenter, owner_name, queue, session_id, show_error, visible
from ui.turns import gate, takes_turns


def submit_job(args: JobArgs, label: str, estimate: JobEstimate | None = None) -> int | None:
    """Queue a job for the worker, with the estimate the page showed if any; say where it stands, or why not."""
    try:
        job_id = launch.submit(queue(), Job(args, label), owner_name(), session_id(), estimate)
    except (QueueFull, NotAllowed, ValueError) as e:
        show_error(e)
        return None
    queue_snapshot.clear()  # this session sees its own job at once
    return job_id


@st.cache_data(ttl=2.0, show_spinner=False)
def queue_snapshot(path: str) -> jobqueue.QueueSnapshot:
    """One read of the queue, shared by every session for 2 s: many viewers cost the worker nothing extra."""
    return JobQueue(path).snapshot()


TOAST_KEY = "lab_job_toast"  # what the last Stop or Cancel did, shown once after the rerun it causes


def _stop_button(job: jobqueue.QueuedJob, label: str) -> None:
    """Stop (a running job) or Cancel (a waiting one); the page is redrawn at once, so a cancelled job is gone from
    the list and a stopped one says "stopping…" without waiting for the panel's next tick."""
    mine = job.owner_session == session_id()
    if (is_presenter() or (mine and job.state == "queued")) and st.button(label, key=f"job_stop_{job.id}"):
        try:
            queue().stop(job.id, session_id(), is_presenter())
        except NotAllowed as e:
            show_error(e)
            return
        queue_snapshot.clear()
        st.session_state[TOAST_KEY] = f"Removed {job.label} from the queue." if job.state == "queued" else \
            f"Stopping {job.label}: what it finished is kept."
        st.rerun()


def _show_toast() -> None:
    if (words := st.session_state.pop(TOAST_KEY, None)) is not None:
        st.toast(words, icon=":material/check_circle:")


def _draw_running(job: jobqueue.QueuedJob, expected_s: float | None, kept_note: str, paused: bool) -> None:
    if job.stop_requested:  # no Stop button and no countdown: it ends within seconds, keeping what finished
        st.progress(job.fraction, text=f"{job.label} ({job.owner}): stopping…")
        st.caption(f"Stopping: it ends within a few seconds. {kept_note}")
        return
    st.progress(job.fraction, text=f"{job.label} ({job.owner}): {visible(job.message)}")
    times = jobs.time_words(job.elapsed_s, expected_s, job.fraction, visible(job.message), paused)
    st.caption(f"{times}. {kept_note}")
    _stop_button(job, "Stop")


def _draw_waiting(waiting: tuple[jobqueue.Waiting, ...]) -> None:
    if not waiting:
        return
    st.markdown(f"**Waiting: {len(waiting)}** (the presenter's jobs first, then in the order they were queued)")
    for w in waiting:
        start = "when the one before it ends (no similar job has finished yet to estimate from)" \
            if w.starts_in_s is None else f"in about {fmt_seconds(w.starts_in_s)}"
        mine = " · yours" if w.job.owner_session == session_id() else ""
        left, right = st.columns([5, 1])
        left.caption(f"{w.position}. {w.job.label} ({w.job.owner}{mine}): starts {start}")
        with right:
            _stop_button(w.job, "Cancel")


def _draw_panel(kept_note: str, live_view, in_fragment: bool, paused: bool = False,
                kinds: tuple[str, ...] | None = None) -> None:
    heartbeat()
    _show_toast()
    snap = queue_snapshot(str(queue().path))
    if snap.running is not None:
        _draw_running(snap.running, snap.running_expected_s, kept_words(snap.running.kind, kept_note, kinds), paused)
    _draw_waiting(snap.waiting)
    last = snap.recent[0] if snap.recent else None
    if (ended := ended_to_show(snap.recent)) is not None:
        draw_ended(ended, kept_note, kinds)
    shown = snap.running or last
    if live_view is not None and shown is not None and shown.live and (kinds is None or shown.kind in kinds):
        live_view(shown.live)  # a page's live view draws its own kind's log only (a loss curve, not another's)
    if (snap.waiting or snap.running) and not worker.is_running():
        worker.ensure_running()  # a worker that died (or never started) is started again; the queue is kept
    seen = st.session_state.get("seen_ended")
    st.session_state["seen_ended"] = last.id if last else None
    if not in_fragment:  # a whole page run already draws the results of the job that just ended
        return
    if last is not None and seen is not None and seen != last.id:
        st.rerun()  # a job just ended: redraw the whole page so the results include it
    elif last is not None and seen is None and "seen_ended_init" in st.session_state:
        st.rerun()
    st.session_state["seen_ended_init"] = True


def _pauses() -> bool:
    """Whether this session's panel pauses for timing phases: the presenter's tab shares the lab's cores."""
    return is_presenter()


@st.fragment(run_every=quiet.PANEL_EVERY_S)
@takes_turns
def _live_panel(kept_note: str, live_view=None, kinds: tuple[str, ...] | None = None) -> None:
    if _pauses() and gate().timing_now():
        st.rerun()  # a whole page run draws the paused panel, and it clears this fragment's timer
    _draw_panel(kept_note, live_view, in_fragment=True, kinds=kinds)


def _paused_panel(kept_note: str, live_view=None, kinds: tuple[str, ...] | None = None) -> None:
    st.caption(":material/pause_circle: The worker is timing a model now. This panel stays as it is until the "
               "timed runs end, so that watching does not slow what is measured.")
    _draw_panel(kept_note, live_view, in_fragment=False, paused=True, kinds=kinds)


def job_panel(kept_note: str, live_view=None, kinds: tuple[str, ...] | None = None) -> None:
    """The machine's queue: the running job (bar, times, who started it, Stop), the jobs waiting with their
    position and expected start, and how the last one ended. `live_view(live)` draws a running job's live data
    (a loss log as a dict) while it runs and after it ends. `kinds`: the job kinds this page starts; a job of
    another kind is worded by its own kind (ui/ended.py KEPT) and named as another page's, and gets no live view."""
    paused = _pauses() and gate().timing_now()
    st.session_state["lab_panel_paused"] = paused  # if paused, the sidebar's keep-alive restarts it after the phase
    (_paused_panel if paused else _live_panel)(kept_note, live_view, kinds)
