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

from collections.abc import Callable
from pathlib import Path

import torch

from core.runtimes import llamacpp, transformers_rt
from core.runtimes.base import Clock, Runner, Runtime

__all__ = ["Clock", "Runner", "Runtime", "all_runtimes", "as_runner", "get", "load", "why_not"]

RUNTIMES: dict[str, Runtime] = {r.key: r for r in (transformers_rt.EAGER, transformers_rt.COMPILED, llamacpp.RUNTIME)}


def all_runtimes() -> dict[str, Runtime]:
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
        return transformers_rt.TransformersRunner(model_or_runner, device)
    return model_or_runner
