"""The runtime seam: one loaded variant on one runtime, behind one small interface.

A variant is a technique applied to a model *and run by a runtime*: eager transformers, transformers with
a static KV cache and a compiled decode step, or llama.cpp on a GGUF file. The timing primitive
(`benchmark.bench_generation`), the text-quality and multiple-choice scorers (`evaluate`) and the Arena all
talk to a `Runner` and never ask which runtime is behind it.

    runner = runtimes.load(technique, "llama.cpp", checkpoint, device="cpu", threads=2)
    for token_id, own_s in runner.stream(prompt_ids, 32): ...
    runner.window_logprobs(window)      # [W, V] float32 log-probs, for KL divergence / top-1 / perplexity
    runner.choice_logprobs(tok, items)  # summed log-prob of each choice, for multiple-choice accuracy
    runner.bytes_held()                 # bytes of weights as stored by this runtime
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

Clock = Callable[[], float]


@runtime_checkable
class Runner(Protocol):
    runtime: str  # registry key of the runtime that runs it
    device: str
    dtype: str  # how the weights are stored, e.g. "float32", "q4_k_m"

    def stream(self, prompt_ids: torch.Tensor, max_new_tokens: int,
               clock: Clock = time.perf_counter) -> Iterator[tuple[int, float]]:
        """Greedy decode of [1, T] prompt ids, EOS ignored: yields (token_id, own compute s so far) per token."""
        ...

    def window_logprobs(self, window: torch.Tensor) -> torch.Tensor:
        """[W, V] float32 next-token log-probabilities at every position of a [1, W] window."""
        ...

    def choice_logprobs(self, tokenizer, items: Sequence[Any]) -> list[list[float]]:
        """For each multiple-choice item, the summed log-probability of each choice after its question."""
        ...

    def bytes_held(self) -> int: ...

    def bytes_read_per_token(self) -> int:
        """Bytes one decoded token must read: the bandwidth roofline's denominator."""
        ...

    def facts(self) -> dict[str, Any]:
        """Structure and runtime numbers stored with the record (e.g. compile_s, experts, gguf file size)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Runtime:
    key: str
    label: str
    explanation: str  # one plain sentence for a newcomer
    # (technique, device) -> why this runtime cannot run that technique here, or None
    unsupported: Callable[[Any, str], str | None]
    # (technique, checkpoint, device, threads, progress) -> Runner
    load: Callable[..., Runner]


def _registry() -> dict[str, Runtime]:
    from core.runtimes import llamacpp, transformers_rt

    return {r.key: r for r in (transformers_rt.EAGER, transformers_rt.COMPILED, llamacpp.RUNTIME)}


RUNTIMES: dict[str, Runtime] = {}


def all_runtimes() -> dict[str, Runtime]:
    if not RUNTIMES:
        RUNTIMES.update(_registry())
    return RUNTIMES


def get(key: str) -> Runtime:
    found = all_runtimes().get(key)
    if found is None:
        raise ValueError(f"Unknown runtime {key!r}; choose from {', '.join(all_runtimes())}")
    return found


def why_not(technique, runtime: str, device: str) -> str | None:
    """Why `technique` cannot run on `runtime` on this device, or None when it can."""
    if runtime not in technique.runtimes:
        return (f"{technique.label} runs on {', '.join(technique.runtimes)}, not on {runtime}.")
    return get(runtime).unsupported(technique, device) or technique.why_not(device)


def load(technique, runtime: str, checkpoint: Path, device: str = "cpu", threads: int = 1,
         progress: Callable[[str], None] | None = None) -> Runner:
    reason = why_not(technique, runtime, device)
    if reason:
        raise ValueError(reason)
    return get(runtime).load(technique, checkpoint, device, threads, progress or (lambda _m: None))


def as_runner(model_or_runner, device: str = "cpu") -> Runner:
    """A torch model becomes an eager transformers Runner; a Runner passes through unchanged."""
    if isinstance(model_or_runner, torch.nn.Module):
        from core.runtimes.transformers_rt import TransformersRunner

        return TransformersRunner(model_or_runner, device)
    return model_or_runner
