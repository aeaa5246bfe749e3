"""The benchmark: variants x prompt lengths x concurrency -> one `ServingRecord` per point.

Each variant's server is started on a free loopback port, warmed up, loaded with waves of concurrent streaming
requests at each point, and stopped; every point is stored as soon as it is measured.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil
import torch

from core import models, techniques
from core.measure import benchmark, cost, fit, memory
from core.measure.benchmark import Spread, release_memory
from core.models import load_model, load_tokenizer
from core.serving.client import run_load
from core.serving.engines import (
    Engine,
    bundled_gguf,
    gguf_key,
    gguf_quant,
    llama_server_engine,
    servable_techniques,
    served_by_llamacpp,
    transformers_engine,
    with_paged_cache,
)
from core.serving.kv import measure_kv_bytes
from core.serving.limits import (
    REQUEST_TIMEOUT_S,
    SERVER_START_TIMEOUT_S,
    Report,
    ServingError,
    ShouldStop,
    check_concurrency,
    check_context,
    check_lengths,
)
from core.serving.prompts import corpus_path, corpus_token_ids, prompts_from_text
from core.serving.server import MemoryWatch, Server, check_port_free
from core.serving.stats import (
    LoadStats,
    ServerAccount,
    disagreements,
    server_account,
    summarize,
    usd_per_1m_output_tokens,
)
from core.store.records import ServingRecord, new_record_id
from core.words import plural


@dataclass(frozen=True)
class ServeSettings:
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    prompt_tokens: tuple[int, ...] = (128,)
    new_tokens: int = 64
    repeats: int = 2  # waves per point: the error bars of the frontier chart
    warmup_requests: int = 1  # one short request first: loads kernels and, for transformers, the paged cache
    device: str = "cpu"
    threads: int = 2
    hardware_preset: str = "laptop-cpu"
    usd_per_hour: float | None = None  # None: the preset's price
    port: int | None = None  # None: a free port
    request_timeout_s: float = REQUEST_TIMEOUT_S
    start_timeout_s: float = SERVER_START_TIMEOUT_S
    cache_type: str = "f16"  # llama-server's KV cache type, K and V alike (transformers keeps its compute dtype)
    context_tokens: int = 0  # each slot's context on llama-server; 0: the longest prompt + new tokens + a little room

    def __post_init__(self) -> None:
        check_concurrency(self.concurrency)
        try:
            memory.check_cache_type(self.cache_type)
        except ValueError as e:
            raise ServingError(str(e)) from None
        if self.context_tokens and self.context_tokens < max(self.prompt_tokens, default=0) + self.new_tokens:
            raise ServingError(f"a context of {self.context_tokens} tokens per slot cannot hold a "
                               f"{max(self.prompt_tokens)}-token prompt and {self.new_tokens} new tokens; raise it "
                               "or leave it at 0 (sized to the longest request)")
        if self.repeats < 1 or self.warmup_requests < 0:
            raise ServingError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup_requests}")
        if self.threads < 1:
            raise ServingError(f"threads must be >= 1, got {self.threads}")
        if self.port is not None and not 1024 <= self.port <= 65535:
            raise ServingError(f"port must be between 1024 and 65535, got {self.port}")

    @property
    def price(self) -> cost.HardwarePreset:
        preset = cost.get_preset(self.hardware_preset)
        return preset if self.usd_per_hour is None else cost.with_price(preset, self.usd_per_hour)


def resolve_gguf(spec: models.ModelSpec, technique: str, extra: dict[str, Path] | None = None,
                 checkpoint: Path | None = None) -> Path | None:
    """The GGUF file llama.cpp serves `technique` from, or None when transformers serve serves it from the checkpoint.

    A file the caller passed (--gguf) comes first, then the file a bundled model ships as, then the file a
    technique whose runtime is llama.cpp builds (`Technique.artifact`: the lab's own export, built once and cached).
    """
    if extra and technique in extra:
        return Path(extra[technique])
    try:
        registered = techniques.get(technique)
    except ValueError:
        registered = None
    if registered is not None and not served_by_llamacpp(registered):
        return None
    bundled = bundled_gguf(spec)
    if bundled is not None and technique == gguf_key(bundled):
        return bundled
    if registered is not None:
        path, _facts = registered.artifact(checkpoint or models.prepare(spec), 0, lambda _m: None)
        return path
    have = f"; this model ships {gguf_key(bundled)}" if bundled else ""
    raise ServingError(f"no technique or GGUF file is named {technique!r}{have}; serve one of "
                       f"{', '.join(t.key for t in servable_techniques())}, or pass your own GGUF file with --gguf PATH.")


def check_fits_here(weights_mb: float, shape: fit.KVShape, context_tokens: int, cache_type: str,
                    calibration: Calibration | None = None) -> None:
    """Refuse, before anything starts, a context whose single slot would not fit in this machine's free memory."""
    one = memory.predict_llamacpp(weights_mb, shape, context_tokens, 1, cache_type, calibration)
    free_mb = psutil.virtual_memory().available / fit.MB
    if one.total_mb > free_mb:
        raise ServingError(f"one slot of {context_tokens:,} tokens with a {cache_type} cache needs about "
                           f"{one.total_mb:,.0f} MB, more than the {free_mb:,.0f} MB free here; use a shorter context "
                           "or a smaller cache type")


SLOT_CONTEXT_ROOM_TOKENS = 16


@dataclass(frozen=True)
class Variant:
    engine: Engine
    label: str
    kv_shape: fit.KVShape
    max_context_tokens: int
    checkpoint: Path


def plan_variants(model: str, technique_keys: Sequence[str], settings: ServeSettings,
                  gguf_files: dict[str, Path] | None = None, progress: Report = lambda f, m: None) -> list[Variant]:
    """Every variant's engine, checked before any server starts, so bad input stores nothing."""
    benchmark.pick_device(settings.device)  # "cuda" on a machine without a GPU: a clear message before anything starts
    spec = models.resolve(model)
    checkpoint = Path(spec.location) if spec.source == "local" else models.prepare(spec, lambda m: progress(0.0, m))
    config = json.loads((checkpoint / "config.json").read_text())
    shape = fit.kv_shape_from_config(config)
    max_ctx = int(config.get("max_position_embeddings") or 2048)
    check_lengths(settings.prompt_tokens, settings.new_tokens, max_ctx)
    check_context(settings.context_tokens, max_ctx)
    n_ctx = max(settings.prompt_tokens) + settings.new_tokens
    # llama-server reads the prompt text with its own tokenizer (plus a BOS token): a little room per slot
    slot_ctx = settings.context_tokens or n_ctx + SLOT_CONTEXT_ROOM_TOKENS
    out = []
    for key in technique_keys:
        path = resolve_gguf(spec, key, gguf_files, checkpoint)
        if path is not None:
            check_fits_here(path.stat().st_size / fit.MB, shape, slot_ctx, settings.cache_type)
            engine = llama_server_engine(path, key, max(settings.concurrency), slot_ctx, settings.threads,
                                         settings.device, settings.cache_type)
            label = f"GGUF {gguf_quant(path).upper()} (llama.cpp)"
        else:
            label = techniques.get(key).label
            engine = transformers_engine(checkpoint, key, settings.device, settings.threads)
            engine = with_paged_cache(engine, max(settings.concurrency), n_ctx)
        out.append(Variant(engine, label, shape, max_ctx, checkpoint))
    if len({v.engine.technique for v in out}) != len(out):
        raise ServingError(f"a technique is listed twice in {list(technique_keys)}")
    return out


def _kv_measured_bytes(variant: Variant, server: Server, context_tokens: int, concurrency: int,
                       per_sequence_cache: dict[int, int]) -> tuple[float, str]:
    """(bytes, how): llama.cpp's own report, or the bytes of transformers' cache tensors measured in process."""
    if variant.engine.kv_from_log:
        reported = server.kv_cache_bytes_reported()
        if reported is None:
            return float("nan"), "llama.cpp printed no KV buffer size"
        return float(reported), (f"llama.cpp's own report of its KV buffer (n_ctx cells, {variant.engine.cache_type}), "
                                 "for all requests")
    if context_tokens not in per_sequence_cache:
        per_sequence_cache[context_tokens] = _measure_transformers_kv(variant, context_tokens)
    return (float(per_sequence_cache[context_tokens] * concurrency),
            "key/value tensors of transformers' cache after reading the context, measured in process, x concurrency")


def _measure_transformers_kv(variant: Variant, context_tokens: int) -> int:
    model = load_model(variant.checkpoint, dtype=getattr(torch, variant.engine.kv_dtype))
    try:
        return measure_kv_bytes(model, context_tokens)
    finally:
        del model
        release_memory()


def _record(variant: Variant, stats: LoadStats, wave_throughputs: list[float], concurrency: int, prompt_tokens: int,
            settings: ServeSettings, env, peak_bytes: int, idle_bytes: int, kv_bytes: float, kv_how: str,
            run_id: str, model_key: str, server: Server, account: ServerAccount | None = None) -> ServingRecord:
    price = settings.price
    context = prompt_tokens + settings.new_tokens
    if variant.engine.kv_from_log:  # llama.cpp holds n_ctx cells whatever the load, n_ctx as it rounded it
        n_ctx = server.kv_cells_reported() or (variant.engine.slots or 1) * variant.engine.ctx_per_slot
        estimated = memory.kv_bytes(variant.kv_shape, n_ctx, variant.engine.cache_type, variant.engine.cache_type)
    else:
        estimated = fit.kv_cache_bytes(variant.kv_shape, context, variant.engine.kv_element_bytes, batch=concurrency)
    throughput = Spread(tuple(wave_throughputs)).median
    argv = [a for a in variant.engine.argv(server.port) if a != sys.executable]
    return ServingRecord(
        model=model_key, technique=variant.engine.technique, runtime=variant.engine.runtime, label=variant.label,
        concurrency=concurrency, prompt_tokens=prompt_tokens, new_tokens=settings.new_tokens,
        requests=stats.requests, errors=stats.errors, throughput_tokens_per_s=throughput,
        per_user_tokens_per_s_median=stats.per_user_tokens_per_s_median,
        ttft_ms_p50=stats.ttft_ms_p50, ttft_ms_p90=stats.ttft_ms_p90, itl_ms_p50=stats.itl_ms_p50,
        itl_ms_p90=stats.itl_ms_p90, e2e_ms_p50=stats.e2e_ms_p50, e2e_ms_p90=stats.e2e_ms_p90,
        kv_cache_mb_measured=kv_bytes / fit.MB, kv_cache_mb_estimated=estimated / fit.MB,
        peak_mem_mb=peak_bytes / fit.MB, hardware_preset=price.key, usd_per_hour=price.usd_per_hour,
        usd_per_1m_tokens=usd_per_1m_output_tokens(throughput, price.usd_per_hour),
        server=variant.engine.server, device=env.device_label, threads=settings.threads, hardware=env.hardware,
        versions=env.versions | _server_versions(), run_id=run_id,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        throughput_tokens_per_s_samples=list(wave_throughputs),
        settings={
            "repeats": settings.repeats, "warmup_requests": settings.warmup_requests,
            "request_timeout_s": settings.request_timeout_s, "prompt_text": corpus_path().name,
            # None: this server's stream does not report usage
            "prompt_tokens_seen_by_server": stats.prompt_tokens_seen or None,
            "slots": variant.engine.slots or None,
            "kv_cache_type": variant.engine.cache_type if variant.engine.kv_from_log else variant.engine.kv_dtype,
            "ctx_per_slot_tokens": (server.slot_context_reported() or variant.engine.ctx_per_slot) or None,
            "server_account": account.to_dict() if account else None,
            # where the client's figures and the server's own differ by more than 5%, in words
            "server_vs_client": disagreements(stats, account) if account else [],
            "first_error": stats.first_error, "eos": variant.engine.eos_note,
            "server_command": argv, "server_idle_mem_mb": idle_bytes / fit.MB, "kv_measured_how": kv_how,
            "kv_estimate": "core/measure/memory.py: 2 x layers x kv_heads x head_dim x context x bytes" +
                           (" (n_ctx cells)" if variant.engine.kv_from_log else " x concurrency"),
            "itl": "gaps between streamed chunks as they arrived at the client",
            "peak_mem": "resident memory of the server process and its children, sampled every 50 ms",
        },
    )


def _server_versions() -> dict[str, str]:
    out = {}
    for name in ("llama_cpp_python", "httpx2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def serve_bench(model: str, technique_keys: Sequence[str], settings: ServeSettings, store=None,
                report: Report = lambda f, m: None, should_stop: ShouldStop = lambda: False,
                gguf_files: dict[str, Path] | None = None) -> list[ServingRecord]:
    """Measure every (technique, prompt length, concurrency) point; each is stored as soon as it is done."""
    variants = plan_variants(model, technique_keys, settings, gguf_files, report)
    if settings.port is not None:
        check_port_free(settings.port)
    model_key = models.resolve(model).key
    env = benchmark.environment(settings.device, settings.threads)
    tokenizer = load_tokenizer(variants[0].checkpoint)
    ids = corpus_token_ids(tokenizer)
    # A fresh prompt for every request of the run, warm-up included: both servers keep the KV of prompts they saw
    # (llama.cpp its last context, transformers whole shared pages), and a repeated prompt would time a cache hit.
    needed = settings.warmup_requests + settings.repeats * sum(settings.concurrency)
    prompts = {p: prompts_from_text(ids, tokenizer, needed, p) for p in settings.prompt_tokens}
    run_id = new_record_id()
    points = len(variants) * len(settings.prompt_tokens) * len(settings.concurrency)
    done: list[ServingRecord] = []
    for variant in variants:
        kv_cache: dict[int, int] = {}
        report(len(done) / points, f"{variant.label}: starting {variant.engine.server}")
        with Server(variant.engine, settings.port, settings.start_timeout_s, should_stop) as server:
            watch = MemoryWatch(server.proc.pid)
            idle = watch.rss_bytes()
            warm = [variant.engine.body(prompts[min(prompts)][-1 - i], 4) for i in range(settings.warmup_requests)]
            if warm:
                run_load(server.base_url, warm, settings.request_timeout_s, should_stop)
            for p in settings.prompt_tokens:
                fresh = iter(prompts[p])
                for c in settings.concurrency:
                    report(len(done) / points, f"{variant.label}: {c} concurrent x {p}-token prompts")
                    timings, waves = [], []
                    before = server.metrics()
                    with benchmark.timing_phase(), MemoryWatch(server.proc.pid) as point_watch:
                        for _ in range(settings.repeats):
                            bodies = [variant.engine.body(next(fresh), settings.new_tokens) for _ in range(c)]
                            wave = run_load(server.base_url, bodies, settings.request_timeout_s, should_stop)
                            server.check_alive()
                            waves.append(summarize(wave).throughput_tokens_per_s)
                            timings += wave
                    stats = summarize(timings)
                    account = server_account(timings, before, server.metrics())
                    if stats.requests == 0:
                        raise ServingError(f"every request to the {variant.engine.server} failed ({stats.first_error}); "
                                           f"its last log lines:\n{server.last_log_lines()}")
                    kv, how = _kv_measured_bytes(variant, server, p + settings.new_tokens, c, kv_cache)
                    record = _record(variant, stats, waves, c, p, settings, env, point_watch.peak_bytes, idle,
                                     kv, how, run_id, model_key, server, account)
                    if store is not None:
                        store.add_serving(record)
                    done.append(record)
    report(1.0, f"{plural(len(done), 'point')} measured")
    return done
