"""Uploads checked the moment they are chosen: accepted with what was found in them, or refused at once with what to
do, before anyone presses a button. Kept on the server only once accepted (core/launch/uploads.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core.launch import uploads
from ui.roles import visible


@dataclass(frozen=True)
class Checked:
    path: Path | None = None  # the server's copy, once accepted
    summary: str = ""  # what was found in it ("120 questions, 4 choices each")
    problem: str = ""  # why it was refused, naming the file as its owner named it

    @property
    def refused(self) -> bool:
        return bool(self.problem)


def check_upload(name: str, body: bytes, check: Callable[[Path], object]) -> Checked:
    """Accepted (kept) or refused (not kept), as words for the page; no exception reaches the browser."""
    try:
        kept = uploads.accept_upload(name, body, check)
    except ValueError as e:
        return Checked(problem=str(e))
    return Checked(kept.path, kept.summary)


def checked_upload(upload, slot: str, check: Callable[[Path], object], where=st, depends_on: str = "") -> Checked:
    """Check a file_uploader's file once per file (a page reruns on every click; a 5 MB file is not re-read each
    time), remembered per `slot` in this session, and say under the uploader whether it was accepted. A check that
    depends on something else (the teacher whose tokenizer counts a corpus) names it in `depends_on`."""
    if upload is None:
        st.session_state.pop(f"lab_upload_{slot}", None)
        return Checked()
    ident = (getattr(upload, "file_id", None) or hashlib.sha256(upload.getvalue()).hexdigest(), depends_on)
    seen = st.session_state.get(f"lab_upload_{slot}")
    if seen is None or seen[0] != ident:
        seen = st.session_state[f"lab_upload_{slot}"] = (ident, check_upload(upload.name, upload.getvalue(), check))
    result = seen[1]
    if result.refused:
        where.error(visible(result.problem))
    else:
        where.success(f"ok: {result.summary}" if result.summary else f"ok: {upload.name}")
    return result


def blocked_by(*checked: Checked) -> str | None:
    """Why the page's action cannot run while an upload is refused (for the button's help), else None."""
    return next(("Fix or remove the refused file first: " + c.problem for c in checked if c.refused), None)


def save_upload(upload, validate) -> Path:
    """Keep a Streamlit upload once `validate(path)` accepts it (core/launch/uploads.py)."""
    return uploads.keep_upload(upload.name, upload.getvalue(), validate)
