"""Files people upload (eval sets, training examples, text): size-checked, kept by content hash, validated before
anything loads them, and removed again when they fail validation."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from core.paths import data_dir

MAX_UPLOAD_BYTES = 5_000_000  # as .streamlit/config.toml's maxUploadSize


def keep_upload(name: str, body: bytes, validate: Callable[[Path], object]) -> Path:
    """Write `body` under data/uploads (named by its hash) once `validate(path)` accepts it; else ValueError."""
    if len(body) > MAX_UPLOAD_BYTES:  # the server's own limit catches this first; this one holds everywhere
        raise ValueError(f"{name}: {len(body) / 1e6:.1f} MB is more than the {MAX_UPLOAD_BYTES / 1e6:.0f} MB "
                         "an eval or training file may have here. Use fewer lines.")
    folder = data_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(body).hexdigest()[:16]}{Path(name).suffix}"
    path.write_bytes(body)
    try:
        validate(path)
    except ValueError as e:
        path.unlink(missing_ok=True)
        raise ValueError(f"{name}: {e}") from None
    return path


def fmt_seconds(s: float | None) -> str:
    """A duration for people: "2 min 05 s", "40 s", or "estimating..." before there is one."""
    if s is None:
        return "estimating..."
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"
