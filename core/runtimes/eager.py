"""The eager transformers primitives: one greedy decode step loop and the log-prob forwards every runtime matches.

The transformers runtimes call these; llama.cpp's runner reproduces their results through its own API, and the
tests hold the two against each other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from core.measure.benchmark import Clock, synchronize
from core.measure.evaluate import MCItem, continuation_pairs


@torch.inference_mode()
def stream_tokens(model, input_ids: torch.Tensor, max_new_tokens: int, device: str = "cpu",
                  clock: Clock = time.perf_counter) -> Iterator[tuple[int, float]]:
    """Greedy decode, one token at a time: yields (token_id, own_s) after each step (EOS ignored).

    own_s is this generation's own compute time since it started: the first value is the time to first
    token (prefill), each later one adds one decode step. Time the caller spends between steps (drawing,
    or running another variant's step in a round-robin) is not counted, so interleaved streams each
    keep honest timings.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    own_s = 0.0
    synchronize(device)
    t0 = clock()
    out = model(input_ids=input_ids, use_cache=True)
    next_id = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    token = int(next_id)  # int() waits for the value, so each step is complete when timed
    synchronize(device)
    own_s += clock() - t0
    yield token, own_s
    cache = out.cache
    for _ in range(max_new_tokens - 1):
        t0 = clock()
        out = model(input_ids=next_id, cache=cache, use_cache=True)
        cache = out.cache
        next_id = out.logits[:, -1].argmax(-1, keepdim=True)
        token = int(next_id)
        synchronize(device)
        own_s += clock() - t0
        yield token, own_s


@torch.inference_mode()
def window_logprobs(model, window: torch.Tensor, device: str = "cpu") -> torch.Tensor:
    """[W, V] float32 log-probabilities of the next token at each position."""
    logits = model(input_ids=window.to(device)).logits[0].float()
    return F.log_softmax(logits, dim=-1).cpu()


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@torch.inference_mode()
def batch_choice_logprobs(model, tokenizer, items: list[MCItem], device: str = "cpu") -> list[list[float]]:
    """Summed log-probability of every choice's tokens after its question, for a batch of items.

    Two forward passes per batch: the questions (left-padded) fill a KV cache, which is then copied
    once per choice, and every choice's continuation is read in one right-padded batch. A decode-sized
    forward costs about as much as reading all the weights once, so batching items is what keeps
    multiple choice cheap; sharing each question's cache keeps the work to question + choices.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pairs = [continuation_pairs(tokenizer, it) for it in items]
    ctx_ids, ctx_mask = _left_pad([p[0][0] for p in pairs], pad)  # [B, Lc]
    ctx_pos = (ctx_mask.cumsum(-1) - 1).clamp_min(0)  # left padding: real tokens start at position 0
    prefix = model(input_ids=ctx_ids.to(device), attention_mask=ctx_mask.to(device), position_ids=ctx_pos.to(device),
                   use_cache=True, logits_to_keep=1)
    first = F.log_softmax(prefix.logits[:, -1].float(), dim=-1).cpu()  # [B, V]: predicts each first choice token
    owner = [i for i, p in enumerate(pairs) for _ in p]  # continuation row -> item row
    conts = [cont for p in pairs for _, cont in p]
    cache = prefix.cache
    cache.batch_select_indices(torch.tensor(owner, device=device))
    width = max(len(c) for c in conts)
    ids = torch.tensor([c + [pad] * (width - len(c)) for c in conts])  # [R, Lk], right-padded
    mask = torch.cat([ctx_mask[owner], torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in conts])], dim=1)
    pos = ctx_mask[owner].sum(-1, keepdim=True) + torch.arange(width)  # continue after each question
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   cache=cache).logits.float().cpu()
    lp = F.log_softmax(logits, dim=-1)  # [R, Lk, V]: position j predicts continuation token j + 1
    scores: list[list[float]] = [[] for _ in items]
    for row, cont in enumerate(conts):
        rest = lp[row, : len(cont) - 1].gather(1, torch.tensor(cont[1:])[:, None]).sum().item() if len(cont) > 1 else 0.0
        scores[owner[row]].append(first[owner[row], cont[0]].item() + rest)
    return scores


def choice_logprobs(model, tokenizer, item: MCItem, device: str = "cpu") -> list[float]:
    return batch_choice_logprobs(model, tokenizer, [item], device)[0]


