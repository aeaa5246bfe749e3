"""A sweep while another process holds every core: the record carries the measured share and the busy verdict, and
the map and Decide mark it unreliable. From the CLI (no worker, no gate) and through the worker's gate alike."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import pytest

from core.experiments import sweep
from core.launch import launch
from core.launch.job import Job
from core.launch.jobqueue import PRESENTER, JobQueue
from core.launch.kinds.measure import SweepArgs
from core.measure import others
from core.store import ResultStore
from core.views import busy, recommend, tradeoff_map
from tests.factories import run_queued_jobs_here

HOG_S = 60.0  # the hog stops by itself after this long, and is killed as soon as the test is done
# Runs long enough (tens of ms each) that /proc/stat's 10 ms ticks resolve a share of a few percent.
SETTINGS = sweep.SweepSettings(new_tokens=24, repeats=3, warmup_runs=1, mc_max_items=4, ppl_window_tokens=64,
                               ppl_max_tokens=128)


@contextlib.contextmanager
def cpu_hog():
    """One spinning process per core, bounded in time, killed on the way out."""
    spin = f"import time\nend = time.monotonic() + {HOG_S}\nwhile time.monotonic() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.2)  # every spinner started
        yield
    finally:
        for p in hogs:
            p.kill()
        for p in hogs:
            p.wait(10)


def assert_busy(record) -> None:
    s = record.settings
    assert s["other_processes_cpu_pct_median"] is not None
    assert s["other_processes_cpu_pct_median"] > 100 * others.QUIET_SHARE
    assert s["other_processes_cpu_pct_max"] >= s["other_processes_cpu_pct_median"]
    assert s["timed_runs_disturbed"] >= SETTINGS.repeats and s["busy_machine"] is True
    assert s["timed_runs_measured"] == SETTINGS.repeats * 2  # every run was disturbed, so every run was timed twice
    print(f"{record.technique}: others used {s['other_processes_cpu_pct_median']}% of the CPU (median, max "
          f"{s['other_processes_cpu_pct_max']}%), {s['timed_runs_disturbed']} of {s['timed_runs_measured']} timed runs "
          f"disturbed")


@pytest.mark.slow
def test_a_sweep_beside_a_cpu_hog_is_recorded_and_shown_as_timed_on_a_busy_machine(data_dir):
    store = ResultStore()
    t0 = time.monotonic()
    with cpu_hog():
        cli = sweep.run_sweep("tiny-random-llama", ["fp32", "bf16"], SETTINGS, store=store)  # the CLI's path
        launch.submit(JobQueue(), Job(SweepArgs("tiny-random-llama", ("dyn-int8",), SETTINGS), "beside a hog"),
                      PRESENTER, "test")
        run_queued_jobs_here()  # the worker's path: the gate's Turn measures, the timing primitive keeps it
        assert time.monotonic() - t0 < HOG_S, "the sweeps outlasted the hog: the last runs were not disturbed by it"
    records = store.all()
    assert {r.technique for r in records} == {"fp32", "bf16", "dyn-int8"}
    for r in records:
        assert_busy(r)
    worker_record = next(r for r in records if r.technique == "dyn-int8")
    assert "page_drain_wait_ms_max" in worker_record.settings  # it did go through the worker's gate

    fig = tradeoff_map.tradeoff_figure(cli, "kld_mean", "latency")
    assert busy.UNRELIABLE in [t.name for t in fig.data]
    drawn = [s for t in fig.data if t.legendgroup == "family" for s in t.marker.symbol]
    assert drawn and all(s.endswith("-open") for s in drawn)
    hover = " ".join(h for t in fig.data if t.legendgroup == "family" for h in t.customdata)
    assert "Other processes' CPU while timed: " in hover and "unknown" not in hover

    rec = recommend.recommend(cli, recommend.Constraints(objective="fastest"))
    assert not recommend.verdict(rec).startswith("Deploy") and "busy machine" in recommend.verdict(rec)
    assert rec.busy and "of the CPU" in rec.busy and busy.AGAIN in rec.busy
