"""Mixture-of-experts made from a dense model (MoEfication): split every gated MLP into E experts and
run only the k experts a small router picks for each token.

How a dense MLP becomes E experts
---------------------------------
A gated MLP computes ``y = W_down (act(W_gate x) * (W_up x))``. Its m intermediate neurons do not
interact until that final sum, so any partition of them into E groups gives E smaller MLPs whose
outputs add up to y exactly. On calibration text (``assets/eval/moe_calibration.txt``, written for this
project and separate from the evaluation text) we record each MLP's input and group neurons that are
active on the same tokens (balanced spherical k-means on each neuron's contribution |h_j| * ||down_j||
over the calibration tokens: MoEfication's co-activation grouping). Every expert gets m / E neurons, so
every expert costs the same to run. On SmolLM2-135M this beat clustering the neurons' weight vectors
(KL divergence at 4 of 8 experts 1.9 against 2.5 nats).

How the router is fitted, and what a skipped expert contributes
---------------------------------------------------------------
For each calibration token we measure how much each expert matters: the L2 norm of its output minus its
mean output. The router is one linear map x -> E scores per layer, fitted by ridge regression to each
token's *share* of that (so every token weighs the same in the fit). Ridge regression is closed-form:
deterministic, no learning rate, a fraction of a second per layer on a CPU. At run time the k
highest-scoring experts run and are added *unweighted*; every skipped expert contributes its mean
calibration output instead of nothing (measured: k = 1 of 8 went from 18.7 to 8.0 nats of KL divergence).
With k = E the means cancel and the layer computes exactly the dense MLP (softmax-weighted routing,
as in Mixtral, would not).

Why the first MLP stays dense
-----------------------------
``MoEConfig.dense_layers`` (default 1) keeps the first MLP layers whole. In SmolLM2-135M the first MLP's
output is most of the residual stream (the token embeddings are small), so its error passes on
undiluted: at 2 of 8 experts, converting layer 0 alone cost 2.8 nats of KL divergence, every other
layer alone 0.04 to 0.2. Keeping it dense costs about 3% of the feed-forward weights per token.

What "skips" means here
-----------------------
Single-token decode runs only the k chosen experts, each a contiguous slice of the stacked weights (a
view, no copy), so the unselected experts' bytes are never read. Multi-token inputs (prefill, scoring)
dispatch the tokens routed to each expert and run that expert on those tokens only. With k = E nothing
can be skipped and the layer runs as one dense matmul over the permuted neurons.

Conversion takes about 15 s for SmolLM2-135M on a 2-core CPU and is cached under
``data_dir()/moe/<model>-E<E>-<hash>/`` (the plan, plus the stacked expert weights), keyed by checkpoint,
E, calibration tokens, seed and recipe version; every k then loads in a fraction of a second. Building a
variant maps the dense checkpoint lazily and takes the experts from the cache, so the dense MLP weights
are never read and resident memory matches the dense model's.

A model that is already a mixture of experts (Mixtral-, Qwen-MoE- or OLMoE-style, with
``num_experts_per_tok`` in its config) is not converted: it is loaded with its own experts and the
number of experts per token it runs is changed instead.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.paths import ASSETS, Stopped
from core.techniques.registry import Technique, register, register_resolver

CALIBRATION_TEXT = ASSETS / "eval" / "moe_calibration.txt"
MIN_NEURONS_PER_EXPERT = 8  # below this an expert is a handful of neurons and routing overhead dominates
CALIBRATION_WINDOW_TOKENS = 512
RIDGE = 1e-3  # router regularisation, relative to the mean diagonal of X^T X
KMEANS_ITERATIONS = 25
ALGORITHM_VERSION = "3"  # bump when the partition or router recipe changes: invalidates cached conversions
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


# ---------------------------------------------------------------- partition (pure)


def valid_expert_counts(intermediate: int, limit: int = 64) -> list[int]:
    return [e for e in range(2, limit + 1) if intermediate % e == 0 and intermediate // e >= MIN_NEURONS_PER_EXPERT]


def neurons_per_expert(intermediate: int, experts: int) -> int:
    """m / E, or ValueError when the layer does not split into E equal experts of useful size."""
    if intermediate % experts:
        raise ValueError(f"The MLP's {intermediate} neurons do not split into {experts} equal experts; "
                         f"choose experts from {valid_expert_counts(intermediate)}")
    if intermediate // experts < MIN_NEURONS_PER_EXPERT:
        raise ValueError(f"{experts} experts of {intermediate} neurons leaves {intermediate // experts} neurons per "
                         f"expert (fewer than {MIN_NEURONS_PER_EXPERT}); choose experts from "
                         f"{valid_expert_counts(intermediate)}")
    return intermediate // experts


def balanced_assignment(similarity: torch.Tensor, capacity: int) -> torch.Tensor:
    """[m, G] similarities -> [m] group ids, each group taking exactly `capacity` rows; most similar pairs first."""
    m, groups = similarity.shape
    if m != capacity * groups:
        raise ValueError(f"{m} rows do not fill {groups} groups of {capacity}")
    assigned, load, left = [-1] * m, [0] * groups, m
    # Greedy over (row, group) pairs from most to least similar: a plain-Python loop over m * G pairs,
    # a few ms per call at m = 1536, G = 8.
    for flat in torch.argsort(similarity.flatten(), descending=True).tolist():
        row, group = divmod(flat, groups)
        if assigned[row] < 0 and load[group] < capacity:
            assigned[row], load[group], left = group, load[group] + 1, left - 1
            if left == 0:
                break
    return torch.tensor(assigned)


def balanced_kmeans(features: torch.Tensor, groups: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> torch.Tensor:
    """Spherical k-means with equal-size clusters: [m, F] -> [m] cluster ids."""
    x = F.normalize(features.double(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(x.shape[0], generator=gen)[:groups]]  # [G, F]
    labels = None
    for _ in range(iterations):
        new = balanced_assignment(x @ centroids.T, x.shape[0] // groups)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        centroids = F.normalize(torch.zeros_like(centroids).index_add_(0, labels, x), dim=1)
    return labels


def coactivation_features(x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor,
                          act: Callable) -> torch.Tensor:
    """[m, N]: how much each neuron contributes to each calibration token x [N, d]: |h_j| * ||down column j||."""
    h = act(F.linear(x, gate_w)) * F.linear(x, up_w)  # [N, m]
    return (h.abs() * down_w.norm(dim=0)).T


def partition_neurons(features: torch.Tensor, experts: int, seed: int = 0) -> list[torch.Tensor]:
    """Split m neurons, described by features [m, F], into `experts` equal groups of sorted neuron ids."""
    neurons_per_expert(features.shape[0], experts)
    labels = balanced_kmeans(features.float().cpu(), experts, seed)
    return [torch.nonzero(labels == e).squeeze(1) for e in range(experts)]


def stack_experts(gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, order: torch.Tensor,
                  experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense weights -> (gate_up [E, 2n, d], down_t [E, n, d]) with the neurons in `order` (E groups of n).

    Each expert's gate and up rows sit together so one matmul computes both; down is stored transposed
    so that every expert's slice is one contiguous block (and all of them together, the dense matrix).
    """
    n = order.numel() // experts
    order = order.to(gate_w.device)
    gate = gate_w.index_select(0, order).view(experts, n, -1)
    up = up_w.index_select(0, order).view(experts, n, -1)
    down_t = down_w.T.index_select(0, order).view(experts, n, -1)
    return torch.cat([gate, up], dim=1).contiguous(), down_t.contiguous()


