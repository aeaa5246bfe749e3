"""The dashboard as a user starts it (`python -m core serve` runs `python -m ui.server run app.py`, here on 127.0.0.1)
and a headless Debian Chromium to drive it, for the browser tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.launch import quiet

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(data: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """The dashboard on a free loopback port with its data (results, models, queue) under `data`; yields its URL.
    `env` adds to (or overrides) the environment the server and its worker see."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    pytest.importorskip("playwright.sync_api")
    port = free_port()
    # The worker's idle preparation stays off unless a test asks for it: a module-scoped server starts before the
    # autouse fixture turns it off, and preparing (dequantizing, timing, writing GGUF files) beside the other browser
    # tests would slow them all and keep the server busy when it is told to stop.
    env = os.environ | {"LAB_DATA_DIR": str(data), "LAB_SHOW_TEST_MODELS": "1", "LAB_WORKER_AUTOSTART": "1",
                        "LAB_WORKER_PREPARE": "0"} | (env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "ui.server", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the dashboard did not start within 60 s:\n" + proc.stdout.read().decode()[-2000:])
    try:
        yield url
    finally:
        _stop(proc, data)


def _stop(proc: subprocess.Popen, data: Path) -> None:
    proc.terminate()
    try:  # a page run waiting at the gate while the worker times ends after up to quiet.PAGE_WAIT_S, then the server
        proc.wait(quiet.PAGE_WAIT_S + 10)
    except subprocess.TimeoutExpired:  # shutting down is not what the tests test; a stuck server must not hang them
        proc.kill()
        proc.wait(10)
    pid = (data / "worker.pid").read_text() if (data / "worker.pid").exists() else ""
    if pid:  # the measuring worker the dashboard started (its own session: it outlives the server on purpose)
        try:
            os.kill(int(pid), 15)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def chromium():
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright  # the browser tests skip where Playwright is absent

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            yield b
        finally:
            b.close()
