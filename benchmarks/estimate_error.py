"""How far the sweep time estimate is off, before and after it learns: estimate a sweep, run it, compare.

    LAB_DATA_DIR=/tmp/est-err-data flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/estimate_error.py
    LAB_DATA_DIR=/tmp/est-err-data flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/estimate_error.py

Run it twice in a row on one machine. Each run prints the estimate made before the sweep, uncorrected (from the
records alone) and learned (corrected by the sweeps that ended here before, core/experiments/estimate.py
`learned_correction`), then runs `python -m core sweep` (fp32 and gguf-q8_0 unless --techniques says otherwise)
and prints its wall seconds and the error of each estimate. The first run's corrected estimate has nothing to
learn from yet (it equals the uncorrected one): its error is "before". The run is then entered in the queue as an
ended sweep with its estimate, exactly as a dashboard sweep is, so the second run's corrected estimate learns from
it: its error is "after". Where no variant was measured here yet, a run first sweeps once to give the estimate its
records (printed as "seeding"). Each run appends one JSON line, with the machine's hardware fingerprint, to
--out (default: estimate_error.jsonl in the data folder). Asserts nothing. --dry-run estimates and prints the
command without running anything heavy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import models
from core.experiments import estimate
from core.experiments.sweep import SweepSettings
from core.launch import kinds
from core.launch.jobqueue import JobEstimate, JobQueue
from core.measure import benchmark
from core.paths import data_dir
from core.store import ResultStore

DEFAULTS = SweepSettings()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--techniques", default="fp32,gguf-q8_0")
    p.add_argument("--new-tokens", type=int, default=DEFAULTS.new_tokens)
    p.add_argument("--repeats", type=int, default=DEFAULTS.repeats)
    p.add_argument("--warmup", type=int, default=DEFAULTS.warmup_runs)
    p.add_argument("--mc-max-items", type=int, default=DEFAULTS.mc_max_items, help="0 = all, as the dashboard")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", type=Path, help="JSON lines file (default: estimate_error.jsonl in the data folder)")
    p.add_argument("--dry-run", action="store_true", help="estimate and print the sweep command; run nothing")
    return p.parse_args()


def sweep_command(a: argparse.Namespace, json_out: Path) -> list[str]:
    return [sys.executable, "-m", "core", "sweep", "--model", a.model, "--techniques", a.techniques,
            "--new-tokens", str(a.new_tokens), "--repeats", str(a.repeats), "--warmup", str(a.warmup),
            "--mc-max-items", str(a.mc_max_items), "--device", a.device, "--json", str(json_out)]


def run_sweep(a: argparse.Namespace) -> tuple[float, float, list[dict]]:
    """`python -m core sweep` in a fresh process, as a user runs it: (start, end, records) in time.time() seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.json"
        start = time.time()
        subprocess.run(sweep_command(a, out), cwd=ROOT, check=True)
        end = time.time()
        return start, end, json.loads(out.read_text())


def make_estimate(a, model_key: str, keys: list[str], hardware: str) -> estimate.SweepEstimate:
    plan = estimate.SweepPlan(a.new_tokens, a.warmup, a.repeats, a.mc_max_items or None)
    past = estimate.past_runs(JobQueue().estimated_jobs("sweep", hardware, estimate.LEARN_FROM_LAST))
    return estimate.estimate_sweep(ResultStore().all(model=model_key), keys, model_key, hardware, plan,
                                   avx512=estimate.cpu_has_avx512(), past=past)


def error_pct(estimated_s: float, actual_s: float) -> float:
    """Signed, as the dashboard's table: negative when the sweep took longer than estimated."""
    return 100 * (estimated_s - actual_s) / actual_s


def main() -> int:
    a = parse()
    models.quiet_library_output()
    keys = [k.strip() for k in a.techniques.split(",") if k.strip()]
    model_key = models.resolve(a.model).key
    hardware = benchmark.hardware_fingerprint(benchmark.pick_device(a.device))
    print(f"machine: {hardware}")
    est = make_estimate(a, model_key, keys, hardware)
    if est.unknown and not a.dry_run:
        print(f"seeding: {', '.join(est.unknown)} never measured here; one sweep first to give the estimate records")
        run_sweep(a)
        est = make_estimate(a, model_key, keys, hardware)
    for v in est.variants:
        seconds = "no estimate" if v.uncorrected_s is None else f"{v.uncorrected_s:.1f} s uncorrected"
        print(f"  {v.technique}: {seconds} ({v.basis})")
    print(f"estimate before the run: {est.uncorrected_s:.1f} s uncorrected, {est.total_s:.1f} s learned "
          f"({est.correction.words or 'nothing to learn from yet: no sweep with an estimate ended here'})")
    if a.dry_run:
        print("would run:", " ".join(sweep_command(a, Path("records.json"))))
        return 0
    if est.unknown:
        print(f"still no estimate for {', '.join(est.unknown)} (did the seeding sweep skip it?): stopping")
        return 1
    start, end, records = run_sweep(a)
    actual = end - start
    row = {"hardware": hardware, "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(end)),
           "model": model_key, "techniques": keys, "plan": [a.new_tokens, a.warmup, a.repeats, a.mc_max_items],
           "uncorrected_s": est.uncorrected_s, "learned_s": est.total_s, "correction": asdict(est.correction),
           "actual_s": actual, "error_uncorrected_pct": error_pct(est.uncorrected_s, actual),
           "error_learned_pct": error_pct(est.total_s, actual),
           "measure_s": {r["technique"]: r.get("variant_facts", {}).get("measure_s") for r in records}}
    print(f"actual wall seconds of the sweep: {actual:.1f} s (per variant measured: {row['measure_s']})")
    print(f"error: uncorrected {row['error_uncorrected_pct']:+.0f}%, learned {row['error_learned_pct']:+.0f}% "
          "(negative: it took longer than estimated)")
    # Entered as an ended sweep with its estimate, as a dashboard sweep is: the next run (and page) learns from it.
    args = kinds.SweepArgs(a.model, tuple(keys), SweepSettings(
        new_tokens=a.new_tokens, repeats=a.repeats, warmup_runs=a.warmup, mc_max_items=a.mc_max_items))
    JobQueue().record_ended("sweep", args.to_json(), f"Benchmark sweep of {model_key} ({a.techniques})",
                            kinds.get("sweep").similar(args), "benchmark", start, end,
                            JobEstimate(est.total_s, est.uncorrected_s, hardware))
    out = a.out or data_dir() / "estimate_error.jsonl"
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
