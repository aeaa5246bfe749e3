"""Timed runs and page runs take turns through two lock files (core/launch/quiet.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

from core.launch import door as door_module, quiet
from core.measure import benchmark, others
from core.runtimes import as_runner


def _in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def settled(others_share: float) -> SimpleNamespace:
    """What a timed section yields, as benchmark.timed_generation reads it."""
    return SimpleNamespace(others_share=others_share, disturbed=others_share >= quiet.QUIET_SHARE)


def test_a_timed_run_waits_for_the_page_runs_already_going(tmp_path):
    gate, events = quiet.Gate(tmp_path), []
    page_started = threading.Event()

    def page():
        with gate.page_run():
            page_started.set()
            time.sleep(0.3)
            events.append("page done")

    t = _in_thread(page)
    page_started.wait(5)
    with gate.timed_run():
        events.append("timing")
    t.join(5)
    assert events == ["page done", "timing"]
    assert gate.stats.timed_runs == 1 and gate.stats.undrained_runs == 0
    assert gate.stats.drain_wait_s[0] >= 0.2


def test_no_page_starts_while_a_model_is_timed(tmp_path):
    gate, events = quiet.Gate(tmp_path), []
    timing = threading.Event()

    def page():
        timing.wait(5)
        with gate.page_run() as in_turn:
            events.append(("page", in_turn))

    t = _in_thread(page)
    with gate.timed_run():
        timing.set()
        time.sleep(0.3)
        events.append("timed run over")
    t.join(5)
    assert events == ["timed run over", ("page", True)]


def test_a_page_waiting_through_back_to_back_timed_runs_gets_in_between_them(tmp_path):
    """A variant's repeats are timed back to back: a page that waited for one gets its turn before the next."""
    gate, events = quiet.Gate(tmp_path), []
    first_run = threading.Event()

    def page():
        first_run.wait(5)
        with gate.page_run(wait_s=10) as in_turn:
            events.append(("page", in_turn))

    t = _in_thread(page)
    for i in range(3):
        with gate.timed_run():
            first_run.set()
            time.sleep(0.3)
            events.append(f"run {i}")
    t.join(5)
    assert events == ["run 0", ("page", True), "run 1", "run 2"]


def test_with_no_page_waiting_timed_runs_do_not_wait_to_let_pages_in(tmp_path):
    gate = quiet.Gate(tmp_path)
    t0 = time.monotonic()
    for _ in range(5):
        with gate.timed_run():
            pass
    assert time.monotonic() - t0 < quiet.LET_IN_S  # nobody waiting: no turn is held open


def test_a_page_runs_anyway_when_the_gate_stays_closed_too_long(tmp_path):
    gate = quiet.Gate(tmp_path)
    outcome = []
    with gate.timed_run():
        t = _in_thread(lambda: outcome.append(gate.page_run(wait_s=0.1).__enter__()))
        t.join(5)
    assert outcome == [False]


def test_a_timed_run_starts_anyway_after_its_drain_bound_and_says_so(tmp_path):
    gate = quiet.Gate(tmp_path)
    held, release = threading.Event(), threading.Event()

    def stuck_page():
        with gate.page_run():
            held.set()
            release.wait(5)

    t = _in_thread(stuck_page)
    held.wait(5)
    with gate.timed_run(drain_s=0.1):
        pass
    release.set()
    t.join(5)
    assert gate.stats.undrained_runs == 1
    assert gate.stats.settings()["timed_runs_with_pages_running"] == 1


def test_a_fragment_inside_its_page_never_waits_on_the_gate(tmp_path):
    """Page holds its turn, a timed run closes the gate and waits; the page's own fragment must not wait too."""
    gate = quiet.Gate(tmp_path)
    nested_s = []
    closing = threading.Event()

    def page():
        with gate.page_run():
            closing.wait(5)
            time.sleep(0.1)  # the timed run below is now waiting for this page
            t0 = time.monotonic()
            with gate.page_run() as in_turn:
                nested_s.append((time.monotonic() - t0, in_turn))

    t = _in_thread(page)
    time.sleep(0.1)
    closing.set()
    with gate.timed_run(drain_s=5):
        pass
    t.join(5)
    assert nested_s and nested_s[0][1] is True and nested_s[0][0] < 0.05
    assert gate.stats.undrained_runs == 0


