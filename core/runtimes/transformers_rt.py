"""transformers as a runtime: eager (the default) and compiled decode (static KV cache + torch.compile).

Both hold the same torch model; they differ only in how a decode step runs. Quality (log-probs of text
windows and of multiple-choice answers) is computed by the same eager forward in both, since compiling
changes how the arithmetic is scheduled, not what it computes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import StaticCache

from core.measure import benchmark
from core.runtimes import eager
from core.runtimes.base import Clock, Runtime


class TransformersRunner:
    runtime = "transformers"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", technique=None):
        self.model, self.device, self.technique = model, device, technique
        first = next(model.parameters(), None)
        self.dtype = str(first.dtype).replace("torch.", "") if first is not None else "float32"
        self._held: int | None = None
        self._facts: dict[str, Any] = {}

    def stream(self, prompt_ids: torch.Tensor, max_new_tokens: int,
               clock: Clock = time.perf_counter) -> Iterator[tuple[int, float]]:
        return eager.stream_tokens(self.model, prompt_ids.to(self.device), max_new_tokens, self.device, clock)

    def window_logprobs(self, window: torch.Tensor) -> torch.Tensor:
        return eager.window_logprobs(self.model, window, self.device)

    def choice_logprobs(self, tokenizer, items: Sequence[Any]) -> list[list[float]]:
        return eager.batch_choice_logprobs(self.model, tokenizer, list(items), self.device)

    def bytes_held(self) -> int:
        if self._held is None:
            self._held = benchmark.bytes_held(self.model)
        return self._held

    def bytes_read_per_token(self) -> int:
        if self.technique is None:
            return self.bytes_held()
        return self.technique.bytes_read_per_token(self.model, self.bytes_held())

    def facts(self) -> dict[str, Any]:
        own = self.technique.facts(self.model) if self.technique is not None else {}
        return {**own, **self._facts}

    def close(self) -> None:
        self.model = None


# ---------------------------------------------------------------- compiled decode


def _compile_mode(device: str) -> str:
    # CUDA graphs ("reduce-overhead") remove the per-kernel launch cost that bounds small-model decode on a
    # GPU; on a CPU there are no graphs to capture, and inductor's default mode fuses the elementwise work.
    return "reduce-overhead" if device.startswith("cuda") else "default"


class CompiledRunner(TransformersRunner):
    """One compiled graph for the one-token decode step, over a static KV cache of fixed length.

    A static cache gives every decode step the same tensor shapes, so torch.compile builds the step once;
    the prefill (a different shape per prompt) runs eagerly into the same cache. The first stream pays for
    compilation; that time is kept apart (`facts()["compile_s"]`) and never counted as decode time.
    """

    runtime = "transformers-compiled"
    CACHE_TOKENS = 512  # static cache length: prompt + new tokens must fit; attention cost grows with it

    def __init__(self, model: torch.nn.Module, device: str = "cpu", technique=None):
        super().__init__(model, device, technique)
        self._step = torch.compile(self._decode_step, mode=_compile_mode(device), fullgraph=False, dynamic=False)
        self._compiled = False

    def _decode_step(self, token: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
        out = self.model(input_ids=token, position_ids=position[None], cache_position=position, cache=cache,
                         use_cache=True)
        return out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]

    def _new_cache(self):

        return StaticCache(config=self.model.config, max_cache_len=self.CACHE_TOKENS)

    @torch.inference_mode()
    def stream(self, prompt_ids: torch.Tensor, max_new_tokens: int,
               clock: Clock = time.perf_counter) -> Iterator[tuple[int, float]]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        ids = prompt_ids.to(self.device)
        n = int(ids.shape[-1])
        if n + max_new_tokens > self.CACHE_TOKENS:
            raise ValueError(f"prompt ({n}) + new tokens ({max_new_tokens}) exceed the compiled runtime's static "
                             f"cache of {self.CACHE_TOKENS} tokens; use fewer tokens or the eager runtime")
        if not self._compiled:
            self._compile(ids)
        cache = self._new_cache()
        own_s = 0.0
        benchmark.synchronize(self.device)
        t0 = clock()
        positions = torch.arange(n, device=self.device)
        out = self.model(input_ids=ids, position_ids=positions[None], cache_position=positions, cache=cache,
                         use_cache=True)
        next_id = out.logits[:, -1].argmax(-1, keepdim=True)
        token = int(next_id)
        benchmark.synchronize(self.device)
        own_s += clock() - t0
        yield token, own_s
        for i in range(max_new_tokens - 1):
            t0 = clock()
            position = torch.tensor([n + i], device=self.device)
            next_id = self._step(next_id, position, cache).clone()  # clone: the graph may reuse its output buffer
            token = int(next_id)
            benchmark.synchronize(self.device)
            own_s += clock() - t0
            yield token, own_s

    def _compile(self, ids: torch.Tensor) -> None:
        """Trigger compilation on a throwaway cache, timing it; later streams reuse the compiled step."""
        t0 = time.perf_counter()
        cache = self._new_cache()
        n = int(ids.shape[-1])
        positions = torch.arange(n, device=self.device)
        first = self.model(input_ids=ids, position_ids=positions[None], cache_position=positions, cache=cache,
                           use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        token = first
        for i in range(2):  # the second call confirms the graph is reused, not rebuilt
            token = self._step(token, torch.tensor([n + i], device=self.device), cache).clone()
        benchmark.synchronize(self.device)
        self._facts["compile_s"] = time.perf_counter() - t0
        self._facts["compile_mode"] = _compile_mode(self.device)
        self._facts["static_cache_tokens"] = self.CACHE_TOKENS
        self._compiled = True


# ---------------------------------------------------------------- registry entries


def _load_eager(technique, checkpoint, device: str, threads: int, progress) -> TransformersRunner:
    progress(f"Loading {technique.label}")
    return TransformersRunner(technique.make(checkpoint, device), device, technique)


def _load_compiled(technique, checkpoint, device: str, threads: int, progress) -> CompiledRunner:
    progress(f"Loading {technique.label} (the decode step compiles on first use)")
    return CompiledRunner(technique.make(checkpoint, device), device, technique)


def _eager_ok(_technique, _device: str) -> str | None:
    return None


def _compiled_ok(technique, device: str) -> str | None:
    if technique.family not in ("reference", "quantization"):
        return f"compiled decode is offered for the quantization family only, not {technique.family}."
    if COMPILED.key not in technique.runtimes:  # the technique says which runtimes run it (quantization.py)
        return ("torch.compile cannot trace bitsandbytes' and torch's dynamic-int8 custom kernels into one graph; "
                "compile the 32- or 16-bit variants.")
    if device == "cpu" and shutil.which("g++") is None and shutil.which("c++") is None:
        return "torch.compile on a CPU generates C++ and needs a C++ compiler (g++), which is not installed."
    return None


EAGER = Runtime(
    "transformers", "transformers (eager)",
    "PyTorch runs each layer as it comes, one kernel after another: the simplest way, and the lab's reference.",
    _eager_ok, _load_eager)
COMPILED = Runtime(
    "transformers-compiled", "transformers (compiled decode)",
    "A static KV cache keeps every decode step the same shape, so torch.compile turns it into one fused graph "
    "(CUDA graphs on a GPU): the path a GPU user takes to remove per-kernel overhead.",
    _compiled_ok, _load_compiled)
