"""Append-only JSON Lines files: one result per line, earlier lines never rewritten, so a crash cannot lose them."""

from __future__ import annotations

import json
import os
from pathlib import Path


def append(path: Path, rows: list[dict]) -> None:
    """The rows at the end of the file, flushed to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_newest_first(path: Path) -> list[dict]:
    """Every whole line, newest first; a line cut short by a crash is skipped."""
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out[::-1]