def test_a_killed_worker_leaves_no_page_waiting(tmp_path):
    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "gate.lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    proc.kill()
    proc.wait(5)
    t0 = time.monotonic()
    with quiet.Gate(tmp_path).page_run(wait_s=5) as in_turn:
        assert in_turn
    assert time.monotonic() - t0 < 1.0


def test_timed_generation_holds_the_installed_section(tiny, quiet_machine):
    model, tokenizer = tiny
    entered = []

    class Section:
        def __enter__(self):
            entered.append("in")

        def __exit__(self, *exc):
            entered.append("out")

    benchmark.set_timed_section(Section)
    try:
        ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
        benchmark.timed_generation(as_runner(model), ids, 4)
    finally:
        benchmark.set_timed_section(None)
    assert entered == ["in", "out"]
    benchmark.timed_generation(as_runner(model), ids, 4)  # the no-op again
    assert entered == ["in", "out"]


def test_a_run_while_other_processes_take_the_cores_is_reported_disturbed(tmp_path):
    spin = "import time; end = time.monotonic() + 1.0\nwhile time.monotonic() < end: pass"
    gate = quiet.Gate(tmp_path)
    with gate.timed_run() as turn:
        spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
        for p in spinners:
            p.wait(30)
    assert turn.others_share is not None and turn.others_share > quiet.QUIET_SHARE
    assert turn.disturbed and gate.stats.timed_runs == 1


def test_a_disturbed_run_is_timed_again(tiny):
    model, tokenizer = tiny
    turns = iter([settled(0.5), settled(0.2), settled(0.0)])
    # one retry: the second run is kept even though it was disturbed too
    attempts = []

    @contextlib.contextmanager
    def section():
        attempts.append(1)
        yield next(turns)

    benchmark.set_timed_section(section)
    try:
        ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
        run = benchmark.timed_generation(as_runner(model), ids, 4)
    finally:
        benchmark.set_timed_section(None)
    assert len(attempts) == 1 + benchmark.DISTURBED_RETRIES and len(run.token_ids) == 4



def test_a_timing_phase_is_seen_by_pages_and_announced_only_when_someone_watches(tmp_path, monkeypatch):
    monkeypatch.setattr(quiet, "NOTICE_S", 0.3)
    gate = quiet.Gate(tmp_path)
    assert not gate.timing_now()
    seen = []
    t0 = time.monotonic()
    with gate.timing_phase(watched=lambda: True):
        waited_s = time.monotonic() - t0
        seen.append(quiet.Gate(tmp_path).timing_now())  # as a page would ask: its own file descriptor
    assert seen == [True] and waited_s >= 0.3
    assert not gate.timing_now()
    t0 = time.monotonic()
    with gate.timing_phase(watched=lambda: False):
        assert time.monotonic() - t0 < 0.2  # nobody watching: no notice
        assert gate.timing_now()


