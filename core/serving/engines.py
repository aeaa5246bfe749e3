"""Engines: which server serves a variant, started how, asked how; and which variants a server can serve.

The registries decide, never a technique's name: a technique whose default runtime is llama.cpp is served from its
GGUF file by llama.cpp's server; one that runs on transformers and whose config says how its weights are stored is
served by `transformers serve`, with the flags that load its weights that way.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from core import models, techniques
from core.measure import memory
from core.paths import repo_root
from core.runtimes import llamacpp, llamacpp_build, transformers_rt
from core.serving.limits import HOST, ServingError
from core.techniques import gguf as gguf_techniques
from core.techniques.quantization import QuantConfig

TRANSFORMERS = transformers_rt.EAGER.key  # the runtime `transformers serve` runs, as in VariantRecord.runtime
LLAMA_CPP = llamacpp.RUNTIME.key  # the runtime llama.cpp's server runs

# `transformers serve` loads a checkpoint in a dtype (--dtype) or quantizes it at load with bitsandbytes
# (--quantization, computing in float32 on a CPU): its "bnb-8bit" is LLM.int8, its "bnb-4bit" NF4 with double
# quantization in blocks of 64. Keyed by how a technique's config stores the weights, never by its name.
_SERVE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # QuantConfig.weights -> --dtype
_SERVE_BNB = {QuantConfig("int8"): "bnb-8bit", QuantConfig("nf4", double_quant=True): "bnb-4bit"}


@dataclass(frozen=True)
class Engine:
    technique: str
    runtime: str  # "transformers" or "llama.cpp", as in VariantRecord.runtime
    server: str  # what answers, in words
    argv: Callable[[int], list[str]]  # port -> command line
    body: Callable[[str, int], dict]  # (prompt, new tokens) -> JSON body of a streaming /v1/completions
    eos_note: str  # how the server was told to ignore end-of-sequence, so every request does N tokens
    env: dict[str, str] = field(default_factory=dict)
    kv_dtype: str = "float32"  # torch dtype of one cached key/value element on this engine
    kv_from_log: bool = False  # the server prints its own KV cache size at start (llama.cpp)
    ready_path: str = "/v1/models"  # answers 200 once the model is loaded
    metrics_path: str = ""  # a Prometheus /metrics endpoint of the server's own counters, when it has one
    slots: int = 0  # parallel sequences the server holds (llama-server's --parallel); 0: it decides
    ctx_per_slot: int = 0  # tokens of KV cache each slot holds; 0: it decides
    token_logprobs: bool = False  # streams each token's id and top log-probs when a request asks ("logprobs": n)
    cache_type: str = "f16"  # llama.cpp's -ctk/-ctv (K and V alike); transformers keeps its cache in kv_dtype

    @property
    def kv_element_bytes(self) -> int:
        return getattr(torch, self.kv_dtype).itemsize


# --- which variants a server can serve (from the registries) ----------------------------------------


def _weights(technique: techniques.Technique) -> str:
    config = technique.config
    if isinstance(config, QuantConfig):
        return f"{config.weights} weights" + (" with double quantization" if config.double_quant else "")
    return f"a {technique.family} variant"


def transformers_flags(technique: techniques.Technique) -> tuple[list[str], str] | None:
    """(`transformers serve` flags that load this technique's weights, the dtype it computes in), or None."""
    config = technique.config
    if TRANSFORMERS not in technique.runtimes or not isinstance(config, QuantConfig):
        return None
    if config.weights in _SERVE_DTYPES:
        return ["--dtype", _SERVE_DTYPES[config.weights]], _SERVE_DTYPES[config.weights]
    if config in _SERVE_BNB:
        return ["--dtype", "float32", "--quantization", _SERVE_BNB[config]], "float32"
    return None


def served_by_llamacpp(technique: techniques.Technique) -> bool:
    """A technique whose default runtime is llama.cpp: served from the file it builds (`Technique.artifact`)."""
    return technique.runtime == LLAMA_CPP


def servable_techniques() -> list[techniques.Technique]:
    """Every registered technique a server can serve, in the registry's order."""
    return [t for t in techniques.TECHNIQUES.values() if served_by_llamacpp(t) or transformers_flags(t) is not None]


def why_not_transformers(technique: techniques.Technique) -> str:
    """Why `transformers serve` cannot serve this technique, from what the technique says about itself."""
    if TRANSFORMERS not in technique.runtimes:
        why = f"it runs on {', '.join(technique.runtimes)}"
    else:
        why = f"it holds {_weights(technique)}"
    on_transformers = [t.key for t in servable_techniques() if not served_by_llamacpp(t)]
    on_llamacpp = [t.key for t in servable_techniques() if served_by_llamacpp(t)]
    return (f"{technique.key!r} cannot be served by transformers serve, which loads a checkpoint as it is or quantizes "
            f"it with bitsandbytes (LLM.int8, NF4 with double quantization), and {why}; serve one of "
            f"{', '.join(on_transformers)}, or a GGUF file on llama.cpp ({', '.join(on_llamacpp)}, or your own)")


def gguf_quant(path: Path) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'q4_1': the quantization its name states."""
    return path.stem.rsplit(".", 1)[-1].lower() if "." in path.stem else path.stem.lower()


def gguf_key(path: Path) -> str:
    """The technique key a GGUF file is served and recorded under, in the GGUF family's naming: gguf-<its quant>."""
    return gguf_techniques.PREFIX + gguf_quant(path)


def bundled_gguf(spec: models.ModelSpec) -> Path | None:
    """The GGUF file a bundled model ships as, or None."""
    return models.gguf_path(spec) if spec.source == "bundled-gguf" else None


def servable(bundled: Path | None = None) -> dict[str, str]:
    """What a page offers to serve: technique key -> what serves it, in words; then a model's own GGUF file."""
    out = {t.key: f"{t.label} on {'llama-server' if served_by_llamacpp(t) else 'transformers serve'}"
           for t in servable_techniques()}
    if bundled is not None:
        out[gguf_key(bundled)] = f"GGUF {gguf_quant(bundled).upper()} on llama.cpp (the file the model ships as)"
    return out


# --- the servers ------------------------------------------------------------------------------------


def _offline_env(threads: int) -> dict[str, str]:
    # No hub, ever; one OpenMP team of `threads` like the rest of the lab; no tokenizer fork warnings.
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_DEACTIVATE_ASYNC_LOAD": "1"}


def _repo_pythonpath() -> str:
    # The launcher is `python -m core.serving.attention`: the server process must find this repository's core package.
    root = str(repo_root())
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def transformers_engine(checkpoint: Path, technique: str, device: str = "cpu", threads: int = 2) -> Engine:
    """`transformers serve` with continuous batching (paged attention), pinned to one local checkpoint."""
    try:
        found = techniques.get(technique)
    except ValueError as e:
        raise ServingError(f"{technique!r} cannot be served by transformers serve: {e}") from None
    flags = transformers_flags(found)
    if flags is None:
        raise ServingError(why_not_transformers(found))
    extra, dtype = flags
    checkpoint = Path(checkpoint)

    # On a CPU the lab's launcher adds per-sequence attention to transformers' own server (core/serving/attention.py
    # says why); on a GPU transformers picks its flash kernels itself.
    launcher = "core.serving.attention" if device == "cpu" else "transformers.cli.transformers"

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", launcher, "serve", str(checkpoint),
                "--continuous-batching", "--device", device, *extra, "--host", HOST, "--port", str(port),
                "--log-level", "warning"]

    def body(prompt: str, new_tokens: int) -> dict:
        # eos_token_id -1 disables the stop token in transformers' continuous batching: exactly N tokens.
        config = {"max_new_tokens": new_tokens, "do_sample": False, "eos_token_id": -1}
        return {"model": str(checkpoint), "prompt": prompt, "stream": True, "temperature": 0.0,
                "max_tokens": new_tokens, "generation_config": json.dumps(config)}

    server = ("transformers serve (continuous batching, per-sequence CPU attention)" if device == "cpu"
              else "transformers serve (continuous batching)")
    return Engine(technique, TRANSFORMERS, server, argv, body,
                  "generation_config eos_token_id=-1 (end-of-sequence disabled), max_new_tokens=N",
                  _offline_env(threads) | {"PYTHONPATH": _repo_pythonpath()}, dtype)


