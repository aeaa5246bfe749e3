"""Small JSON results measured once per (checkpoint, calibration text, settings) and cached under data_dir(): a
depth sweep's layer scores, activation-sparsity thresholds. Written atomically, so a reader sees the old file or the
whole new one; anything unreadable is measured again."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from core.paths import data_dir

T = TypeVar("T")


def cache_path(folder: str, prefix: str, parts: tuple[Any, ...]) -> Path:
    """data_dir()/<folder>/<prefix>-<hash of parts>.json: each part changes the key (checkpoint fingerprint, text
    hash, token count, recipe version...)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode() + b"\0")
    return data_dir() / folder / f"{prefix}-{h.hexdigest()[:16]}.json"


def read_cached(path: Path, kind: type[T]) -> T | None:
    try:
        return kind(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent, or left unreadable by something other than our atomic write: measure again


def write_atomically(path: Path, value: Any) -> None:
    """`value` (a dataclass) as JSON at `path`, replacing any older file in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share a temp file
    tmp.write_text(json.dumps(asdict(value), indent=1))
    os.replace(tmp, path)
