"""The one result record every measurement produces.

A `VariantRecord` is a flat, JSON-friendly row: one measured variant of one model on one machine.
Every number carries its unit in its name; every record carries the settings and the hardware that
produced it, so that results from different machines are never compared as if they were alike.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any


def drawn_key(records) -> tuple:
    """Identifies a list of stored records as drawn: which records, and the price they were repriced at."""
    return tuple((r.record_id, r.hardware_preset, r.usd_per_hour) for r in records)


def new_record_id() -> str:
    # A record's own identity, made where it is measured: a retried write of the same record is the same row.
    return uuid.uuid4().hex


@dataclass
class VariantRecord:
    # identity
    model: str  # model key, e.g. "smollm2-135m-instruct"
    technique: str  # registry key, e.g. "nf4"
    family: str  # technique family: "reference", "quantization", "distillation", "lora", "moe", ...
    label: str  # human label of the variant, e.g. "NF4 (bitsandbytes 4-bit)"
    run_id: str  # one id per sweep; records of one sweep share it
    created_at: str  # ISO-8601 UTC
    # size and memory
    size_mb: float  # bytes held by parameters + buffers + quantization state / 1e6
    peak_mem_mb: float  # peak process resident memory while the variant was loaded and measured, minus the level before loading
    # speed (raw samples kept so spread can be recomputed)
    ttft_ms_median: float
    ttft_ms_p10: float
    ttft_ms_p90: float
    decode_tokens_per_s_median: float
    decode_tokens_per_s_p10: float
    decode_tokens_per_s_p90: float
    ttft_ms_samples: list[float]
    decode_tokens_per_s_samples: list[float]
    # physical limit: bandwidth / bytes read per decoded token
    bandwidth_gb_s: float
    roofline_tokens_per_s: float
    roofline_pct: float
    # quality
    perplexity: float
    kld_mean: float  # KL(reference || variant), nats per token, mean over the text
    kld_p99: float
    top1_agreement: float  # share of positions where the argmax token equals the reference's
    mc_accuracy: float  # raw log-likelihood accuracy
    mc_accuracy_norm: float  # lm-eval acc_norm: log-prob of " "+choice over len(choice) in characters
    mc_accuracy_ci95: list[float]  # 95% bootstrap interval of mc_accuracy, [low, high]
    mc_items: int
    # cost at the chosen hardware price
    hardware_preset: str
    usd_per_hour: float
    usd_per_1m_tokens: float
    # provenance
    device: str  # "cpu" or "cuda:0 (NVIDIA H100 ...)"
    dtype: str  # compute dtype of the variant
    threads: int
    hardware: str  # machine fingerprint: CPU / GPU model, cores, RAM
    versions: dict[str, str]
    settings: dict[str, Any]  # prompts, token counts, repeats, seeds, eval set names and hashes
    sample_prompt: str = ""
    sample_generation: str = ""
    mc_per_item: list[dict[str, Any]] = field(default_factory=list)  # per-question results
    notes: str = ""
    # structure numbers the technique computes from the built model (Technique.facts), e.g. for a
    # mixture of experts: experts, top_k, active_params, active_params_pct, flops_per_token
    variant_facts: dict[str, Any] = field(default_factory=dict)
    # where and how the variant ran: "transformers" (eager), "transformers-compiled", "llama.cpp"
    runtime: str = "transformers"
    record_id: str = field(default_factory=new_record_id)
    started_at: str = ""  # ISO-8601 UTC: when this variant's measurement began (created_at is when it ended)
    attempt: int = 1  # 2 when a worker died measuring it and it was measured again
    # llama-perplexity's scoreboard beside kld_mean and kld_p99 (None in records from before it); which positions
    # were scored is settings["kld_rule"] ("llama-perplexity" or "every-position"; absent: every-position)
    kld_median: float | None = None
    kld_p999: float | None = None  # 99.9th percentile of the per-position KLD
    kld_max: float | None = None
    delta_p_mean: float | None = None  # mean of p_variant - p_reference of the text's next token (a fraction)
    delta_p_rms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VariantRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


# The fields the CLI contract promises in every sweep record (issue: foundation, item 8).
REQUIRED_FIELDS = (
    "technique", "model", "size_mb", "peak_mem_mb", "ttft_ms_median", "decode_tokens_per_s_median",
    "decode_tokens_per_s_p10", "decode_tokens_per_s_p90", "roofline_pct", "perplexity", "kld_mean",
    "top1_agreement", "mc_accuracy", "mc_accuracy_ci95", "usd_per_1m_tokens", "device", "threads", "versions",
    "runtime",
)


@dataclass
class ServingRecord:
    """One point of a load benchmark: a variant on a runtime, served to `concurrency` simultaneous streams.

    Measured from the client side against a server on 127.0.0.1 (or the same engine in process, as
    `server` says). Latencies are per request; throughput is every request's output tokens over the wall time.
    """
    model: str
    technique: str
    runtime: str
    label: str
    concurrency: int  # simultaneous requests
    prompt_tokens: int
    new_tokens: int
    requests: int  # requests completed at this point
    errors: int  # requests that failed or timed out
    throughput_tokens_per_s: float  # aggregate output tokens / wall s
    per_user_tokens_per_s_median: float  # each request's output tokens after the first / its decode s
    ttft_ms_p50: float
    ttft_ms_p90: float
    itl_ms_p50: float  # inter-token latency, over every gap of every request
    itl_ms_p90: float
    e2e_ms_p50: float
    e2e_ms_p90: float
    kv_cache_mb_measured: float
    kv_cache_mb_estimated: float  # from the config (core/measure/fit.py)
    peak_mem_mb: float
    hardware_preset: str
    usd_per_hour: float
    usd_per_1m_tokens: float  # usd_per_hour / (throughput * 3600) * 1e6
    server: str  # what answered: "transformers serve", "llama.cpp server", "in-process ..."
    device: str
    threads: int
    hardware: str
    versions: dict[str, str]
    settings: dict[str, Any]
    run_id: str
    created_at: str
    throughput_tokens_per_s_samples: list[float] = field(default_factory=list)  # one per repeated run
    record_id: str = field(default_factory=new_record_id)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServingRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
