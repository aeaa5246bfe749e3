"""The lab under test and the CLI reference: starting and stopping `python -m core serve`, running the same sweep
from the CLI, and reading the lab's own store and job queue (SQLite files in its data folder)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOGS = Path(tempfile.gettempdir()) / "classroom-load-logs"  # the server's log of each round, kept after the run


def cli_sweep(python: str, env: dict, keys: list[str], args, out: Path) -> dict[str, dict]:
    """The same sweep from the CLI; technique -> its record."""
    cmd = [python, "-m", "core", "sweep", "--techniques", ",".join(keys), "--repeats", str(args.repeats),
           "--no-store", "--json", str(out)]
    if args.mc_max_items:
        cmd += ["--mc-max-items", str(args.mc_max_items)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stderr=subprocess.DEVNULL)
    return {r["technique"]: r for r in json.loads(out.read_text())}


def start_lab(app_dir: Path, python: str, env: dict, port: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    """The lab as its user starts it; returns the process and the presenter token (empty for an old checkout)."""
    # A checkout with a worker (core/worker.py; core/launch/worker.py since core/ has one folder per axis) starts with
    # `core serve`, which runs the dashboard through ui/server.py where the checkout has it.
    if any((app_dir / "core" / where / "worker.py").exists() for where in ("", "launch")):
        cmd = [python, "-m", "core", "serve", "--host", "127.0.0.1", "--port", str(port), "--classroom"]
    else:
        cmd = [python, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    # The server's own log: a viewer's page shows no traceback, this file has it. It also has the presenter link,
    # whose token dies with the server, but the file is still the presenter's alone.
    log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")
    proc = subprocess.Popen(cmd, cwd=app_dir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    token = ""
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        sys.exit("the lab did not start within 120 s")
    token_file = Path(env["LAB_DATA_DIR"]) / "presenter.token"
    if token_file.exists():
        token = token_file.read_text().strip()  # read here, never printed
    return proc, token


def dashboard_records(data: Path, since: str) -> list[dict]:
    path = data / "results.sqlite"
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT record_json FROM results WHERE created_at > ?", (since,)).fetchall()
    return [json.loads(r[0]) for r in rows]


def queue_counts(data: Path) -> dict[str, int]:
    path = data / "queue.sqlite"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT owner = 'presenter', state, COUNT(*) FROM jobs GROUP BY 1, 2").fetchall()
        conn.execute("UPDATE jobs SET state = 'cancelled', error = 'load test over', ended_s = ? "
                     "WHERE state = 'queued'", (time.time(),))  # bounded: leftover viewer jobs do not run
    return {f"{'presenter' if p else 'viewer'} {state}": n for p, state, n in rows}


def labels_for(keys: list[str]) -> list[str]:
    from core import techniques

    return [techniques.get(k).label for k in keys]


def stop_lab(lab: subprocess.Popen, data: Path) -> None:
    lab.terminate()
    lab.wait(20)
    pid_file = data / "worker.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)  # a viewer's job may still be running
        except (ProcessLookupError, ValueError):
            pass
        time.sleep(2)  # the CLI that follows must have the machine alone


def last_presenter_job(data: Path) -> dict | None:
    path = data / "queue.sqlite"
    if not path.exists():
        return None
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT id, started_s, ended_s FROM jobs WHERE owner = 'presenter' ORDER BY id DESC"
                           " LIMIT 1").fetchone()
    return dict(zip(("id", "started_s", "ended_s"), row)) if row else None


def quiet_queue(data: Path, max_wait_s: float = 120) -> None:
    """No viewer job runs into the next measurement: waiting ones are cancelled, a running one is stopped (as the
    presenter's Stop does) and its end awaited."""
    from core.launch.jobqueue import JobQueue

    queue = JobQueue(data / "queue.sqlite")
    end = time.monotonic() + max_wait_s
    while time.monotonic() < end:
        snap = queue.snapshot()
        for w in snap.waiting:
            queue.stop(w.job.id, "", presenter=True)
        if snap.running is None:
            return
        queue.stop(snap.running.id, "", presenter=True)
        time.sleep(1)
