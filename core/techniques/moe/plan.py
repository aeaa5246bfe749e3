"""Calibration, fitting the conversion plan, caching it on disk, and the registry's build function (load_moe)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from core import models
from core.paths import ASSETS, data_dir
from core.techniques.moe.config import ConversionCancelled, LayerPlan, MoEConfig, MoEPlan, Progress, native_moe_of
from core.techniques.moe.layer import MoEMLP, apply_plan, check_convertible
from core.techniques.moe.partition import (
    coactivation_features,
    expert_means_and_importance,
    fit_router,
    routing_recall,
    shared_and_routed,
    stack_experts,
)

CALIBRATION_TEXT = ASSETS / "eval" / "moe_calibration.txt"
CALIBRATION_WINDOW_TOKENS = 512
ALGORITHM_VERSION = "3"  # bump when the partition or router recipe changes: invalidates cached conversions


# ---------------------------------------------------------------- calibration and the conversion plan


def calibration_ids(tokenizer, tokens: int, path: Path = CALIBRATION_TEXT) -> torch.Tensor:
    """The first `tokens` tokens of the calibration text ([T]; fewer when the text is shorter)."""
    ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:tokens]
    if len(ids) < 64:
        raise ValueError(f"{path} gives only {len(ids)} tokens; router calibration needs at least 64.")
    return torch.tensor(ids)


@torch.inference_mode()
def record_mlp_inputs(model: nn.Module, mlps: dict[str, nn.Module], ids: torch.Tensor,
                      window: int = CALIBRATION_WINDOW_TOKENS) -> dict[str, torch.Tensor]:
    """Run the (dense) model over ids in windows; return each MLP's input hidden states [T, d]."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in mlps}
    hooks = [mlp.register_forward_pre_hook(lambda _m, args, name=name: seen[name].append(
        args[0].reshape(-1, args[0].shape[-1]).float())) for name, mlp in mlps.items()]
    device = next(model.parameters()).device
    try:
        for start in range(0, ids.numel(), window):
            model(input_ids=ids[start:start + window][None].to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}



def _noop_progress(_f: float, _m: str) -> None:
    return None


