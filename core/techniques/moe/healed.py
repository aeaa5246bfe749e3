"""A carved mixture of experts healed by distillation: its experts' weights trained to match the dense model's
next-token distributions, everything else (router, attention, embeddings) frozen, and measured as a variant of its
own, `moe-16x3-s3-healed-<run>`.

A dense model's neurons were never trained to work in groups, so a carve that skips most of them is a different
model (LLaMA-MoE and CMoE both train after carving). Healing keeps the carve's routing and shapes and changes only
what the chosen experts compute. The experts are saved apart from the cached carve (data_dir()/moe/healed/<run>/),
written whole and then renamed, so a stopped run keeps its last complete checkpoint and never a half-written one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.techniques.moe.config import MoEConfig, parse_technique_key
from core.techniques.moe.layer import bytes_read_per_token, moe_layers, variant_facts
from core.techniques.moe.plan import cache_root, load_moe
from core.techniques.registry import Technique, register_resolver

HEALED_KEY = re.compile(r"(moe-\d+x\d+(?:-s\d+)?(?:-d\d+)?)-healed-([0-9a-f]{8})")
EXPERTS, FACTS = "experts.safetensors", "healed.json"


def healed_root() -> Path:
    return cache_root() / "healed"


def new_run_id() -> str:
    return secrets.token_hex(4)


def healed_key(base_key: str, run: str) -> str:
    return f"{base_key}-healed-{run}"


HEAL_SCOPES = ("experts", "all")  # what trains: the carved experts only, or every weight but the router and embeddings


def check_scope(scope: str) -> None:
    if scope not in HEAL_SCOPES:
        raise ValueError(f"What heals is one of {HEAL_SCOPES}, got {scope!r}.")


def heal_parameters(model: nn.Module, scope: str) -> list[nn.Parameter]:
    """Freeze everything, then let train what `scope` names: "experts" (the carved experts' weights) or "all" (also
    attention, norms and any MLP left dense, so the layers around the experts adapt to what the carve changed). The
    routers stay as fitted in both (top-k picks pass no gradient to them) and the token table stays the dense
    model's, so the carve's vocabulary and routing are unchanged."""
    check_scope(scope)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = moe_layers(model)
    experts = [p for layer in layers for p in (layer.gate_up, layer.down_t)]
    if not experts:
        raise ValueError("This model has no carved experts to heal; convert it to a mixture of experts first.")
    if scope == "experts":
        trained = experts
    else:
        frozen = {id(p) for layer in layers for p in layer.router.parameters()}
        frozen |= {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
        trained = [p for p in model.parameters() if id(p) not in frozen]
    for p in trained:
        p.requires_grad_(True)
    return trained


def save_healed(model: nn.Module, run: str, facts: dict[str, Any]) -> Path:
    """The tensors that trained (see heal_parameters) and the facts of a healing run, replacing its previous
    checkpoint in one rename."""
    target = healed_root() / run
    target.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters() if p.requires_grad}
    tmp = Path(tempfile.mkdtemp(prefix=f".{run}.", dir=target.parent))
    save_file(tensors, str(tmp / EXPERTS))
    (tmp / FACTS).write_text(json.dumps(facts, indent=1))
    old = target.with_name(f".{run}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def read_facts(run: str) -> dict[str, Any] | None:
    try:
        return json.loads((healed_root() / run / FACTS).read_text())
    except (OSError, ValueError):
        return None


def load_healed(checkpoint: Path, config: MoEConfig, device: str, run: str) -> nn.Module:
    """Technique.build: the carve for `config`, its experts replaced by the healed ones."""
    facts = read_facts(run) or {}
    if facts.get("checkpoint_name") and facts["checkpoint_name"] != Path(checkpoint).name:
        raise ValueError(f"This healed mixture of experts was trained from {facts['checkpoint_name']}, not "
                         f"{Path(checkpoint).name}; measure it with that model.")
    model = load_moe(checkpoint, config, device)
    tensors = load_file(str(healed_root() / run / EXPERTS), device=str(device))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, tensor in tensors.items():
            module, _, part = name.rpartition(".")
            getattr(modules[module], part).copy_(tensor)
    model.lab_healed = {k: facts.get(k) for k in ("run", "budget_minutes", "train_seconds", "steps", "heal_curve",
                                                   "corpus", "learning_rate", "scope")}
    return model.eval()


def healed_facts(model: nn.Module) -> dict[str, Any]:
    return variant_facts(model) | {"healed": dict(getattr(model, "lab_healed", {}))}


def healed_technique(base_key: str, run: str) -> Technique | None:
    shape, facts = parse_technique_key(base_key), read_facts(run)
    if shape is None or facts is None:
        return None
    experts, top_k, dense_layers, shared = shape
    config = MoEConfig(experts=experts, top_k=top_k, dense_layers=dense_layers, shared=shared)
    minutes = facts.get("train_seconds", 0) / 60
    everything = facts.get("scope") == "all"
    trained = ("its experts, attention and norms were" if everything else "its experts' weights were")
    frozen = "router and embeddings frozen" if everything else "router, attention and embeddings frozen"
    return Technique(
        healed_key(base_key, run), f"{facts.get('base_label', base_key)}, healed {minutes:.0f} min"
        + (" (all layers)" if everything else ""), "moe", config,
        f"The carved mixture of experts after {trained} trained to match the dense model's next-token "
        f"distributions for {minutes:.0f} minutes here ({frozen}); it runs the same "
        "share of the feed-forward work per token as the carve.",
        "Training after the carve is what mixtures made from dense models rely on (LLaMA-MoE, CMoE); with every "
        "expert running it no longer equals the dense model, because the experts changed.",
        lambda checkpoint, cfg, device: load_healed(checkpoint, cfg, device, run), lambda _c, _d: None,
        bytes_read_per_token=bytes_read_per_token, facts=healed_facts)


def _resolve(key: str) -> Technique | None:
    match = HEALED_KEY.fullmatch(key)
    return healed_technique(match[1], match[2]) if match else None


register_resolver(_resolve)
