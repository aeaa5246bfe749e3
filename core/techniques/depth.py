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

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from core import models
from core.paths import data_dir
from core.techniques.moe.plan import (CALIBRATION_TEXT, CALIBRATION_WINDOW_TOKENS, _checkpoint_fingerprint,
                                      calibration_ids)

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


# ---------------------------------------------------------------- cached scores (I/O)


def scores_path(checkpoint: Path, text_sha256: str, tokens: int) -> Path:
    h = hashlib.sha256()
    for part in (_checkpoint_fingerprint(checkpoint), text_sha256, tokens, SCORES_VERSION):
        h.update(str(part).encode() + b"\0")
    return data_dir() / "depth" / f"scores-{h.hexdigest()[:16]}.json"


def _read_cached(path: Path) -> LayerScores | None:
    try:
        return LayerScores(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent, or left unreadable by something other than our atomic write: measure again


def _write_atomically(path: Path, scores: LayerScores) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: two writers never share a temp file
    tmp.write_text(json.dumps(asdict(scores), indent=1))
    os.replace(tmp, path)  # readers see the old file or the whole new one, never half of it


def layer_scores(checkpoint: Path, tokens: int = CALIBRATION_TOKENS, text: Path = CALIBRATION_TEXT) -> LayerScores:
    """Every decoder layer's block influence on the first `tokens` tokens of the calibration text; cached."""
    if tokens < 64:
        raise ValueError(f"Scoring layers needs at least 64 calibration tokens, got {tokens}.")
    text_sha = hashlib.sha256(Path(text).read_bytes()).hexdigest()
    path = scores_path(checkpoint, text_sha, tokens)
    if (cached := _read_cached(path)) is not None:
        return cached
    tokenizer = models.load_tokenizer(checkpoint)
    ids = calibration_ids(tokenizer, tokens, Path(text))
    model = models.load_model(checkpoint)
    t0 = time.perf_counter()
    influence = block_influence(model, ids)
    scores = LayerScores(influence, int(ids.numel()), text_sha, str(checkpoint), time.perf_counter() - t0)
    _write_atomically(path, scores)
    return scores
