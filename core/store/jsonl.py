"""Append-only JSON Lines files: one result per line, earlier lines never rewritten, so a crash cannot lose them.

A job may be killed at any instant (Stop ends a job that does not stop by itself, core/launch/stopping.py), so a
write is one `os.write` of whole lines on an O_APPEND descriptor: a kill lands before it or after it. A line cut
anyway (a full disk, a power cut) is skipped by the reader with a warning, and the next append starts on a line of
its own, so one cut line never takes a good one with it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path


def _ends_cut(fd: int) -> bool:
    """Whether the file's last byte is not a newline (a line cut short before this append)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def append(path: Path, rows: list[dict]) -> None:
    """The rows at the end of the file in one write, flushed to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read too: its last byte
    try:
        if _ends_cut(fd):
            data = b"\n" + data
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it whole unless the disk is full; finish or raise
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_newest_first(path: Path) -> list[dict]:
    """Every whole line, newest first; a line cut short by a crash is skipped with a warning."""
    out, cut = [], 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            cut += 1
    if cut:
        warnings.warn(f"{path}: skipped {cut} line(s) cut short (a write interrupted by a crash)", stacklevel=2)
    return out[::-1]
