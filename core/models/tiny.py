"""The tiny random model the tests build in code: real code paths, random weights, milliseconds to
load.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models as tokenizer_models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


# ---------------------------------------------------------------- tiny test model


def build_tiny_model(seed: int = 0, hidden_size: int = 64, intermediate_size: int = 128):
    """A 2-layer Llama with a byte-level tokenizer: real code paths, random weights, loads in milliseconds."""
    byte_vocab = {ch: i for i, ch in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    specials = ["<|endoftext|>", "<|pad|>"]
    for s in specials:
        byte_vocab[s] = len(byte_vocab)
    core_tok = Tokenizer(tokenizer_models.BPE(vocab=byte_vocab, merges=[]))
    core_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core_tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core_tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
    config = LlamaConfig(
        vocab_size=len(byte_vocab), hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        eos_token_id=byte_vocab["<|endoftext|>"], pad_token_id=byte_vocab["<|pad|>"], bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
