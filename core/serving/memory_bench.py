"""The KV cache as a lever on llama-server: memory, speed and quality at each cache type, context and slot count.

For each GGUF variant x cache type x context per slot x slot count, llama-server starts on 127.0.0.1 with
`-c slots*context -np slots --no-kv-unified -ctk T -ctv T -fa on`; the lab reads the KV, compute and output buffers
llama.cpp reports in its log, sends one bounded burst (one short streaming request per slot), and reads the
process's peak resident memory (VmHWM) afterwards. llama.cpp allocates the whole KV cache at start, so the slots need
not be filled for the memory to be held. The first point (smallest context, one slot, F16) calibrates the memory
model's compute base and runtime (core/measure/memory.py); every other point checks it. Quality: llama.cpp's own
`llama-perplexity --kl-divergence`, the same GGUF with each cache type against its F16-cache run.
The run is kept beside the results store (data/serving/memory-<model>.json), replacing the previous one.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core import models
from core.measure import benchmark, fit, memory
from core.measure.memory import Calibration
from core.paths import Stopped, data_dir
from core.runtimes import llamacpp_tools
from core.serving.bench import check_fits_here, resolve_gguf
from core.serving.client import run_load
from core.serving.engines import bundled_gguf, gguf_key, gguf_quant, llama_server_engine
from core.serving.limits import REQUEST_TIMEOUT_S, Report, ServingError, ShouldStop, check_context
from core.serving.prompts import corpus_path, corpus_token_ids, prompts_from_text
from core.serving import torch_peak
from core.serving.server import Server, peak_rss_bytes
from core.serving.stats import summarize
from core.serving.torch_peak import TorchPoint
from core.words import plural

MIB = 2**20  # llama.cpp prints its buffers in MiB


@dataclass(frozen=True)
class MemorySettings:
    cache_types: tuple[str, ...] = memory.OFFERED_CACHE_TYPES
    contexts: tuple[int, ...] = (512, 2048, 8192)  # tokens per slot
    slots: tuple[int, ...] = (1, 4)
    kld_contexts: tuple[int, ...] = (2048,)  # llama-perplexity's -c; the text must hold 2 chunks of each
    kld_chunks: int = 1  # of n_ctx tokens each; llama-perplexity scores the second half of each
    torch_contexts: tuple[int, ...] = (512, 2048)  # a transformers process (fp32): the first calibrates, others check
    burst_prompt_tokens: int = 64
    burst_new_tokens: int = 16
    threads: int = 2

    def __post_init__(self) -> None:
        for t in self.cache_types:
            try:
                memory.check_cache_type(t)
            except ValueError as e:
                raise ServingError(str(e)) from None
        if not self.cache_types or not self.contexts or not self.slots:
            raise ServingError("give at least one cache type, one context and one slot count")
        if min(self.slots) < 1 or min(self.contexts) < self.burst_prompt_tokens + self.burst_new_tokens + 16:
            raise ServingError(f"slots must be >= 1 and each context must hold the burst's "
                               f"{self.burst_prompt_tokens + self.burst_new_tokens} tokens (plus 16 of room)")
        if self.threads < 1 or self.kld_chunks < 1:
            raise ServingError(f"threads and KLD chunks must be >= 1, got {self.threads}, {self.kld_chunks}")


@dataclass(frozen=True)
class MemoryPoint:
    technique: str
    label: str
    cache_type: str
    context_tokens: int  # asked, per slot
    slots: int
    ctx_per_slot_reported: int  # llama.cpp's n_ctx_seq (rounded up to 256)
    weights_mb: float  # the GGUF file
    kv_mb_reported: float  # llama.cpp's own "KV buffer size"
    compute_mb_reported: float
    output_mb_reported: float
    peak_mb: float  # VmHWM of the server after the load and the burst
    ttft_ms_p50: float
    per_user_tokens_per_s: float  # decode, median over the burst's requests
    total_tokens_per_s: float  # every request's tokens / the burst's wall time


@dataclass(frozen=True)
class CacheQuality:
    technique: str
    label: str
    cache_type: str
    n_ctx: int
    chunks: int
    kld_mean: float  # nats, against the same GGUF with an F16 cache
    kld_mean_uncertainty: float
    kld_p99: float
    same_top: float  # share, 0..1
    ppl: float


@dataclass(frozen=True)
class MemoryRun:
    model: str
    hardware: str
    threads: int
    created_at: str
    trained_context: int
    shape: fit.KVShape
    calibration: Calibration
    points: tuple[MemoryPoint, ...]
    quality: tuple[CacheQuality, ...] = ()
    text: str = ""  # the KLD's text file
    notes: dict[str, str] = field(default_factory=dict)
    torch_points: tuple[TorchPoint, ...] = ()

    def predicted(self, p: MemoryPoint) -> memory.MemoryNeed:
        """The memory model's prediction for a measured point, from this run's calibration."""
        return memory.predict_llamacpp(p.weights_mb, self.shape, p.context_tokens, p.slots, p.cache_type,
                                       self.calibration)

    def torch_predicted(self, t: TorchPoint) -> memory.MemoryNeed:
        """The memory model for a transformers point: its runtime calibrated on the run's smallest such point."""
        runtime = torch_peak.calibrated_runtime_mb(self.torch_points[0], self.shape)
        return memory.predict_transformers(t.weights_mb, self.shape, t.context_tokens, 4, 1, runtime, t.activations_mb)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MemoryRun":
        return cls(d["model"], d["hardware"], d["threads"], d["created_at"], d["trained_context"],
                   fit.KVShape(**d["shape"]), Calibration.from_dict(d["calibration"]),
                   tuple(MemoryPoint(**p) for p in d["points"]), tuple(CacheQuality(**q) for q in d["quality"]),
                   d.get("text", ""), d.get("notes", {}), tuple(TorchPoint(**t) for t in d.get("torch_points", [])))


