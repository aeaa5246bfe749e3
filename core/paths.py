"""The ground every module of the lab stands on: where the code, its assets and its data live, and `Stopped`.

Nothing here imports another module of the lab, so every layer may import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

DATA_DIR_ENV = "LAB_DATA_DIR"
ASSETS = Path(__file__).resolve().parent.parent / "assets"  # bundled eval sets, prompts, tasks, pictures

# A long job's progress callback: (fraction done in [0, 1], one line for the user).
Report = Callable[[float, str], None]


class Stopped(Exception):
    """The user stopped a job. Every long job raises this (or a subclass) when `should_stop()` turns true."""


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def shared_wikitext() -> Path | None:
    """The public WikiText-2 test text where it lies beside the repo (../shared/data), else None. Never the lab's
    evaluation text: the lab trains and cuts serving prompts from it, and measures quality on its own prose."""
    path = repo_root().parent / "shared" / "data" / "wikitext-2-raw-v1.test.txt"
    return path if path.is_file() else None


def data_dir() -> Path:
    """Where results live: $LAB_DATA_DIR if set, else <repo root>/data; created on demand."""
    configured = os.environ.get(DATA_DIR_ENV)
    path = Path(configured).expanduser() if configured else repo_root() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path
