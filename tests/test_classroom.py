"""Classroom mode: the queue and its order, who may do what, the worker process, and a worker killed mid-sweep."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from core.experiments.sweep import SweepSettings
from core.launch import quiet, roles, worker
from core.launch.execute import check_allowed
from core.launch.job import Job
from core.launch.kinds import SweepArgs
from core.launch.launch import submit
from core.launch.jobqueue import MAX_WAITING_PER_VIEWER, PRESENTER, JobQueue, NotAllowed, QueueFull
from core.paths import data_dir as lab_data_dir
from core.store import ResultStore
from core.store.records import REQUIRED_FIELDS

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(new_tokens=4, repeats=2, warmup_runs=1, mc_max_items=6, ppl_window_tokens=64, ppl_max_tokens=256)


@pytest.fixture(autouse=True)
def test_models_allowed(monkeypatch):
    monkeypatch.setenv("LAB_SHOW_TEST_MODELS", "1")  # viewers may pick the tiny model, as they may the bundled one
    st.cache_resource.clear()
    st.cache_data.clear()


def sweep_args(techniques=("fp32",), **settings) -> dict:
    return {"model": "tiny-random-llama", "techniques": list(techniques),
            "settings": asdict(SweepSettings(**(FAST | settings)))}


def sweep_job(techniques=("fp32",), model="tiny-random-llama", **settings) -> Job:
    return Job(SweepArgs.from_json(sweep_args(techniques, **settings) | {"model": model}), "sweep")


def queue_sweep(queue, owner, session, **kw) -> int:
    return submit(queue, Job(sweep_job(**kw).args, f"sweep by {owner}"), owner, session)


# ---------------------------------------------------------------- order, limits, estimates


def test_two_viewers_jobs_run_in_order_after_the_presenters_and_land_in_the_store():
    queue = JobQueue()
    for session in ("s-a", "s-b"):
        queue.heartbeat(session)
    first = queue_sweep(queue, "viewer 1", "s-a")
    second = queue_sweep(queue, "viewer 2", "s-b")
    boss = queue_sweep(queue, PRESENTER, "s-p")  # queued last, runs first
    assert [w.job.id for w in queue.snapshot().waiting] == [boss, first, second]
    assert worker.serve(until_idle=True, say=lambda m: None) == 0
    jobs = [queue.job(i) for i in (boss, first, second)]
    assert [j.state for j in jobs] == ["done"] * 3, [j.error for j in jobs]
    assert jobs[0].started_s < jobs[1].started_s < jobs[2].started_s
    records = ResultStore().all()
    assert len(records) == 3 and len({r.run_id for r in records}) == 3  # one stored sweep per job, for everyone
    assert all(r.settings["sessions_connected"] == 2 for r in records)  # the two heartbeating sessions


def test_a_record_counts_the_most_sessions_connected_at_once_not_every_reload():
    from core.launch.worker import _SessionCountingStore
    from tests.factories import make_record

    queue = JobQueue()
    queue.heartbeat("steady")
    counting = _SessionCountingStore(ResultStore(), queue, quiet.Gate(lab_data_dir()))
    for i in range(5):  # one tab reloaded five times: five sessions, never more than one at once
        queue.heartbeat(f"reload-{i}")
        counting.sample()
        queue.mark_left([f"reload-{i}"])
    counting.add(make_record())
    settings = ResultStore().all()[0].settings
    assert settings["sessions_connected"] == 2  # the steady tab and one reload
    assert settings["timed_runs_with_pages_paused"] == 0  # this record timed nothing


def test_per_viewer_and_queue_limits_say_what_to_do(monkeypatch):
    queue = JobQueue()
    for _ in range(MAX_WAITING_PER_VIEWER):
        queue_sweep(queue, "viewer 1", "s-a")
    with pytest.raises(QueueFull, match="each viewer may have"):
        queue_sweep(queue, "viewer 1", "s-a")
    monkeypatch.setattr("core.launch.jobqueue.MAX_WAITING", 2)
    queue_sweep(queue, "viewer 2", "s-b")
    with pytest.raises(QueueFull, match="queue is full"):
        queue_sweep(queue, "viewer 3", "s-c")
    queue_sweep(queue, PRESENTER, "s-p")  # the presenter is never turned away


def test_waiting_jobs_get_a_start_estimate_from_similar_finished_jobs():
    queue = JobQueue()
    queue_sweep(queue, PRESENTER, "s-p")
    waiting = queue.snapshot().waiting
    assert waiting[0].position == 1 and waiting[0].starts_in_s == 0.0  # nothing runs: it starts next
    worker.serve(until_idle=True, say=lambda m: None)
    queue_sweep(queue, PRESENTER, "s-p")
    queue_sweep(queue, PRESENTER, "s-p")
    job = queue.claim(os.getpid())  # the first one runs now
    snap = queue.snapshot()
    took = job and (queue.job(1).ended_s - queue.job(1).started_s)
    assert snap.running.id == job.id and snap.running_left_s == pytest.approx(took, abs=1.0)
    assert [w.position for w in snap.waiting] == [1]
    assert snap.waiting[0].starts_in_s == pytest.approx(snap.running_left_s)


# ---------------------------------------------------------------- who may do what


def test_viewer_cannot_stop_or_dequeue_the_presenters_job_but_can_cancel_its_own():
    queue = JobQueue()
    boss = queue_sweep(queue, PRESENTER, "s-p")
    mine = queue_sweep(queue, "viewer 1", "s-a")
    with pytest.raises(NotAllowed):
        queue.stop(boss, "s-a", presenter=False)  # waiting
    queue.claim(os.getpid())  # the presenter's job is running now
    with pytest.raises(NotAllowed):
        queue.stop(boss, "s-a", presenter=False)
    assert queue.job(boss).state == "running" and not queue.job(boss).stop_requested
    other = queue_sweep(queue, "viewer 2", "s-b")
    with pytest.raises(NotAllowed):
        queue.stop(other, "s-a", presenter=False)  # another viewer's
    queue.stop(mine, "s-a", presenter=False)
    assert queue.job(mine).state == "cancelled"
    queue.stop(boss, "s-p", presenter=True)  # the presenter may stop anything; the worker sees the flag
    assert queue.job(boss).stop_requested


def test_a_viewer_cannot_load_a_server_path_or_a_hub_id(tiny_dir, tmp_path):
    queue = JobQueue()
    for name in (str(tiny_dir), "someone/some-model"):
        with pytest.raises(NotAllowed, match="Only the presenter"):
            submit(queue, sweep_job(model=name), "viewer 1", "s-a")
    outside = tmp_path / "eval.jsonl"
    outside.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    with pytest.raises(NotAllowed, match="uploaded"):
        submit(queue, sweep_job(eval_set=str(outside)), "viewer 1", "s-a")
    assert queue.snapshot().waiting == ()
    check_allowed(sweep_job(model=str(tiny_dir)).args, presenter=True)  # the presenter may


def test_the_worker_refuses_a_viewers_job_that_names_a_path_even_if_it_got_into_the_queue(tiny_dir):
    queue = JobQueue()  # written straight into the queue file, past the page's check
    job_id = queue.submit("sweep", sweep_args() | {"model": str(tiny_dir)}, "forged", "sweep", "viewer 1", "s-a")
    worker.serve(until_idle=True, say=lambda m: None)
    job = queue.job(job_id)
    assert job.state == "failed" and "Only the presenter" in job.error and ResultStore().all() == []


def test_viewer_cannot_clear_results():
    from tests.factories import make_record

    store = ResultStore()
    store.add(make_record())
    with pytest.raises(NotAllowed):
        roles.clear_results(store, presenter=False)
    assert len(store.all()) == 1
    roles.clear_results(store, presenter=True)
    assert store.all() == []


def test_tokens_compare_in_constant_time_and_anything_wrong_is_a_viewer(monkeypatch):
    token = roles.new_token()
    assert oct(roles.token_path().stat().st_mode & 0o777) == "0o600"
    assert roles.is_presenter_token(token)
    for wrong in (None, "", token[:-1], token + "x", "ü" * 10):
        assert not roles.is_presenter_token(wrong)


def app(token: str | None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "tradeoff_map.py"), default_timeout=60)
    if token is not None:
        at.query_params["token"] = token
    return at


def sidebar_app(token: str | None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if token is not None:
        at.query_params["token"] = token
    return at


@pytest.mark.parametrize("given", [None, "wrong-token"])
def test_wrong_or_missing_token_gives_viewer_rights_and_reveals_nothing(monkeypatch, given):
    from tests.factories import make_record
    from tests.test_pages import HERE

    monkeypatch.setenv(roles.CLASSROOM_ENV, "1")
    token = roles.new_token()
    ResultStore().add(make_record(model="smollm2-135m-instruct", hardware=HERE))
    at = sidebar_app(given).run()
    assert not at.exception and not at.error
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "viewer" in captions and "presenter**." not in captions
    from ui.frame import CUSTOM

    assert CUSTOM not in at.sidebar.selectbox[0].options  # viewers cannot name a folder or hub id
    assert "token" not in at.query_params  # stripped from the address bar
    page = app(given).run()
    assert not page.exception and not any(b.label == "Clear results" for b in page.button)
    everything = all_text(at) + all_text(page)
    assert token not in everything and "wrong-token" not in everything


def test_the_presenter_link_gives_presenter_rights_and_the_token_leaves_the_url(monkeypatch):
    from tests.factories import make_record
    from tests.test_pages import HERE

    monkeypatch.setenv(roles.CLASSROOM_ENV, "1")
    token = roles.new_token()
    at = sidebar_app(token).run()
    assert not at.exception
    assert "presenter" in " ".join(c.value for c in at.sidebar.caption)
    assert "token" not in at.query_params
    ResultStore().add(make_record(model="smollm2-135m-instruct", hardware=HERE))
    page = app(token).run()
    assert any(b.label == "Clear results" for b in page.button)


def test_one_person_on_loopback_is_the_presenter_without_a_token():
    at = sidebar_app(None).run()
    assert not at.exception
    from ui.frame import CUSTOM

    assert CUSTOM in at.sidebar.selectbox[0].options
    assert not any("viewer" in c.value for c in at.sidebar.caption)


def test_an_arena_run_holds_the_machine_and_never_overlaps_a_job():
    queue = JobQueue()
    assert queue.hold("arena:a")
    assert not queue.hold("arena:b")  # two live runs would disturb each other
    queue_sweep(queue, PRESENTER, "s-p")
    assert queue.claim(os.getpid()) is None  # the worker waits for the live run
    queue.release("arena:a")
    assert queue.claim(os.getpid()) is not None
    assert not queue.hold("arena:b")  # and no live run starts while a job runs


# ---------------------------------------------------------------- a worker killed mid-sweep


def worker_process(data: Path) -> subprocess.Popen:
    env = os.environ | {"LAB_DATA_DIR": str(data), "LAB_SHOW_TEST_MODELS": "1"}
    return subprocess.Popen([sys.executable, "-m", "core.launch.worker"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_sweep_keeps_finished_variants_and_reports_the_job_lost(data_dir):
    queue = JobQueue()
    many = ["fp32", "bf16", "fp16", "dyn-int8", "fp32", "bf16"]
    sweep = queue_sweep(queue, PRESENTER, "s-p", techniques=many, repeats=3)
    later = queue_sweep(queue, "viewer 1", "s-a")
    proc = worker_process(data_dir)
    try:
        deadline = time.monotonic() + 240
        while not ResultStore().all() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ResultStore().all(), "no variant finished in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    kept = ResultStore().all()
    assert 1 <= len(kept) < len(many)
    for record in kept:  # nothing half-written: every stored row is a whole record
        assert all(record.to_dict().get(f) is not None for f in REQUIRED_FIELDS)
        assert record.settings["timed_runs_with_pages_paused"] >= 3  # warmup + repeats, pages paused for each
    with quiet.Gate(data_dir).page_run(wait_s=5) as in_turn:  # the killed worker's locks went with it
        assert in_turn
    assert queue.job(sweep).state == "running" and queue.job(later).state == "queued"

    restarted = worker_process(data_dir)  # a fresh worker: the lost job is reported, the waiting one runs
    try:
        deadline = time.monotonic() + 240
        while queue.job(later).state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        restarted.send_signal(signal.SIGKILL)
        restarted.wait(10)
    lost = queue.job(sweep)
    assert lost.state == "interrupted" and "everything it finished before is in the results store" in lost.error
    assert queue.job(later).state == "done"
    assert len(ResultStore().all()) == len(kept) + 1
    leftovers = [p for p in (data_dir / "models").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no half-written checkpoint beside the real ones


def test_one_worker_per_data_folder(data_dir):
    first = worker_process(data_dir)
    try:
        deadline = time.monotonic() + 60
        while not worker.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.is_running()
        second = worker_process(data_dir)
        assert second.wait(60) == 1 and b"already running" in second.stderr.read()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)


def test_a_job_whose_process_dies_is_marked_failed_and_the_worker_goes_on():
    """Each job runs in a child process of the worker; a child killed as the out-of-memory killer would kill it
    takes only its own job down."""
    import threading

    import psutil

    queue = JobQueue()
    doomed = queue_sweep(queue, PRESENTER, "s-p", techniques=["fp32", "bf16", "fp16", "dyn-int8"], repeats=3)
    after = queue_sweep(queue, PRESENTER, "s-p")
    loop = threading.Thread(target=worker.serve, kwargs={"until_idle": True, "say": lambda m: None})
    loop.start()
    deadline = time.monotonic() + 240
    children = []
    while not children and time.monotonic() < deadline:
        try:
            children = [c for c in psutil.Process().children() if "--job" in c.cmdline()]
        except psutil.Error:  # a child that ended between listing and reading its command line
            children = []
        time.sleep(0.05)
    assert children, "the worker started no child process for the job"
    assert queue.job(doomed).state == "running"
    children[0].kill()
    loop.join(600)
    failed = queue.job(doomed)
    assert failed.state == "failed" and "killed by signal 9" in failed.error and "/" not in failed.error
    assert queue.job(after).state == "done"


def test_a_viewer_sees_a_failed_job_without_server_paths_and_who_started_each_job(monkeypatch):
    monkeypatch.setenv(roles.CLASSROOM_ENV, "1")
    queue = JobQueue()
    failed = queue.submit("sweep", sweep_args(), "Sweep A", "sweep", PRESENTER, "s-p")
    queue.claim(os.getpid())
    queue.finish(failed, "failed", "OSError: cannot read /srv/lab/data/models/secret/config.json")
    queue.submit("sweep", sweep_args(), "Sweep B", "sweep", PRESENTER, "s-p")
    queue.claim(os.getpid())
    queue.submit("sweep", sweep_args(), "Sweep C", "sweep", "viewer 3", "s-c")
    at = AppTest.from_file(str(ROOT / "pages" / "quantize.py"), default_timeout=60).run()
    assert not at.exception
    shown = " ".join(e.value for e in at.error)
    assert "<server path>" in shown and "/srv/lab" not in shown
    assert "Sweep B (presenter)" in at.get("progress")[0].proto.text
    assert any("Sweep C (viewer 3" in c.value and "starts" in c.value for c in at.caption)
    assert not any(b.label in ("Stop", "Cancel") for b in at.button)  # a viewer may stop neither


def test_the_job_panel_pauses_while_the_worker_is_in_a_timing_phase_and_goes_live_after():
    """A live panel redraws on a timer; during a timing phase the page draws it paused (no timer) and says why."""
    queue = JobQueue()
    queue.submit("sweep", sweep_args(), "Sweep A", "sweep", PRESENTER, "s-p")
    queue.claim(os.getpid())
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/quantize.py").run()
    paused = lambda: any("timing a model now" in c.value for c in at.caption)  # noqa: E731
    assert not at.exception and not paused() and at.session_state["lab_panel_paused"] is False
    with quiet.Gate(lab_data_dir()).timing_phase():
        at.run()
        assert not at.exception and paused() and at.session_state["lab_panel_paused"] is True
        assert "Sweep A (presenter)" in at.get("progress")[0].proto.text  # still shows where the job stands
    at.run()
    assert not paused() and at.session_state["lab_panel_paused"] is False


def test_a_viewers_panel_keeps_ticking_through_a_timing_phase(monkeypatch):
    """A viewer's browser is on the viewer's machine: its panel waits its turn instead of switching to paused."""
    monkeypatch.setenv(roles.CLASSROOM_ENV, "1")
    queue = JobQueue()
    queue.submit("sweep", sweep_args(), "Sweep A", "sweep", PRESENTER, "s-p")
    queue.claim(os.getpid())
    at = AppTest.from_file(str(ROOT / "pages" / "quantize.py"), default_timeout=60)
    with quiet.Gate(lab_data_dir()).timing_phase():
        at.run()
    assert not at.exception and at.session_state["lab_panel_paused"] is False
    assert not any("timing a model now" in c.value for c in at.caption)


def test_a_killed_server_does_not_stop_the_worker_it_started(data_dir):
    """The dashboard starts the worker in a session of its own, so SIGKILL of the server leaves the sweep running."""
    queue = JobQueue()
    job = queue_sweep(queue, PRESENTER, "s-p")
    env = os.environ | {"LAB_DATA_DIR": str(data_dir), "LAB_SHOW_TEST_MODELS": "1", "LAB_WORKER_AUTOSTART": "1",
                        "LAB_WORKER_IDLE_EXIT_S": "5"}
    server = subprocess.Popen([sys.executable, "-c", "from core.launch import worker; worker.ensure_running(); "
                               "import time; time.sleep(120)"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while not worker.is_running() and time.monotonic() < deadline:
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 180
        while queue.job(job).state in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queue.job(job).state == "done" and len(ResultStore().all()) == 1
    finally:
        pid = worker.running_pid()
        if pid:
            os.kill(pid, signal.SIGKILL)


def test_a_session_that_left_stops_counting_but_still_counts_for_the_time_it_was_there():
    queue = JobQueue()
    before = time.time()
    assert queue.heartbeat("a") == 1 and queue.heartbeat("b") == 2 and queue.heartbeat("a") == 1
    queue.mark_left(["b"])
    assert queue.sessions_connected() == 1
    assert queue.sessions_connected(since_s=before) == 2  # b was connected during a job that began before it left
    assert queue.open_sessions() == ["a"]


def test_the_presenters_stop_reaches_the_running_sweep_which_keeps_what_it_finished():
    import threading

    queue = JobQueue()
    many = ["fp32", "bf16", "fp16", "dyn-int8", "fp32", "bf16", "fp16", "dyn-int8"]
    job = queue_sweep(queue, PRESENTER, "s-p", techniques=many, repeats=3)
    loop = threading.Thread(target=worker.serve, kwargs={"until_idle": True, "say": lambda m: None})
    loop.start()
    deadline = time.monotonic() + 600  # generous: on a busy 2-core machine the first variant can take minutes
    while not ResultStore().all() and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.stop(job, "s-p", presenter=True)
    loop.join(600)
    ended = queue.job(job)
    assert ended.state == "cancelled", ended.error
    assert 1 <= len(ResultStore().all()) < len(many)


def all_text(at: AppTest) -> str:
    """Every string the page drew, main area and sidebar, tables and metrics included."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success",
                 "text", "code", "json", "metric", "dataframe", "table", "exception"):
        for element in getattr(at, kind, []):
            value = getattr(element, "value", "")
            parts.append(value.to_string() if hasattr(value, "to_string") else str(value))
            parts.append(str(getattr(element, "label", "")))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["quantize", "tradeoff_map", "decide", "report", "moe", "lora", "distill", "arena"])
