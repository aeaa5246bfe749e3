"""The MoE family's settings and keys, the conversion plan's data, and models that are already MoE."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig

from core import models
from core.paths import Stopped

NATIVE_EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts")  # config names across families

Progress = Callable[[float, str], None]  # (fraction 0..1, message), as core.paths.Report


class ConversionCancelled(Stopped):
    """The user stopped a conversion; nothing was cached."""


@dataclass(frozen=True)
class MoEConfig:
    experts: int = 8  # E: experts per MLP layer
    top_k: int = 2  # k: experts run per token
    calibration_tokens: int = 2048  # tokens of calibration text the router is fitted on
    seed: int = 0  # k-means initialisation
    dense_layers: int = 1  # the first MLP layers kept whole (see the module docstring for why)

    def __post_init__(self) -> None:
        if self.experts < 2:
            raise ValueError(f"experts must be at least 2, got {self.experts}")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"top_k must be between 1 and experts={self.experts}, got top_k={self.top_k}")
        if self.calibration_tokens < 64:
            raise ValueError(f"calibration_tokens must be at least 64, got {self.calibration_tokens}")
        if self.dense_layers < 0:
            raise ValueError(f"dense_layers must be 0 or more, got {self.dense_layers}")


DEFAULT_DENSE_LAYERS = MoEConfig().dense_layers


def technique_key(experts: int, top_k: int, dense_layers: int = DEFAULT_DENSE_LAYERS) -> str:
    """'moe-8x2', or 'moe-8x2-d0' when the number of dense first layers is not the default."""
    suffix = "" if dense_layers == DEFAULT_DENSE_LAYERS else f"-d{dense_layers}"
    return f"moe-{experts}x{top_k}{suffix}"


def parse_technique_key(key: str) -> tuple[int, int, int] | None:
    """'moe-8x2' -> (8, 2, 1), 'moe-8x2-d0' -> (8, 2, 0); None for keys of other families."""
    if not key.startswith("moe-") or "x" not in key:
        return None
    shape, _, dense = key[4:].partition("-d")
    experts, _, top_k = shape.partition("x")
    if not (experts.isdigit() and top_k.isdigit() and (dense.isdigit() or "-d" not in key)):
        return None
    return int(experts), int(top_k), int(dense) if dense else DEFAULT_DENSE_LAYERS



# ---------------------------------------------------------------- the conversion plan


@dataclass(frozen=True)
class LayerPlan:
    order: torch.Tensor  # [m] neuron ids: expert 0's n neurons, then expert 1's, ...
    router_w: torch.Tensor  # [E, d]
    router_b: torch.Tensor  # [E]
    mean_out: torch.Tensor  # [E, d] each expert's mean output on the calibration text
    recall: float  # calibration routing recall at k = E/4 (share of the truly top experts the router picks)


@dataclass(frozen=True)
class MoEPlan:
    experts: int
    layers: dict[str, LayerPlan]
    calibration_tokens: int  # tokens actually used
    seconds: float  # wall time to fit the plan
    info: dict[str, Any] = field(default_factory=dict)



# ---------------------------------------------------------------- models that are already MoE


def native_moe(config) -> tuple[int, int] | None:
    """(experts per layer, experts per token) of a natively MoE config, else None."""
    top_k = getattr(config, "num_experts_per_tok", None)
    experts = next((getattr(config, f) for f in NATIVE_EXPERT_FIELDS if isinstance(getattr(config, f, None), int)), None)
    return (experts, top_k) if isinstance(top_k, int) and experts else None


def native_moe_of(checkpoint: Path) -> tuple[int, int] | None:
    return native_moe(AutoConfig.from_pretrained(checkpoint))


def native_moe_for_name(name: str) -> tuple[int, int] | None:
    """native_moe for a model the user named, from its config.json if it is already on disk (nothing is fetched)."""
    spec = models.resolve(name)
    if spec.source == "local":
        path: Path | None = Path(spec.location) / "config.json"
    elif spec.source == "hub":

        found = try_to_load_from_cache(spec.location, "config.json")
        path = Path(found) if isinstance(found, str) else None
    else:
        path = models.checkpoint_dir(spec.key) / "config.json"
    if path is None or not path.is_file():
        return None
    return native_moe(SimpleNamespace(**json.loads(path.read_text())))

