"""Fake results for tests: a plausible fp32 SmolLM2 record on a CPU, any field overridable."""

from __future__ import annotations

from typing import Any

from core.store.records import VariantRecord


def make_record(**overrides: Any) -> VariantRecord:
    """A complete VariantRecord with realistic numbers; pass field=value to change any of them."""
    fields: dict[str, Any] = dict(
        model="smollm2-135m-instruct",
        technique="fp32",
        family="reference",
        label="FP32",
        run_id="run-1",
        created_at="2025-06-01T12:00:00+00:00",
        size_mb=538.0,
        peak_mem_mb=636.0,
        ttft_ms_median=80.0,
        ttft_ms_p10=75.0,
        ttft_ms_p90=90.0,
        decode_tokens_per_s_median=20.0,
        decode_tokens_per_s_p10=16.0,
        decode_tokens_per_s_p90=25.0,
        ttft_ms_samples=[75.0, 80.0, 90.0],
        decode_tokens_per_s_samples=[16.0, 20.0, 25.0],
        bandwidth_gb_s=12.0,
        roofline_tokens_per_s=22.3,
        roofline_pct=89.7,
        perplexity=22.1,
        kld_mean=0.0,
        kld_p99=0.0,
        top1_agreement=1.0,
        mc_accuracy=0.40,
        mc_accuracy_norm=0.42,
        mc_accuracy_ci95=[0.30, 0.50],
        mc_items=100,
        hardware_preset="laptop-cpu",
        usd_per_hour=0.18,
        usd_per_1m_tokens=2.5,
        device="cpu",
        dtype="float32",
        threads=2,
        hardware="Intel Xeon, 2 cores, 8 GB",
        versions={"torch": "2.13.0", "transformers": "5.24.0"},
        settings={"max_new_tokens": 64, "repeats": 5, "seed": 0},
    )
    if "decode_tokens_per_s_median" in overrides and "decode_tokens_per_s_samples" not in overrides:
        median = overrides["decode_tokens_per_s_median"]  # timed runs around the median asked for, as a sweep keeps
        fields["decode_tokens_per_s_samples"] = [median * 0.8, median, median * 1.25]
    fields.update(overrides)
    return VariantRecord(**fields)


def make_serving_record(**overrides: Any):
    """A complete ServingRecord (one load point of fp32 on a CPU); pass field=value to change any of them."""
    from core.store.records import ServingRecord

    fields: dict[str, Any] = dict(
        model="smollm2-135m-instruct", technique="fp32", runtime="transformers", label="FP32 (reference)",
        concurrency=1, prompt_tokens=128, new_tokens=64, requests=2, errors=0, throughput_tokens_per_s=10.0,
        per_user_tokens_per_s_median=10.0, ttft_ms_p50=100.0, ttft_ms_p90=120.0, itl_ms_p50=95.0, itl_ms_p90=110.0,
        e2e_ms_p50=6500.0, e2e_ms_p90=6600.0, kv_cache_mb_measured=1.8, kv_cache_mb_estimated=1.8, peak_mem_mb=900.0,
        hardware_preset="laptop-cpu", usd_per_hour=0.08, usd_per_1m_tokens=0.08 / (10.0 * 3600) * 1e6,
        server="transformers serve (continuous batching)", device="cpu", threads=2, hardware="Test CPU, 2 cores",
        versions={"transformers": "5.24.0"}, settings={}, run_id="run-1", created_at="2025-06-01T12:00:00+00:00",
        throughput_tokens_per_s_samples=[9.5, 10.5],
    )
    fields.update(overrides)
    return ServingRecord(**fields)


def run_queued_jobs_here() -> None:
    """Run every waiting job in the test's own process, where its fakes apply (the worker runs each job in a
    child process of its own, which a monkeypatch does not reach); the queue and store get what the child writes."""
    import os

    from core.launch import worker
    from core.launch.jobqueue import JobQueue

    queue = JobQueue()
    while (job := queue.claim(os.getpid())) is not None:
        worker.run_job(queue, job)
