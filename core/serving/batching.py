"""Correctness under batching: greedy answers of one server, each request alone and inside a batch, with the
differences judged on the same weights run in process (a near-tie of the top two logits, or a batching bug)."""

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


def check_batching(engine: Engine, model, tokenizer, prompts: Sequence[str], concurrency: Sequence[int],
                   new_tokens: int, tolerance: float = NEAR_TIE_LOGIT_GAP, timeout_s: float = REQUEST_TIMEOUT_S,
                   should_stop: ShouldStop = lambda: False) -> list[BatchingCheck]:
    """Each prompt alone, then in batches of each concurrency, on one server; differences judged on `model`.

    `model` is the same weights run in process (greedy, one sequence) and is the judge of near-ties: where a
    batched answer and the answer alone part ways, the earlier parting from the model's own greedy tokens must
    be a token whose top two logits lie within `tolerance`.
    """
    concurrency = check_concurrency(concurrency)
    if len(prompts) < max(concurrency):
        raise ServingError(f"need {max(concurrency)} prompts for concurrency {max(concurrency)}, got {len(prompts)}")
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    references = [greedy_ids(model, ids, new_tokens) for ids in prompt_ids]
    out = []
    with Server(engine, should_stop=should_stop) as server:
        alone = [run_load(server.base_url, [engine.body(p, new_tokens)], timeout_s, should_stop)[0]
                 for p in prompts[:max(concurrency)]]
        for c in concurrency:
            batch = run_load(server.base_url, [engine.body(p, new_tokens) for p in prompts[:c]], timeout_s, should_stop)
            same = ties = bad = 0
            details = []
            for i, (a, b) in enumerate(zip(alone, batch)):
                if a.error or b.error:
                    raise ServingError(f"a request failed while checking batching: {a.error or b.error}")
                if a.text == b.text:
                    same += 1
                    continue
                ks = [k for k in (first_divergence(references[i], t.text, tokenizer) for t in (a, b)) if k is not None]
                k = min(ks) if ks else 0
                gap = top2_gap(model, prompt_ids[i], references[i][:k])
                if gap <= tolerance:
                    ties += 1
                else:
                    bad += 1
                details.append(f"request {i}: first differs at token {k}, top-2 logit gap {gap:.2e}")
            out.append(BatchingCheck(engine.technique, engine.runtime, c, len(batch), same, ties, bad, tolerance,
                                     tuple(details)))
    return out
