"""Export a lab checkpoint (transformers safetensors, llama architecture) to an F32 GGUF file.

Written with the `gguf` library's writer and tensor-name map; llama.cpp's quantizer (quantizer.py) starts from this file.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from core import models
from core.techniques.gguf.cache import atomic_file

ProgressFn = Callable[[str], None]
# Architectures this exporter writes. llama.cpp itself knows many more, but each needs its own tensor layout
# and metadata; SmolLM, Llama and the students the lab distils from them are all "llama".
EXPORTABLE = ("llama",)
EXPORTER_VERSION = 2  # part of every cache folder's name: files written by an older exporter are never reused


class GGUFError(ValueError):
    """A GGUF variant that cannot be built or loaded, with what to do about it."""


def _permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF Llama stores each head's rotary pairs as two halves; llama.cpp's "llama" rope expects them interleaved.

    [out, in] with out = heads * head_dim: split each head's rows into (2, head_dim/2), swap to (head_dim/2, 2).
    """
    out, cols = weight.shape
    return weight.reshape(heads, 2, out // heads // 2, cols).swapaxes(1, 2).reshape(out, cols)


def check_exportable(config) -> None:
    if config.model_type not in EXPORTABLE:
        raise GGUFError(
            f"The lab cannot convert a {config.model_type!r} model to GGUF: its exporter writes "
            f"{', '.join(EXPORTABLE)}-architecture models (SmolLM, Llama and students distilled from them). "
            "Measure this model on the transformers runtimes instead.")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GGUFError("This llama model has bias terms, which the lab's GGUF exporter does not write.")


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_metadata(writer, config, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(0)  # LLAMA_FTYPE_ALL_F32 (llama.h)


def _write_vocab(writer, checkpoint: Path, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it: GPT-2 style byte-level BPE from the checkpoint's tokenizer.json."""
    try:
        vocab = gguf.vocab.BpeVocab(checkpoint)
    except FileNotFoundError:
        raise GGUFError("The GGUF exporter needs a byte-level BPE tokenizer (tokenizer.json), which this "
                        "checkpoint does not have.") from None
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text if isinstance(text, (bytes, bytearray)) else str(text).encode())
        types.append(kind)
    tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), vocab_size)]  # the table may be padded wider
    types += [gguf.TokenType.UNUSED] * (vocab_size - len(types))
    added = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    for entry in added:  # special tokens (chat markers, end of text) are control tokens to llama.cpp
        if entry.get("special") and 0 <= entry["id"] < vocab_size:
            types[entry["id"]] = gguf.TokenType.CONTROL
    writer.add_tokenizer_model("gpt2")
    # The pre-tokenizer (how text is split before BPE) matters only when llama.cpp tokenizes text itself, as its
    # server does; the lab's own runner feeds it token ids. A vocabulary the lab ships as GGUF keeps that file's
    # name for it (SmolLM2: "smollm"), anything else gets llama.cpp's generic GPT-2 split.
    writer.add_tokenizer_pre(_known_pre_tokenizer(tuple(tokens)) or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.vocab.SpecialVocab(checkpoint, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        # A byte-level vocabulary with no merges (the tiny test model's) is valid BPE, but llama.cpp refuses a
        # file without the merges key and the writer refuses an empty array. One merge of two control tokens is
        # inert: BPE merges symbols built from the text's characters, which never form a control token.
        controls = [t for t, k in zip(tokens, types) if k == gguf.TokenType.CONTROL]
        if len(controls) < 2:
            raise GGUFError("This tokenizer has no BPE merges, which llama.cpp cannot load.")
        writer.add_token_merges([controls[0].decode() + " " + controls[1].decode()])
    special.load_merges = False  # written above when absent; no warning about it
    special.add_to_gguf(writer, quiet=True)


def _known_pre_tokenizer(tokens: tuple[bytes, ...]) -> str | None:
    """The pre-tokenizer name of a bundled GGUF file whose vocabulary is exactly `tokens`."""
    for spec in models.BUNDLED.values():
        if spec.source != "bundled-gguf" or spec.chunked:
            continue
        path = models.gguf_path(spec)
        if path is not None and (found := _vocab_of(str(path))) and found[0] == tokens:
            return found[1]
    return None


@lru_cache(maxsize=4)
def _vocab_of(path: str) -> tuple[tuple[bytes, ...], str] | None:
    fields = gguf.GGUFReader(path).fields
    if "tokenizer.ggml.tokens" not in fields or "tokenizer.ggml.pre" not in fields:
        return None
    listed = fields["tokenizer.ggml.tokens"]
    tokens = tuple(bytes(listed.parts[i]) for i in listed.data)
    return tokens, str(fields["tokenizer.ggml.pre"].contents())


def export_f32(checkpoint: Path, target: Path, progress: ProgressFn | None = None) -> Path:
    """Write the checkpoint's weights, unchanged, as an F32 GGUF file (atomically)."""
    say = progress or (lambda _m: None)
    config = AutoConfig.from_pretrained(checkpoint)
    check_exportable(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(checkpoint).glob("*.safetensors")):
        state.update(load_file(shard))
    if not state:
        raise GGUFError(f"{Path(checkpoint).name} holds no safetensors weights to export.")
    say(f"Exporting {Path(checkpoint).name} to an F32 GGUF file")

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch="llama")
        _write_metadata(writer, config, Path(checkpoint).name)
        _write_vocab(writer, Path(checkpoint), config.vocab_size)
        for hf_name, tensor in state.items():
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # llama.cpp reads the output projection from token_embd when output.weight is absent
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GGUFError(f"The GGUF exporter does not know where tensor {hf_name!r} goes.")
            data = tensor.to(torch.float32).numpy()
            if hf_name.endswith("q_proj.weight"):
                data = _permute_for_rope(data, config.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                data = _permute_for_rope(data, config.num_key_value_heads)
            writer.add_tensor(gguf_name, np.ascontiguousarray(data))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_file(target, write)


