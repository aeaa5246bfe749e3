"""The one registry of techniques. Pages and the CLI iterate it; nothing else branches on technique names.

Each entry says, in plain words, what it does and what a newcomer will be surprised by, and knows how
to build its variant from a checkpoint directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from core.quantization import QuantConfig, load_quantized, unsupported_reason


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

    def make(self, checkpoint: Path, device: str = "cpu") -> torch.nn.Module:
        return self.build(checkpoint, self.config, device)

    def why_not(self, device: str) -> str | None:
        return self.unsupported(self.config, device)


REFERENCE = "fp32"


def _quant(key: str, label: str, config: QuantConfig, explanation: str, surprise: str = "") -> Technique:
    family = "reference" if key == REFERENCE else "quantization"
    return Technique(key, label, family, config, explanation, surprise, load_quantized, unsupported_reason)


TECHNIQUES: dict[str, Technique] = {
    t.key: t
    for t in [
        _quant("fp32", "FP32 (reference)", QuantConfig("fp32"),
               "Every weight is a 32-bit float: the reference every other variant is compared against.",
               "On a CPU it is often the fastest, because CPU kernels are most optimised for float32."),
        _quant("bf16", "BF16", QuantConfig("bf16"),
               "Weights in 16-bit brain-float: half the memory, nearly the same numbers (same range, fewer digits).",
               "On CPUs without native bf16 instructions it is no faster than fp32: each multiply converts back."),
        _quant("fp16", "FP16", QuantConfig("fp16"),
               "Weights in 16-bit half precision: half the memory; fast on GPUs, often slow on CPUs.",
               "CPUs without fp16 arithmetic emulate it, so it can decode several times slower than fp32."),
        _quant("int8", "INT8 (bitsandbytes LLM.int8)", QuantConfig("int8"),
               "Weights stored as 8-bit integers with a scale per row; rare large activations stay in 16-bit.",
               "At this size it decodes slower than fp32 on a CPU: every step converts int8 weights back to "
               "16-bit floats, and that work costs more than the memory it saves for a model this small."),
        _quant("nf4", "NF4 (bitsandbytes 4-bit)", QuantConfig("nf4"),
               "Weights in 4 bits on a 'normal float' grid matched to how weights are distributed, one scale per 64 weights.",
               "The embedding table stays in full precision, so the model shrinks less than 8x."),
        _quant("fp4", "FP4 (bitsandbytes 4-bit float)", QuantConfig("fp4"),
               "Weights in a tiny 4-bit floating-point format, one scale per 64 weights.",
               "Usually a little worse than NF4 at the same size: its grid fits real weights less well."),
        _quant("nf4-dq", "NF4 + double quantization", QuantConfig("nf4", double_quant=True),
               "NF4, with the per-block scales themselves quantized to 8 bits (the QLoRA recipe).",
               "Saves only about 0.4 bits per weight; at 135M parameters that is a few MB."),
        _quant("dyn-int8", "Dynamic INT8 (torch)", QuantConfig("dyn-int8"),
               "torch quantizes Linear weights to int8 once and activations to int8 at run time, then uses fast int8 kernels.",
               "It can be the fastest variant on a CPU and still damage quality badly: quantizing activations "
               "of a model this small loses much more than quantizing weights alone."),
    ]
}


def get(key: str) -> Technique:
    try:
        return TECHNIQUES[key]
    except KeyError:
        raise ValueError(f"Unknown technique {key!r}; choose from {', '.join(TECHNIQUES)}") from None


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