def test_no_page_shows_a_viewer_a_server_path(monkeypatch, tiny_dir, name):
    from core import models
    from tests.factories import make_record
    from tests.test_pages import HERE, seed_distillation, seed_sweep

    monkeypatch.setenv(roles.CLASSROOM_ENV, "1")
    monkeypatch.setattr(models, "prepare", lambda spec, progress=None: tiny_dir)
    store = ResultStore()
    seed_sweep(store)
    seed_distillation(store)
    store.add(make_record(model="smollm2-135m-instruct", technique="bf16", hardware=HERE,
                          settings={"eval_set": str(ROOT / "assets" / "mc.jsonl"), "ppl_text": str(tiny_dir / "t.txt")}))
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = all_text(at)
    assert len(shown) > 300  # the page drew its content, not just a guard
    for secret in (str(ROOT), str(tiny_dir), os.environ["LAB_DATA_DIR"], "/data/students"):
        assert secret not in shown, (name, secret)


def test_viewer_text_hides_server_paths_but_not_technique_lists():
    text = roles.hide_paths("could not read /home/lab/data/models/x.safetensors while measuring fp32/bf16/nf4")
    assert "/home" not in text and "<server path>" in text and "fp32/bf16/nf4" in text


def test_a_viewers_report_files_carry_no_server_path_and_the_same_numbers():
    from core.views import report
    from tests.factories import make_record

    record = make_record(settings={"eval_set": "/srv/lab/data/uploads/mc.jsonl", "seed": 0, "repeats": 10},
                         notes="checkpoint in /srv/lab/data/models/student", decode_tokens_per_s_median=12.5)
    seen = roles.without_paths(record)
    assert seen.settings == {"eval_set": "<server path>", "seed": 0, "repeats": 10}
    assert seen.decode_tokens_per_s_median == 12.5 and seen.record_id == record.record_id
    bundle = report.build_report([seen], "SmolLM2", "kld_mean", {"model": "m"}, commit="abc")
    for text in (bundle.html, bundle.csv, bundle.json):
        assert "/srv/lab" not in text
    assert "/srv/lab" in report.build_report([record], "SmolLM2", "kld_mean", {"model": "m"}, commit="abc").json


