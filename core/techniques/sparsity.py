"""Activation sparsity: in every gated MLP, the intermediate activations smaller than a calibrated threshold are set
to zero, so their rows of up_proj and columns of down_proj need not be read (CATS, arXiv 2404.08763; TEAL,
arXiv 2408.14690). No training: the training-free form of "use only what's needed".

How the threshold is chosen
---------------------------
A gated MLP computes ``y = W_down (act(W_gate x) * (W_up x))``. CATS zeroes the entries of ``a = act(W_gate x)``
whose magnitude is below a per-layer threshold t, so ``(a * (W_up x))_j`` is zero too and neuron j contributes
nothing. For a target sparsity s, t is the s-quantile of |a| over every calibration token and neuron of that layer,
measured on the dense model (the MoE carve's calibration text, never the evaluation text, or the quality measured
afterwards would flatter the variant). t lies halfway between the two neighbouring order statistics, so exactly the
target share of the calibration activations falls below it. At run time the share varies token by token around
the target; the facts record what decoding actually saw.

What it saves, and on which path
--------------------------------
A dense matmul multiplies by zeros as fast as by anything else, so masking alone buys nothing: the "masked" path
(every multi-token pass: prefill, scoring) reads every weight and does a little more work than the dense model.
The one-token "gather" path (decode, the path timed as tokens/s) runs the gate matvec, takes the indices of the
surviving neurons and reads only their rows of W_up and of W_down (stored transposed, so each neuron's row is
contiguous): at sparsity s it reads 1/3 + 2/3 (1 - s) of the MLP weights. Picking the rows costs a few small ops
per layer, so at low sparsity it can decode slower than the dense model; benchmarks/sparsity_decode.py measures
both paths at every target on this machine (on a 2-core AMD EPYC the gather path beat the masked one everywhere, and
the dense model only from about half the activations zeroed, by far less than the weights it skips). The words a
variant shows therefore promise nothing about speed: they point at its measured decode speed beside the dense one.

Thresholds are cached per (checkpoint, calibration text, tokens, target) under data_dir()/sparsity, written
atomically, so every measurement of a variant pays for the calibration pass once.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from core import models
from core.techniques.measured_cache import cache_path, read_cached, write_atomically
from core.techniques.moe.layer import architecture, gated_mlps
from core.techniques.moe.plan import CALIBRATION_TEXT, _checkpoint_fingerprint, calibration_ids, record_mlp_inputs
from core.techniques.registry import Technique, register, register_resolver

CALIBRATION_TOKENS = 2048  # the whole calibration text on the bundled model's tokenizer: ~3M activations per layer
THRESHOLDS_VERSION = "1"  # bump when the threshold recipe changes: invalidates cached thresholds
MIN_TARGET_PCT, MAX_TARGET_PCT = 1, 95
# From this target up, gather decode was measured faster than the dense model; below it, picking the surviving rows
# cost about what skipping the rest saved. benchmarks/sparsity_decode.py on the lab's AMD EPYC (2 threads, 5 rounds):
# gather / dense 1.00x at 10%, 0.98x at 25%, 1.00x at 40%, 1.07x at 50%; masked / dense 0.93-0.97x everywhere. A quick
# sweep (fp32,sparse-40, same machine) measured sparse-40 at 0.83x the reference's decode tokens/s.
THRESHOLD_RECIPE = ("per layer, the target quantile of |act(gate_proj(x))| over every calibration token and neuron "
                    "of the dense model (CATS); entries below it are set to zero")
DecodePath = Literal["gather", "masked"]


@dataclass(frozen=True)
class SparsityConfig:
    target_pct: int  # share of the MLP's intermediate activations zeroed on the calibration text, in percent
    decode: DecodePath = "gather"  # one-token path; "masked" reads every weight (the quality cost alone)
    calibration_tokens: int = CALIBRATION_TOKENS

    def __post_init__(self) -> None:
        if not (isinstance(self.target_pct, int) and MIN_TARGET_PCT <= self.target_pct <= MAX_TARGET_PCT):
            raise ValueError(f"Activation sparsity must be a whole percent from {MIN_TARGET_PCT} to {MAX_TARGET_PCT} "
                             f"(e.g. sparse-40); got {self.target_pct!r}. 0 is the dense model itself (fp32), and "
                             "near 100 nearly every MLP neuron would be switched off.")
        if self.decode not in ("gather", "masked"):
            raise ValueError(f"decode must be 'gather' or 'masked', not {self.decode!r}")
        if self.calibration_tokens < 64:
            raise ValueError(f"Calibrating thresholds needs at least 64 tokens, got {self.calibration_tokens}.")

    @property
    def decode_path(self) -> DecodePath:
        return self.decode


@dataclass(frozen=True)
class Thresholds:
    """One threshold per gated MLP, calibrated for one target sparsity on one text."""
    layers: list[str]  # module names, in model order
    threshold: list[float]  # per layer: |act| below this is zeroed
    calibration_sparsity: list[float]  # per layer: the share of calibration activations below it (0..1)
    target_pct: int
    calibration_tokens: int
    calibration_sha256: str
    checkpoint: str
    measure_seconds: float


# ---------------------------------------------------------------- pure tensor functions


def quantile_threshold(magnitudes: torch.Tensor, share: float) -> float:
    """A threshold with exactly round(share * n) of the values strictly below it (halfway between two order
    statistics; kthvalue, not torch.quantile, which refuses tensors over 16M elements)."""
    flat = magnitudes.reshape(-1).float()
    k = min(max(round(share * flat.numel()), 1), flat.numel() - 1)
    low, high = float(flat.kthvalue(k).values), float(flat.kthvalue(k + 1).values)
    return (low + high) / 2 if high > low else high  # ties: the tied values stay (fewer zeros, never more)


@torch.inference_mode()
def gate_magnitudes(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """|act(gate_proj(x))| for MLP inputs x [T, d] -> [T, m]."""
    return mlp.act_fn(F.linear(x.to(mlp.gate_proj.weight), mlp.gate_proj.weight)).abs()


def check_sparsifiable(model: nn.Module) -> dict[str, nn.Module]:
    """The model's gated MLPs, or ModelError saying what to choose instead."""
    mlps = gated_mlps(model)
    if not mlps:
        raise models.ModelError(
            f"Activation sparsity needs gated MLPs (gate_proj, up_proj, down_proj), as in Llama, Qwen2, Mistral, Gemma "
            f"or SmolLM; this model is {architecture(model)}, which has none. Choose a model with a gated MLP.")
    for name, mlp in mlps.items():
        if any(getattr(mlp, p).bias is not None for p in ("gate_proj", "up_proj", "down_proj")):
            raise models.ModelError(f"{name} has MLP biases ({architecture(model)}); activation sparsity here supports "
                                    "bias-free MLPs only. Choose a Llama-style model.")
    return mlps


