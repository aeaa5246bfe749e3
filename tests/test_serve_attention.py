"""The per-sequence CPU attention gives what transformers' own masked SDPA gives on a packed continuous batch."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.generation.continuous_batching.utils import build_attention_mask
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from core.serving import attention as serve_attention

HEADS, KV_HEADS, DIM = 6, 2, 16


def _layer(**attrs):
    return types.SimpleNamespace(num_key_value_groups=HEADS // KV_HEADS, is_causal=True, **attrs)


def _packed(q_lens, k_lens, seed=0):
    """A packed step: per request q_len new tokens over k_len cached-plus-new keys, as continuous batching builds."""
    g = torch.Generator().manual_seed(seed)
    cu_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()])
    cu_k = torch.tensor([0, *torch.tensor(k_lens).cumsum(0).tolist()])
    query = torch.randn(1, HEADS, int(cu_q[-1]), DIM, generator=g)
    key = torch.randn(1, KV_HEADS, int(cu_k[-1]), DIM, generator=g)
    value = torch.randn(1, KV_HEADS, int(cu_k[-1]), DIM, generator=g)
    return query, key, value, cu_q, cu_k


def _transformers_reference(layer, query, key, value, cu_q, cu_k):
    mask = torch.empty(1, 1, query.shape[2], key.shape[2])
    mask.fill_(torch.finfo(mask.dtype).min)
    build_attention_mask(mask, cu_q.tolist(), cu_k.tolist())
    out, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=DIM ** -0.5)
    return out


@pytest.mark.parametrize("q_lens, k_lens", [
    ([1] * 5, [7, 12, 3, 30, 1]),          # five decode steps over caches of different lengths
    ([9, 4, 11], [9, 4, 11]),              # three whole prompts, nothing cached
    ([1, 6, 1], [20, 14, 5]),              # decodes mixed with a chunk of a prompt whose start is cached
])
def test_per_sequence_attention_equals_transformers_masked_sdpa(q_lens, k_lens):
    layer = _layer()
    query, key, value, cu_q, cu_k = _packed(q_lens, k_lens)
    expected = _transformers_reference(layer, query, key, value, cu_q, cu_k)
    got, weights = serve_attention.attention_forward(layer, query, key, value, None, scaling=DIM ** -0.5,
                                                     cu_seq_lens_q=cu_q, cu_seq_lens_k={"full_attention": cu_k})
    assert weights is None
    assert got.shape == expected.shape == (1, sum(q_lens), HEADS, DIM)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_request_never_sees_another_requests_keys():
    layer = _layer()
    query, key, value, cu_q, cu_k = _packed([1, 1], [4, 4])
    first = serve_attention.attention_forward(layer, query, key, value, None, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k)[0]
    value[:, :, 4:] += 100.0  # change only the second request's values
    again = serve_attention.attention_forward(layer, query, key, value, None, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k)[0]
    torch.testing.assert_close(again[:, :1], first[:, :1])
    assert not torch.allclose(again[:, 1:], first[:, 1:])


@pytest.mark.parametrize("layer, extra", [
    (_layer(sliding_window=4), {}),                 # a sliding-window layer
    (_layer(), {"softcap": 30.0}),                  # soft-capped scores
    (types.SimpleNamespace(num_key_value_groups=3, is_causal=False), {}),  # an encoder layer
])
def test_layers_it_does_not_cover_are_left_to_transformers(layer, extra):
    query, key, value, cu_q, cu_k = _packed([3], [3])
    assert not serve_attention.covers(layer, query, {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k, **extra})


def test_unpacked_calls_are_left_to_transformers():
    layer = _layer()
    query, key, value, _, _ = _packed([5], [5])
    assert not serve_attention.covers(layer, query, {})
    got, _ = serve_attention.attention_forward(layer, query, key, value, None)
    expected, _ = sdpa_attention_forward(layer, query, key, value, None)
    torch.testing.assert_close(got, expected)
