"""The MoE family's settings and keys, the conversion plan's data, and models that are already MoE."""

from __future__ import annotations

import json
import re
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
    shared: int = 0  # of the E experts, how many always run (the most often firing neurons); k routes the rest

    def __post_init__(self) -> None:
        if self.experts < 2:
            raise ValueError(f"experts must be at least 2, got {self.experts}")
        if not 0 <= self.shared < self.experts - 1:
            raise ValueError(f"shared experts must be between 0 and {self.experts - 2} (at least two experts are left to "
                             f"route among), got {self.shared}")
        if not 1 <= self.top_k <= self.routed:
            raise ValueError(f"top_k must be between 1 and the {self.routed} routed experts, got top_k={self.top_k}")
        if self.calibration_tokens < 64:
            raise ValueError(f"calibration_tokens must be at least 64, got {self.calibration_tokens}")
        if self.dense_layers < 0:
            raise ValueError(f"dense_layers must be 0 or more, got {self.dense_layers}")


    @property
    def routed(self) -> int:
        return self.experts - self.shared

    @property
    def active_share(self) -> float:
        """Share of a converted MLP's neurons one token runs: the shared experts and the k routed ones."""
        return (self.shared + self.top_k) / self.experts


DEFAULT_DENSE_LAYERS = MoEConfig().dense_layers
KEY_PATTERN = re.compile(r"moe-(\d+)x(\d+)(?:-s(\d+))?(?:-d(\d+))?")


def technique_key(experts: int, top_k: int, dense_layers: int = DEFAULT_DENSE_LAYERS, shared: int = 0) -> str:
    """'moe-8x2'; 'moe-8x1-s2' with 2 shared experts always on; '-d0' when the dense first layers differ from the
    default. k counts routed experts only, so 'moe-8x1-s2' runs 3 of 8 experts per token."""
    return (f"moe-{experts}x{top_k}" + (f"-s{shared}" if shared else "")
            + ("" if dense_layers == DEFAULT_DENSE_LAYERS else f"-d{dense_layers}"))


def parse_technique_key(key: str) -> tuple[int, int, int, int] | None:
    """'moe-8x2' -> (8, 2, 1, 0), 'moe-8x1-s2-d0' -> (8, 1, 0, 2): (E, k, dense layers, shared); None for keys of
    other families."""
    match = KEY_PATTERN.fullmatch(key)
    if match is None:
        return None
    experts, top_k, shared, dense = match.groups()
    return int(experts), int(top_k), int(dense) if dense else DEFAULT_DENSE_LAYERS, int(shared or 0)



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
    shared: int = 0  # the first `shared` experts of every layer always run; the router scores the others



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