def test_an_upload_that_fails_validation_is_not_kept():
    from core.launch import uploads

    def refuse(path):
        raise ValueError("line 1 is not JSON")

    with pytest.raises(ValueError, match="eval.jsonl: line 1 is not JSON"):
        uploads.keep_upload("eval.jsonl", b"nonsense", refuse)
    assert list((lab_data_dir() / "uploads").iterdir()) == []
    with pytest.raises(ValueError, match="more than the 5 MB"):
        uploads.keep_upload("big.txt", b"x" * (uploads.MAX_UPLOAD_BYTES + 1), lambda p: None)


def test_only_the_presenter_is_offered_a_folder_or_hub_id_and_test_models_need_asking_for(monkeypatch):
    from core import models

    monkeypatch.delenv("LAB_SHOW_TEST_MODELS", raising=False)
    viewer, presenter = models.offered(presenter=False), models.offered(presenter=True)
    assert models.CUSTOM_CHOICE not in viewer and models.CUSTOM_CHOICE in presenter
    assert models.DEFAULT_MODEL in viewer
    tests_only = {s.key for s in models.BUNDLED.values() if s.for_tests}
    assert tests_only and not tests_only & viewer.keys()
    monkeypatch.setenv("LAB_SHOW_TEST_MODELS", "1")
    assert tests_only <= models.offered(presenter=False).keys()


