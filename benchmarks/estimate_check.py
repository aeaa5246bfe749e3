"""Check the sweep time estimate on the real model: sweep, estimate a different plan, run that plan, compare.

    LAB_DATA_DIR=/tmp/est-data flock /tmp/lab-heavy.lock .venv/bin/python benchmarks/estimate_check.py

Then probes each variant (load + 3 decode steps) and prints what it took. Prints numbers; asserts nothing.
Uses its own results store (set LAB_DATA_DIR to keep it away from data/).
"""
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))
from core import models
from core.experiments import estimate
from core.experiments.sweep import SweepSettings, chat_prompt_ids, run_sweep
from core.measure import benchmark
from core.store import ResultStore

models.quiet_library_output()
keys = ["fp32", "int8", "nf4"]
store = ResultStore()
t0 = time.perf_counter(); first = run_sweep("smollm2-135m-instruct", keys, SweepSettings(new_tokens=16, repeats=2, mc_max_items=20, ppl_max_tokens=1024), store=store)
print("sweep 1 (16 tokens, 2 repeats, 20 mc):", round(time.perf_counter() - t0, 1), "s;", {r.technique: round(r.variant_facts["measure_s"], 1) for r in first})
hw = benchmark.hardware_fingerprint("cpu")
plan = estimate.SweepPlan(new_tokens=48, warmup_runs=1, repeats=4, mc_items=20)
est = estimate.estimate_sweep(store.all(), keys, "smollm2-135m-instruct", hw, plan, avx512=estimate.cpu_has_avx512())
for v in est.variants:
    print("estimate", v.technique, round(v.seconds, 1), "s", round(v.decode_tokens_per_s, 1), "tok/s", "SLOW" if v.slow else "", v.why_slow)
t0 = time.perf_counter(); second = run_sweep("smollm2-135m-instruct", keys, SweepSettings(new_tokens=48, repeats=4, mc_max_items=20, ppl_max_tokens=1024), store=store)
print("sweep 2 (48 tokens, 4 repeats, 20 mc):", round(time.perf_counter() - t0, 1), "s;", {r.technique: round(r.variant_facts["measure_s"], 1) for r in second})
ckpt = models.prepare(models.resolve("smollm2-135m-instruct"))
ids = chat_prompt_ids(models.load_tokenizer(ckpt), "Explain in two sentences why the sky is blue.")
for k in keys:
    t0 = time.perf_counter(); p = estimate.probe_variant(k, ckpt, ids)
    print("probe", k, "took", round(time.perf_counter() - t0, 1), "s: load", round(p.load_s, 1), "s, ttft", round(p.ttft_ms), "ms,", round(p.decode_tokens_per_s, 1), "tok/s")
print("avx512:", estimate.cpu_has_avx512())