def _memory_file(model_key: str) -> Path:
    return data_dir() / "serving" / f"memory-{model_key.replace('/', '--')}.json"


def saved_memory(model_key: str) -> MemoryRun | None:
    path = _memory_file(model_key)
    if not path.is_file():
        return None
    try:
        return MemoryRun.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged file shows as "not measured yet", and the next run replaces it


def _save(run: MemoryRun) -> None:
    path = _memory_file(run.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run.to_dict(), indent=2))
    tmp.replace(path)


def default_techniques(spec: models.ModelSpec) -> list[str]:
    """The lab's Q8_0 export, and the file the model ships as when it ships one."""
    bundled = bundled_gguf(spec)
    return ["gguf-q8_0"] + ([gguf_key(bundled)] if bundled is not None and gguf_key(bundled) != "gguf-q8_0" else [])


def _point(label: str, technique: str, path: Path, cache: str, ctx: int, slots: int, server: Server,
           prompts: list[str], settings: MemorySettings, should_stop: ShouldStop) -> MemoryPoint:
    bodies = [server.engine.body(p, settings.burst_new_tokens) for p in prompts[:slots]]
    stats = summarize(run_load(server.base_url, bodies, REQUEST_TIMEOUT_S, should_stop))
    server.check_alive()
    if stats.requests == 0:
        raise ServingError(f"every request failed ({stats.first_error}); the server's last log lines:\n"
                           f"{server.last_log_lines()}")
    buffers = server.buffers_reported_mib()
    return MemoryPoint(technique, label, cache, ctx, slots, server.slot_context_reported() or 0,
                       path.stat().st_size / fit.MB, (server.kv_cache_bytes_reported() or 0) / fit.MB,
                       buffers.get("compute", 0.0) * MIB / fit.MB, buffers.get("output", 0.0) * MIB / fit.MB,
                       peak_rss_bytes(server.proc.pid) / fit.MB, stats.ttft_ms_p50,
                       stats.per_user_tokens_per_s_median, stats.throughput_tokens_per_s)


def _quality(label: str, technique: str, path: Path, settings: MemorySettings, text: Path,
             report: Report, frac: float) -> list[CacheQuality]:
    out = []
    with tempfile.TemporaryDirectory(prefix="lab-kv-kld-") as scratch:
        for n_ctx in settings.kld_contexts:
            base = Path(scratch) / f"base-{n_ctx}.kld"
            report(frac, f"{label}: llama-perplexity, F16 cache, n_ctx {n_ctx} (the base)")
            llamacpp_tools.tool_base(path, text, n_ctx, settings.threads, settings.kld_chunks, base, "on", "f16")
            for cache in settings.cache_types:
                if cache == "f16":
                    continue
                report(frac, f"{label}: llama-perplexity --kl-divergence, {cache} cache, n_ctx {n_ctx}")
                k, _ = llamacpp_tools.tool_kld(path, base, n_ctx, settings.threads, "on", cache)
                out.append(CacheQuality(technique, label, cache, n_ctx, k.chunks, k.kld_mean, k.kld_mean_uncertainty,
                                        k.kld_p99, k.same_top, k.ppl_quant))
    return out