@torch.inference_mode()
def calibrate(model: nn.Module, ids: torch.Tensor, target_pct: int) -> tuple[list[str], list[float], list[float]]:
    """(layer names, thresholds, measured share below each) for the target, on the dense model's activations."""
    mlps = check_sparsifiable(model)
    inputs = record_mlp_inputs(model, mlps, ids)
    names, thresholds, shares = [], [], []
    for name, mlp in mlps.items():
        mags = gate_magnitudes(mlp, inputs.pop(name))
        t = quantile_threshold(mags, target_pct / 100)
        names.append(name)
        thresholds.append(t)
        shares.append(float((mags < t).float().mean()))
    return names, thresholds, shares


# ---------------------------------------------------------------- the module


class SparseMLP(nn.Module):
    """A gated MLP whose activations below `threshold` are zero; one-token decode can skip their weights."""

    def __init__(self, mlp: nn.Module, threshold: float, calibration_sparsity: float, decode: DecodePath):
        super().__init__()
        self.gate_proj, self.up_proj = mlp.gate_proj, mlp.up_proj  # shared with the dense model: no copy
        # down_proj stored transposed [m, d]: one neuron's output weights are one contiguous row, so the gather path
        # reads whole rows. The masked path multiplies by it as it is (h @ down_t), so the model holds no extra copy.
        self.down_t = nn.Parameter(mlp.down_proj.weight.detach().t().contiguous(), requires_grad=False)
        self.act_fn = mlp.act_fn
        self.register_buffer("threshold", torch.tensor(threshold, dtype=self.down_t.dtype, device=self.down_t.device))
        self.threshold_value = threshold
        self.calibration_sparsity = calibration_sparsity
        self.decode_path = decode
        self.neurons = self.down_t.shape[0]
        self.counts = {"gather": 0, "masked": 0}  # one-token passes by path
        self.kept_neurons = 0  # summed over one-token passes: the share of weights decode really read

    def extra_repr(self) -> str:
        return f"threshold={self.threshold_value:.4g}, decode={self.decode_path}"

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d] -> [N, d]: every weight read; the small activations zeroed."""
        a = self.act_fn(F.linear(x, self.gate_proj.weight))
        keep = a.abs() >= self.threshold
        if x.shape[0] == 1:  # a decode step on this path: count what survived, for the facts
            self.kept_neurons += int(keep.sum())
        return (a * keep * F.linear(x, self.up_proj.weight)) @ self.down_t

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """One token x [d] -> [d], reading only the surviving neurons' rows of up_proj and down_t."""
        a = self.act_fn(torch.mv(self.gate_proj.weight, x))
        keep = (a.abs() >= self.threshold).nonzero().squeeze(1)
        self.kept_neurons += keep.numel()
        h = a.index_select(0, keep) * torch.mv(self.up_proj.weight.index_select(0, keep), x)
        return torch.mv(self.down_t.index_select(0, keep).t(), h)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.numel() == hidden.shape[-1]:  # one token: the decode step
            self.counts[self.decode_path] += 1
            if self.decode_path == "gather":
                return self.gather(hidden.reshape(-1)).view(hidden.shape)
        return self.masked(hidden.reshape(-1, hidden.shape[-1])).view(hidden.shape)

    def decode_sparsity(self) -> float | None:
        """Share of neurons zeroed over the one-token passes so far (None before any)."""
        passes = sum(self.counts.values())
        return 1 - self.kept_neurons / (passes * self.neurons) if passes else None