def llama_server_engine(gguf: Path, technique: str, slots: int, ctx_per_slot: int, threads: int = 2,
                        device: str = "cpu", cache_type: str = "f16", flash_attn: bool = True) -> Engine:
    """llama.cpp's own `llama-server` on one GGUF file: `slots` parallel sequences with continuous batching, each
    slot's KV cache holding `ctx_per_slot` tokens of `cache_type` (K and V alike), the same threads for prompts and
    decode. Flash attention is on: llama.cpp keeps a quantized V only inside it (`-fa off` with one is refused)."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ServingError(f"GGUF file {gguf} does not exist")
    if slots < 1 or ctx_per_slot < 1:
        raise ServingError(f"llama-server needs at least one slot and one token of context, got {slots}, {ctx_per_slot}")
    try:
        memory.check_cache_pair(cache_type, cache_type, flash_attn)
    except ValueError as e:
        raise ServingError(str(e)) from None
    try:
        binary = llamacpp_build.tool("llama-server")
    except FileNotFoundError as e:
        raise ServingError(f"GGUF variants cannot be served: {e}") from None

    def argv(port: int) -> list[str]:
        # -c is the whole cache: with --no-kv-unified every slot gets c / slots cells of its own
        return [str(binary), "--model", str(gguf), "--host", HOST, "--port", str(port),
                "--ctx-size", str(slots * ctx_per_slot), "--parallel", str(slots), "--no-kv-unified",
                "--cont-batching", "--threads", str(threads), "--threads-batch", str(threads),
                "--n-gpu-layers", "999" if device.startswith("cuda") else "0", "--metrics", "--no-webui",
                "--cache-type-k", cache_type, "--cache-type-v", cache_type, "--flash-attn", "on" if flash_attn else "off",
                # no RAM prompt cache (up to 8 GiB by default): the server's memory is the slots' and nothing that grows
                "--cache-ram", "0",
                "--seed", "0", "--verbosity", "4"]  # 4: the log states the KV buffer and each slot's context

    def body(prompt: str, new_tokens: int) -> dict:
        # ignore_eos: the server never stops at end-of-sequence, so every request does exactly N tokens
        # cache_prompt off: every prompt is read fresh, so an answer never depends on which slot last held it
        return {"model": gguf.name, "prompt": prompt, "stream": True, "temperature": 0.0, "top_k": 1,
                "max_tokens": new_tokens, "ignore_eos": True, "seed": 0, "cache_prompt": False,
                "stream_options": {"include_usage": True}}

    cache = "" if cache_type == "f16" else f", {cache_type.upper()} KV cache"
    server = f"llama-server (llama.cpp, {slots} slot{'s' if slots != 1 else ''}, continuous batching{cache})"
    return Engine(technique, LLAMA_CPP, server, argv, body,
                  "ignore_eos=true (end-of-sequence ignored), max_tokens=N", _offline_env(threads), "float16",
                  kv_from_log=True, ready_path="/health", metrics_path="/metrics", slots=slots,
                  ctx_per_slot=ctx_per_slot, token_logprobs=True, cache_type=cache_type)


# --- transformers' paged cache, sized to the load -----------------------------------------------------

PAGE_TOKENS = 256  # transformers' paged cache: tokens per page (ContinuousBatchingConfig.page_size default)


def paged_blocks_needed(concurrency: int, context_tokens: int) -> int:
    """Whole pages a paged cache gives `concurrency` sequences of `context_tokens` each (every one rounds up)."""
    return concurrency * math.ceil(context_tokens / PAGE_TOKENS)


def with_paged_cache(engine: Engine, concurrency: int, context_tokens: int) -> Engine:
    # Left alone, the paged cache sizes itself from free memory: on a CPU that is most of the RAM. Size it to the
    # largest point instead (+1 page of room per sequence), so the server's memory says what this load needs.
    blocks = paged_blocks_needed(concurrency, context_tokens + PAGE_TOKENS)
    base = engine.argv
    return replace(engine, argv=lambda port: [*base(port), "--cb-num-blocks", str(blocks)])
