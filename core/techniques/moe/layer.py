"""The MoE layer (MoEMLP), putting it into a model, changing its k, and what a converted model costs per token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.techniques.moe.config import DEFAULT_DENSE_LAYERS, MoEConfig, MoEPlan, native_moe
from core.techniques.moe.partition import expert_outputs, neurons_per_expert, route, stack_experts

# ---------------------------------------------------------------- the module


class MoEMLP(nn.Module):
    """A gated MLP split into E equal experts plus a linear router; runs the `shared` first experts on every token
    and the top_k of the others that the router picks."""

    def __init__(self, gate_up: torch.Tensor, down_t: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
                 act_fn: nn.Module, top_k: int, mean_out: torch.Tensor | None = None, shared: int = 0):
        super().__init__()
        experts, two_n, hidden = gate_up.shape
        self.experts, self.neurons, self.shared = experts, two_n // 2, shared
        self.always = list(range(shared))
        self.gate_up = nn.Parameter(gate_up, requires_grad=False)  # [E, 2n, d]
        self.down_t = nn.Parameter(down_t, requires_grad=False)  # [E, n, d]
        # Each expert's mean output on calibration text [E, d]: a skipped expert contributes its mean instead
        # of nothing (zeros: plain skipping). The means cancel exactly when every expert runs.
        # Buffers, not parameters: constants measured on calibration text (bytes_held still counts them).
        mean_out = torch.zeros(experts, hidden, dtype=gate_up.dtype, device=gate_up.device) if mean_out is None else mean_out
        self.register_buffer("mean_out", mean_out.to(gate_up))
        self.register_buffer("mean_total", self.mean_out.sum(0), persistent=False)  # [d]
        self.router = nn.Linear(hidden, experts - shared, device=gate_up.device, dtype=gate_up.dtype)
        with torch.no_grad():
            self.router.weight.copy_(router_w)
            self.router.bias.copy_(router_b)
        self.router.requires_grad_(False)
        self.act_fn = act_fn
        # Decode runs a dozen small ops per layer, each costing a few microseconds of dispatch on a CPU, so
        # the decode path avoids every op it can: SiLU's function directly, and per-expert views made once.
        self._act = F.silu if isinstance(act_fn, nn.SiLU) or type(act_fn).__name__ == "SiLUActivation" else act_fn
        self._views: tuple | None = None
        self._views_of: tuple[int, ...] = ()
        self._after_shared: torch.Tensor | None = None
        self.top_k = top_k  # mutable: set_top_k changes it without reconverting

    def extra_repr(self) -> str:
        return f"experts={self.experts}, shared={self.shared}, neurons_per_expert={self.neurons}, top_k={self.top_k}"

    @property
    def routed(self) -> int:
        return self.experts - self.shared

    def select_experts(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d] -> [N, shared + k] expert ids: the shared ones, then the router's top k of the others."""
        picked = route(self.router(x), self.top_k) + self.shared
        if not self.shared:
            return picked
        always = torch.arange(self.shared, device=x.device).expand(x.shape[0], -1)
        return torch.cat([always, picked], dim=1)

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert e's output on x [N, d], less its mean (which mean_total adds back for every expert)."""
        return expert_outputs(x, self.gate_up, self.down_t, self.act_fn, e) - self.mean_out[e]

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert at once as one dense MLP over the permuted neurons (k = E)."""
        gate_up = F.linear(x, self.gate_up.view(-1, self.gate_up.shape[-1]))  # [N, E*2n]
        gate, up = gate_up.view(x.shape[0], self.experts, 2, self.neurons).unbind(2)  # [N, E, n] each
        return (self.act_fn(gate) * up).reshape(x.shape[0], -1) @ self.down_t.view(-1, self.down_t.shape[-1])

    def expert_views(self) -> tuple[list, list, list, list]:
        """Per expert: gate_up [2n, d], down [d, n] (transposed view), the sum of every *other* expert's
        mean [d], and its own mean [d]. Views share storage with the stacked weights; rebuilt if they move."""
        key = (self.gate_up.data_ptr(), self.down_t.data_ptr(), self.mean_out.data_ptr())
        if self._views is None or self._views_of != key:
            others = self.mean_total - self.mean_out  # [E, d]
            self._views = (list(self.gate_up), [w.t() for w in self.down_t], list(others), list(self.mean_out))
            self._views_of = key
            self._after_shared = self.mean_total - self.mean_out[: self.shared].sum(0)  # the routed experts' means
        return self._views

    def decode(self, x: torch.Tensor, experts: list[int]) -> torch.Tensor:
        """One token x [d] through the chosen experts only -> [d]. Each expert is a contiguous slice of the
        stacked weights (a view, no copy), so the skipped experts' bytes are never read."""
        gate_up, down, others, means = self.expert_views()
        if self.shared and experts[: self.shared] == self.always:
            return self._decode_shared(x, experts[self.shared:], gate_up, down, means)
        out = others[experts[0]]  # the skipped experts' means: all but the first chosen...
        for e in experts[1:]:
            out = out - means[e]  # ...and but the other chosen ones
        for e in experts:
            gate, up = torch.mv(gate_up[e], x).chunk(2)  # [n] each
            out = torch.addmv(out, down[e], self._act(gate) * up)  # out + down @ h in one call
        return out

    def _decode_shared(self, x: torch.Tensor, routed: list[int], gate_up, down, means) -> torch.Tensor:
        """The shared experts sit first and side by side in the stacked weights, so they run as one block: two
        matrix-vector products whatever their number, instead of two per expert (each op costs dispatch time)."""
        s, n, d = self.shared, self.neurons, self.gate_up.shape[-1]
        out = self._after_shared  # every routed expert's mean (expert_views keeps it), less the chosen ones below
        for e in routed:
            out = out - means[e]
        gate, up = torch.mv(self.gate_up[:s].view(s * 2 * n, d), x).view(s, 2, n).unbind(1)
        out = torch.addmv(out, self.down_t[:s].view(s * n, d).t(), (self._act(gate) * up).reshape(-1))
        for e in routed:
            gate, up = torch.mv(gate_up[e], x).chunk(2)
            out = torch.addmv(out, down[e], self._act(gate) * up)
        return out

    def dispatch(self, x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """x [N, d], chosen [N, k] -> sum over each token's chosen experts; each expert sees only its tokens."""
        if x.shape[0] == 1:
            return self.decode(x[0], chosen[0].tolist())[None]
        hit = torch.zeros(x.shape[0], self.experts, dtype=torch.bool, device=x.device).scatter_(1, chosen, True)
        out = self.mean_total.expand_as(x).clone()
        for e in range(self.experts):
            tokens = hit[:, e].nonzero().squeeze(1)
            if tokens.numel():
                out.index_add_(0, tokens, self.expert(x.index_select(0, tokens), e))
        return out

    def oracle(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the layer would give with a router that knew, for each token, which k routed experts matter most
        (the largest output beside their mean). Runs every expert, so it is no faster than dense: it measures how
        much of the carve's loss a better router could win back, never a variant to deploy."""
        x = hidden.reshape(-1, hidden.shape[-1])
        outputs = torch.stack([self.expert(x, e) for e in range(self.experts)], 1)  # [N, E, d], means removed
        picked = outputs[:, self.shared:].norm(dim=-1).topk(self.top_k, dim=-1).indices + self.shared
        run = torch.zeros(x.shape[0], self.experts, dtype=torch.bool, device=x.device).scatter_(1, picked, True)
        run[:, : self.shared] = True
        return (self.mean_total + (outputs * run[..., None]).sum(1)).view(hidden.shape)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.top_k < self.routed and hidden.numel() == hidden.shape[-1]:
            # One token (decode, the path timed as tokens/s): 1-D ops, no module calls, no bookkeeping.
            x = hidden.reshape(-1)  # [d]
            scores = torch.addmv(self.router.bias, self.router.weight, x)  # [E - shared]
            picked = [self.shared + e for e in scores.topk(self.top_k).indices.tolist()]
            return self.decode(x, self.always + picked).view(hidden.shape)
        x = hidden.reshape(-1, hidden.shape[-1])  # [N, d]
        out = self.dense(x) if self.top_k >= self.routed else self.dispatch(x, self.select_experts(x))
        return out.view(hidden.shape)


# ---------------------------------------------------------------- finding the MLPs to convert


def gated_mlps(model: nn.Module) -> dict[str, nn.Module]:
    """Every gated MLP (gate_proj, up_proj, down_proj Linear layers and an act_fn) by module name."""
    found = {}
    for name, module in model.named_modules():
        parts = [getattr(module, p, None) for p in ("gate_proj", "up_proj", "down_proj")]
        if all(isinstance(p, nn.Linear) for p in parts) and hasattr(module, "act_fn"):
            found[name] = module
    return found


def architecture(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    names = getattr(config, "architectures", None) or [type(model).__name__]
    return f"{getattr(config, 'model_type', '?')} ({', '.join(names)})"


def check_convertible(model: nn.Module, experts: int) -> dict[str, nn.Module]:
    """The model's gated MLPs, or ValueError saying why this model cannot be split into `experts` experts."""
    mlps = gated_mlps(model)
    if not mlps:
        kinds = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith(("mlp", "feed_forward", "ffn"))})
        raise ValueError(
            f"Mixture-of-experts conversion needs a gated MLP (gate_proj, up_proj, down_proj), as in Llama, Qwen2, "
            f"Mistral or Gemma; this model is {architecture(model)}"
            + (f" whose MLP is {', '.join(kinds)}" if kinds else "") + ", which has none.")
    for name, mlp in mlps.items():
        if any(getattr(mlp, p).bias is not None for p in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(f"{name} has MLP biases ({architecture(model)}); conversion supports bias-free MLPs only.")
        neurons_per_expert(mlp.gate_proj.out_features, experts)
    return mlps


def apply_plan(model: nn.Module, plan: MoEPlan, top_k: int, dense_layers: int = DEFAULT_DENSE_LAYERS) -> nn.Module:
    """Replace each planned MLP of `model` but the first `dense_layers` by its MoEMLP, in place (callers own the model)."""
    mlps = check_convertible(model, plan.experts)
    if set(mlps) != set(plan.layers):
        raise ValueError(f"the conversion plan does not match this model's MLPs ({len(plan.layers)} vs {len(mlps)})")
    if dense_layers >= len(mlps):
        raise ValueError(f"dense_layers={dense_layers} would leave none of the model's {len(mlps)} MLP layers to split")
    for name, mlp in list(mlps.items())[dense_layers:]:
        layer = plan.layers[name]
        gate_up, down_t = stack_experts(mlp.gate_proj.weight.data, mlp.up_proj.weight.data, mlp.down_proj.weight.data,
                                        layer.order, plan.experts)
        device, dtype = gate_up.device, gate_up.dtype
        moe = MoEMLP(gate_up, down_t, layer.router_w.to(device, dtype), layer.router_b.to(device, dtype),
                     mlp.act_fn, top_k, layer.mean_out.to(device, dtype), plan.shared)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, moe)
    return model


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    return [m for m in model.modules() if isinstance(m, MoEMLP)]


def set_top_k(model: nn.Module, top_k: int) -> nn.Module:
    """Change how many experts run per token in every MoE layer (converted or native), in place."""
    converted = moe_layers(model)
    if converted:
        first = converted[0]
        MoEConfig(experts=first.experts, top_k=top_k, shared=first.shared)  # validates 1 <= k <= routed, same words
        for layer in converted:
            layer.top_k = top_k
        return model
    native = native_moe(getattr(model, "config", None))
    if native is None:
        raise ValueError(f"{architecture(model)} has no mixture-of-experts layers; convert it first.")
    MoEConfig(experts=native[0], top_k=top_k)
    model.config.num_experts_per_tok = top_k
    for module in model.modules():
        for attribute in ("top_k", "num_experts_per_tok"):
            if isinstance(getattr(module, attribute, None), int):
                setattr(module, attribute, top_k)
    return model


# ---------------------------------------------------------------- sizes: active parameters, FLOPs, bytes read


@dataclass(frozen=True)
class ExpertGroup:
    """The expert weights of one MoE layer, and how many of its experts run per token (shared ones included)."""
    tensors: tuple[torch.Tensor, ...]
    experts: int
    top_k: int  # routed experts per token
    shared: int = 0  # experts every token runs

    def inactive_share(self, top_k: int | None = None) -> float:
        return 1 - (self.shared + (self.top_k if top_k is None else top_k)) / self.experts


def expert_groups(model: nn.Module) -> list[ExpertGroup]:
    """Every MoE layer's expert weights, converted (MoEMLP) or native (transformers' *Experts modules)."""
    groups = [ExpertGroup((m.gate_up, m.down_t), m.experts, m.top_k, m.shared) for m in moe_layers(model)]
    native = native_moe(getattr(model, "config", None))
    if native and not groups:
        for module in model.modules():
            # transformers keeps a native MoE layer's routed experts in one module whose class ends in "Experts"
            if type(module).__name__.endswith("Experts"):
                groups.append(ExpertGroup(tuple(module.parameters()), native[0], native[1]))
    return groups


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def router_params(model: nn.Module) -> int:
    return sum(m.router.weight.numel() + m.router.bias.numel() for m in moe_layers(model))


def active_params(model: nn.Module, top_k: int | None = None) -> int:
    """Parameters one token uses: all of them except the experts the router leaves out (embeddings included).

    top_k=None uses the model's current setting; a number computes it for that k without changing the model.
    """
    inactive = sum(sum(t.numel() for t in g.tensors) * g.inactive_share(top_k) for g in expert_groups(model))
    return total_params(model) - round(inactive)


def dense_params(model: nn.Module) -> int:
    """Parameters of the dense model this one was converted from (the routers are the only additions)."""
    return total_params(model) - router_params(model)


def active_params_pct(model: nn.Module, top_k: int | None = None) -> float:
    return 100 * active_params(model, top_k) / dense_params(model)


def matmul_params(model: nn.Module, top_k: int | None = None) -> int:
    """Weights one token multiplies by: every Linear (attention, routers, lm_head) plus its active experts."""
    groups = expert_groups(model)
    in_experts = {id(t) for g in groups for t in g.tensors}  # native experts may be Linear modules: count them once
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in in_experts)
    experts = sum(sum(t.numel() for t in g.tensors) * (1 - g.inactive_share(top_k)) for g in groups)
    return linear + round(experts)


