"""The one registry of techniques. Each technique file registers its own entries; pages and the CLI iterate the
registry and never branch on technique names.

Each entry says, in plain words, what it does and what a newcomer will be surprised by, and knows how to build
its variant from a checkpoint directory: a torch model (`build`) or a file a runtime loads (`artifact`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from core import runtimes


def _all_bytes_held_are_read(_model: torch.nn.Module, bytes_held: int) -> int:
    # A dense model reads every weight it holds once per decoded token.
    return bytes_held


def no_facts(_model: torch.nn.Module) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Technique:
    key: str
    label: str
    family: str  # "reference", "quantization", ...
    config: Any  # the family's frozen config dataclass
    explanation: str  # one or two plain sentences for a newcomer
    surprise: str  # what a newcomer will see that looks wrong but is not, and why
    build: Callable[[Path, Any, str], torch.nn.Module]  # (checkpoint, config, device) -> model in eval mode
    unsupported: Callable[[Any, str], str | None]  # (config, device) -> why it cannot run here, or None
    # (model, bytes held) -> bytes one decoded token reads: the roofline's denominator. A mixture of experts
    # holds every expert but reads only the chosen ones, so for it this is less than the bytes held.
    bytes_read_per_token: Callable[[torch.nn.Module, int], int] = _all_bytes_held_are_read
    facts: Callable[[torch.nn.Module], dict[str, Any]] = no_facts  # structure numbers stored with the record
    # The runtimes that can run it (core.runtimes keys); a variant is (technique, runtime), and a registry
    # key "fp32@transformers-compiled" names a technique bound to one runtime. The first is the default.
    runtimes: tuple[str, ...] = ("transformers",)
    # (checkpoint, config, threads, progress) -> (file, facts recorded with it): for techniques whose runtime loads
    # a file (a GGUF) instead of a torch model. The technique builds the file; the runtime only loads it.
    build_artifact: Callable[[Path, Any, int, Callable[[str], None]], tuple[Path, dict]] | None = None
    # Where this entry is offered or ticked before the user picks ("sweep": the Quantize page's Measure, "arena",
    # "saved": the GGUF files offered of a saved student or fine-tune): callers ask the registry, never name keys.
    default_for: tuple[str, ...] = ()

    @property
    def runtime(self) -> str:
        return self.runtimes[0]

    def make(self, checkpoint: Path, device: str = "cpu") -> torch.nn.Module:
        return self.build(checkpoint, self.config, device)

    def artifact(self, checkpoint: Path, threads: int, progress: Callable[[str], None]) -> tuple[Path, dict]:
        if self.build_artifact is None:
            raise ValueError(f"{self.label} builds a torch model, not a file for another runtime")
        return self.build_artifact(checkpoint, self.config, threads, progress)

    def why_not(self, device: str) -> str | None:
        return self.unsupported(self.config, device)

    def on(self, runtime: str) -> "Technique":
        """This technique bound to one runtime, under the key `<key>@<runtime>` (the default keeps its key)."""
        if runtime not in self.runtimes:
            raise ValueError(f"{self.label} runs on {', '.join(self.runtimes)}, not on {runtime!r}")
        if runtime == self.runtime:
            return self
        # The reference is on the default runtime alone; the same weights elsewhere are a variant like any other.
        family = "quantization" if self.family == "reference" else self.family
        return replace(self, key=f"{self.key}@{runtime}", label=f"{self.label} · {runtimes.get(runtime).label}",
                       family=family, runtimes=(runtime,), default_for=())


TECHNIQUES: dict[str, Technique] = {}
# Keys the registry cannot list ahead (any moe-<E>x<k>, a GGUF of a saved student): each family that has such
# keys registers a resolver, key -> Technique or None when the key is not of its kind.
_RESOLVERS: list[Callable[[str], Technique | None]] = []
_REFERENCE: list[str] = []  # the key of the technique every other variant is compared against
_RANK: dict[str, tuple[int, int]] = {}  # key -> (list rank, registration order)


def register(*entries: Technique, rank: int = 0) -> None:
    """Add entries; `rank` orders the lists that pages show (lower first), whatever order files are imported in."""
    for t in entries:
        if t.key in TECHNIQUES:
            raise ValueError(f"Technique {t.key!r} is registered twice")
        _RANK[t.key] = (rank, len(_RANK))
        TECHNIQUES[t.key] = t
        if t.family == "reference":
            _REFERENCE[:] = [t.key]
    ordered = sorted(TECHNIQUES.values(), key=lambda t: _RANK[t.key])
    TECHNIQUES.clear()
    TECHNIQUES.update((t.key, t) for t in ordered)


def register_resolver(resolve: Callable[[str], Technique | None]) -> None:
    _RESOLVERS.append(resolve)


def reference_key() -> str:
    """The key of the reference technique (the unmodified model on the default runtime)."""
    if not _REFERENCE:
        raise LookupError("No reference technique is registered")
    return _REFERENCE[0]


def get(key: str) -> Technique:
    if key in TECHNIQUES:
        return TECHNIQUES[key]
    for resolve in _RESOLVERS:
        if (found := resolve(key)) is not None:
            return found
    if "@" in key:  # any technique on any of its runtimes: "<key>@<runtime>"
        base, runtime = key.split("@", 1)
        return get(base).on(runtime)
    raise ValueError(f"Unknown technique {key!r}; choose from {', '.join(TECHNIQUES)} (or moe-<experts>x<top_k>[-s<shared>], "
                     "depth-<layers>-redundancy|spread, sparse-<percent>)")


def keys_of_family(family: str) -> list[str]:
    """The listed keys of one family ("sparsity", "moe", ...), in registry order."""
    return [k for k, t in TECHNIQUES.items() if t.family == family]


def defaults_for(place: str) -> list[str]:
    """The keys marked for `place` ("sweep", "arena", "saved"), in registry order."""
    return [k for k, t in TECHNIQUES.items() if place in t.default_for]


def parse_keys(text: str) -> list[str]:
    """'fp32, nf4' -> ['fp32', 'nf4'], validating each key and refusing duplicates."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ValueError(f"No techniques given; choose from {', '.join(TECHNIQUES)}")
    for k in keys:
        get(k)
    if len(set(keys)) != len(keys):
        raise ValueError(f"A technique is listed twice in {text!r}")
    return keys