def expert_outputs(x: torch.Tensor, gate_up: torch.Tensor, down_t: torch.Tensor, act: Callable, expert: int) -> torch.Tensor:
    """One expert on tokens x [N, d] -> [N, d]."""
    gate, up = F.linear(x, gate_up[expert]).chunk(2, dim=-1)  # [N, n] each
    return (act(gate) * up) @ down_t[expert]


def expert_means_and_importance(x: torch.Tensor, gate_up: torch.Tensor, down_t: torch.Tensor,
                                act: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert's mean output over tokens x [N, d] ([E, d]) and, per token, the L2 norm of its output
    minus that mean ([N, E]): how much running it, rather than assuming its mean, matters for that token."""
    means, importance = [], []
    for e in range(gate_up.shape[0]):
        y = expert_outputs(x, gate_up, down_t, act, e)  # [N, d]
        means.append(y.mean(0))
        importance.append((y - means[-1]).norm(dim=-1))
    return torch.stack(means), torch.stack(importance, 1)


def fit_router(x: torch.Tensor, importance: torch.Tensor, ridge: float = RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression from x [N, d] to each token's share of importance [N, E] -> (weight [E, d], bias [E])."""
    target = importance.double() / importance.double().sum(-1, keepdim=True).clamp_min(1e-12)
    xa = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64, device=x.device)], dim=1)  # [N, d+1]
    gram = xa.T @ xa
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram, xa.T @ target)  # [d+1, E]
    return solution[:-1].T.float().contiguous(), solution[-1].float().contiguous()


