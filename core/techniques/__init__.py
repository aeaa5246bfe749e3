"""Techniques: what is done to a model. Each file builds its variants' artifacts and registers its entries.

    techniques.get("nf4").make(checkpoint)        # a torch model, for a transformers runtime
    techniques.get("gguf-q4_k_m").artifact(...)   # a GGUF file, for llama.cpp
    techniques.get("depth-20-redundancy")         # 20 layers kept by measured redundancy, untrained

Pages, the CLI and the experiments iterate the registry (`TECHNIQUES`, `get`) and never branch on a key.
"""

from core.techniques.registry import (TECHNIQUES, Technique, defaults_for, get, keys_of_family, parse_keys, reference_key,
                                      register)

# Importing each family registers its entries (order: the order pages list them in).
from core.techniques import quantization, gguf, moe, depth, sparsity  # noqa: E402,F401  isort: skip

REFERENCE = reference_key()

__all__ = ["REFERENCE", "TECHNIQUES", "Technique", "defaults_for", "get", "gguf_of_saved", "keys_of_family", "moe_technique", "parse_keys",
           "register", "saved_checkpoints"]

from core.models.saved import saved_checkpoints  # noqa: E402
from core.techniques.gguf import gguf_of_saved  # noqa: E402
from core.techniques.moe import moe_technique  # noqa: E402
