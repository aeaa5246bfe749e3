"""What other processes used of the machine during timed runs (core/measure/others.py), and what a record says."""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

import pytest
import torch

from core.measure import benchmark, others
from core.runtimes import as_runner


class FakeMachine:
    """/proc/stat's busy seconds of all processes, this process's own, and the clock, moved by hand."""

    def __init__(self, monkeypatch):
        self.t, self.busy, self.own = 100.0, 1000.0, 10.0
        monkeypatch.setattr(others, "machine_busy_s", lambda: self.busy)
        monkeypatch.setattr(others, "own_busy_s", lambda: self.own)
        monkeypatch.setattr(others, "time", SimpleNamespace(monotonic=lambda: self.t))

    def run(self, wall_s: float, own_s: float, others_s: float) -> None:
        self.t += wall_s
        self.own += own_s
        self.busy += own_s + others_s


def test_the_meter_counts_the_others_not_this_process(monkeypatch):
    machine, cores = FakeMachine(monkeypatch), os.cpu_count() or 1
    meter = others.OthersMeter()
    machine.run(wall_s=2.0, own_s=2.0 * cores, others_s=0.0)  # this process alone keeps every core busy
    assert meter.share() == 0.0
    meter = others.OthersMeter()
    machine.run(wall_s=2.0, own_s=1.0, others_s=1.0)  # another process holds one core for the whole run
    assert meter.share() == pytest.approx(1.0 / (2.0 * cores))


def test_a_paused_meter_leaves_out_what_happened_meanwhile(monkeypatch):
    machine, cores = FakeMachine(monkeypatch), os.cpu_count() or 1
    meter = others.OthersMeter()
    machine.run(wall_s=1.0, own_s=0.5, others_s=0.2)
    meter.pause()
    machine.run(wall_s=5.0, own_s=0.0, others_s=5.0 * cores)  # pages had their turn: not the run's disturbance
    meter.resume()
    machine.run(wall_s=1.0, own_s=0.5, others_s=0.2)
    assert meter.share() == pytest.approx(0.4 / (2.0 * cores))


def test_off_linux_the_share_is_unknown_not_zero(monkeypatch):
    monkeypatch.setattr(others, "machine_busy_s", lambda: None)
    meter = others.OthersMeter()
    assert meter.share() is None
    assert not others.is_disturbed(None)


def test_a_record_whose_runs_all_stayed_disturbed_reports_the_share_and_is_busy():
    """The teacher's case: another process held a core for every run, so no run was ever kept clean. The share
    is still reported (the worker used to write 0.0 here) and the record says it is unreliable."""
    load = others.OthersLoad(attempts=(0.48, 0.51, 0.47, 0.52, 0.50, 0.49), kept=(0.51, 0.52, 0.49))
    s = load.settings()
    assert s["other_processes_cpu_pct_median"] == pytest.approx(49.5)
    assert s["other_processes_cpu_pct_max"] == pytest.approx(52.0)
    assert s["timed_runs_measured"] == 6 and s["timed_runs_disturbed"] == 6
    assert s["timed_runs_disturbed_and_repeated"] == 3 and s["timed_runs_kept_disturbed"] == 3
    assert s["busy_machine"] is True
    assert others.read(s).busy is True and others.read(s).cpu_pct_max == pytest.approx(52.0)


def test_a_record_whose_retries_came_back_quiet_is_not_busy():
    load = others.OthersLoad(attempts=(0.30, 0.01, 0.02, 0.25, 0.01), kept=(0.01, 0.02, 0.01))
    s = load.settings()
    assert s["busy_machine"] is False and s["timed_runs_disturbed"] == 2 and s["timed_runs_kept_disturbed"] == 0
    assert s["other_processes_cpu_pct_max"] == pytest.approx(30.0)  # over every run, the repeated ones included


@pytest.mark.parametrize("kept_disturbed, busy", [(2, False), (3, True)])
def test_busy_when_the_median_run_may_be_disturbed(kept_disturbed, busy):
    kept = (0.3,) * kept_disturbed + (0.0,) * (5 - kept_disturbed)
    assert others.OthersLoad(attempts=kept, kept=kept).busy is busy


def test_unknown_is_written_as_none():
    s = others.OthersLoad(attempts=(None, None), kept=(None, None)).settings()
    assert s["other_processes_cpu_pct_median"] is None and s["other_processes_cpu_pct_max"] is None
    assert s["busy_machine"] is None and s["timed_runs_disturbed"] is None
    assert not others.read(s).known


def test_records_from_before_every_run_was_metered_read_as_unknown():
    old = {"other_processes_cpu_pct_median": 0.0, "other_processes_cpu_pct_max": 0.0,
           "timed_runs_disturbed_and_repeated": 5}  # what the worker wrote when no run was kept clean
    reading = others.read(old)
    assert reading.cpu_pct_max is None and reading.busy is None and not reading.known


class Steps:
    """A runner whose every step makes another process use the machine (through the fake counters)."""

    def __init__(self, machine: FakeMachine, others_s_per_step: float):
        self.machine, self.others_s, self.runs = machine, others_s_per_step, 0

    def stream(self, input_ids, new_tokens, clock):
        self.runs += 1
        for i in range(new_tokens):
            self.machine.run(wall_s=0.1, own_s=0.1, others_s=self.others_s)
            yield i, 0.1 * (i + 1)


def test_a_cli_run_measures_the_others_and_times_a_disturbed_run_again(monkeypatch):
    """No worker and no gate (the CLI): the timing primitive meters every run itself."""
    machine = FakeMachine(monkeypatch)
    runner = Steps(machine, others_s_per_step=0.1)  # a whole core's worth beside the run
    bench = benchmark.bench_generation(runner, torch.ones(1, 3, dtype=torch.long), 4, warmup=1, repeats=3)
    assert runner.runs == (1 + 3) * (1 + benchmark.DISTURBED_RETRIES)  # every run disturbed, each timed twice
    share = 1.0 / (os.cpu_count() or 1)
    s = bench.others_load.settings()
    assert s["other_processes_cpu_pct_median"] == pytest.approx(100 * share)
    assert s["timed_runs_measured"] == 6 and s["timed_runs_disturbed"] == 6 and s["busy_machine"] is True

    quiet_runner = Steps(machine, others_s_per_step=0.0)
    quiet = benchmark.bench_generation(quiet_runner, torch.ones(1, 3, dtype=torch.long), 4, warmup=1, repeats=3)
    assert quiet_runner.runs == 4
    assert quiet.others_load.settings()["other_processes_cpu_pct_max"] == 0.0  # measured zero: written as 0
    assert quiet.others_load.settings()["busy_machine"] is False


def test_the_sections_own_share_wins_over_the_runs_meter(tiny, monkeypatch):
    """In the worker the gate's Turn counts only its closed stretches; that is the share the run keeps."""
    machine = FakeMachine(monkeypatch)
    model, tokenizer = tiny

    def pages_have_their_turn():
        machine.run(wall_s=1.0, own_s=0.0, others_s=1.0 * (os.cpu_count() or 1))

    @contextlib.contextmanager
    def section():
        yield SimpleNamespace(others_share=0.01, between_steps=pages_have_their_turn)

    benchmark.set_timed_section(section)
    try:
        run = benchmark.timed_generation(as_runner(model), tokenizer("hi", return_tensors="pt")["input_ids"], 3)
    finally:
        benchmark.set_timed_section(None)
    assert run.others_shares == (0.01,)