def route(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """[N, E] router scores -> [N, k] ids of the k highest-scoring experts per token."""
    return scores.topk(top_k, dim=-1).indices


def routing_recall(scores: torch.Tensor, importance: torch.Tensor, top_k: int) -> float:
    """Share of each token's truly k most important experts that the router's top k also picks."""
    picked = torch.zeros_like(importance, dtype=torch.bool).scatter_(1, route(scores, top_k), True)
    truth = torch.zeros_like(importance, dtype=torch.bool).scatter_(1, route(importance, top_k), True)
    return float((picked & truth).sum() / truth.sum())


# ---------------------------------------------------------------- the module


class MoEMLP(nn.Module):
    """A gated MLP split into E equal experts plus a linear router; runs the top_k experts per token."""

    def __init__(self, gate_up: torch.Tensor, down_t: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
                 act_fn: nn.Module, top_k: int, mean_out: torch.Tensor | None = None):
        super().__init__()
        experts, two_n, hidden = gate_up.shape
        self.experts, self.neurons = experts, two_n // 2
        self.gate_up = nn.Parameter(gate_up, requires_grad=False)  # [E, 2n, d]
        self.down_t = nn.Parameter(down_t, requires_grad=False)  # [E, n, d]
        # Each expert's mean output on calibration text [E, d]: a skipped expert contributes its mean instead
        # of nothing (zeros: plain skipping). The means cancel exactly when every expert runs.
        # Buffers, not parameters: constants measured on calibration text (bytes_held still counts them).
        mean_out = torch.zeros(experts, hidden, dtype=gate_up.dtype, device=gate_up.device) if mean_out is None else mean_out
        self.register_buffer("mean_out", mean_out.to(gate_up))
        self.register_buffer("mean_total", self.mean_out.sum(0), persistent=False)  # [d]
        self.router = nn.Linear(hidden, experts, device=gate_up.device, dtype=gate_up.dtype)
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
        self.top_k = top_k  # mutable: set_top_k changes it without reconverting

    def extra_repr(self) -> str:
        return f"experts={self.experts}, neurons_per_expert={self.neurons}, top_k={self.top_k}"

    def select_experts(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d] -> [N, k] expert ids."""
        return route(self.router(x), self.top_k)

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
        return self._views

    def decode(self, x: torch.Tensor, experts: list[int]) -> torch.Tensor:
        """One token x [d] through the chosen experts only -> [d]. Each expert is a contiguous slice of the
        stacked weights (a view, no copy), so the skipped experts' bytes are never read."""
        gate_up, down, others, means = self.expert_views()
        out = others[experts[0]]  # the skipped experts' means: all but the first chosen...
        for e in experts[1:]:
            out = out - means[e]  # ...and but the other chosen ones
        for e in experts:
            gate, up = torch.mv(gate_up[e], x).chunk(2)  # [n] each
            out = torch.addmv(out, down[e], self._act(gate) * up)  # out + down @ h in one call
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

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.top_k < self.experts and hidden.numel() == hidden.shape[-1]:
            # One token (decode, the path timed as tokens/s): 1-D ops, no module calls, no bookkeeping.
            x = hidden.reshape(-1)  # [d]
            scores = torch.addmv(self.router.bias, self.router.weight, x)  # [E]
            return self.decode(x, scores.topk(self.top_k).indices.tolist()).view(hidden.shape)
        x = hidden.reshape(-1, hidden.shape[-1])  # [N, d]
        out = self.dense(x) if self.top_k >= self.experts else self.dispatch(x, self.select_experts(x))
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
    check_k = max(1, config.experts // 4)
    layers = {}
    for i, (name, mlp) in enumerate(mlps.items()):
        if stop():
            raise ConversionCancelled(f"Stopped while converting layer {i + 1} of {len(mlps)}.")
        say(0.1 + 0.9 * i / len(mlps), f"Splitting MLP {i + 1} of {len(mlps)} into {config.experts} experts")
        gate_w, up_w, down_w = (mlp.gate_proj.weight.float(), mlp.up_proj.weight.float(), mlp.down_proj.weight.float())
        x = inputs.pop(name).to(gate_w.device)
        features = coactivation_features(x, gate_w, up_w, down_w, mlp.act_fn)
        order = torch.cat(partition_neurons(features, config.experts, config.seed + i))
        gate_up, down_t = stack_experts(gate_w, up_w, down_w, order, config.experts)
        mean_out, importance = expert_means_and_importance(x, gate_up, down_t, mlp.act_fn)
        router_w, router_b = fit_router(x, importance)
        recall = routing_recall(F.linear(x, router_w, router_b), importance, check_k)
        layers[name] = LayerPlan(order.cpu(), router_w.cpu(), router_b.cpu(), mean_out.cpu(), recall)
    say(1.0, "Conversion done")
    return MoEPlan(config.experts, layers, int(ids.numel()), time.perf_counter() - t0,
                   {"recall_k": check_k, "recall_mean": sum(p.recall for p in layers.values()) / len(layers)})


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
                     mlp.act_fn, top_k, layer.mean_out.to(device, dtype))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, moe)
    return model


