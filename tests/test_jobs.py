import threading

import pytest

from core.launch.jobs import BusyError, JobSlot, Stopped


def test_job_reports_progress_and_result():
    slot = JobSlot()
    job = slot.start("add", lambda report, stop: (report(0.5, "half"), 42)[1])
    job.join(5)
    snap = job.snapshot()
    assert snap.status == "done" and snap.result == 42 and snap.fraction == 1.0
    assert "half" in snap.log


def test_second_job_is_refused_while_one_runs():
    slot, gate = JobSlot(), threading.Event()
    first = slot.start("wait", lambda report, stop: gate.wait(5))
    with pytest.raises(BusyError, match="still running"):
        slot.start("other", lambda report, stop: None)
    gate.set()
    first.join(5)
    slot.start("after", lambda report, stop: None).join(5)  # a finished job frees the slot


def test_cancel_is_seen_by_the_work_and_kept_results_survive():
    kept, slot = [], JobSlot()

    def work(report, stop):
        for i in range(1000):
            if stop():
                raise Stopped(f"stopped after {i}")
            kept.append(i)
            report(i / 1000, f"step {i}")
            threading.Event().wait(0.001)

    job = slot.start("loop", work)
    while not kept:
        threading.Event().wait(0.001)
    job.cancel()
    job.join(5)
    snap = job.snapshot()
    assert snap.status == "cancelled" and "stopped after" in snap.error
    assert 0 < len(kept) < 1000


def test_failure_is_one_readable_line():
    job = JobSlot().start("bad", lambda report, stop: (_ for _ in ()).throw(ValueError("eval set is empty")))
    job.join(5)
    snap = job.snapshot()
    assert snap.status == "failed" and snap.error == "eval set is empty"