def apply_thresholds(model: nn.Module, thresholds: Thresholds, decode: DecodePath) -> nn.Module:
    """Replace each gated MLP by its SparseMLP, in place (callers own the model)."""
    mlps = check_sparsifiable(model)
    if list(mlps) != thresholds.layers:
        raise ValueError(f"the thresholds were calibrated for other MLP layers ({len(thresholds.layers)} vs {len(mlps)})")
    for name, t, share in zip(thresholds.layers, thresholds.threshold, thresholds.calibration_sparsity):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SparseMLP(mlps[name], t, share, decode))
    return model


def sparse_layers(model: nn.Module) -> list[SparseMLP]:
    return [m for m in model.modules() if isinstance(m, SparseMLP)]


# ---------------------------------------------------------------- what a token reads, and the facts recorded


def _zero_share(layer: SparseMLP) -> float:
    seen = layer.decode_sparsity()
    return layer.calibration_sparsity if seen is None else seen


def bytes_read_per_token(model: nn.Module, bytes_held: int) -> int:
    """Bytes one decoded token reads: on the gather path, every weight but the zeroed neurons' up and down rows
    (the share decoding actually zeroed so far; the calibration share before any decode). The masked path reads all."""
    skipped = 0.0
    for layer in sparse_layers(model):
        if layer.decode_path == "gather":
            per_neuron = layer.up_proj.weight[0].nbytes + layer.down_t[0].nbytes
            skipped += _zero_share(layer) * layer.neurons * per_neuron
    return bytes_held - round(skipped)


def mlp_weights_read_pct(model: nn.Module) -> float:
    layers = sparse_layers(model)
    gather = [layer for layer in layers if layer.decode_path == "gather"]
    skipped = sum(2 / 3 * _zero_share(layer) for layer in gather)  # up and down are 2 of the 3 equal matrices
    return 100 * (1 - skipped / len(layers)) if layers else 100.0


def variant_facts(model: nn.Module) -> dict[str, Any]:
    layers = sparse_layers(model)
    calibration = [100 * layer.calibration_sparsity for layer in layers]
    seen = [s for layer in layers if (s := layer.decode_sparsity()) is not None]
    paths = {path: sum(layer.counts[path] for layer in layers) for path in ("gather", "masked")}
    return {
        "sparsity_target_pct": getattr(model, "sparsity_target_pct", None),
        "sparsity_calibration_pct_mean": sum(calibration) / len(calibration) if calibration else None,
        "sparsity_calibration_pct_per_layer": calibration,
        "sparsity_decode_pct_mean": 100 * sum(seen) / len(seen) if seen else None,
        "decode_path": layers[0].decode_path if layers else None,
        "decode_passes_by_path": paths,  # layer passes of one token, by path: which one really ran
        "mlp_weights_read_pct": mlp_weights_read_pct(model),
        "thresholds": [layer.threshold_value for layer in layers],
        "threshold_recipe": THRESHOLD_RECIPE,
        "calibration_tokens": getattr(model, "sparsity_calibration_tokens", None),
    }


# ---------------------------------------------------------------- cached thresholds (I/O)


def thresholds_path(checkpoint: Path, text_sha256: str, tokens: int, target_pct: int) -> Path:
    return cache_path("sparsity", "thresholds", (_checkpoint_fingerprint(checkpoint), text_sha256, tokens, target_pct, THRESHOLDS_VERSION))