def convert_to_moe(model: nn.Module, config: MoEConfig, calibration: torch.Tensor, progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None) -> nn.Module:
    """A mixture-of-experts copy of `model` (the input model is left untouched), routing config.top_k of config.experts."""
    plan = fit_plan(model, config, calibration[: config.calibration_tokens], progress, should_stop)
    return apply_plan(copy.deepcopy(model), plan, config.top_k, config.dense_layers).eval()


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    return [m for m in model.modules() if isinstance(m, MoEMLP)]


def set_top_k(model: nn.Module, top_k: int) -> nn.Module:
    """Change how many experts run per token in every MoE layer (converted or native), in place."""
    converted = moe_layers(model)
    if converted:
        experts = converted[0].experts
        MoEConfig(experts=experts, top_k=top_k)  # validates 1 <= k <= E with the same message
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
    """The expert weights of one MoE layer, and how many of its experts run per token."""
    tensors: tuple[torch.Tensor, ...]
    experts: int
    top_k: int

    def inactive_share(self, top_k: int | None = None) -> float:
        return 1 - (self.top_k if top_k is None else top_k) / self.experts


def expert_groups(model: nn.Module) -> list[ExpertGroup]:
    """Every MoE layer's expert weights, converted (MoEMLP) or native (transformers' *Experts modules)."""
    groups = [ExpertGroup((m.gate_up, m.down_t), m.experts, m.top_k) for m in moe_layers(model)]
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
        "moe_layers": len(groups),
        "dense_layers": len(gated_mlps(model)),  # MLP layers left whole
        "native_moe": not moe_layers(model) and bool(groups),
        "active_params": active_params(model),
        "active_params_pct": active_params_pct(model),
        "dense_params": dense_params(model),
        "flops_per_token": flops_per_token(model),
        # all experts, minus the routers' multiplies: what the dense model this came from does per token
        "dense_flops_per_token": flops_per_token(model, groups[0].experts if groups else None)
        - 2 * sum(m.router.weight.numel() for m in moe_layers(model)),
    }