def flops_per_token(model: nn.Module, top_k: int | None = None) -> int:
    """2 x matmul weights used per token (one multiply and one add each).

    Counted: attention projections, the router, the chosen experts, the output head. Not counted: the
    attention score and value products (they grow with the context), norms, activations and the
    embedding lookup (a row read, no arithmetic), all small next to the matmuls for short contexts.
    """
    return 2 * matmul_params(model, top_k)


def bytes_read_per_token(model: nn.Module, bytes_held: int) -> int:
    """Bytes a decoded token must read: everything held minus the experts the router leaves out."""
    skipped = sum(sum(t.numel() * t.element_size() for t in g.tensors) * g.inactive_share() for g in expert_groups(model))
    return bytes_held - round(skipped)


def variant_facts(model: nn.Module) -> dict[str, Any]:
    """Structure numbers stored with a measured MoE variant's record (see core.store.records.VariantRecord.variant_facts)."""
    groups = expert_groups(model)
    return {
        "experts": groups[0].experts if groups else None,
        "top_k": groups[0].top_k if groups else None,
        "shared_experts": groups[0].shared if groups else 0,
        "moe_layers": len(groups),
        "dense_layers": len(gated_mlps(model)),  # MLP layers left whole
        "native_moe": not moe_layers(model) and bool(groups),
        "active_params": active_params(model),
        "active_params_pct": active_params_pct(model),
        "dense_params": dense_params(model),
        "flops_per_token": flops_per_token(model),
        # all experts, minus the routers' multiplies: what the dense model this came from does per token
        "dense_flops_per_token": flops_per_token(model, groups[0].experts - groups[0].shared if groups else None)
        - 2 * sum(m.router.weight.numel() for m in moe_layers(model)),
    }


def dense_facts(model: nn.Module) -> dict[str, Any]:
    """The same numbers for an unconverted model, so the dense reference sits on the same axes."""
    return {"experts": None, "top_k": None, "moe_layers": 0, "dense_layers": len(gated_mlps(model)), "native_moe": False,
            "active_params": total_params(model), "active_params_pct": 100.0, "dense_params": total_params(model),
            "flops_per_token": flops_per_token(model), "dense_flops_per_token": flops_per_token(model)}

