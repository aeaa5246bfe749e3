"""Will it fit: device memory presets and KV-cache arithmetic (what it costs to serve: core/measure/bill.py).

A variant fits a device when the bytes its tensors hold, plus the KV cache at the chosen context length,
plus a stated runtime overhead, stay within the memory an app may use there. Every function takes plain
numbers or records and returns numbers or frozen dataclasses; the page formats them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.measure import memory
from core.measure.memory import MB, RUNTIME_OVERHEAD_MB, KVShape  # noqa: F401  (re-exported: fit.KVShape, fit.MB)
from core.store.records import VariantRecord

GB = 1e9
DEFAULT_CONTEXT_TOKENS = 2048


@dataclass(frozen=True)
class DevicePreset:
    key: str
    label: str
    memory_gb: float  # physical memory on the box (RAM, or GPU memory for a GPU)
    reserved_gb: float  # what the OS, other apps or the CUDA context keep: not available to the model
    source: str  # why these numbers

    def __post_init__(self) -> None:
        if not self.memory_gb > 0:
            raise ValueError(f"memory_gb must be > 0, got {self.memory_gb!r}")
        if not 0 <= self.reserved_gb < self.memory_gb:
            raise ValueError(f"reserved_gb must be in [0, memory_gb), got {self.reserved_gb!r}")

    @property
    def usable_mb(self) -> float:
        return (self.memory_gb - self.reserved_gb) * GB / MB


DEVICE_PRESETS: dict[str, DevicePreset] = {
    d.key: d
    for d in (
        DevicePreset("phone-4gb", "Phone, 4 GB", 4.0, 2.0,
                     "Android keeps about half of a 4 GB phone's RAM for the system and background apps."),
        DevicePreset("phone-8gb", "Phone, 8 GB", 8.0, 3.0,
                     "A mid-range 8 GB phone: the system and background apps keep about 3 GB."),
        DevicePreset("rpi-8gb", "Raspberry Pi 5, 8 GB", 8.0, 1.0,
                     "Raspberry Pi OS Lite with nothing else running keeps well under 1 GB."),
        DevicePreset("laptop-16gb", "Laptop, 16 GB", 16.0, 6.0,
                     "A 16 GB laptop with a desktop session, browser and editor open keeps about 6 GB busy."),
        DevicePreset("t4-16gb", "NVIDIA T4, 16 GB", 16.0, 1.0,
                     "T4 spec sheet: 16 GB GDDR6 (about 15 GB visible); the CUDA context keeps a few hundred MB."),
        DevicePreset("a100-80gb", "NVIDIA A100, 80 GB", 80.0, 1.0,
                     "A100 80GB spec sheet; the CUDA context keeps a few hundred MB."),
    )
}


def get_device(key: str) -> DevicePreset:
    try:
        return DEVICE_PRESETS[key]
    except KeyError:
        raise ValueError(f"unknown device preset {key!r}; choose one of {sorted(DEVICE_PRESETS)}") from None


# --- the KV cache ----------------------------------------------------------------------------------


def kv_shape_from_config(config: dict[str, Any]) -> KVShape:
    """Layers, key/value heads and head width from a transformers config.json (Llama-style names)."""
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
    except KeyError as missing:
        raise ValueError(f"config.json has no {missing}; cannot size the KV cache") from None
    kv_heads = int(config.get("num_key_value_heads") or heads)  # absent: classic multi-head attention
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    return KVShape(layers, kv_heads, head_dim)


def read_kv_shape(checkpoint: Path) -> KVShape:
    return kv_shape_from_config(json.loads((Path(checkpoint) / "config.json").read_text()))


# Bytes per cached key/value element follow the compute dtype (quantized weights still compute in it).
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def kv_element_bytes(dtype: str) -> int:
    return _DTYPE_BYTES.get(dtype.replace("torch.", ""), 4)  # unknown: assume float32, the larger


def kv_cache_bytes(shape: KVShape, context_tokens: int, element_bytes: int, batch: int = 1) -> int:
    """2 (key and value) x layers x kv_heads x head_dim x context x bytes per element, per sequence."""
    if context_tokens < 0 or batch < 1 or element_bytes < 1:
        raise ValueError(f"need context_tokens >= 0, batch >= 1, element_bytes >= 1; got "
                         f"{context_tokens}, {batch}, {element_bytes}")
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * context_tokens * element_bytes * batch


# --- fit -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    technique: str
    label: str
    device: str  # DevicePreset key
    weights_mb: float  # bytes held by the variant's tensors
    kv_cache_mb: float
    overhead_mb: float
    usable_mb: float

    @property
    def need_mb(self) -> float:
        return self.weights_mb + self.kv_cache_mb + self.overhead_mb

    @property
    def fits(self) -> bool:
        return self.need_mb <= self.usable_mb

    @property
    def headroom_mb(self) -> float:
        return self.usable_mb - self.need_mb


def need(record: VariantRecord, shape: KVShape, context_tokens: int, overhead_mb: float = RUNTIME_OVERHEAD_MB,
         users: int = 1, cache_type: str = "f16", calibration: memory.Calibration | None = None) -> memory.MemoryNeed:
    """The one memory model (core/measure/memory.py) for a measured variant: llama.cpp's for a GGUF variant (its cache
    type, slots and calibration), a torch process's otherwise (its cache in the compute dtype, the stated overhead)."""
    if overhead_mb < 0:
        raise ValueError(f"overhead_mb must be >= 0, got {overhead_mb!r}")
    if record.runtime == "llama.cpp" and calibration is not None:
        return memory.predict_llamacpp(record.size_mb, shape, max(context_tokens, 1), users, cache_type, calibration)
    if record.runtime == "llama.cpp":  # uncalibrated: the stated overhead stands for compute buffers and runtime
        return replace(memory.predict_llamacpp(record.size_mb, shape, max(context_tokens, 1), users, cache_type),
                       runtime_mb=overhead_mb)
    return memory.predict_transformers(record.size_mb, shape, context_tokens, kv_element_bytes(record.dtype), users,
                                       overhead_mb)