def dense_facts(model: nn.Module) -> dict[str, Any]:
    """The same numbers for an unconverted model, so the dense reference sits on the same axes."""
    return {"experts": None, "top_k": None, "moe_layers": 0, "dense_layers": len(gated_mlps(model)), "native_moe": False,
            "active_params": total_params(model), "active_params_pct": 100.0, "dense_params": total_params(model),
            "flops_per_token": flops_per_token(model), "dense_flops_per_token": flops_per_token(model)}


# ---------------------------------------------------------------- models that are already MoE


def native_moe(config) -> tuple[int, int] | None:
    """(experts per layer, experts per token) of a natively MoE config, else None."""
    top_k = getattr(config, "num_experts_per_tok", None)
    experts = next((getattr(config, f) for f in NATIVE_EXPERT_FIELDS if isinstance(getattr(config, f, None), int)), None)
    return (experts, top_k) if isinstance(top_k, int) and experts else None


def native_moe_of(checkpoint: Path) -> tuple[int, int] | None:
    from transformers import AutoConfig

    return native_moe(AutoConfig.from_pretrained(checkpoint))


def native_moe_for_name(name: str) -> tuple[int, int] | None:
    """native_moe for a model the user named, from its config.json if it is already on disk (nothing is fetched)."""
    from types import SimpleNamespace

    from core import models

    spec = models.resolve(name)
    if spec.source == "local":
        path: Path | None = Path(spec.location) / "config.json"
    elif spec.source == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.location, "config.json")
        path = Path(found) if isinstance(found, str) else None
    else:
        path = models.checkpoint_dir(spec.key) / "config.json"
    if path is None or not path.is_file():
        return None
    return native_moe(SimpleNamespace(**json.loads(path.read_text())))


# ---------------------------------------------------------------- cached conversion plans (I/O)


def cache_root() -> Path:
    from core.paths import data_dir

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
    for part in (_checkpoint_fingerprint(checkpoint), config.experts, config.seed, ALGORITHM_VERSION):
        h.update(str(part).encode() + b"\0")
    h.update(ids.to(torch.int64).numpy().tobytes())
    return cache_root() / f"{Path(checkpoint).name}-E{config.experts}-{h.hexdigest()[:12]}"


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
    from safetensors.torch import save_file

    tensors = {}
    for name, layer in plan.layers.items():
        tensors |= {f"{name}.order": layer.order, f"{name}.router_w": layer.router_w, f"{name}.router_b": layer.router_b,
                    f"{name}.mean_out": layer.mean_out}
    info = {"experts": plan.experts, "calibration_tokens": plan.calibration_tokens, "seconds": plan.seconds,
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
    from safetensors.torch import load_file

    tensors = load_file(str(target / PLAN_FILE))
    info = json.loads((target / PLAN_INFO).read_text())
    layers = {name: LayerPlan(tensors[f"{name}.order"], tensors[f"{name}.router_w"], tensors[f"{name}.router_b"],
                              tensors[f"{name}.mean_out"], r)
              for name, r in zip(info["layers"], info["recall"])}
    extra = {k: v for k, v in info.items() if k not in ("experts", "calibration_tokens", "seconds", "layers", "recall")}
    return MoEPlan(info["experts"], layers, info["calibration_tokens"], info["seconds"], extra)


def ensure_plan(checkpoint: Path, config: MoEConfig, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None, dense: nn.Module | None = None) -> tuple[MoEPlan, Path]:
    """The cached conversion plan for this checkpoint and E, fitting (and caching) it the first time."""
    from core import models

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
    from core import models

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
    from safetensors import safe_open

    mlps = check_convertible(model, plan.experts)
    if dense_layers >= len(mlps):
        raise ValueError(f"dense_layers={dense_layers} would leave none of the model's {len(mlps)} MLP layers to split")
    with safe_open(str(target / EXPERTS_FILE), framework="pt", device=str(device)) as f:
        for name, mlp in list(mlps.items())[dense_layers:]:
            layer = plan.layers[name]
            gate_up = f.get_tensor(f"{name}.gate_up")
            moe = MoEMLP(gate_up, f.get_tensor(f"{name}.down_t"), layer.router_w.to(gate_up.device),
                         layer.router_b.to(gate_up.device), mlp.act_fn, top_k, layer.mean_out.to(gate_up.device))
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, moe)
    return model