def serve_memory(model: str, technique_keys: Sequence[str] = (), settings: MemorySettings = MemorySettings(),
                 report: Report = lambda f, m: None, should_stop: ShouldStop = lambda: False,
                 gguf_files: dict[str, Path] | None = None) -> MemoryRun:
    """Measure every point (checked first, so bad input starts nothing), calibrate on the first, save the run."""
    spec = models.resolve(model)
    checkpoint = Path(spec.location) if spec.source == "local" else models.prepare(spec, lambda m: report(0.0, m))
    config = json.loads((checkpoint / "config.json").read_text())
    shape, trained = fit.kv_shape_from_config(config), int(config.get("max_position_embeddings") or 2048)
    for n in (*settings.contexts, *settings.kld_contexts, *settings.torch_contexts):
        check_context(n, trained)
    keys = list(technique_keys) or default_techniques(spec)
    files = {k: resolve_gguf(spec, k, gguf_files, checkpoint) for k in keys}
    if not_gguf := [k for k, p in files.items() if p is None]:
        raise ServingError(f"{', '.join(not_gguf)} is not served by llama-server; the KV cache types are llama.cpp's: "
                           f"pick GGUF variants, e.g. {', '.join(default_techniques(spec))}")
    for path in files.values():
        for cache in settings.cache_types:
            check_fits_here(path.stat().st_size / fit.MB, shape, max(settings.contexts), cache)
    tokenizer = models.load_tokenizer(checkpoint)
    prompts = prompts_from_text(corpus_token_ids(tokenizer), tokenizer, max(settings.slots),
                                settings.burst_prompt_tokens)
    grid = [(k, c, n, s) for k in keys for c in settings.cache_types for n in sorted(settings.contexts)
            for s in sorted(settings.slots)]
    # the calibration point first: the first variant, F16 (llama.cpp's default), the smallest context, one slot
    grid.sort(key=lambda g: g != (keys[0], "f16", min(settings.contexts), min(settings.slots)))
    points: list[MemoryPoint] = []
    steps = len(grid) + len(keys) + len(settings.torch_contexts)
    for key, cache, ctx, slots in grid:
        if should_stop():
            raise Stopped("stopped; nothing of this run is saved: the memory model is calibrated and checked on "
                          "the whole grid at once")
        path = files[key]
        label = f"GGUF {gguf_quant(path).upper()}"
        report(len(points) / steps, f"{label}: {cache} cache, {plural(slots, 'slot')} x {ctx:,} tokens")
        engine = llama_server_engine(path, key, slots, ctx, settings.threads, "cpu", cache)
        with Server(engine, None, should_stop=should_stop) as server:
            points.append(_point(label, key, path, cache, ctx, slots, server, prompts, settings, should_stop))
    first = points[0]
    calibration = memory.calibrate(
        first.peak_mb, first.weights_mb, first.kv_mb_reported, first.compute_mb_reported, first.output_mb_reported,
        first.slots, first.ctx_per_slot_reported or memory.slot_cells(first.context_tokens),
        benchmark.hardware_fingerprint("cpu"),
        f"{first.label}, {first.cache_type} cache, {plural(first.slots, 'slot')} x {first.context_tokens:,} tokens",
        datetime.now(timezone.utc).isoformat(timespec="seconds"))
    text = corpus_path()
    quality: list[CacheQuality] = []
    for i, key in enumerate(keys):
        if should_stop():
            raise Stopped("stopped before the KLD runs; nothing of this run is saved")
        label = f"GGUF {gguf_quant(files[key]).upper()}"
        quality += _quality(label, key, files[key], settings, text, report, (len(grid) + i) / steps)
    torch_points = []
    for i, n in enumerate(sorted(settings.torch_contexts)):
        if should_stop():
            raise Stopped("stopped before the transformers points; nothing of this run is saved")
        report((len(grid) + len(keys) + i) / steps, f"FP32 on transformers, one sequence of {n:,} tokens")
        torch_points.append(torch_peak.measure_point(checkpoint, n, settings.threads))
    run = MemoryRun(spec.key, calibration.hardware, settings.threads, calibration.measured_at, trained, shape,
                    calibration, tuple(points), tuple(quality), text.name,
                    {"peak": "VmHWM of llama-server after loading and one burst of one short request per slot "
                             f"({settings.burst_prompt_tokens}-token prompts, {settings.burst_new_tokens} new tokens)",
                     "server": "llama-server -c slots x context -np slots --no-kv-unified -fa on --cache-ram 0",
                     "torch": "FP32 checkpoint in a fresh transformers process: VmHWM of one prefill (cache on, logits "
                              "of the last position), the mark reset after loading; its runtime calibrated on the "
                              "shortest context"},
                    tuple(torch_points))
    _save(run)
    report(1.0, f"{plural(len(points), 'point')} and {plural(len(quality), 'KLD run')} measured")
    return run
