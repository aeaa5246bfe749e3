"""The one memory model: what serving a variant holds at a context, a number of users and a KV cache type.

    peak = weights + KV cache + compute buffers + runtime

- weights: the bytes the variant holds (for a GGUF file, the file, which llama.cpp maps and reads whole);
- KV cache: layers x KV heads x head width x cells x (bytes per K element + bytes per V element), where llama.cpp
  gives each slot its context rounded up to whole 256-cell blocks, and a quantized cache type stores blocks of 32
  elements with one 16-bit scale (Q8_0: 34 bytes per 32, Q4_0: 18 per 32);
- compute buffers: for llama.cpp, the graph buffer it reports at start at a small context (`Calibration`), plus its
  attention mask, which grows with each slot's cells (n_ubatch x cells x 2 bytes), plus one row of logits per slot;
- runtime: the binary, its libraries and the tokenizer: the peak measured at the calibration point less everything
  above, once per machine (`Calibration`). Without a calibration the stated RUNTIME_OVERHEAD_MB stands for compute and
  runtime together.

For a torch process: weights + KV cache in the compute dtype + the prefill's largest live activations
(`prefill_activation_bytes`) + runtime, calibrated the same way (core/serving/torch_peak.py); without a calibration
the stated overhead stands for the last two. What it leaves out: memory that grows while answering (llama-server's
RAM prompt cache, which the lab turns off with `--cache-ram 0`), loading, other processes, and the page cache a
file-backed map may keep after the server ends. Device fit, Decide, the Report and the Serve page
all call `predict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MB = 1e6  # the records' size_mb is bytes / 1e6, so everything here uses decimal megabytes
# Python + torch + allocator slack + activations at batch 1. Here fp32 SmolLM2-135M peaked about 100 MB above
# the bytes it holds (636 vs 538 MB); a phone runtime such as llama.cpp needs less, a torch process more.
RUNTIME_OVERHEAD_MB = 200.0


@dataclass(frozen=True)
class KVShape:
    layers: int
    kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for name in ("layers", "kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")



# llama.cpp's KV cache element types (`llama-server --help`, -ctk/-ctv): bytes per element. The block types store
# 32 elements with one f16 scale (and, for the _1 types, one f16 minimum): ggml's block_q8_0, block_q4_0, ...
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "iq4_nl": 18 / 32,
    "q5_0": 22 / 32, "q5_1": 24 / 32,
}
OFFERED_CACHE_TYPES = ("f16", "q8_0", "q4_0")  # what pages offer: the default, near-lossless, and the smallest
LLAMA_CELL_BLOCK = 256  # llama.cpp rounds each sequence's KV cells up to a multiple of this (its n_ctx_seq)
LLAMA_UBATCH = 512  # llama-server's default -ub: the attention mask is n_ubatch x cells of f16
MASK_ELEMENT_BYTES = 2


def check_cache_type(cache_type: str) -> float:
    """Bytes per element of a llama.cpp cache type; a clear error for one it does not offer."""
    try:
        return CACHE_TYPE_BYTES[cache_type]
    except KeyError:
        raise ValueError(f"unknown KV cache type {cache_type!r}; llama.cpp offers "
                         f"{', '.join(CACHE_TYPE_BYTES)}") from None


def is_quantized(cache_type: str) -> bool:
    return check_cache_type(cache_type) < 2


def check_cache_pair(cache_k: str, cache_v: str, flash_attn: bool) -> None:
    """llama.cpp stores a quantized V only inside its flash-attention kernel: without it, refuse before launch."""
    check_cache_type(cache_k)
    if is_quantized(cache_v) and not flash_attn:
        raise ValueError(f"a {cache_v} V cache needs flash attention (llama.cpp keeps a quantized V only in its "
                         "flash-attention kernel); turn flash attention on or keep V at f16")


def slot_cells(context_tokens: int) -> int:
    """KV cells llama.cpp gives one slot asked for `context_tokens`: rounded up to whole 256-cell blocks."""
    if context_tokens < 1:
        raise ValueError(f"context must be >= 1 token, got {context_tokens}")
    return math.ceil(context_tokens / LLAMA_CELL_BLOCK) * LLAMA_CELL_BLOCK


def kv_bytes(shape: KVShape, cells: int, cache_k: str = "f16", cache_v: str = "f16") -> float:
    """layers x kv_heads x head_dim x cells x (K bytes + V bytes per element); cells over every slot."""
    per_element = check_cache_type(cache_k) + check_cache_type(cache_v)
    return shape.layers * shape.kv_heads * shape.head_dim * cells * per_element


@dataclass(frozen=True)
class Calibration:
    """Measured once on a machine: what llama-server holds besides weights and KV cache, at one small point."""
    compute_base_mb: float  # compute buffer llama.cpp reported, less its attention mask at that point
    output_mb_per_slot: float  # output (logits) buffer llama.cpp reported / slots
    runtime_mb: float  # measured peak - (weights + KV + compute + output) at that point
    hardware: str
    point: str  # what was started, in words
    measured_at: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def mask_mb(cells_per_slot: int) -> float:
    return LLAMA_UBATCH * cells_per_slot * MASK_ELEMENT_BYTES / MB


def calibrate(peak_mb: float, weights_mb: float, kv_mb: float, compute_mb: float, output_mb: float, slots: int,
              cells_per_slot: int, hardware: str, point: str, measured_at: str) -> Calibration:
    """The constants from one measured start: llama.cpp's own buffer sizes and the process's peak."""
    runtime = peak_mb - weights_mb - kv_mb - compute_mb - output_mb
    return Calibration(compute_mb - mask_mb(cells_per_slot), output_mb / slots, runtime, hardware, point, measured_at)


@dataclass(frozen=True)
class MemoryNeed:
    """Predicted memory, MB (decimal), of serving `users` at `context_tokens` each."""
    weights_mb: float
    kv_cache_mb: float
    compute_mb: float
    runtime_mb: float
    context_tokens: int  # per user
    users: int
    cache_type: str  # K and V alike ("f16" for a transformers cache in 16 bits; its dtype otherwise)
    calibrated: bool  # False: runtime_mb is the stated overhead, compute_mb 0

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_cache_mb + self.compute_mb + self.runtime_mb


def predict_llamacpp(weights_mb: float, shape: KVShape, context_tokens: int, users: int = 1,
                     cache_type: str = "f16", calibration: Calibration | None = None) -> MemoryNeed:
    """llama-server with `users` slots of `context_tokens` each (-c users x context, -np users, no unified KV)."""
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    cells = slot_cells(context_tokens)
    kv = kv_bytes(shape, cells * users, cache_type, cache_type) / MB
    if calibration is None:
        return MemoryNeed(weights_mb, kv, 0.0, RUNTIME_OVERHEAD_MB, context_tokens, users, cache_type, False)
    compute = calibration.compute_base_mb + mask_mb(cells) + calibration.output_mb_per_slot * users
    return MemoryNeed(weights_mb, kv, compute, calibration.runtime_mb, context_tokens, users, cache_type, True)


def prefill_activation_bytes(config: dict[str, Any], context_tokens: int, element_bytes: int = 4) -> int:
    """The largest set of activations alive inside one decoder layer while a torch process reads `context_tokens`:
    the residual stream and its normed copy, q/k/v and the attention output (6 x hidden), and the MLP's gate, up and
    their product (3 x intermediate). Attention runs in PyTorch's fused kernel, with no [T, T] score matrix; logits
    are kept for the last position only, as generation asks."""
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    return context_tokens * element_bytes * (6 * hidden + 3 * inter)


def predict_transformers(weights_mb: float, shape: KVShape, context_tokens: int, element_bytes: int, users: int = 1,
                         overhead_mb: float = RUNTIME_OVERHEAD_MB, compute_mb: float = 0.0) -> MemoryNeed:
    """A torch process: its cache holds exactly the context (no blocks) in the compute dtype; the runtime is
    `overhead_mb` (stated, or measured after import), the compute `compute_mb` (0: the stated overhead covers it)."""
    if users < 1 or context_tokens < 0:
        raise ValueError(f"need users >= 1 and context >= 0, got {users}, {context_tokens}")
    kv = shape.layers * shape.kv_heads * shape.head_dim * 2 * context_tokens * element_bytes * users / MB
    name = {4: "f32", 2: "f16"}.get(element_bytes, f"{element_bytes}-byte")
    return MemoryNeed(weights_mb, kv, compute_mb, overhead_mb, context_tokens, users, name, compute_mb > 0)


def longest_context(usable_mb: float, need, limit_tokens: int) -> int:
    """The longest context per user (a multiple of 256, at most `limit_tokens`) whose `need(context)` fits; 0: none.

    `need` maps a context to a MemoryNeed; memory only grows with context, so a bisection finds the edge."""
    if need(1).total_mb > usable_mb:
        return 0
    if need(limit_tokens).total_mb <= usable_mb:
        return limit_tokens
    lo, hi = 0, limit_tokens // LLAMA_CELL_BLOCK  # in blocks: lo fits (or is 0), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid * LLAMA_CELL_BLOCK).total_mb <= usable_mb else (lo, mid)
    return lo * LLAMA_CELL_BLOCK


def most_users(usable_mb: float, need, cap: int = 4096) -> int:
    """The most users `need(users)` fits for (0: not one), up to `cap`."""
    if need(1).total_mb > usable_mb:
        return 0
    lo, hi = 1, cap + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if need(mid).total_mb <= usable_mb else (lo, mid)
    return lo


def error_pct(predicted_mb: float, measured_mb: float) -> float:
    return 100 * (predicted_mb / measured_mb - 1) if measured_mb > 0 else float("nan")
