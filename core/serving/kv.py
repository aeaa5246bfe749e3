"""The KV cache: bytes of a transformers cache measured in process, and the context chart's data (KV cache and
decode speed as the context grows), measured once and kept beside the results store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from core import models
from core.measure import benchmark, fit
from core.measure.benchmark import Spread
from core.models import load_model
from core.paths import Stopped, data_dir
from core.runtimes.eager import stream_tokens
from core.serving.limits import Report, ShouldStop, check_lengths


def cache_tensor_bytes(cache) -> int:
    """Bytes of every key/value tensor a transformers cache object holds (layers x [B, H_kv, T, D] x 2)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def measure_kv_bytes(model, context_tokens: int) -> int:
    """KV bytes the model's own cache holds after reading `context_tokens` tokens (one sequence)."""
    ids = torch.zeros(1, context_tokens, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    return cache_tensor_bytes(out.cache)


@dataclass(frozen=True)
class ContextPoint:
    context_tokens: int
    kv_cache_mb_measured: float  # from the cache object after prefill
    kv_cache_mb_estimated: float  # core/measure/fit.py from the config
    decode_tokens_per_s: Spread  # greedy decode right after that context, one sequence
    prefill_ms: float


def context_sweep(model, shape: fit.KVShape, contexts: Sequence[int], decode_tokens: int = 16, repeats: int = 2,
                  should_stop: ShouldStop = lambda: False, report: Report = lambda f, m: None) -> list[ContextPoint]:
    """KV cache measured and estimated, and decode speed, as the context grows (in process, one sequence)."""
    out = []
    element = next(model.parameters()).element_size() if next(model.parameters()).is_floating_point() else 4
    for i, n in enumerate(contexts):
        if should_stop():
            raise Stopped("stopped; the context lengths finished before it are kept")
        report(i / len(contexts), f"context {n} tokens")
        # Ordinary token ids (past the special ones at the start of the vocabulary), within a tiny model's vocabulary too.
        high = min(1000, model.config.vocab_size)
        ids = torch.randint(min(100, high - 1), high, (1, n), generator=torch.Generator().manual_seed(n)).to(model.device)
        speeds, prefill = [], []
        for _ in range(repeats):
            steps = list(stream_tokens(model, ids, decode_tokens, str(model.device)))
            prefill.append(steps[0][1] * 1e3)
            speeds.append((decode_tokens - 1) / (steps[-1][1] - steps[0][1]))
        measured = measure_kv_bytes(model, n)
        estimated = fit.kv_cache_bytes(shape, n, element)
        out.append(ContextPoint(n, measured / fit.MB, estimated / fit.MB, Spread(tuple(speeds)), min(prefill)))
    return out


@dataclass(frozen=True)
class ContextRun:
    model: str
    hardware: str
    threads: int
    created_at: str
    points: tuple[ContextPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "hardware": self.hardware, "threads": self.threads, "created_at": self.created_at,
                "points": [{"context_tokens": p.context_tokens, "kv_cache_mb_measured": p.kv_cache_mb_measured,
                            "kv_cache_mb_estimated": p.kv_cache_mb_estimated, "prefill_ms": p.prefill_ms,
                            "decode_tokens_per_s_samples": list(p.decode_tokens_per_s.samples)} for p in self.points]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContextRun":
        points = tuple(ContextPoint(p["context_tokens"], p["kv_cache_mb_measured"], p["kv_cache_mb_estimated"],
                                    Spread(tuple(p["decode_tokens_per_s_samples"])), p["prefill_ms"]) for p in d["points"])
        return cls(d["model"], d["hardware"], d["threads"], d["created_at"], points)


def _context_file(model_key: str) -> Path:
    return data_dir() / "serving" / f"context-{model_key.replace('/', '--')}.json"


def default_contexts(max_context_tokens: int, decode_tokens: int) -> list[int]:
    """128, 512, 2048, ... up to the model's maximum (minus the tokens decoded after it)."""
    out, n = [], 128
    while n + decode_tokens <= max_context_tokens:
        out.append(n)
        n *= 4
    top = max_context_tokens - decode_tokens
    return out + ([top] if not out or out[-1] < top else [])


def measure_context(model: str, contexts: Sequence[int] | None = None, decode_tokens: int = 16,
                    report: Report = lambda f, m: None, should_stop: ShouldStop = lambda: False) -> ContextRun:
    """Load the fp32 model in process, sweep the context, save the run (replacing this model's previous one)."""
    spec = models.resolve(model)
    checkpoint = Path(spec.location) if spec.source == "local" else models.prepare(spec)
    config = json.loads((checkpoint / "config.json").read_text())
    limit = int(config.get("max_position_embeddings") or 2048)
    contexts = list(contexts) if contexts else default_contexts(limit, decode_tokens)
    check_lengths(contexts, decode_tokens, limit)
    net = load_model(checkpoint)
    try:
        points = context_sweep(net, fit.kv_shape_from_config(config), contexts, decode_tokens, 2, should_stop, report)
    finally:
        del net
    run = ContextRun(spec.key, benchmark.hardware_fingerprint("cpu"), torch.get_num_threads(),
                     datetime.now(timezone.utc).isoformat(timespec="seconds"), tuple(points))
    path = _context_file(spec.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run.to_dict(), indent=2))
    tmp.replace(path)
    return run


def saved_context(model_key: str) -> ContextRun | None:
    path = _context_file(model_key)
    if not path.is_file():
        return None
    try:
        return ContextRun.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged file shows as "not measured yet", and the next run replaces it
