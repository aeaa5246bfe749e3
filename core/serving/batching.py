"""Correctness under batching: greedy answers of one server, each request alone and inside a batch, with every
difference judged: a near-tie of the top two tokens (the server's own log-probs, or the same weights run in
process), or a difference no near-tie explains."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.models import load_model, load_tokenizer
from core.runtimes.eager import stream_tokens
from core.serving import bench
from core.serving.client import run_load
from core.serving.engines import Engine
from core.serving.limits import NEAR_TIE_LOGIT_GAP, REQUEST_TIMEOUT_S, ServingError, ShouldStop, check_concurrency
from core.serving.prompts import corpus_token_ids, prompts_from_text
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
    mismatches: int  # differed where neither a near tie nor the measured drift explains it: a batching bug
    tolerance: float
    details: tuple[str, ...] = ()
    drift_explained: int = 0  # no near tie, but the batched run's log-probs moved by more than the gap there

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


def _judged_in_process(model, tokenizer, prompt_ids: list[int], reference: list[int], a,
                       b) -> tuple[float, float, float, str]:
    """(top-2 logit gap at the first differing position, the same gap, drift (NaN: not measured), in words), with
    the weights run in process as the judge of both runs."""
    ks = [k for k in (first_divergence(reference, t.text, tokenizer) for t in (a, b)) if k is not None]
    k = min(ks) if ks else 0
    gap = top2_gap(model, prompt_ids, reference[:k])
    return gap, gap, float("nan"), f"first differs at token {k}, top-2 logit gap {gap:.2e} (same weights run in process)"


def _judged_by_server(tokenizer, a, b) -> tuple[float, float, float, str]:
    """(top-2 gap alone, top-2 gap batched, drift, in words) at the first differing position, from the server's own
    log-probs of both answers. Drift: how far the two runs' log-probs of the same tokens moved apart up to there,
    the size of the batched path's numerical difference."""
    ids_a, ids_b = [t.first_id for t in a.token_tops], [t.first_id for t in b.token_tops]
    k = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), min(len(ids_a), len(ids_b)))
    if k >= min(len(ids_a), len(ids_b)):
        return float("inf"), float("inf"), float("nan"), "same tokens, different text (the server's detokenizer)"
    top_a, top_b = a.token_tops[k], b.token_tops[k]
    drifts = [abs(x.first_logprob - y.first_logprob) for x, y in zip(a.token_tops[:k], b.token_tops[:k])]
    there = top_b.logprob_of(top_a.first_id)  # the alone run's token, as the batched run scored it
    if there is not None:
        drifts.append(abs(top_a.first_logprob - there))
    drift = max(drifts) if drifts else float("nan")
    moved = f"; the same tokens' log-probs differ by up to {drift:.2e} between the runs" if drifts else ""
    word_a, word_b = repr(tokenizer.decode([ids_a[k]])), repr(tokenizer.decode([ids_b[k]]))
    return top_a.gap, top_b.gap, drift, (f"first differs at token {k}: {word_a} alone, {word_b} batched; top-2 log-prob gap "
                        f"{top_a.gap:.2e} alone, {top_b.gap:.2e} batched{moved} (the server's own log-probs)")


def _verdict(gap_alone: float, gap_batched: float, drift: float, tolerance: float) -> tuple[str, str]:
    """'tie', 'drift' or 'bug', and why. A near-tie needs both runs' top two within `tolerance`. A flip moves the
    top-two difference by gap alone + gap batched; two tokens that each moved by up to `drift` explain it when that
    sum is at most 2 x drift (the batched kernels compute differently). Anything else is unexplained."""
    if max(gap_alone, gap_batched) <= tolerance:
        return "tie", f"a near-tie (both gaps <= {tolerance})"
    if not math.isnan(drift) and gap_alone + gap_batched <= 2 * drift:  # NaN: drift was not measured
        return "drift", (f"not a near-tie, but within how far the batched run moved the same tokens' log-probs "
                         f"(the gaps sum to {gap_alone + gap_batched:.2e} <= 2 x {drift:.2e}): the batched kernels "
                         "compute differently")
    return "bug", f"not a near-tie (> {tolerance}) and more than the measured drift explains"


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
            verdicts: list[str] = []
            details = []
            for i, (a, b) in enumerate(zip(alone, batch)):
                if a.error or b.error:
                    raise ServingError(f"a request failed while checking batching: {a.error or b.error}")
                if a.text == b.text:
                    verdicts.append("same")
                    continue
                if a.token_tops and b.token_tops:
                    gap_a, gap_b, drift, words = _judged_by_server(tokenizer, a, b)
                else:
                    gap_a, gap_b, drift, words = _judged_in_process(model, tokenizer, prompt_ids[i], references[i],
                                                                    a, b)
                verdict, why = _verdict(gap_a, gap_b, drift, tolerance)
                verdicts.append(verdict)
                details.append(f"request {i}: {words}: {why}")
            out.append(BatchingCheck(engine.technique, engine.runtime, c, len(batch), verdicts.count("same"),
                                     verdicts.count("tie"), verdicts.count("bug"), tolerance, tuple(details),
                                     verdicts.count("drift")))
    return out


def check_variant(model: str, technique: str, concurrency: Sequence[int], new_tokens: int = 24,
                  prompt_tokens: int = 64, threads: int = 2, gguf_files: dict | None = None,
                  should_stop: ShouldStop = lambda: False) -> list[BatchingCheck]:
    """The batching check on the server that serves `technique` (llama-server for GGUF, else transformers serve).

    llama-server is judged by its own log-probs; transformers serve by the checkpoint run in process in the dtype
    it serves (bitsandbytes variants are refused: their in-process weights would not be the served ones)."""
    settings = bench.ServeSettings(concurrency=tuple(concurrency), prompt_tokens=(prompt_tokens,),
                                   new_tokens=new_tokens, threads=threads)
    variant = bench.plan_variants(model, [technique], settings, gguf_files)[0]
    tokenizer = load_tokenizer(variant.checkpoint)
    prompts = prompts_from_text(corpus_token_ids(tokenizer), tokenizer, max(settings.concurrency), prompt_tokens)
    judge = None
    if not variant.engine.token_logprobs:
        if "--quantization" in variant.engine.argv(0):
            raise ServingError(f"{technique!r} is quantized by the server at load; the check needs weights run in "
                               "process that are the served ones: check fp32, bf16, fp16 or a GGUF variant")
        judge = load_model(variant.checkpoint, dtype=getattr(torch, variant.engine.kv_dtype))
    return check_batching(variant.engine, judge, tokenizer, prompts, settings.concurrency, new_tokens,
                          should_stop=should_stop)
