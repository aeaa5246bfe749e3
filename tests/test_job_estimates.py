"""An estimate for every job kind before its button: from jobs alike here, from a job of another size here, from the
reference machine scaled by this machine's measured speed, and uncertain in words when the machine is busy."""

from __future__ import annotations

import os
import time

import pytest

from core.experiments import machine_speed
from core.launch import estimates, kinds, machine_load, worker
from core.launch.job import Job
from core.launch.jobqueue import PRESENTER, JobEstimate, JobQueue
from core.launch.kinds import prepare
from core.launch.launch import launch, submit
from core.measure import benchmark
from core.techniques import lora

HW = "test machine, 2 cores"


def _done(queue: JobQueue, args, seconds: float, uncorrected_s: float | None = None) -> None:
    """A job of `args` that ended done on HW after `seconds`."""
    kind = kinds.kind_of(args)
    now = time.time()
    queue.record_ended(args.kind, args.to_json(), "past", kind.similar(args), PRESENTER, now - seconds, now,
                       JobEstimate(uncorrected_s, uncorrected_s, HW))


def _lora(steps: int) -> kinds.LoraArgs:
    return kinds.LoraArgs("smollm2-135m-instruct", lora.FinetuneSettings(steps=steps))


def _speed(decode: float = 20.0, train: float = 500.0) -> machine_speed.MachineSpeed:
    return machine_speed.MachineSpeed(HW, "smollm2-135m-instruct", decode, train, 1.0, "now", 0.0)


def test_jobs_alike_here_give_their_median_and_spread():
    queue = JobQueue()
    for seconds in (100, 110, 130):
        _done(queue, _lora(20), seconds)
    est = estimates.estimate_job(_lora(20), queue, HW)
    assert est.seconds == pytest.approx(110, abs=1)
    assert est.low_s <= 100 and est.high_s >= 130 and "3 jobs alike" in est.basis
    assert not est.busy and "about 110 s" in est.words()


def test_a_job_of_another_size_scales_and_says_it_is_rough():
    queue = JobQueue()
    _done(queue, _lora(20), 100)
    est = estimates.estimate_job(_lora(40), queue, HW)
    assert est.seconds == pytest.approx(200, rel=0.01)
    assert "another size" in est.basis and est.high_s / est.low_s == pytest.approx(3.0)  # ±50%


def test_the_learned_correction_multiplies_a_rough_estimate():
    queue = JobQueue()
    _done(queue, _lora(20), 150, uncorrected_s=100)  # took 1.5x what was estimated before correction
    est = estimates.estimate_job(_lora(40), queue, HW)  # 300 s scaled, x1.5
    assert est.seconds == pytest.approx(450, rel=0.01) and est.uncorrected_s == pytest.approx(300, rel=0.01)
    assert "corrected ×1.5" in est.basis


def test_the_reference_machine_is_scaled_by_the_speed_the_kind_is_bound_by():
    args = _lora(20)
    table = {"machine": {"decode_tokens_per_s": 40.0, "train_tokens_per_s": 1000.0},
             "jobs": [{"kind": "lora", "similar": kinds.kind_of(args).similar(args), "size": 160.0, "seconds": 60.0}]}
    est = estimates.estimate_job(args, JobQueue(), HW, speed=_speed(decode=20.0, train=500.0), table=table)
    assert est.seconds == pytest.approx(120)  # trains half as fast as the reference: twice the time
    assert "reference machine" in est.basis and "train speed" in est.basis
    other = estimates.estimate_job(_lora(40), JobQueue(), HW, speed=_speed(decode=20.0, train=500.0), table=table)
    assert other.seconds == pytest.approx(240) and "of another size" in other.basis


def test_with_nothing_to_go_on_it_says_what_will_give_an_estimate_never_zero():
    est = estimates.estimate_job(_lora(20), JobQueue(), HW, table={})
    assert est.seconds is None and "measured in the background" in est.words()
    est = estimates.estimate_job(_lora(20), JobQueue(), HW, speed=_speed(), table={})
    assert est.seconds is None and "no lora job has run here yet" in est.words()
    assert "0 s" not in est.words()


def test_a_busy_machine_makes_the_estimate_uncertain_in_words():
    queue = JobQueue()
    _done(queue, _lora(20), 100)
    est = estimates.estimate_job(_lora(20), queue, HW, others_share=0.5)
    assert "Uncertain" in est.words() and "50% of this machine's CPU" in est.words()
    assert not estimates.estimate_job(_lora(20), queue, HW, others_share=0.02).busy


def test_every_job_keeps_its_machine_so_that_its_time_teaches_the_next_estimate():
    queue = JobQueue()
    job_id = submit(queue, Job(_lora(20)), PRESENTER, "s")
    assert queue.job(job_id).estimate_hardware  # recorded even though no figure was shown


def test_every_registered_kind_has_a_size():
    from tests.test_kinds import SAMPLES  # one sample of every registered kind

    for name, args in SAMPLES.items():
        assert kinds.kind_of(args).size(args) > 0, name


# ---------------------------------------------------------------- the worker's idle preparation


def test_preparation_measures_this_machines_speed_and_keeps_each_step():
    args = kinds.PrepareArgs("tiny-random-llama", gguf=False, teacher_answers=False)
    assert prepare.missing(args) == ["model", "speed"]
    seen = []
    done = launch(Job(args), "inline", report=lambda f, m: seen.append((f, m)))
    assert done.state == "done" and done.result == ["model", "speed"]
    speed = machine_speed.saved(benchmark.hardware_fingerprint("cpu"))
    assert speed is not None and speed.decode_tokens_per_s > 0 and speed.train_tokens_per_s > 0
    # nothing left, so the worker will not queue it again; unless other programs used the machine meanwhile: then
    # the speed is measured again at the next idle moment rather than kept
    assert prepare.missing(args) == ([] if machine_speed.steady(speed) else ["speed"])
    assert seen[-1][0] == pytest.approx(1.0) and "step 2 of 2 (this machine's speed)" in seen[-1][1]


