"""Correctness under batching: greedy answers of one server, each request alone and inside a batch, with every
difference judged: a near-tie of the top two tokens (the server's own log-probs, or the same weights run in
process), or a difference no near-tie explains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.runtimes.eager import stream_tokens
from core.serving.client import run_load
from core.serving.engines import Engine
from core.serving.limits import NEAR_TIE_LOGIT_GAP, REQUEST_TIMEOUT_S, ServingError, ShouldStop, check_concurrency
from core.serving.server import Server


@dataclass(frozen=True)
class BatchingCheck:
    """Greedy answers of one engine, each request alone and inside a batch of `concurrency`."""
    technique: str
    runtime: str
    concurrency: int
    requests: int
    same_as_alone: int  # batched text equal to the same prompt's text alone
    near_ties: int  # differed, first at a token whose top-2 logits were within `tolerance`
    mismatches: int  # differed at a token that was no near tie: a batching bug (padding, masking, cache)
    tolerance: float
    details: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.mismatches == 0


def greedy_ids(model, prompt_ids: list[int], new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt_ids], device=model.device)
    return [t for t, _ in stream_tokens(model, ids, new_tokens, str(model.device))]


def first_divergence(reference: list[int], text: str, tokenizer) -> int | None:
    """First position where `text` stops following the reference tokens; None when it follows them all."""
    for k in range(len(reference)):
        head = tokenizer.decode(reference[:k + 1], skip_special_tokens=True)
        if "\ufffd" in head[-1:]:  # a character split across tokens: judge it when it is whole
            continue
        if not text.startswith(head):
            return k
    return None if text == tokenizer.decode(reference, skip_special_tokens=True) else len(reference)


def top2_gap(model, prompt_ids: list[int], generated: list[int]) -> float:
    """Top-1 minus top-2 logit after prompt + generated: how close greedy was to picking another token."""
    ids = torch.tensor([prompt_ids + generated], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def _judged_in_process(model, tokenizer, prompt_ids: list[int], reference: list[int], a, b) -> tuple[int, float, str]:
    """(first differing position, top-2 logit gap there, in words) with the weights run in process as the judge."""
    ks = [k for k in (first_divergence(reference, t.text, tokenizer) for t in (a, b)) if k is not None]
    k = min(ks) if ks else 0
    gap = top2_gap(model, prompt_ids, reference[:k])
    return k, gap, f"first differs at token {k}, top-2 logit gap {gap:.2e} (same weights run in process)"


def _judged_by_server(tokenizer, a, b) -> tuple[int, float, str]:
    """(first differing position, top-2 gap, in words) from the server's own log-probs of both answers.

    A flip between two runs needs both runs' top two tokens within the numerical difference of the two paths,
    so the gap that counts is the larger of the two runs' gaps at that position."""
    ids_a, ids_b = [t for t, _ in a.token_gaps], [t for t, _ in b.token_gaps]
    k = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
    if k >= min(len(ids_a), len(ids_b)):
        return k, float("inf"), "same tokens, different text (the server's detokenizer)"
    gap_a, gap_b = a.token_gaps[k][1], b.token_gaps[k][1]
    gap = max(gap_a, gap_b)
    word_a, word_b = repr(tokenizer.decode([ids_a[k]])), repr(tokenizer.decode([ids_b[k]]))
    return k, gap, (f"first differs at token {k}: {word_a} alone, {word_b} batched; top-2 log-prob "
                    f"gap {gap_a:.2e} alone, {gap_b:.2e} batched (the server's own log-probs)")


def check_batching(engine: Engine, model, tokenizer, prompts: Sequence[str], concurrency: Sequence[int],
                   new_tokens: int, tolerance: float = NEAR_TIE_LOGIT_GAP, timeout_s: float = REQUEST_TIMEOUT_S,
                   should_stop: ShouldStop = lambda: False) -> list[BatchingCheck]:
    """Each prompt alone, then in batches of each concurrency, on one server; every difference judged.

    An engine that reports its own log-probs (llama-server) is judged by them: the first token where the batched
    answer leaves the answer alone, and the gap between the top two tokens there in both runs. Otherwise `model`
    is the same weights run in process (greedy, one sequence) and judges: where a batched answer and the answer
    alone part ways, the earlier parting from the model's own greedy tokens must be a token whose top two logits
    lie within `tolerance`. A difference is a near-tie only when the gap proves it.
    """
    concurrency = check_concurrency(concurrency)
    if len(prompts) < max(concurrency):
        raise ServingError(f"need {max(concurrency)} prompts for concurrency {max(concurrency)}, got {len(prompts)}")
    if model is None and not engine.token_logprobs:
        raise ServingError(f"the {engine.server} does not report log-probs: pass the same weights run in process")
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    references = [greedy_ids(model, ids, new_tokens) for ids in prompt_ids] if not engine.token_logprobs else []

    def body(prompt: str) -> dict:
        return engine.body(prompt, new_tokens) | ({"logprobs": 2} if engine.token_logprobs else {})

    out = []
    with Server(engine, should_stop=should_stop) as server:
        alone = [run_load(server.base_url, [body(p)], timeout_s, should_stop)[0] for p in prompts[:max(concurrency)]]
        for c in concurrency:
            batch = run_load(server.base_url, [body(p) for p in prompts[:c]], timeout_s, should_stop)
            same = ties = bad = 0
            details = []
            for i, (a, b) in enumerate(zip(alone, batch)):
                if a.error or b.error:
                    raise ServingError(f"a request failed while checking batching: {a.error or b.error}")
                if a.text == b.text:
                    same += 1
                    continue
                if a.token_gaps and b.token_gaps:
                    _k, gap, words = _judged_by_server(tokenizer, a, b)
                else:
                    _k, gap, words = _judged_in_process(model, tokenizer, prompt_ids[i], references[i], a, b)
                tie = gap <= tolerance
                ties, bad = ties + tie, bad + (not tie)
                details.append(f"request {i}: {words}: " + ("a near-tie" if tie else f"not a near-tie (> {tolerance})"))
            out.append(BatchingCheck(engine.technique, engine.runtime, c, len(batch), same, ties, bad, tolerance,
                                     tuple(details)))
    return out
