"""Depth pruning by measured redundancy: which decoder layers change the hidden state least, on calibration text.

A layer whose output is nearly its input adds little, so removing it costs little before any training (ShortGPT's
Block Influence, arXiv 2403.03853; Gromov et al., arXiv 2403.17887). Each layer's influence is
1 - mean cosine similarity between its input and output hidden states over the calibration tokens: 0 means the
layer passes its input through unchanged, larger means it turns the hidden state further (at most 2).

The text is the MoE carve's calibration text (never the evaluation text, or the quality measured afterwards would
flatter the pruned model), read by the same loader. Scores are cached per (checkpoint, text, tokens) under
data_dir()/depth, so the Distill page, the CLI and every point of a depth sweep pay for the forward pass once.
"""

from __future__ import annotations

import copy
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from core import models
from core.techniques.measured_cache import cache_path, read_cached, write_atomically
from core.techniques.registry import Technique, register_resolver
from core.techniques.moe.plan import (CALIBRATION_TEXT, CALIBRATION_WINDOW_TOKENS, _checkpoint_fingerprint,
                                      calibration_ids)

LayerChoice = Literal["spread", "first", "every-other", "redundancy"]
LAYER_CHOICES: tuple[str, ...] = ("spread", "first", "every-other", "redundancy")
CALIBRATION_TOKENS = 2048  # a few windows: the ranking of layers settles well before this on the bundled model
SCORES_VERSION = "1"  # bump when the score's definition changes: invalidates cached scores


@dataclass(frozen=True)
class LayerScores:
    """Block influence of every decoder layer, measured on calibration text (lower = more redundant)."""
    influence: list[float]  # per layer, 1 - mean cosine(input, output) over tokens, in [0, 2]
    calibration_tokens: int
    calibration_sha256: str  # of the calibration text's bytes: the scores belong to this text only
    checkpoint: str
    measure_seconds: float  # the forward pass that produced them, when they were first measured

    @property
    def layers(self) -> int:
        return len(self.influence)

    def most_redundant_first(self) -> list[int]:
        return sorted(range(self.layers), key=lambda i: (self.influence[i], i))


