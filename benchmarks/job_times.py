"""Every job kind once, the way the dashboard runs it (queued, then the worker and its child process), on a data
folder of its own: the estimate shown before each job against the time it took, and with --write the reference table
that rough estimates on other machines scale from (assets/estimates/job_times.json, core/launch/estimates.py).

    .venv/bin/python -m benchmarks.job_times DATA_DIR [--write]

Run it twice on the same DATA_DIR: the first pass has no jobs alike here (its estimates are rough or unknown), the
second pass's estimates come from the first pass's jobs. Run it on a quiet machine: it says what other processes
used meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _jobs(model: str):
    """(label, args) for each kind: the lesson's quick steps, then small settings for the kinds it leaves out."""
    from core import models, techniques
    from core.experiments.sweep import SweepSettings
    from core.hybrids import classical, gguf_draft, model_cascade, prompt_lookup
    from core.launch import kinds, lesson
    from core.measure import cost
    from core.models.saved import saved_students
    from core.serving.bench import ServeSettings

    preset = cost.HARDWARE_PRESETS["laptop-cpu"]
    students = lesson.students_of(saved_students(), models.resolve(model).key)
    steps = [s for s in lesson.lesson_steps(model, preset.key, preset.usd_per_hour, students) if s.args is not None]
    jobs = [(f"lesson: {s.key}", s.args) for s in steps]
    if not students:  # the hybrid step waits for the student the distill step makes: measured after it
        jobs.append(("lesson: hybrid", None))
    every = tuple(k for k, t in techniques.TECHNIQUES.items() if not t.why_not("cpu") and "@" not in k
                  and t.family in ("reference", "quantization", "gguf"))
    jobs += [
        ("sweep: every variant, quick look", kinds.SweepArgs(model, every, SweepSettings().quick_look())),
        ("budget: one size, no importance matrix", kinds.BudgetArgs(model, (90_000_000,), imatrix=False)),
        ("serve-bench: Q4_K_M at 1 and 2 requests", kinds.ServeBenchArgs(model, ("gguf-q4_k_m",), ServeSettings(
            concurrency=(1, 2), prompt_tokens=(128,), new_tokens=16, repeats=1))),
        ("serve-context: 3 lengths", kinds.ServeContextArgs(model, (128, 256, 512))),
        ("cascade: classifier in front of Q4_K_M", kinds.CascadeArgs(classical.ClassicalSettings(
            second="gguf-q4_k_m", shots=2, model=model))),
        ("prompt-lookup: 32 tokens, 1 run", kinds.PromptLookupArgs(model, prompt_lookup.LookupSettings(
            new_tokens=32, repeats=1))),
        ("gguf-draft: Q2_K drafts for Q8_0", kinds.GGUFDraftArgs(model, gguf_draft.DraftSettings(
            draft="gguf-q2_k", draft_max_tokens=(3,), new_tokens=32, repeats=1))),
        ("model-cascade: student then fp32, 40 items", kinds.ModelCascadeArgs(model_cascade.ModelCascadeSettings(
            model=model, max_items=40))),
    ]
    return jobs


def _hybrid_now(model: str):
    from core import models
    from core.launch import lesson
    from core.measure import cost
    from core.models.saved import saved_students

    preset = cost.HARDWARE_PRESETS["laptop-cpu"]
    students = lesson.students_of(saved_students(), models.resolve(model).key)
    return lesson.hybrid_step(model, students).args


