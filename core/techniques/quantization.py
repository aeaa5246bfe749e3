"""Quantization variants: pure size arithmetic first, then the loaders that build each variant.

Every loader starts from the same float32 safetensors checkpoint, so the variants differ only in how
their weights are stored and multiplied.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from torch.ao.quantization import quantize_dynamic
from transformers import BitsAndBytesConfig

from core.models import load_model
from core.techniques import moe
from core.techniques.registry import Technique, no_facts, register


class _DropRepeatedCastNotice(logging.Filter):
    """bitsandbytes logs this on every int8 matmul on a CPU; the int8 explanation covers it once."""
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropRepeatedCastNotice())

WeightFormat = Literal["fp32", "bf16", "fp16", "int8", "nf4", "fp4", "dyn-int8"]


@dataclass(frozen=True)
class QuantConfig:
    weights: WeightFormat
    double_quant: bool = False  # nf4/fp4 only: quantize the per-block scales too (QLoRA's trick)
    block_size: int = 64  # bitsandbytes 4-bit block size (weights per absmax scale)

    def __post_init__(self) -> None:
        if self.double_quant and self.weights not in ("nf4", "fp4"):
            raise ValueError(f"double_quant applies to nf4/fp4 only, not {self.weights!r}")


# ---------------------------------------------------------------- device support (pure checks)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def half_matmul_works(dtype: torch.dtype, device: str) -> bool:
    """Whether this device multiplies `dtype` matrices. Decided without computing: a page thread that runs
    even a tiny matmul starts a second OpenMP team that slows every later measurement (see core/launch/jobs.py)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and (dtype != torch.bfloat16 or torch.cuda.is_bf16_supported())
    return True  # every torch 2.x CPU build has bf16 and fp16 matmul kernels (slow where the CPU lacks them)


@lru_cache(maxsize=None)
def bitsandbytes_problem(device: str) -> str | None:
    """Why bitsandbytes cannot run here, or None when it can."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # a broken native library raises more than ImportError
        return f"bitsandbytes is not usable here ({type(e).__name__}: {e}). Reinstall it with `make setup`."
    if device.startswith("cuda") and not cuda_available():
        return "bitsandbytes CUDA kernels need an NVIDIA GPU, and none is visible."
    return None


def unsupported_reason(config: QuantConfig, device: str) -> str | None:
    if config.weights in ("bf16", "fp16"):
        dtype = torch.bfloat16 if config.weights == "bf16" else torch.float16
        if not half_matmul_works(dtype, device):
            return f"This {device} build of torch cannot multiply {config.weights} matrices."
    if config.weights in ("int8", "nf4", "fp4"):
        return bitsandbytes_problem(device)
    if config.weights == "dyn-int8" and device != "cpu":
        return "torch dynamic int8 quantization runs on the CPU only."
    return None


# ---------------------------------------------------------------- loaders


def compute_dtype(device: str) -> torch.dtype:
    # CPUs without native bf16 run 4-bit matmuls fastest in fp32; GPUs in bf16.
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def bnb_config(config: QuantConfig, device: str):
    if config.weights == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.weights,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(device),
    )


def load_quantized(checkpoint: Path, config: QuantConfig, device: str = "cpu") -> torch.nn.Module:
    reason = unsupported_reason(config, device)
    if reason:
        raise RuntimeError(reason)
    if config.weights == "fp32":
        return load_model(checkpoint, torch.float32, device)
    if config.weights == "bf16":
        return load_model(checkpoint, torch.bfloat16, device)
    if config.weights == "fp16":
        return load_model(checkpoint, torch.float16, device)
    if config.weights == "dyn-int8":
        return dynamic_int8(load_model(checkpoint, torch.float32, "cpu"))
    return load_model(checkpoint, compute_dtype(device), device, quantization_config=bnb_config(config, device))


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """int8 weights with per-token int8 activations, quantized at run time by torch's fbgemm kernels."""
    # The tied lm_head shares its weight with the embedding; quantizing it would untie and copy it.
    skip = {"lm_head"} if getattr(model.config, "tie_word_embeddings", False) else set()
    targets = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name not in skip}
    with warnings.catch_warnings():  # torch announces the quantized-tensor API's future removal on every call
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(model, qconfig_spec=targets, dtype=torch.qint8, inplace=True)


# ---------------------------------------------------------------- registry entries