def test_a_timing_phase_is_over_when_the_worker_dies(tmp_path):
    """flock is released by the kernel, so a killed worker never leaves panels paused."""
    hold = ("import sys, time; from core.launch import quiet; g = quiet.Gate(sys.argv[1])\n"
            "with g.timing_phase():\n    print('in', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert child.stdout.readline().strip() == b"in"
        assert quiet.Gate(tmp_path).timing_now()
    finally:
        child.kill()
        child.wait(10)
    assert not quiet.Gate(tmp_path).timing_now()


def test_bench_generation_holds_one_phase_around_its_warmup_and_repeats(tiny):
    model, tokenizer = tiny
    events = []

    @contextlib.contextmanager
    def section():
        events.append("run")
        yield settled(0.0)

    @contextlib.contextmanager
    def phase():
        events.append("phase in")
        yield
        events.append("phase out")

    benchmark.set_timed_section(section, phase)
    try:
        ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
        benchmark.bench_generation(as_runner(model), ids, 4, warmup=1, repeats=2)
    finally:
        benchmark.set_timed_section(None)
    assert events == ["phase in", "run", "run", "run", "phase out"]


# ---------------------------------------------------------------- long runs let pages in between their steps


def test_a_long_timed_run_lets_a_waiting_page_in_between_its_steps(tmp_path, monkeypatch):
    """A generation longer than TURN_S (a slow variant) must not hold pages for all of it: they get in between two
    steps, and no page runs while a step is timed."""
    monkeypatch.setattr(quiet, "TURN_S", 0.3)
    gate, events = quiet.Gate(tmp_path), []
    stepping = threading.Event()

    def page():
        stepping.wait(5)
        with gate.page_run(wait_s=10) as in_turn:
            events.append(("page", in_turn))

    t = _in_thread(page)
    with gate.timed_run() as turn:
        for i in range(8):
            stepping.set()
            events.append(f"step {i} in")
            time.sleep(0.1)
            events.append(f"step {i} out")
            turn.between_steps()
    t.join(5)
    page_at = events.index(("page", True))
    assert 0 < page_at < len(events) - 1  # in the middle of the run, not after it
    assert events[page_at - 1].endswith(" out") and events[page_at + 1].endswith(" in")  # between two steps
    assert turn.turns_between_steps == 1
    assert gate.stats.settings()["page_turns_between_decode_steps"] == 1
    assert gate.stats.timed_runs == 1 and gate.stats.undrained_runs == 0


def test_with_no_page_waiting_a_long_run_keeps_the_gate_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(quiet, "TURN_S", 0.0)
    gate = quiet.Gate(tmp_path)
    with gate.timed_run() as turn:
        for _ in range(5):
            turn.between_steps()
            assert gate.closed()
    assert turn.turns_between_steps == 0 and not gate.closed()


def test_timed_generation_offers_a_turn_after_every_step(tiny):
    model, tokenizer = tiny
    offered = []

    @contextlib.contextmanager
    def section():
        yield SimpleNamespace(others_share=0.0, between_steps=lambda: offered.append(1))

    benchmark.set_timed_section(section)
    try:
        ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
        run = benchmark.timed_generation(as_runner(model), ids, 6)
    finally:
        benchmark.set_timed_section(None)
    assert len(offered) == 6 and run.decode_tokens == 5


def test_time_between_steps_is_not_timed(tiny):
    """Letting pages in between two steps must not show in the timing: a step's time is its own."""
    model, tokenizer = tiny
    ids = tokenizer("hello there", return_tensors="pt")["input_ids"]
    plain = benchmark.timed_generation(as_runner(model), ids, 6)

    @contextlib.contextmanager
    def section():
        yield SimpleNamespace(others_share=0.0, between_steps=lambda: time.sleep(0.2))

    benchmark.set_timed_section(section)
    try:
        paused = benchmark.timed_generation(as_runner(model), ids, 6)
    finally:
        benchmark.set_timed_section(None)
    assert paused.token_ids == plain.token_ids
    assert paused.ttft_s + paused.decode_s < 0.5  # six pauses of 0.2 s took 1.2 s of wall time, none of it timed


def test_the_others_share_counts_only_the_closed_stretches(tmp_path, monkeypatch):
    """Pages let in between steps use the cores meanwhile; that is their turn, not a disturbance of the run. The
    machine's CPU counter is a stand-in here, so that the test does not depend on how busy this machine is."""
    monkeypatch.setattr(quiet, "TURN_S", 0.0)
    others_busy_s = [0.0]
    monkeypatch.setattr(others, "machine_busy_s", lambda: others_busy_s[0])
    monkeypatch.setattr(others, "own_busy_s", lambda: 0.0)
    gate = quiet.Gate(tmp_path)

    def page():
        with gate.page_run(wait_s=10):
            others_busy_s[0] += 100.0  # the page's turn keeps every core busy

    def timed(page_in_closed_stretch: bool) -> quiet.Turn:
        with gate.timed_run() as turn:
            t = _in_thread(page)
            while not gate.pages_waiting():
                time.sleep(0.01)
            turn.between_steps()  # the page gets its turn here
            t.join(30)
            if page_in_closed_stretch:
                others_busy_s[0] += 100.0
            time.sleep(0.05)
        return turn

    quiet_run = timed(page_in_closed_stretch=False)
    assert quiet_run.turns_between_steps == 1
    assert quiet_run.others_share == 0.0 and not quiet_run.disturbed
    assert timed(page_in_closed_stretch=True).disturbed  # the same load while closed does count


# ---------------------------------------------------------------- the web server's door


class DoorServer:
    """Stands in for the web server's event loop: delivered requests run on one thread, in order."""

    def __init__(self):
        import queue

        self.inbox, self.done = queue.Queue(), []
        self.thread = _in_thread(self._loop)

    def _loop(self):
        while (request := self.inbox.get()) is not None:
            request()

    def deliver(self, request):
        self.inbox.put(request)

    def stop(self):
        self.inbox.put(None)
        self.thread.join(5)


def test_the_door_lets_requests_through_while_the_gate_is_open(tmp_path):
    server = DoorServer()
    door = door_module.Door(quiet.Gate(tmp_path), server.deliver)
    assert door.offer("s1", lambda: None, starts_run=True) is False
    server.stop()


def test_the_door_holds_page_requests_while_a_model_is_timed_and_keeps_their_order(tmp_path):
    gate, server = quiet.Gate(tmp_path), DoorServer()
    door = door_module.Door(gate, server.deliver)
    got = []
    with gate.timed_run():
        assert door.offer("s1", lambda: got.append("s1 rerun"), starts_run=True)
        assert door.offer("s1", lambda: got.append("s1 heartbeat"), starts_run=False)  # behind its rerun
        assert not door.offer("s2", lambda: None, starts_run=False)  # nothing of s2 held: not a page run
        time.sleep(0.3)
        assert got == [] and door.held_sessions() == 1
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop()
    assert got == ["s1 rerun", "s1 heartbeat"]
    assert door.held_sessions() == 0


def test_requests_held_at_the_door_get_their_turn_between_back_to_back_timed_runs(tmp_path):
    """The worker lets pages waiting at the door in between two timed runs, as it does pages waiting at the gate:
    the page run a held request starts gets its turn before the next run closes the gate."""
    gate, server, events = quiet.Gate(tmp_path), DoorServer(), []

    def page_run():  # what Streamlit does with a delivered rerun: a page run in a thread of its own
        def run():
            with gate.page_run(wait_s=10) as in_turn:
                events.append(("page", in_turn))
        _in_thread(run)

    door = door_module.Door(gate, server.deliver)
    for i in range(3):
        with gate.timed_run():
            if i == 0:
                assert door.offer("s1", page_run, starts_run=True)
            time.sleep(0.3)
            events.append(f"run {i}")
    server.stop()
    assert events == ["run 0", ("page", True), "run 1", "run 2"]


def test_a_request_held_too_long_is_let_in_and_its_page_does_not_wait_again(tmp_path):
    gate, server, got = quiet.Gate(tmp_path), DoorServer(), []
    door = door_module.Door(gate, server.deliver, wait_s=0.3)
    with gate.timed_run():
        door.offer("s1", lambda: got.append(time.monotonic()), starts_run=True)
        t0 = time.monotonic()
        time.sleep(1.0)
        assert got and 0.25 < got[0] - t0 < 0.9  # let in while the gate is still closed
    server.stop()
    assert 0.25 < door.waited_s("s1") < 0.9
    assert door.waited_s("s1") == 0.0  # told once


def test_after_pages_had_a_turn_the_timed_run_lets_their_aftermath_settle(tmp_path, monkeypatch):
    """The web server still sends what a page drew, and a browser draws it, after the page run ends: a timed run that
    let pages in waits SETTLE_S before its first step; one that let nobody in does not wait."""
    gate, sleeps = quiet.Gate(tmp_path), []
    monkeypatch.setattr(quiet, "SETTLE_S", 0.0123)  # a value nothing else sleeps for
    real_sleep = time.sleep
    monkeypatch.setattr(quiet.time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    with gate.timed_run():
        pass
    assert 0.0123 not in sleeps
    page_started = threading.Event()

    def page():
        with gate.page_run():
            page_started.set()
            real_sleep(0.2)

    t = _in_thread(page)
    page_started.wait(5)
    with gate.timed_run():
        assert sleeps.count(0.0123) == 1
    t.join(5)


def test_the_doors_wait_for_the_gate_ends_when_the_gate_opens_and_lets_it_go_when_done(tmp_path):
    gate = quiet.Gate(tmp_path)
    with gate.timed_run():
        opening = door_module._GateOpening(gate.gate_path)
        assert not opening.wait(0.2)  # closed: no wake-up, no answer
        abandoned = opening
        abandoned.done()
        opening = door_module._GateOpening(gate.gate_path)
        t0 = time.monotonic()
    assert opening.wait(5) and time.monotonic() - t0 < 1.0
    assert gate.closed() is False
    opening.done()
    # Neither the done opening nor the one given up while the gate was closed keeps it: a timed run closes it at once.
    t0 = time.monotonic()
    with gate.timed_run():
        assert gate.stats.undrained_runs == 0
    assert time.monotonic() - t0 < quiet.LET_IN_S