def unsupported_reason(_config: MoEConfig, _device: str) -> str | None:
    return None  # plain torch ops: runs wherever fp32 runs


# ---------------------------------------------------------------- convert, then measure with the sweep harness

CONVERSION_SHARE = 0.15  # of a run's progress bar: converting takes about a minute, measuring several


def run_moe_sweep(model_name: str, experts: int, top_ks: list[int], settings, store=None, progress=None,
                  should_stop: Callable[[], bool] | None = None, dense_layers: int = DEFAULT_DENSE_LAYERS) -> list:
    """Fit (or load) the conversion for E experts, then measure the dense reference and each k with
    core.experiments.sweep.run_sweep, so every number comes from the same harness. Returns the VariantRecords."""
    from core import models, techniques
    from core.experiments import sweep

    if not top_ks:
        raise ValueError("Pick at least one number of experts per token (top_k) to measure.")
    if len(set(top_ks)) != len(top_ks):
        raise ValueError(f"A top_k is listed twice in {list(top_ks)}")
    configs = [MoEConfig(experts=experts, top_k=k, dense_layers=dense_layers) for k in top_ks]  # validates every k first
    report = progress or (lambda _p: None)

    def converting(fraction: float, message: str) -> None:
        report(sweep.Progress(CONVERSION_SHARE * fraction, "convert", "prepare", message))

    checkpoint = models.prepare(models.resolve(model_name), progress=lambda msg: converting(0.0, msg))
    prepare_conversion(checkpoint, configs[0], converting, should_stop)

    def measuring(p) -> None:
        report(sweep.Progress(CONVERSION_SHARE + (1 - CONVERSION_SHARE) * p.fraction, p.variant, p.step, p.message))

    keys = [techniques.REFERENCE] + [technique_key(c.experts, c.top_k, c.dense_layers) for c in configs]
    return sweep.run_sweep(model_name, keys, settings, store=store, progress=measuring, should_stop=should_stop)


# ---------------------------------------------------------------- registry entries


MOE_EXPLANATION = (
    "Each feed-forward layer's neurons are split into {experts} equal groups (experts) and a small router, fitted "
    "on calibration text, runs only the {top_k} experts that matter most for each token: about {pct:.0f}% of the "
    "feed-forward weights are read per token (the first layer stays whole). With every expert running it "
    "computes exactly the dense model."
)
MOE_SURPRISE = (
    "The model holds as many bytes as the dense one (every expert stays in memory); what shrinks is the bytes "
    "read and the arithmetic per token. This model was trained dense, so its neurons were never taught to work "
    "in groups: quality falls fast as fewer experts run, unlike a model trained as a mixture of experts "
    "(LLaMA-MoE recovered quality by training the converted model further; nothing is trained here)."
)


def moe_technique(experts: int, top_k: int, dense_layers: int = DEFAULT_DENSE_LAYERS) -> Technique:
    """The registry entry for any (E, k); the registry lists a few, `get` builds the rest on demand."""
    config = MoEConfig(experts=experts, top_k=top_k, dense_layers=dense_layers)
    label = f"MoE {top_k} of {experts} experts" + ("" if dense_layers == DEFAULT_DENSE_LAYERS
                                                     else f", first {dense_layers} MLP layers dense")
    return Technique(
        technique_key(experts, top_k, dense_layers), label, "moe", config,
        MOE_EXPLANATION.format(experts=experts, top_k=top_k, pct=100 * top_k / experts), MOE_SURPRISE,
        load_moe, unsupported_reason, bytes_read_per_token=bytes_read_per_token, facts=variant_facts)




def _resolve(key: str) -> Technique | None:
    shape = parse_technique_key(key)  # any moe-<E>x<k>, validated by MoEConfig
    return moe_technique(*shape) if shape is not None else None


# k < E only: with every expert running (moe-8x8) the model reads more than the dense one (routers too), so it
# is a correctness check, not an optimisation; `get("moe-8x8")` still builds it for the MoE page and CLI.
register(*(moe_technique(8, k) for k in (1, 2, 4)), rank=3)
register_resolver(_resolve)
