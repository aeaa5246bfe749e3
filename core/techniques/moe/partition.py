"""How a gated MLP is split into experts and how its router is fitted: pure tensor math, no models or files."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

MIN_NEURONS_PER_EXPERT = 8  # below this an expert is a handful of neurons and routing overhead dominates
RIDGE = 1e-3  # router regularisation, relative to the mean diagonal of X^T X
KMEANS_ITERATIONS = 25
FIRING_TOP_SHARE = 0.25  # a neuron "fires" on a token when it is among that token's top quarter of contributors


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


def firing_rate(features: torch.Tensor, top_share: float = FIRING_TOP_SHARE) -> torch.Tensor:
    """[m]: on what share of calibration tokens each neuron is among that token's top `top_share` contributors.

    features is coactivation_features' [m, N]. A neuron that is in the top quarter on almost every token is
    needed whatever the token; CMoE (arXiv 2502.04416) makes such neurons a shared expert that always runs.
    """
    m = features.shape[0]
    top = max(1, round(m * top_share))
    ranks = features.topk(top, dim=0).indices  # [top, N]: each token's top contributors
    return torch.zeros(m, device=features.device).index_add_(
        0, ranks.flatten(), torch.ones(ranks.numel(), device=features.device)) / features.shape[1]


def shared_and_routed(features: torch.Tensor, experts: int, shared: int, seed: int = 0) -> list[torch.Tensor]:
    """The neurons of `shared` always-on experts (the most often firing ones), then `experts - shared` routed groups
    of the rest by co-activation: E groups of m / E sorted neuron ids, shared experts first."""
    n = neurons_per_expert(features.shape[0], experts)
    if shared == 0:
        return partition_neurons(features, experts, seed)
    by_rate = firing_rate(features).argsort(descending=True)
    always = by_rate[: shared * n]
    rest = by_rate[shared * n:].sort().values
    routed = balanced_kmeans(features[rest].float().cpu(), experts - shared, seed)
    groups = [always[e * n:(e + 1) * n].sort().values for e in range(shared)]
    return groups + [rest[torch.nonzero(routed == e).squeeze(1)] for e in range(experts - shared)]


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