# ---------------------------------------------------------------- the stack and the score


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder's stack of blocks (`model.model.layers` in Llama, Qwen, Gemma, SmolLM ...)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise models.ModelError(f"Cannot find the decoder layers of {type(model).__name__}; distillation here needs "
                                "a decoder whose blocks are in `model.model.layers` (Llama, Qwen2, Gemma, SmolLM...).")
    return layers


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _hidden_out(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # older transformers return (hidden, ...) tuples


@torch.inference_mode()
def block_influence(model: torch.nn.Module, ids: torch.Tensor, window: int = CALIBRATION_WINDOW_TOKENS) -> list[float]:
    """1 - mean cosine(input, output) of each decoder layer over every token of ids ([T]), run in windows.

    Forward hooks read each block's own input and output, not `output_hidden_states`, whose last entry has the
    final norm applied and so is not the last block's output. Sums are kept in float64 so the order of windows
    cannot change the result in the last digits.
    """
    layers = decoder_layers(model)
    cos_sum = [0.0] * len(layers)
    count = 0

    def hook(index: int):
        def record(_module, args, kwargs, output):
            x, y = _hidden_in(args, kwargs).float(), _hidden_out(output).float()
            cos_sum[index] += float(torch.nn.functional.cosine_similarity(x, y, dim=-1).double().sum())
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    device = next(model.parameters()).device
    try:
        for start in range(0, ids.numel(), window):
            chunk = ids[start:start + window]
            model(input_ids=chunk[None].to(device), use_cache=False)
            count += chunk.numel()
    finally:
        for h in handles:
            h.remove()
    return [min(2.0, max(0.0, 1.0 - s / count)) for s in cos_sum]  # clamp float rounding just outside [0, 2]


# ---------------------------------------------------------------- which layers to keep


def check_depth(teacher_layers: int, student_layers: int) -> None:
    if not 1 <= student_layers < teacher_layers:
        raise ValueError(f"The student must have between 1 and {teacher_layers - 1} layers (the teacher has "
                         f"{teacher_layers}); got {student_layers}.")


def keep_by_influence(influence: Sequence[float], keep: int) -> list[int]:
    """The `keep` layers with the highest influence, in order; the first and the last layer are always kept.

    ShortGPT and Gromov et al. both find the first block (which turns token embeddings into the model's working
    space) and the last (which shapes the output distribution) essential even where their measured influence is
    not the largest, so only the layers between them compete. With a single layer to keep, the one of the two with
    the higher influence stays. Ties go to the earlier layer, so the choice is deterministic.
    """
    n = len(influence)
    check_depth(n, keep)
    ends = [0, n - 1]
    if keep == 1:
        return [max(ends, key=lambda i: (influence[i], -i))]
    middle = sorted(range(1, n - 1), key=lambda i: (-influence[i], i))[: keep - 2]
    return sorted(ends + middle)


def pick_layers(teacher_layers: int, student_layers: int, how: LayerChoice = "spread",
                influence: list[float] | None = None) -> list[int]:
    """Which teacher layers the student keeps, in order.

    spread: evenly spaced, first and last kept (the last layer shapes the output the most);
    every-other: 0, 2, 4 ... as DistilBERT did; first: the bottom of the stack;
    redundancy: the layers that change the hidden state most on calibration text (`influence`, see depth.py).
    """
    check_depth(teacher_layers, student_layers)
    if how == "redundancy":
        if influence is None or len(influence) != teacher_layers:
            raise ValueError(f"Choosing layers by redundancy needs one measured score per layer ({teacher_layers}).")
        return keep_by_influence(influence, student_layers)
    if how == "first":
        return list(range(student_layers))
    if how == "every-other":
        kept = list(range(0, teacher_layers, 2))[:student_layers]
        if len(kept) < student_layers:
            raise ValueError(f"every-other gives at most {len(kept)} layers of {teacher_layers}; pick 'spread'.")
        return kept
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def make_student(teacher: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A copy of the teacher holding only the layers in `keep`; embeddings, final norm and head are copied too."""
    return keep_layers(copy.deepcopy(teacher), keep)


def keep_layers(student: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """`student` itself, cut down to the decoder layers in `keep` (in place: the dropped layers are freed)."""
    layers = decoder_layers(student)
    student.model.layers = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(student.model.layers):
        for module in layer.modules():  # the KV cache is indexed by each attention module's layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = student.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        config.layer_types = [layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return student.eval()



# ---------------------------------------------------------------- cached scores (I/O)


def scores_path(checkpoint: Path, text_sha256: str, tokens: int) -> Path:
    return cache_path("depth", "scores", (_checkpoint_fingerprint(checkpoint), text_sha256, tokens, SCORES_VERSION))


def layer_scores(checkpoint: Path, tokens: int = CALIBRATION_TOKENS, text: Path = CALIBRATION_TEXT,
                 model: torch.nn.Module | None = None) -> LayerScores:
    """Every decoder layer's block influence on the first `tokens` tokens of the calibration text; cached. `model`,
    when given, is the checkpoint's full model already loaded (saves loading a second copy)."""
    if tokens < 64:
        raise ValueError(f"Scoring layers needs at least 64 calibration tokens, got {tokens}.")
    text_sha = hashlib.sha256(Path(text).read_bytes()).hexdigest()
    path = scores_path(checkpoint, text_sha, tokens)
    if (cached := read_cached(path, LayerScores)) is not None:
        return cached
    tokenizer = models.load_tokenizer(checkpoint)
    ids = calibration_ids(tokenizer, tokens, Path(text))
    model = model if model is not None else models.load_model(checkpoint)
    t0 = time.perf_counter()
    influence = block_influence(model, ids)
    scores = LayerScores(influence, int(ids.numel()), text_sha, str(checkpoint), time.perf_counter() - t0)
    write_atomically(path, scores)
    return scores


# ---------------------------------------------------------------- the registry's entries: pruned, not trained

PRUNE_CHOICES: tuple[str, ...] = ("redundancy", "spread")  # the two a depth sweep sets side by side
PRUNE_KEY = re.compile(r"depth-(\d+)-(redundancy|spread)")
PRUNE_EXPLANATION = (
    "The model with only {layers} of its decoder layers and no training at all: {how}. Fewer layers means fewer "
    "bytes read and fewer multiplies per token, so decoding is faster; what it costs is measured like any variant."
)
PRUNE_HOW = {
    "redundancy": "the layers kept are those that change the hidden state most on calibration text, the ones "
                  "dropped pass their input on almost unchanged (ShortGPT's Block Influence)",
    "spread": "the layers kept are evenly spaced through the stack, the first and last included (the seed's recipe "
              "for a distilled student, here before any training)",
}
PRUNE_SURPRISE = (
    "Which layers go matters more than how many: at the same depth, dropping the layers measured as redundant "
    "loses far less than dropping evenly spaced ones. Decoding speeds up by less than the share of layers removed, "
    "because the token table and output head are read for every token whatever the depth, and in a small "
    "model they are a large share of its bytes. Training the pruned model against the original (Distill) wins back part of the loss."
)


@dataclass(frozen=True)
class PruneConfig:
    layers: int  # decoder layers kept
    choice: str  # "redundancy" or "spread"

    def __post_init__(self) -> None:
        if self.layers < 1:
            raise ValueError(f"A pruned model keeps at least 1 layer, got {self.layers}.")
        if self.choice not in PRUNE_CHOICES:
            raise ValueError(f"Layers are chosen by {' or '.join(PRUNE_CHOICES)}, not {self.choice!r}.")


def prune_key(layers: int, choice: str) -> str:
    return f"depth-{layers}-{choice}"


def build_pruned(checkpoint: Path, config: PruneConfig, device: str = "cpu") -> torch.nn.Module:
    """Technique.build: the fp32 model cut to `config.layers` layers; a depth outside 1..L-1 is refused by name."""
    model = models.load_model(checkpoint, torch.float32, device)
    n = len(decoder_layers(model))
    check_depth(n, config.layers)
    influence = layer_scores(Path(checkpoint), model=model).influence if config.choice == "redundancy" else None
    keep = pick_layers(n, config.layers, config.choice, influence)  # type: ignore[arg-type]
    model = keep_layers(model, keep)
    model.lab_pruning = {"kept_layers": keep, "teacher_layers": n, "layer_choice": config.choice, "trained": False}
    return model


def pruned_facts(model: torch.nn.Module) -> dict[str, Any]:
    return dict(getattr(model, "lab_pruning", {}))


def prune_technique(layers: int, choice: str) -> Technique:
    config = PruneConfig(layers, choice)
    by = "by measured redundancy" if choice == "redundancy" else "evenly spread"
    return Technique(prune_key(layers, choice), f"{layers} layers {by}, untrained", "depth pruning", config,
                     PRUNE_EXPLANATION.format(layers=layers, how=PRUNE_HOW[choice]), PRUNE_SURPRISE,
                     build_pruned, lambda _config, _device: None, facts=pruned_facts)


def _resolve(key: str) -> Technique | None:
    match = PRUNE_KEY.fullmatch(key)
    return prune_technique(int(match[1]), match[2]) if match else None


register_resolver(_resolve)
