"""The importance matrix: how strongly each input column of each linear layer is used, measured on
calibration text (never the evaluation text), so the quantizer rounds the weights that matter more carefully.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import AutoConfig

from core.measure.evaluate import token_windows, tokenize_text
from core.models import load_model, load_tokenizer
from core.paths import ASSETS


# ---------------------------------------------------------------- importance matrix from calibration text


def importance_matrix(checkpoint: Path, text: str, max_tokens: int = 4096, window: int = 512) -> dict[str, np.ndarray]:
    """Mean squared input activation per input column of every linear layer, on calibration text.

    The quantizer then rounds the weights that meet large activations more carefully. The text must be
    calibration text, never the evaluation text, or the quality measured afterwards flatters the variant.
    """


    config = AutoConfig.from_pretrained(checkpoint)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(_module, inputs, _output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])  # [tokens, in]
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name.startswith("model.layers."):
            gguf_name = names.get_name(module_name + ".weight", try_suffixes=(".weight",))
            if gguf_name:
                handles.append(module.register_forward_hook(hook(gguf_name)))
    try:
        with torch.inference_mode():
            for w in token_windows(tokenize_text(tokenizer, text), window, max_tokens):
                model(input_ids=w)
    finally:
        for h in handles:
            h.remove()
    return {name: (sums[name] / counts[name]).numpy() for name in sums}


def calibration_text_path() -> Path:
    return ASSETS / "eval" / "moe_calibration.txt"  # calibration text, kept apart from the evaluation prose