def layer_thresholds(checkpoint: Path, config: SparsityConfig, model: nn.Module | None = None,
                     text: Path = CALIBRATION_TEXT) -> Thresholds:
    """Every gated MLP's threshold for config.target_pct on the calibration text; cached. `model`, when given, is
    the dense model to calibrate on (saves loading a second copy)."""
    text_sha = hashlib.sha256(Path(text).read_bytes()).hexdigest()
    path = thresholds_path(checkpoint, text_sha, config.calibration_tokens, config.target_pct)
    if (cached := read_cached(path, Thresholds)) is not None:
        return cached
    ids = calibration_ids(models.load_tokenizer(checkpoint), config.calibration_tokens, Path(text))
    model = model if model is not None else models.load_model(checkpoint)
    t0 = time.perf_counter()
    names, thresholds, shares = calibrate(model, ids, config.target_pct)
    result = Thresholds(names, thresholds, shares, config.target_pct, int(ids.numel()), text_sha, str(checkpoint),
                        time.perf_counter() - t0)
    write_atomically(path, result)
    return result


def load_sparse(checkpoint: Path, config: SparsityConfig, device: str = "cpu") -> nn.Module:
    """Technique.build: the dense fp32 model with every gated MLP thresholded (calibrating the first time)."""
    model = models.load_model(Path(checkpoint), torch.float32, device)
    thresholds = layer_thresholds(Path(checkpoint), config, model)
    apply_thresholds(model, thresholds, config.decode_path)
    model.sparsity_target_pct, model.sparsity_calibration_tokens = config.target_pct, thresholds.calibration_tokens
    return model.eval()


def unsupported_reason(_config: SparsityConfig, _device: str) -> str | None:
    return None  # plain torch ops: runs wherever fp32 runs


# ---------------------------------------------------------------- registry entries

EXPLANATION = (
    "In every feed-forward layer, the {pct}% of neuron activations closest to zero (by a threshold per layer, set "
    "on calibration text) are set to zero, so those neurons contribute nothing. No training. {path}"
)
GATHER_WORDS = ("When decoding one token it reads only the surviving neurons' weights: about {read:.0f}% of the "
                "feed-forward weights per token.")
SPEED_WORDS = (" Picking the surviving neurons costs a few small steps per layer, so it can decode slower than the "
               "dense model at low targets and faster only by far less than the share of weights skipped: compare its "
               "measured decode speed with the dense model's.")
MASKED_WORDS = ("This variant multiplies by every weight, zeros included, as an ordinary dense kernel does: it reads "
                "every weight and decodes a little slower than the dense model, so it shows the quality cost alone.")
SURPRISE = (
    "Zeros alone make nothing faster: an ordinary matrix multiply does the same work for a zero as for any number. "
    "Speed can come only from not reading the zeroed neurons' weights, which this lab does for one token at a time "
    "(decoding); reading a prompt still reads every weight and is a little slower than the dense model. Picking "
    "the surviving neurons costs a few extra small steps per layer, so at low sparsity decoding can be slower than "
    "the dense model: compare its measured speed, not the share of weights skipped. The model holds as many bytes "
    "as the dense one."
)


def path_words(config: SparsityConfig) -> str:
    if config.decode_path == "masked":
        return MASKED_WORDS
    return GATHER_WORDS.format(read=100 - 200 * config.target_pct / 300) + SPEED_WORDS


def sparsity_technique(target_pct: int, decode: DecodePath = "gather") -> Technique:
    """The registry entry for any target; the registry lists a few, `get` builds the rest on demand."""
    config = SparsityConfig(target_pct, decode)
    words = path_words(config)
    key = f"sparse-{target_pct}" + ("" if decode == "gather" else f"-{decode}")
    return Technique(key, f"Activation sparsity {target_pct}%" + ("" if decode == "gather" else f" ({decode} decode)"),
                     "sparsity", config, EXPLANATION.format(pct=target_pct, path=words), SURPRISE, load_sparse,
                     unsupported_reason, bytes_read_per_token=bytes_read_per_token, facts=variant_facts)


KEY_HELP = (f"sparse-<percent>, a whole percent from {MIN_TARGET_PCT} to {MAX_TARGET_PCT} (e.g. sparse-40), or "
            "sparse-<percent>-masked to multiply by every weight (the quality cost without the skipping)")


def _resolve(key: str) -> Technique | None:
    if not key.startswith("sparse-") or "@" in key:
        return None
    match = re.fullmatch(r"sparse-(\d+)(-masked)?", key)
    if match is None:
        raise ValueError(f"Activation sparsity keys are {KEY_HELP}; got {key!r}.")
    return sparsity_technique(int(match[1]), "masked" if match[2] else "gather")


register(*(sparsity_technique(pct) for pct in (25, 40, 50, 65)), rank=4)
register_resolver(_resolve)
