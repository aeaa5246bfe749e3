"""Stop ends any job within seconds, keeping what finished (issue 41: Stop took 218 s): in the worker, whether or not
the job checks should_stop(), with every process it started; a sweep keeps the variants stored before the stop; a
CLI command ends on Ctrl-C and says what it kept; a JSONL line cut by a kill is skipped, not fatal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from core.launch import stopping, worker
from core.launch.job import Job
from core.launch.jobqueue import PRESENTER, JobQueue
from core.launch.launch import submit
from core.store import ResultStore, jsonl
from tests import stop_kind

ROOT = Path(__file__).resolve().parent.parent
STOP_WITHIN_S = 10.0  # the acceptance bound
FAST = dict(new_tokens=4, repeats=2, warmup_runs=1, mc_max_items=6, ppl_window_tokens=64, ppl_max_tokens=256)
VARIANTS = ("fp32", "bf16", "fp16", "dyn-int8", "nf4")


@pytest.fixture
def stuck_kind(monkeypatch):
    stop_kind.register()
    monkeypatch.setattr(worker, "child_argv", stop_kind.child_argv)
    yield
    stop_kind.unregister()


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setenv("LAB_SHOW_TEST_MODELS", "1")


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _job_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "--job" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def _run_and_stop(queue: JobQueue, job_id: int, ready, ready_within_s: float = 60.0) -> float:
    """Run the worker until idle; once `ready()`, press Stop as the presenter. Returns seconds from Stop until the
    worker is done with the job (its processes ended, its end written)."""
    loop = threading.Thread(target=worker.serve, kwargs={"until_idle": True, "say": lambda m: None})
    loop.start()
    deadline = time.monotonic() + ready_within_s
    while not ready() and time.monotonic() < deadline and loop.is_alive():
        time.sleep(0.05)
    assert ready(), f"the job never got going: {queue.job(job_id)}"
    t0 = time.monotonic()
    queue.stop(job_id, "s-p", presenter=True)
    loop.join(60)
    assert not loop.is_alive()
    took = time.monotonic() - t0
    print(f"{queue.job(job_id).kind} job stopped in {took:.1f} s: {queue.job(job_id).error}")
    return took


@pytest.mark.parametrize("in_c", [False, True], ids=["stuck-in-python", "stuck-in-c"])
def test_stop_ends_a_job_that_never_checks_and_every_process_it_started(stuck_kind, data_dir, in_c):
    queue = JobQueue()
    job_id = submit(queue, Job(stop_kind.StuckArgs(in_c)), PRESENTER, "s-p")
    pids_file = data_dir / stop_kind.PIDS_FILE
    took = _run_and_stop(queue, job_id, pids_file.is_file)
    job = queue.job(job_id)
    assert job.state == "cancelled" and took < STOP_WITHIN_S, (took, job.error)
    assert ("on SIGKILL" if in_c else "on SIGTERM") in job.error
    assert "nothing had been stored yet" in job.error
    in_group, own_session = json.loads(pids_file.read_text())
    assert not _alive(in_group) and not _alive(own_session)  # a llama.cpp tool, a llama-server: both gone
    assert _job_processes() == []


def test_stop_during_a_sweep_keeps_the_variants_stored_before_it(tiny_models):
    queue = JobQueue()
    raw = {"model": "tiny-random-llama", "techniques": list(VARIANTS), "settings": FAST}
    job_id = queue.submit("sweep", raw, "sweep", "sweep", PRESENTER, "s-p")
    store = ResultStore()
    took = _run_and_stop(queue, job_id, lambda: len(store.all()) >= 1, ready_within_s=120)
    job = queue.job(job_id)
    kept = store.all()
    assert job.state == "cancelled" and took < STOP_WITHIN_S, (took, job.error)
    assert 1 <= len(kept) < len(VARIANTS) and kept[-1].technique == VARIANTS[0]
    n = len(kept)
    assert f"{n} measured {'record is' if n == 1 else 'records are'} kept in the results store" in job.error
    assert _job_processes() == []


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child, before it runs: SIGINT back to its default. A runner that starts the suite in the background (a
    non-interactive shell's `cmd &`) ignores SIGINT, an ignored signal stays ignored across exec, and Python then
    never turns it into KeyboardInterrupt, as for a command started under nohup. A person's terminal does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_ends_a_cli_sweep_within_seconds_and_says_what_it_kept(data_dir):
    env = os.environ | {"LAB_DATA_DIR": str(data_dir), "LAB_SHOW_TEST_MODELS": "1"}
    cmd = [sys.executable, "-m", "core", "sweep", "--model", "tiny-random-llama", "--techniques", ",".join(VARIANTS),
           "--new-tokens", "4", "--repeats", "2", "--warmup", "1", "--mc-max-items", "6"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("done" in ln for ln in lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the first variant's "done" line: it is stored
    assert proc.poll() is None, "".join(lines)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(STOP_WITHIN_S)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    reader.join(5)
    said = "".join(lines)
    print(f"CLI sweep ended {took:.1f} s after SIGINT: {lines[-1].strip() if lines else ''}")
    assert code == 130 and took < STOP_WITHIN_S
    kept = len(ResultStore().all())
    assert kept >= 1 and f"interrupted; {kept} measured record" in said, said
    assert "Traceback" not in said


def test_a_cli_command_stuck_in_c_is_ended_by_its_watcher(data_dir):
    """A main thread inside one long C call never sees KeyboardInterrupt: the watcher ends it, and its children."""
    code = ("import ctypes, subprocess; from core.cli import interrupt; interrupt.watch(grace_s=1.0); "
            "child = subprocess.Popen(['sleep', '300'], start_new_session=True); print(child.pid, flush=True); "
            "libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64); libc.pthread_mutex_lock(mutex); "
            "libc.pthread_mutex_lock(mutex)")  # locking it again waits forever, and no signal ends that wait
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    child = int(proc.stdout.readline())
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(STOP_WITHIN_S) == 130 and time.monotonic() - t0 < STOP_WITHIN_S
    finally:
        proc.kill()
    assert "inside a long call: ended); nothing measured here had been stored yet" in proc.stderr.read()
    assert not _alive(child)


def test_a_jsonl_line_cut_by_a_kill_is_skipped_and_the_next_append_stands_alone(tmp_path):
    path = tmp_path / "results.jsonl"
    jsonl.append(path, [{"n": 1}])
    with path.open("a") as f:
        f.write('{"n": 2, "cut sh')  # a write cut by a crash: no newline
    jsonl.append(path, [{"n": 3}, {"n": 4}])
    with pytest.warns(UserWarning, match="skipped 1 line"):
        assert jsonl.read_newest_first(path) == [{"n": 4}, {"n": 3}, {"n": 1}]


def test_end_tree_finds_descendants_that_left_the_process_group():
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, time; "
                             "p = subprocess.Popen(['sleep', '300'], start_new_session=True); print(p.pid, flush=True); "
                             "time.sleep(300)"], stdout=subprocess.PIPE, text=True, process_group=0)
    grandchild = int(proc.stdout.readline())
    assert grandchild in stopping.descendants(proc.pid)
    assert stopping.end_tree(proc, term_wait_s=2.0) == "on SIGTERM"
    assert not _alive(grandchild)


def test_the_panel_says_stopping_at_once_and_a_cancelled_job_leaves_the_list(tiny_models):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    queue = JobQueue()
    raw = {"model": "tiny-random-llama", "techniques": ["fp32"], "settings": FAST}
    running = queue.submit("sweep", raw, "Sweep A", "sweep", PRESENTER, "s-p")
    queue.claim(os.getpid())
    waiting = queue.submit("sweep", raw, "Sweep B", "sweep", PRESENTER, "s-p")
    at = AppTest.from_file(str(ROOT / "pages" / "moe.py"), default_timeout=60).run()
    assert not at.exception and any("Sweep B" in c.value for c in at.caption)
    at.button(key=f"job_stop_{waiting}").click().run()
    assert not at.exception and queue.job(waiting).state == "cancelled"
    assert not any("Sweep B" in c.value for c in at.caption) and not any("Waiting" in m.value for m in at.markdown)
    assert [t.value for t in at.toast] == ["Removed Sweep B from the queue."]
    assert not any("Sweep B" in w.value for w in at.warning)  # it never ran: nothing to report as stopped
    at.button(key=f"job_stop_{running}").click().run()
    assert not at.exception and queue.job(running).stop_requested
    assert at.get("progress")[0].proto.text == "Sweep A (presenter): stopping…"
    assert not any(b.label == "Stop" for b in at.button)
    assert [t.value for t in at.toast] == ["Stopping Sweep A: what it finished is kept."]