def device_fit(record: VariantRecord, device: DevicePreset, shape: KVShape, context_tokens: int,
               overhead_mb: float = RUNTIME_OVERHEAD_MB, users: int = 1, cache_type: str = "f16",
               calibration: memory.Calibration | None = None) -> Fit:
    n = need(record, shape, context_tokens, overhead_mb, users, cache_type, calibration)
    return Fit(record.technique, record.label, device.key, n.weights_mb, n.kv_cache_mb, n.compute_mb + n.runtime_mb,
               device.usable_mb)


def fit_table(records: Sequence[VariantRecord], devices: Sequence[DevicePreset], shape: KVShape,
              context_tokens: int, overhead_mb: float = RUNTIME_OVERHEAD_MB, users: int = 1, cache_type: str = "f16",
              calibration: memory.Calibration | None = None) -> list[list[Fit]]:
    """[variant][device] fits, in the order given."""
    return [[device_fit(r, d, shape, context_tokens, overhead_mb, users, cache_type, calibration) for d in devices]
            for r in records]


@dataclass(frozen=True)
class WeightsBudget:
    """What a device leaves for the weights file: its usable memory less the KV cache and the runtime."""
    device: str  # DevicePreset label
    usable_mb: float
    kv_cache_mb: float
    overhead_mb: float
    context_tokens: int

    @property
    def weights_mb(self) -> float:
        return self.usable_mb - self.kv_cache_mb - self.overhead_mb

    def words(self) -> str:
        return (f"{self.device}: {self.usable_mb:,.0f} MB usable - KV cache {self.kv_cache_mb:,.0f} MB ("
                f"{self.context_tokens:,} tokens, 16-bit as llama.cpp keeps it) - runtime {self.overhead_mb:,.0f} MB "
                f"= {self.weights_mb:,.0f} MB for the weights")


def weights_budget(device: DevicePreset, shape: KVShape, context_tokens: int = DEFAULT_CONTEXT_TOKENS,
                   overhead_mb: float = RUNTIME_OVERHEAD_MB) -> WeightsBudget:
    kv_mb = kv_cache_bytes(shape, context_tokens, 2) / MB  # llama.cpp's KV cache is F16 by default
    return WeightsBudget(device.label, device.usable_mb, kv_mb, overhead_mb, context_tokens)


def smallest_device_that_fits(record: VariantRecord, shape: KVShape, context_tokens: int,
                              overhead_mb: float = RUNTIME_OVERHEAD_MB) -> DevicePreset | None:
    fitting = [d for d in DEVICE_PRESETS.values() if device_fit(record, d, shape, context_tokens, overhead_mb).fits]
    return min(fitting, key=lambda d: d.usable_mb, default=None)