REFERENCE = "fp32"  # the unmodified weights: every other variant is compared against this one


BITSANDBYTES_WEIGHTS = ("int8", "nf4", "fp4")  # formats run by bitsandbytes' kernels (fast on a CPU only with AVX-512)


def uses_bitsandbytes(technique: Technique) -> bool:
    return isinstance(technique.config, QuantConfig) and technique.config.weights in BITSANDBYTES_WEIGHTS


def _quant(key: str, label: str, config: QuantConfig, explanation: str, surprise: str = "",
           default_for: tuple[str, ...] = ()) -> Technique:
    family = "reference" if key == REFERENCE else "quantization"
    # The reference records its parameter count and FLOPs per token so that MoE variants can be drawn against it.
    facts = moe.dense_facts if key == REFERENCE else no_facts
    # Only the 32- and 16-bit variants compile into one graph: torch.compile cannot trace bitsandbytes' and torch's
    # dynamic-int8 custom kernels.
    runs_on = ("transformers", "transformers-compiled") if config.weights in ("fp32", "bf16", "fp16") else ("transformers",)
    return Technique(key, label, family, config, explanation, surprise, load_quantized, unsupported_reason, facts=facts,
                     runtimes=runs_on, default_for=default_for)


ENTRIES = [
        _quant("fp32", "FP32 (reference)", QuantConfig("fp32"),
               "Every weight is a 32-bit float: the reference every other variant is compared against.",
               "On a CPU whose kernels are best optimised for float32 it can be the fastest; the Trade-off Map shows "
               "whether it is on this machine.", default_for=('sweep', 'arena')),
        _quant("bf16", "BF16", QuantConfig("bf16"),
               "Weights in 16-bit brain-float: half the memory, nearly the same numbers (same range, fewer digits).",
               "On CPUs without native bf16 instructions it is no faster than fp32 at decoding, and reading the "
               "prompt (time to first token) is slower: every multiply converts back to fp32.", default_for=('sweep', 'arena')),
        _quant("fp16", "FP16", QuantConfig("fp16"),
               "Weights in 16-bit half precision: half the memory. Fast on GPUs; on a CPU it depends on the CPU's "
               "half-precision support, so measure it here.",
               "CPUs without fp16 arithmetic emulate it: decoding may keep pace with fp32 (it is memory-bound), "
               "but reading a prompt, which is compute-bound, can take several times longer."),
        _quant("int8", "INT8 (bitsandbytes LLM.int8)", QuantConfig("int8"),
               "Weights stored as 8-bit integers with a scale per row; rare large activations stay in 16-bit.",
               "At this size it can decode slower than fp32 on a CPU: every step converts int8 weights back to "
               "16-bit floats, and that work can cost more than the memory it saves for a model this small.", default_for=('sweep',)),
        _quant("nf4", "NF4 (bitsandbytes 4-bit)", QuantConfig("nf4"),
               "Weights in 4 bits on a 'normal float' grid matched to how weights are distributed, one scale per 64 weights.",
               "The embedding table stays in full precision, so the model shrinks less than 8x.", default_for=('sweep',)),
        _quant("fp4", "FP4 (bitsandbytes 4-bit float)", QuantConfig("fp4"),
               "Weights in a tiny 4-bit floating-point format, one scale per 64 weights.",
               "Usually a little worse than NF4 at the same size: its grid fits real weights less well."),
        _quant("nf4-dq", "NF4 + double quantization", QuantConfig("nf4", double_quant=True),
               "NF4, with the per-block scales themselves quantized to 8 bits (the QLoRA recipe).",
               "Saves only about 0.4 bits per weight; at 135M parameters that is a few MB."),
        _quant("dyn-int8", "Dynamic INT8 (torch)", QuantConfig("dyn-int8"),
               "torch quantizes Linear weights to int8 once and activations to int8 at run time, then uses fast int8 kernels.",
               "It can be the fastest variant on a CPU and still damage quality badly: quantizing activations "
               "of a model this small loses much more than quantizing weights alone.", default_for=('sweep', 'arena')),
]
register(*ENTRIES)
# The 32- and 16-bit variants with compiled decode (static KV cache + torch.compile): the GPU user's path.
register(*(t.on("transformers-compiled") for t in ENTRIES if "transformers-compiled" in t.runtimes), rank=2)
