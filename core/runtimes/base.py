"""The runtime seam's interface: a loaded variant (`Runner`) and the runtime that loads it (`Runtime`).

Every measurement (the timing primitive, the quality scorers, the Arena) talks to a `Runner` and never asks
which runtime is behind it. A runtime only loads and runs what a technique hands it (a torch model, a GGUF
file); it never builds artifacts, so this folder imports no technique.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from core.measure.benchmark import Clock


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