@torch.inference_mode()
def fit_plan(model: nn.Module, config: MoEConfig, ids: torch.Tensor, progress: Progress | None = None,
             should_stop: Callable[[], bool] | None = None) -> MoEPlan:
    """Partition every gated MLP and fit its router on calibration ids. Reads the model; never changes it."""
    say, stop = progress or _noop_progress, should_stop or (lambda: False)
    t0 = time.perf_counter()
    mlps = check_convertible(model, config.experts)
    say(0.0, f"Recording MLP inputs on {ids.numel()} calibration tokens")
    inputs = record_mlp_inputs(model, mlps, ids)
    check_k = max(1, config.routed // 4)
    layers = {}
    for i, (name, mlp) in enumerate(mlps.items()):
        if stop():
            raise ConversionCancelled(f"Stopped while converting layer {i + 1} of {len(mlps)}.")
        say(0.1 + 0.9 * i / len(mlps), f"Splitting MLP {i + 1} of {len(mlps)} into {config.experts} experts")
        gate_w, up_w, down_w = (mlp.gate_proj.weight.float(), mlp.up_proj.weight.float(), mlp.down_proj.weight.float())
        x = inputs.pop(name).to(gate_w.device)
        features = coactivation_features(x, gate_w, up_w, down_w, mlp.act_fn)
        order = torch.cat(shared_and_routed(features, config.experts, config.shared, config.seed + i))
        gate_up, down_t = stack_experts(gate_w, up_w, down_w, order, config.experts)
        mean_out, importance = expert_means_and_importance(x, gate_up, down_t, mlp.act_fn)
        routed = importance[:, config.shared:]  # the shared experts always run: the router never scores them
        router_w, router_b = fit_router(x, routed)
        recall = routing_recall(F.linear(x, router_w, router_b), routed, check_k)
        layers[name] = LayerPlan(order.cpu(), router_w.cpu(), router_b.cpu(), mean_out.cpu(), recall)
    say(1.0, "Conversion done")
    return MoEPlan(config.experts, layers, int(ids.numel()), time.perf_counter() - t0,
                   {"recall_k": check_k, "recall_mean": sum(p.recall for p in layers.values()) / len(layers)},
                   config.shared)



def convert_to_moe(model: nn.Module, config: MoEConfig, calibration: torch.Tensor, progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None) -> nn.Module:
    """A mixture-of-experts copy of `model` (the input model is left untouched), routing config.top_k of config.experts."""
    plan = fit_plan(model, config, calibration[: config.calibration_tokens], progress, should_stop)
    return apply_plan(copy.deepcopy(model), plan, config.top_k, config.dense_layers).eval()


# ---------------------------------------------------------------- cached conversion plans (I/O)


def cache_root() -> Path:
    return data_dir() / "moe"


def _checkpoint_fingerprint(checkpoint: Path) -> str:
    """Path, config and each weight file's size and mtime: changes whenever the weights could have changed."""
    parts = [str(Path(checkpoint).resolve()), (Path(checkpoint) / "config.json").read_text()]
    for f in sorted(Path(checkpoint).glob("*.safetensors")):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def plan_dir(checkpoint: Path, config: MoEConfig, ids: torch.Tensor) -> Path:
    """Where the plan for (checkpoint, E, calibration tokens, seed, recipe) is cached; top_k is not part of it."""
    h = hashlib.sha256()
    parts = [_checkpoint_fingerprint(checkpoint), config.experts, config.seed, ALGORITHM_VERSION]
    for part in parts + ([f"shared{config.shared}"] if config.shared else []):  # plans without shared keep their key
        h.update(str(part).encode() + b"\0")
    h.update(ids.to(torch.int64).numpy().tobytes())
    shared = f"s{config.shared}" if config.shared else ""
    return cache_root() / f"{Path(checkpoint).name}-E{config.experts}{shared}-{h.hexdigest()[:12]}"


PLAN_FILE, EXPERTS_FILE, PLAN_INFO = "plan.safetensors", "experts.safetensors", "plan.json"


def expert_state(model: nn.Module, plan: MoEPlan) -> dict[str, torch.Tensor]:
    """Every planned layer's stacked expert weights (gate_up, down_t), to be saved beside the plan."""
    out = {}
    for name, mlp in check_convertible(model, plan.experts).items():
        gate_up, down_t = stack_experts(mlp.gate_proj.weight.data, mlp.up_proj.weight.data, mlp.down_proj.weight.data,
                                        plan.layers[name].order, plan.experts)
        out |= {f"{name}.gate_up": gate_up.cpu(), f"{name}.down_t": down_t.cpu()}
    return out


def save_plan(plan: MoEPlan, target: Path, experts: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the plan (and the stacked expert weights) atomically: temp dir, then rename."""
    tensors = {}
    for name, layer in plan.layers.items():
        tensors |= {f"{name}.order": layer.order, f"{name}.router_w": layer.router_w, f"{name}.router_b": layer.router_b,
                    f"{name}.mean_out": layer.mean_out}
    info = {"experts": plan.experts, "shared": plan.shared, "calibration_tokens": plan.calibration_tokens, "seconds": plan.seconds,
            "layers": list(plan.layers), "recall": [p.recall for p in plan.layers.values()], **plan.info}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(tensors, str(tmp / PLAN_FILE))
        if experts is not None:
            save_file(experts, str(tmp / EXPERTS_FILE))
        (tmp / PLAN_INFO).write_text(json.dumps(info, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same plan first: keep theirs
            if not (target / PLAN_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_plan(target: Path) -> MoEPlan:
    tensors = load_file(str(target / PLAN_FILE))
    info = json.loads((target / PLAN_INFO).read_text())
    layers = {name: LayerPlan(tensors[f"{name}.order"], tensors[f"{name}.router_w"], tensors[f"{name}.router_b"],
                              tensors[f"{name}.mean_out"], r)
              for name, r in zip(info["layers"], info["recall"])}
    extra = {k: v for k, v in info.items()
             if k not in ("experts", "shared", "calibration_tokens", "seconds", "layers", "recall")}
    return MoEPlan(info["experts"], layers, info["calibration_tokens"], info["seconds"], extra, info.get("shared", 0))


def ensure_plan(checkpoint: Path, config: MoEConfig, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None, dense: nn.Module | None = None) -> tuple[MoEPlan, Path]:
    """The cached conversion plan for this checkpoint and E, fitting (and caching) it the first time."""
    checkpoint = Path(checkpoint)
    native = native_moe_of(checkpoint)
    if native:
        raise ValueError(f"{checkpoint.name} is already a mixture of experts ({native[0]} experts per layer); "
                         "it needs no conversion.")
    ids = calibration_ids(models.load_tokenizer(checkpoint), config.calibration_tokens)
    target = plan_dir(checkpoint, config, ids)
    if (target / PLAN_FILE).is_file() and (target / EXPERTS_FILE).is_file():
        return load_plan(target), target
    model = dense if dense is not None else models.load_model(checkpoint, torch.float32, "cpu")
    plan = fit_plan(model, config, ids, progress, should_stop)
    return plan, save_plan(plan, target, expert_state(model, plan))


def prepare_conversion(checkpoint: Path, config: MoEConfig, progress: Progress | None = None,
                       should_stop: Callable[[], bool] | None = None) -> MoEPlan:
    """Check the model and fit its plan up front (with progress), so that measuring each k only loads it."""
    checkpoint = Path(checkpoint)
    native = native_moe_of(checkpoint)
    if native:
        if native[0] != config.experts:
            raise ValueError(f"{checkpoint.name} already has {native[0]} experts per layer; choose experts={native[0]}.")
        MoEConfig(experts=native[0], top_k=config.top_k)
        return MoEPlan(native[0], {}, 0, 0.0, {"native": True})
    return ensure_plan(checkpoint, config, progress, should_stop)[0]


# ---------------------------------------------------------------- the registry's build function


def load_moe(checkpoint: Path, config: MoEConfig, device: str = "cpu") -> nn.Module:
    """Technique.build for the moe family: the dense fp32 model, its MLPs swapped for cached experts (or a native MoE)."""
    checkpoint = Path(checkpoint)
    native = native_moe_of(checkpoint)
    if native:
        if native[0] != config.experts:
            raise ValueError(f"{checkpoint.name} already has {native[0]} experts per layer; choose experts={native[0]}.")
        return models.load_model(checkpoint, torch.float32, device, num_experts_per_tok=config.top_k)
    plan, target = ensure_plan(checkpoint, config)  # converts (with its own dense copy, then freed) the first time
    # transformers maps the checkpoint lazily: the dense MLP weights are never read, so never resident;
    # the experts come from their own file. Resident memory then matches the dense model's.
    model = models.load_model(checkpoint, torch.float32, device)
    return apply_saved_experts(model, plan, target, config.top_k, config.dense_layers, device).eval()


def apply_saved_experts(model: nn.Module, plan: MoEPlan, target: Path, top_k: int, dense_layers: int,
                        device: str = "cpu") -> nn.Module:
    """Like apply_plan, but with the stacked expert weights read from the cache instead of the dense MLPs."""
    mlps = check_convertible(model, plan.experts)
    if dense_layers >= len(mlps):
        raise ValueError(f"dense_layers={dense_layers} would leave none of the model's {len(mlps)} MLP layers to split")
    with safe_open(str(target / EXPERTS_FILE), framework="pt", device=str(device)) as f:
        for name, mlp in list(mlps.items())[dense_layers:]:
            layer = plan.layers[name]
            gate_up = f.get_tensor(f"{name}.gate_up")
            moe = MoEMLP(gate_up, f.get_tensor(f"{name}.down_t"), layer.router_w.to(gate_up.device),
                         layer.router_b.to(gate_up.device), mlp.act_fn, top_k, layer.mean_out.to(gate_up.device),
                         plan.shared)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, moe)
    return model


def unsupported_reason(_config: MoEConfig, _device: str) -> str | None:
    return None  # plain torch ops: runs wherever fp32 runs

