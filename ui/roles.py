"""Who is looking: the presenter and the viewers, their sessions and heartbeats, and what each may read.

Alone at 127.0.0.1 everyone is the presenter; in classroom mode (core/launch/roles.py) only a session that opened the
presenter link. Viewers never see server paths.
"""

from __future__ import annotations

import secrets
import time

import streamlit as st

from core.launch import jobqueue, roles
from core.launch.jobqueue import PRESENTER, JobQueue
from ui.turns import gate, takes_turns

HEARTBEAT_EVERY_S = 10.0  # a session checks in at most this often: one tiny row write


def session_id() -> str:
    """Streamlit's own id for this browser session (so the server can tell when it closes), else a random one."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return st.session_state.setdefault("lab_session", ctx.session_id if ctx else secrets.token_hex(8))


def _forget_closed_sessions() -> None:
    """Sessions that the web server no longer holds stop counting as connected (a reload makes a new one)."""
    from streamlit import runtime

    if runtime.exists():
        server = runtime.get_instance()
        queue().mark_left([s for s in queue().open_sessions() if not server.is_active_session(s)])


def is_presenter() -> bool:
    """Alone at 127.0.0.1 everyone is the presenter. In classroom mode only a session that opened the presenter
    link; the token is then removed from the address bar so it is not shared by a copied URL or a screen."""
    state = st.session_state
    given = st.query_params.get("token")
    if given is not None:
        del st.query_params["token"]
        if roles.classroom() and roles.is_presenter_token(given):
            state["lab_presenter"] = True
    if not roles.classroom():
        return True
    return bool(state.get("lab_presenter"))


def owner_name() -> str:
    return PRESENTER if is_presenter() else f"viewer {heartbeat(force=True)}"


@st.cache_resource
def lab_queue() -> JobQueue:
    return JobQueue()


def queue() -> JobQueue:
    found = lab_queue()
    if found.path != jobqueue.queue_path():  # the data folder moved (tests give each their own)
        lab_queue.clear()
        found = lab_queue()
    return found


def heartbeat(force: bool = False) -> int:
    """Count this session as connected (measurements record how many were); returns its viewer number."""
    state = st.session_state
    if force or time.monotonic() - state.get("lab_seen", -1e9) > HEARTBEAT_EVERY_S or "lab_number" not in state:
        state["lab_number"] = queue().heartbeat(session_id())
        state["lab_seen"] = time.monotonic()
        _forget_closed_sessions()
    return state["lab_number"]


@st.fragment(run_every=20.0)
@takes_turns
def keep_alive() -> None:
    """Draws nothing: keeps an idle tab counted as connected, and restarts a job panel paused for a timing phase
    once the phase is over (ui/panel.py)."""
    heartbeat()
    if st.session_state.get("lab_panel_paused") and not gate().timing_now():
        st.rerun()


def visible(text: str) -> str:
    """What a viewer may read of a message: no server paths (the presenter sees everything)."""
    return text if is_presenter() else roles.hide_paths(text)


def show_error(error: Exception | str) -> None:
    st.error(visible(str(error)))
