"""Taking turns with the worker's timed runs: the page-turn gate every page run is held in, and the server's door.

While the worker times a model, page runs wait (core/launch/quiet.py says why). This module also slows Streamlit's
config pollers once, on import, for the same reason.
"""

from __future__ import annotations

import asyncio
import functools

from core.launch import door as lab_door, quiet
from core.paths import data_dir

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


def door() -> lab_door.Door | None:
    """The web server's door (`Door`, core/launch/door.py): put once in front of Streamlit's handling of browser messages,
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

    found = lab_door.Door(gate(), deliver=lambda request: loop[0].call_soon_threadsafe(request))
    server.lab_door, server.handle_backmsg = found, handle_backmsg
    return found


def takes_turns(fragment):
    """For fragment functions, whose reruns run without the page around them."""
    @functools.wraps(fragment)
    def run(*args, **kwargs):
        with page_turn():
            return fragment(*args, **kwargs)
    return run
