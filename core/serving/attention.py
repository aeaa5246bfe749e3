"""Per-sequence attention for transformers' continuous batching on a CPU, and a launcher for `transformers serve`.

Continuous batching packs every request of a step into one row of tokens. Without a flash-attention kernel (there is
none for CPUs) transformers attends that row with SDPA and a block-diagonal mask over the whole batch's cache: every
query scores every request's keys, and the mask throws most of that work away. At 16 requests that is 16x the
attention work and a repeat of the grouped K/V heads; measured here it capped `transformers serve` at about 3x the
single-request throughput. Attending each request's own slice of the packed row (cu_seq_lens_q / cu_seq_lens_k, the
same boundaries the flash varlen kernels use) costs what a batch of separate requests costs.

`python -m core.serving.attention serve ...` registers this under transformers' "sdpa" name and hands the rest of the
command line to the transformers CLI unchanged, so the server, its scheduler and its paged cache are transformers'
own. Layers it does not cover (sliding windows, soft-capping, attention sinks, non-causal attention) and unpacked
inputs go to transformers' SDPA as before.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

# Keyword arguments whose presence means the layer needs more than plain causal attention: leave it to transformers.
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias")


def _layer_boundaries(cu_seq_lens_k, module) -> torch.Tensor:
    if not isinstance(cu_seq_lens_k, dict):
        return cu_seq_lens_k
    if len(cu_seq_lens_k) == 1:
        return next(iter(cu_seq_lens_k.values()))
    return cu_seq_lens_k[getattr(module, "layer_type", "full_attention")]


def covers(module, query: torch.Tensor, kwargs: dict) -> bool:
    """Whether this layer call is a packed continuous-batching call of plain causal attention."""
    if query.shape[0] != 1 or kwargs.get("cu_seq_lens_q") is None or kwargs.get("cu_seq_lens_k") is None:
        return False
    if not getattr(module, "is_causal", True) or getattr(module, "sliding_window", None):
        return False
    return not any(kwargs.get(k) is not None for k in _UNSUPPORTED_KWARGS)


def _causal_bottom_right(q_len: int, k_len: int, device) -> torch.Tensor:
    # A chunk of a prompt whose earlier part is cached: query i sits at position k_len - q_len + i.
    rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    return rows >= torch.arange(k_len, device=device)[None, :]


def per_sequence_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_q: list[int],
                           cu_k: list[int], scaling: float | None) -> torch.Tensor:
    """query [1, H, Q, D], key/value [1, H_kv, K, D] packed by request -> [1, Q, H, D]."""
    gqa = query.shape[1] != key.shape[1]
    outs = []
    for i in range(len(cu_q) - 1):
        q = query[:, :, cu_q[i]:cu_q[i + 1]]
        k, v = key[:, :, cu_k[i]:cu_k[i + 1]], value[:, :, cu_k[i]:cu_k[i + 1]]
        q_len, k_len = q.shape[2], k.shape[2]
        if q_len == 0:
            continue
        if q_len == 1:  # a decode step sees its whole cache
            o = F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=gqa)
        elif q_len == k_len:  # a whole prompt
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:
            mask = _causal_bottom_right(q_len, k_len, q.device)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        outs.append(o)
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature; falls back to transformers' SDPA for what it does not cover."""
    if not covers(module, query, kwargs) or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    cu_q = kwargs["cu_seq_lens_q"].tolist()
    cu_k = _layer_boundaries(kwargs["cu_seq_lens_k"], module).tolist()
    return per_sequence_attention(query, key, value, cu_q, cu_k, scaling), None


def register() -> None:
    """Install under "sdpa", the name continuous batching accepts on a machine without flash attention."""
    AttentionInterface.register("sdpa", attention_forward)


def main(argv: list[str]) -> None:
    register()
    # Lazily: the CLI app pulls in transformers' whole serve stack, which only the server process needs.
    from transformers.cli.transformers import app

    app(args=argv, prog_name="transformers")


if __name__ == "__main__":
    main(sys.argv[1:])
