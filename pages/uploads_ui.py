"""Saving a browser's upload: kept on the server only once its check accepts it (core/launch/uploads.py)."""

from __future__ import annotations

from pathlib import Path

from core.launch import uploads


def save_upload(upload, validate) -> Path:
    """Keep a Streamlit upload once `validate(path)` accepts it (core/launch/uploads.py)."""
    return uploads.keep_upload(upload.name, upload.getvalue(), validate)
