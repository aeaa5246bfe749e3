"""Quantization variants: pure size arithmetic first, then the loaders that build each variant.

Every loader starts from the same float32 safetensors checkpoint, so the variants differ only in how
their weights are stored and multiplied.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import logging
import warnings

import torch

from core.models import load_model


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
    even a tiny matmul starts a second OpenMP team that slows every later measurement (see core/jobs.py)."""
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
    from transformers import BitsAndBytesConfig

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
    from torch.ao.quantization import quantize_dynamic

    # The tied lm_head shares its weight with the embedding; quantizing it would untie and copy it.
    skip = {"lm_head"} if getattr(model.config, "tie_word_embeddings", False) else set()
    targets = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name not in skip}
    with warnings.catch_warnings():  # torch announces the quantized-tensor API's future removal on every call
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(model, qconfig_spec=targets, dtype=torch.qint8, inplace=True)
