"""How much of a carve's loss is routing: its divergence from the dense model with the router it has, and with an
oracle router that knew each token's most important experts, on the evaluation prose (the sweep's windows and
scoring rule). When the oracle is nearly as far as the router, a better router cannot help: the loss is in
skipping experts, and only training after the carve closes it.

Deterministic (no timing), so it is measured once per carve, text and rule, and kept beside the carve's plan.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from core import models
from core.experiments.sweep import SweepSettings, text_windows
from core.measure import evaluate
from core.runtimes.eager import window_logprobs
from core.techniques.moe import MoEConfig, load_moe, moe_layers, technique_key
from core.techniques.moe.plan import cache_root


@dataclass(frozen=True)
class RoutingCeiling:
    technique: str  # the carve, e.g. moe-16x3-s3
    kld_router_nats: float  # mean KL(dense || carve) per scored token, the carve's own router
    kld_oracle_nats: float  # the same with each token's truly most important experts
    positions: int  # scored tokens
    rule: str
    text_sha256: str
    measured_at: str

    @property
    def routing_share(self) -> float:
        """Share of the carve's divergence a perfect router would win back (0: none, 1: all)."""
        return 1 - self.kld_oracle_nats / self.kld_router_nats if self.kld_router_nats > 0 else 0.0


@contextmanager
def oracle_routing(model: nn.Module) -> Iterator[nn.Module]:
    """Every MoE layer of `model` routes by its oracle inside the block, and by its router again after."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("This model has no carved experts; an oracle router needs a mixture of experts.")
    for layer in layers:
        layer.forward = layer.oracle  # an instance attribute: the class and other models keep their forward
    try:
        yield model
    finally:
        for layer in layers:
            del layer.forward


def _file_stem(model_key: str) -> str:
    return model_key.replace("/", "--")


def ceiling_path(model_key: str, config: MoEConfig, text_sha: str, rule: str) -> Path:
    key = technique_key(config.experts, config.top_k, config.dense_layers, config.shared)
    return cache_root() / "ceilings" / f"{_file_stem(model_key)}-{key}-{text_sha[:12]}-{rule}.json"


def read_ceiling(path: Path) -> RoutingCeiling | None:
    try:
        return RoutingCeiling(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


@torch.inference_mode()
def _kld(model: nn.Module, windows: list[torch.Tensor], reference: list[torch.Tensor], rule: str) -> torch.Tensor:
    per_position = []
    for window, ref in zip(windows, reference):
        lp = window_logprobs(model, window)
        per_position.append(evaluate.position_kld(ref, lp[evaluate.scored_rows(lp.shape[0], rule)], rule))
    return torch.cat(per_position)


def measure_ceiling(model_name: str, config: MoEConfig, settings: SweepSettings | None = None) -> RoutingCeiling:
    """Router and oracle divergence of the carve `config` (cached per carve, text and rule)."""
    settings = settings or SweepSettings()
    spec = models.resolve(model_name)
    text = Path(settings.ppl_text)
    sha = evaluate.file_sha256(text)
    path = ceiling_path(spec.key, config, sha, settings.kld_rule)
    if (cached := read_ceiling(path)) is not None:
        return cached
    checkpoint = models.prepare(spec)
    windows, rule, _ = text_windows(models.load_tokenizer(checkpoint), evaluate.read_text(text), settings)
    dense = models.load_model(checkpoint).eval()
    with torch.inference_mode():
        reference = [window_logprobs(dense, w)[evaluate.scored_rows(w.shape[1], rule)] for w in windows]
    del dense
    carve = load_moe(checkpoint, config).eval()
    router = _kld(carve, windows, reference, rule)
    with oracle_routing(carve):
        oracle = _kld(carve, windows, reference, rule)
    ceiling = RoutingCeiling(technique_key(config.experts, config.top_k, config.dense_layers, config.shared),
                             float(router.mean()), float(oracle.mean()), len(router), rule, sha,
                             datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(ceiling), indent=1))
    tmp.replace(path)  # whole or not at all
    return ceiling


def cached_ceilings(model_key: str) -> list[RoutingCeiling]:
    """Every ceiling measured for this model, newest first (the page reads these; it never measures)."""
    found = [read_ceiling(p) for p in (cache_root() / "ceilings").glob(f"{_file_stem(model_key)}-moe-*.json")]
    return sorted((c for c in found if c is not None), key=lambda c: c.measured_at, reverse=True)