def test_the_web_server_holds_a_page_request_at_its_door_while_a_model_is_timed(data_dir):
    """A real dashboard server: a rerun sent while the gate is closed starts no page run (no new_session message)
    until the gate opens; then it runs as usual."""
    import asyncio
    import socket
    import urllib.request

    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"LAB_DATA_DIR": str(data_dir), "LAB_WORKER_AUTOSTART": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "ui.server", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)

        async def messages(ws, seconds: float) -> list[str]:
            """The kinds of the messages that arrive within `seconds`, up to the end of a script run."""
            kinds, end = [], time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    fm = ForwardMsg.FromString(await asyncio.wait_for(ws.recv(), left))
                except asyncio.TimeoutError:
                    break
                kinds.append(fm.WhichOneof("type"))
                if kinds[-1] == "script_finished":
                    break
            return kinds

        async def session() -> tuple[list[str], list[str]]:
            rerun = BackMsg()
            rerun.rerun_script.query_string = ""
            async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                                          max_size=2**26) as ws:
                await ws.send(rerun.SerializeToString())
                assert "script_finished" in await messages(ws, 60)  # the first page run puts the door in place
                gate = quiet.Gate(data_dir)
                with gate.timed_run():
                    await ws.send(rerun.SerializeToString())
                    held = await messages(ws, 1.5)
                return held, await messages(ws, 60)

        held, after = asyncio.run(session())
    finally:
        proc.terminate()
        proc.wait(20)
    assert "new_session" not in held  # no page run started while the model was timed
    assert after[0] == "new_session" and after[-1] == "script_finished"