def test_preparation_gives_way_to_a_job_queued_meanwhile():
    queue = JobQueue()
    prep_id = queue.submit("prepare", kinds.PrepareArgs("tiny-random-llama").to_json(), "getting ready", "p",
                           prepare.LAB, "worker")
    claimed = queue.claim(os.getpid())
    submit(queue, Job(_lora(20)), PRESENTER, "s")  # a person's job arrives while the preparation runs
    assert claimed.id == prep_id and worker.run_job(queue, claimed) == "cancelled"
    assert "gave way" in queue.job(prep_id).error
    assert prepare.missing(kinds.PrepareArgs("tiny-random-llama", gguf=False, teacher_answers=False))  # not done


def test_the_idle_worker_queues_the_preparation_once_per_missing_set(monkeypatch):
    monkeypatch.setenv(worker.PREPARE_ENV, "1")
    queue, tried = JobQueue(), set()
    monkeypatch.setattr(prepare, "missing", lambda args: ["speed"])
    assert worker._queue_preparation(queue, tried)
    assert not worker._queue_preparation(queue, tried)  # the same steps are not queued twice by one worker
    (waiting,) = queue.snapshot().waiting
    assert waiting.job.kind == "prepare" and waiting.job.owner == prepare.LAB
    monkeypatch.setenv(worker.PREPARE_ENV, "0")
    assert not worker._queue_preparation(JobQueue(), set())


# ---------------------------------------------------------------- on the pages


def _lora_page() -> "AppTest":
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / "lora.py"), default_timeout=60)


@pytest.mark.usefixtures("fresh_caches")
def test_the_lora_page_shows_its_estimate_and_says_when_the_machine_is_busy(bundled):
    hardware = benchmark.hardware_fingerprint("cpu")
    queue = JobQueue()
    args = kinds.LoraArgs("smollm2-135m-instruct", lora.FinetuneSettings(), "support-routing", None, 0.0, "laptop-cpu")
    kind = kinds.kind_of(args)
    now = time.time()
    for seconds in (300, 320):  # two LoRA runs with the page's default settings ended here
        queue.record_ended("lora", args.to_json(), "past", kind.similar(args), PRESENTER, now - seconds, now,
                           JobEstimate(None, None, hardware))
    machine_load.note(0.02)  # the worker saw a quiet machine a moment ago
    at = _lora_page().run()
    lines = [e.value for e in [*at.caption, *at.warning] if "Estimated time here" in e.value]
    assert lines and "about 5.2 min" in lines[0] and "2 jobs alike" in lines[0] and "Uncertain" not in lines[0]
    machine_load.note(0.6)  # a video call took more than a core
    at = _lora_page().run()
    (warned,) = [w.value for w in at.warning if "Estimated time here" in w.value]
    assert "Uncertain" in warned and "60% of this machine's CPU" in warned


def test_a_job_that_ran_beside_busy_programs_teaches_no_estimate():
    queue = JobQueue()
    _done(queue, _lora(20), 100)
    _done(queue, _lora(20), 190)
    slow = queue.finished_here("lora", HW)[0]  # the newest: the 190 s one, beside a video call
    queue.note_others(slow.id, 0.22)
    est = estimates.estimate_job(_lora(20), queue, HW)
    assert est.seconds == pytest.approx(100, abs=1) and "1 job alike" in est.basis
    queue.note_others(queue.finished_here("lora", HW)[1].id, 0.3)  # none quiet: then all of them count
    assert estimates.estimate_job(_lora(20), queue, HW).seconds == pytest.approx(145, abs=1)


def test_the_arena_is_not_locked_by_the_idle_preparation_which_gives_way_to_it():
    from core.launch.arena_gate import arena_gate

    queue = JobQueue()
    queue.submit("prepare", kinds.PrepareArgs("tiny-random-llama").to_json(), "getting ready", "p", prepare.LAB,
                 "worker")
    claimed = queue.claim(os.getpid())
    assert not arena_gate(queue.snapshot(), presenter=False, other_lease_s=None, worker_up=True).locked
    assert queue.hold("arena-session")  # the Arena takes the machine
    assert worker._someone_waits(queue)  # and the preparation sees it must give way
    assert worker.run_job(queue, claimed) == "cancelled" and queue.job(claimed.id).error == prepare.GAVE_WAY


def _distill(**settings) -> kinds.DistillArgs:
    from core.techniques import distillation

    return kinds.DistillArgs("smollm2-135m-instruct", distillation.DistillSettings(**settings))


def test_a_training_budget_is_the_floor_of_its_estimate_and_never_scales_a_count_of_steps():
    queue = JobQueue()
    est = estimates.estimate_job(_distill(budget_minutes=25), queue, HW, speed=_speed(), table={})
    assert est.seconds == est.low_s == 25 * 60 and est.high_s is None
    assert est.words().startswith("Estimated time here: at least 25.0 min, the training budget you set")
    _done(queue, _distill(budget_minutes=25), 1800)
    steps = estimates.estimate_job(_distill(steps=50), queue, HW, speed=None, table={})
    assert steps.seconds is None  # a 25-minute budget says nothing about how long 50 steps take
    again = estimates.estimate_job(_distill(budget_minutes=25), queue, HW)
    assert again.seconds == 1800 and "1 job alike" in again.basis