def _run_worker() -> None:
    env = os.environ | {"LAB_WORKER_PREPARE": "0"}  # the machine was prepared above; nothing else may run meanwhile
    subprocess.run([sys.executable, "-m", "core.launch.worker", "--until-idle"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.job_times", description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--write", action="store_true", help="write the reference table from this pass's times")
    parser.add_argument("--only", default="", help="comma-separated label prefixes to run (default: every job)")
    args = parser.parse_args(argv)
    os.environ["LAB_DATA_DIR"] = str(args.data_dir.resolve())

    from core import models
    from core.experiments import machine_speed
    from core.launch import estimates, kinds
    from core.launch.jobqueue import PRESENTER, JobQueue
    from core.launch.kinds import prepare
    from core.measure import benchmark
    from core.measure.others import OthersMeter

    model = models.DEFAULT_MODEL
    spec = models.resolve(model)
    checkpoint = models.prepare(spec)
    hardware = benchmark.hardware_fingerprint("cpu")
    speed = machine_speed.saved(hardware)
    if not machine_speed.steady(speed):
        speed = machine_speed.measure(checkpoint, spec.key, hardware)
        machine_speed.save(speed)
    print(f"machine: {hardware}\nspeed: {speed.decode_tokens_per_s:.1f} decode tok/s, "
          f"{speed.train_tokens_per_s:.0f} train tok/s", flush=True)
    queue, rows, table_jobs, variants = JobQueue(), [], [], {}
    only = [p for p in args.only.split(",") if p]
    for label, job_args in _jobs(model):
        if only and not any(label.startswith(p) for p in only):
            continue
        job_args = job_args or _hybrid_now(model)
        if job_args is None:
            print(f"{label}: skipped (no student)", flush=True)
            continue
        kind = kinds.kind_of(job_args)
        est = estimates.estimate_job(job_args, queue, hardware, speed)
        meter, before = OthersMeter(), os.times()
        job_id = queue.submit(job_args.kind, job_args.to_json(), label, kind.similar(job_args), PRESENTER, "bench",
                              est.for_queue(hardware))
        _run_worker()
        done = queue.job(job_id)
        others = _others_share(meter, before)
        row = {"job": label, "kind": kind.name, "state": done.state, "estimated_s": est.seconds,
               "basis": est.basis, "actual_s": round(done.elapsed_s, 1),
               "error_pct": None if est.seconds is None else round(100 * (est.seconds - done.elapsed_s) / done.elapsed_s),
               "others_pct": None if others is None else round(100 * others, 1), "error": done.error}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if done.state == "done":
            table_jobs.append({"kind": kind.name, "similar": kind.similar(job_args), "size": kind.size(job_args),
                               "seconds": round(done.elapsed_s, 1), "label": label})
    if args.write:
        _write_table(hardware, speed, table_jobs, spec.key)
    print(json.dumps(rows, indent=1))
    return 0


def _others_share(meter, before: os.times_result) -> float | None:
    """What processes other than this one and the worker it waited for used of the machine meanwhile."""
    after = os.times()
    ours = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    share = meter.share()
    if share is None or meter.wall_s <= 0:
        return None
    return max(0.0, share - ours / (meter.wall_s * (os.cpu_count() or 1)))


def _write_table(hardware: str, speed, jobs: list[dict], model_key: str) -> None:
    from core.launch.estimates import REFERENCE_TIMES
    from core.measure.cpu import this_cpu
    from core.store import open_store

    bulky = ("mc_per_item", "sample_generation", "ttft_ms_samples", "decode_tokens_per_s_samples")
    variants = {}
    for record in open_store().all(model=model_key):  # newest first: the first seen of each technique is kept
        data = record.to_dict()
        variants.setdefault(record.technique, {k: v for k, v in data.items() if k not in bulky})
    try:  # a partial pass (--only) adds to the table: a job alike replaces its old time, the rest stays
        old = json.loads(REFERENCE_TIMES.read_text())
    except (OSError, ValueError):
        old = {}
    if old.get("machine", {}).get("hardware") == hardware:
        fresh = {j["similar"] for j in jobs}
        jobs = [j for j in old.get("jobs", []) if j["similar"] not in fresh] + jobs
        variants = old.get("variants", {}) | variants
    REFERENCE_TIMES.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE_TIMES.write_text(json.dumps({
        "about": "Each job kind's time on one machine, measured by `python -m benchmarks.job_times DATA --write`; "
                 "estimates on a machine with no similar job of its own scale these by its measured speed.",
        "machine": {"hardware": hardware, "cpu": this_cpu().model_name,
                    "decode_tokens_per_s": speed.decode_tokens_per_s, "train_tokens_per_s": speed.train_tokens_per_s,
                    "measured_at": speed.measured_at},
        "jobs": jobs, "variants": variants}, indent=1) + "\n")
    print(f"wrote {REFERENCE_TIMES.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
