"""Quality measurements: perplexity, divergence from the reference, multiple-choice accuracy.

For small models, task accuracy near chance hides damage, so the lead measurement is how far a
variant's next-token distribution moves from the reference's on the same text (KL divergence and
top-1 agreement), then perplexity, then multiple-choice accuracy with a bootstrap interval.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, get_args

import torch

from core.measure import textfile
from core.measure.textfile import FileProblem
from core.paths import ASSETS

DEFAULT_MC_SET = ASSETS / "eval" / "mc_general.jsonl"
DEFAULT_PPL_TEXT = ASSETS / "eval" / "prose.txt"
Tick = Callable[[float], None]  # progress within one evaluation, 0..1; may raise to cancel


def _noop(_: float) -> None:
    return None


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------- text -> windows


def read_text(path: Path) -> str:
    """Prose for perplexity; a FileProblem names the path as given (an upload's caller renames it)."""
    text = textfile.read(path, textfile.PLAIN)
    if (words := len(text.split())) < 50:
        raise FileProblem(f"holds only {words} words; perplexity needs at least 50 words of prose. Use a longer text.",
                          str(path))
    return text


def token_windows(token_ids: list[int], window: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping windows of `window` tokens ([1, W] each); a final short window is kept if >= 2 tokens."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    ids = token_ids[:max_tokens] if max_tokens else token_ids
    chunks = [ids[i : i + window] for i in range(0, len(ids), window)]
    return [torch.tensor([c]) for c in chunks if len(c) >= 2]


def tokenize_text(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# Which positions of the text are scored, and how:
#   "llama-perplexity": the rule of llama.cpp's `llama-perplexity --kl-divergence`, the field's scoreboard for GGUF
#       quants: the text (after a BOS token when the model wants one) cut into n_ctx-token chunks, the remainder
#       dropped, each chunk starting with BOS, and only the second half of each chunk scored (positions n_ctx/2 ..
#       n_ctx-2, each predicting the next token of the text), so every scored prediction has at least n_ctx/2
#       tokens of context. KLD counts the reference's tokens above log-prob -16, as llama-perplexity does.
#   "every-position": every position of non-overlapping windows (the lab's first rule): short-context positions
#       count too, so KLD runs 7-10% above llama-perplexity's on the same text.
KldRule = Literal["llama-perplexity", "every-position"]
KLD_RULES: tuple[str, ...] = get_args(KldRule)
LLAMA_LOG_PROB_FLOOR = -16.0  # llama-perplexity keeps the base's log-probs within 16 nats of its top token


def bos_per_chunk(tokenizer) -> int | None:
    """The BOS id that llama-perplexity puts at the start of every chunk, or None when the model wants none.

    llama.cpp adds BOS when the vocabulary says so; the checkpoint's tokenizer says the same by adding one itself.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if with_special[:1] == [bos] and with_special != tokenize_text(tokenizer, "a") else None


def perplexity_chunks(token_ids: list[int], n_ctx: int, max_tokens: int | None = None,
                      bos_id: int | None = None) -> list[torch.Tensor]:
    """llama-perplexity's chunks ([1, n_ctx] each): BOS + text cut every n_ctx tokens, the short remainder dropped.

    As llama-perplexity does, the BOS (when there is one) is written over each chunk's first token: the text
    token there is neither read nor predicted. `max_tokens` caps the tokens read (BOS included), as --chunks does.
    """
    if n_ctx < 4:
        raise ValueError(f"chunks must be at least 4 tokens, got {n_ctx}")
    ids = ([bos_id] if bos_id is not None else []) + list(token_ids)
    ids = ids[:max_tokens] if max_tokens else ids
    chunks = []
    for start in range(0, len(ids) - n_ctx + 1, n_ctx):
        chunk = ids[start : start + n_ctx]
        if bos_id is not None:
            chunk[0] = bos_id
        chunks.append(torch.tensor([chunk]))
    return chunks


def text_windows(token_ids: list[int], window: int, max_tokens: int | None, rule: KldRule,
                 bos_id: int | None = None) -> list[torch.Tensor]:
    """The windows `text_quality` reads under `rule` (an empty list: the text is shorter than one chunk)."""
    if rule == "llama-perplexity":
        return perplexity_chunks(token_ids, window, max_tokens, bos_id)
    return token_windows(token_ids, window, max_tokens)


def scored_rows(window_tokens: int, rule: KldRule) -> slice:
    """Rows of a window's [W, V] log-probs that are compared with the reference under `rule`."""
    if rule == "llama-perplexity":
        return slice(window_tokens // 2, window_tokens - 1)
    return slice(0, window_tokens)


# ---------------------------------------------------------------- perplexity and divergence


@dataclass(frozen=True)
class TextQuality:
    perplexity: float
    nll_tokens: int  # tokens predicted (W - 1 per window; W - 1 - W/2 under the llama-perplexity rule)
    kld_mean: float  # nats/token, KL(reference || variant)
    kld_p99: float
    top1_agreement: float  # llama-perplexity's "same top p" under its rule
    positions: int  # positions compared against the reference
    kld_median: float = math.nan
    kld_p999: float = math.nan
    kld_max: float = math.nan
    # p_variant(next text token) - p_reference(next text token), as llama-perplexity's Δp (a fraction, not %)
    delta_p_mean: float = math.nan
    delta_p_rms: float = math.nan
    rule: str = "every-position"


@dataclass(frozen=True)
class KldStats:
    """The scoreboard's numbers from per-position values (percentiles interpolate as llama-perplexity's do)."""
    kld_mean: float
    kld_median: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    same_top: float
    delta_p_mean: float
    delta_p_rms: float
    positions: int


def kld_stats(kld: torch.Tensor, same_top: torch.Tensor, delta_p: torch.Tensor) -> KldStats:
    """[N] KL divergences, [N] bools (same argmax), [M] Δp values -> the statistics llama-perplexity prints."""
    kld = kld.double()
    q = torch.quantile(kld, torch.tensor([0.5, 0.99, 0.999], dtype=torch.float64))  # linear, as its percentile()
    delta_p = delta_p.double()
    return KldStats(float(kld.mean()), float(q[0]), float(q[1]), float(q[2]), float(kld.max()),
                    float(same_top.double().mean()),
                    float(delta_p.mean()) if len(delta_p) else math.nan,
                    float(delta_p.square().mean().sqrt()) if len(delta_p) else math.nan, len(kld))


def position_kld(reference: torch.Tensor, variant: torch.Tensor, rule: KldRule) -> torch.Tensor:
    """[N] KL(reference || variant) from [N, V] log-probs, as `rule` counts it."""
    terms = reference.exp() * (reference - variant)
    if rule == "llama-perplexity":  # the base's tokens below -16 nats are not stored, so they count nothing
        return torch.where(reference > LLAMA_LOG_PROB_FLOOR, terms, torch.zeros(())).sum(-1)
    return terms.sum(-1).clamp_min(0)  # tiny negatives are float noise


def text_quality(runner, windows: list[torch.Tensor], reference: list[torch.Tensor] | None,
                 device: str = "cpu", tick: Tick = _noop,
                 rule: KldRule = "every-position") -> tuple[TextQuality, list[torch.Tensor]]:
    """Perplexity of `runner` on the windows and its divergence from `reference` (per-window log-probs).

    `rule` says which positions count (see KLD_RULES); perplexity counts the same positions' next tokens.
    With reference=None the model is its own reference (KLD 0, agreement 1) and its log-probs at the scored
    rows are returned so that later variants can be compared against them.
    """
    if rule not in KLD_RULES:
        raise ValueError(f"Unknown scoring rule {rule!r}; choose from {', '.join(KLD_RULES)}")
    if not windows:
        raise ValueError("no text windows to score: the text is shorter than one window")
    nll_sum, nll_n = 0.0, 0
    klds: list[torch.Tensor] = []
    same: list[torch.Tensor] = []
    dps: list[torch.Tensor] = []
    own: list[torch.Tensor] = []
    for i, window in enumerate(windows):
        lp_all = runner.window_logprobs(window)  # [W, V]
        rows = scored_rows(lp_all.shape[0], rule)
        lp = lp_all[rows]
        start = rows.start
        targets = window[0, start + 1 : start + 1 + lp.shape[0]]  # the text's next tokens (none after the last)
        n = len(targets)
        lp_target = lp[:n].gather(1, targets[:, None])[:, 0]
        nll_sum += -lp_target.sum().item()
        nll_n += n
        if reference is None:
            ref = lp
            own.append(lp.clone() if rows != slice(0, lp_all.shape[0]) else lp)  # a copy drops the unscored rows
        else:
            ref = reference[i]
        klds.append(torch.zeros(lp.shape[0]) if reference is None else position_kld(ref, lp, rule))
        same.append(ref.argmax(-1) == lp.argmax(-1))
        dps.append(lp_target.exp() - ref[:n].gather(1, targets[:, None])[:, 0].exp())
        tick((i + 1) / len(windows))
    stats = kld_stats(torch.cat(klds), torch.cat(same), torch.cat(dps))
    quality = TextQuality(
        perplexity=math.exp(nll_sum / nll_n), nll_tokens=nll_n,
        kld_mean=stats.kld_mean, kld_p99=stats.kld_p99, top1_agreement=stats.same_top, positions=stats.positions,
        kld_median=stats.kld_median, kld_p999=stats.kld_p999, kld_max=stats.kld_max,
        delta_p_mean=stats.delta_p_mean, delta_p_rms=stats.delta_p_rms, rule=rule,
    )
    return quality, own


# ---------------------------------------------------------------- multiple choice


@dataclass(frozen=True)
class MCItem:
    question: str
    choices: tuple[str, ...]
    answer: int


MC_EXAMPLE = '{"question": "...", "choices": ["...", "..."], "answer": <index of the right choice, from 0>}'


def load_mc_jsonl(path: Path) -> list[MCItem]:
    """Read {"question", "choices", "answer"} lines, naming the first bad line and what is wrong with it."""
    return [_mc_item(row, where) for where, row in textfile.jsonl_rows(path, MC_EXAMPLE)]


def load_arc_jsonl(path: Path, limit: int | None = None) -> list[MCItem]:
    """ARC (AI2 Reasoning Challenge) jsonl in its original layout: {"question": {"stem", "choices": [{"text",
    "label"}]}, "answerKey"}. The answer is found by label, never by letter position: some items use "1".."4"."""
    example = '{"question": {"stem": "...", "choices": [{"text": "...", "label": "A"}]}, "answerKey": "A"}'
    items = []
    for where, row in textfile.jsonl_rows(path, example)[:limit]:
        try:
            q, choices = row["question"]["stem"], row["question"]["choices"]
            labels = [c["label"] for c in choices]
            answer = labels.index(row["answerKey"])
        except (KeyError, TypeError, ValueError):
            raise where.problem("not an ARC item with a question stem, labelled choices and an answerKey among the "
                                f"labels. Each line needs {example}.") from None
        items.append(_mc_item({"question": q, "choices": [c["text"] for c in choices], "answer": answer}, where))
    return items


def _mc_item(row: object, where: textfile.Line) -> MCItem:
    row = textfile.object_row(where, row, MC_EXAMPLE)
    q, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
    needs = f"Each line needs {MC_EXAMPLE}."
    if not isinstance(q, str) or not q.strip():
        raise where.problem(f"'question' must be a non-empty string. {needs}")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise where.problem(f"'choices' must be a list of at least 2 non-empty strings. {needs}")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        got = "is missing" if answer is None else f"is {json.dumps(answer)[:40]}"
        raise where.problem(f"'answer' {got}; it must be the index of the right choice, a whole number from 0 to "
                            f"{len(choices) - 1}. {needs}")
    return MCItem(q.strip(), tuple(c.strip() for c in choices), answer)


def mc_prompt(item: MCItem) -> str:
    return f"Question: {item.question}\nAnswer:"


def _continuation_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokenize context+continuation together (as the model reads it) and split at the context's end."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, tokenizer(continuation, add_special_tokens=False)["input_ids"]


def continuation_pairs(tokenizer, item: MCItem) -> list[tuple[list[int], list[int]]]:
    """(question ids, choice ids) for each choice, as every runtime scores them."""
    return [_continuation_ids(tokenizer, mc_prompt(item), " " + c) for c in item.choices]


@dataclass(frozen=True)
class MCResult:
    accuracy: float
    accuracy_norm: float
    ci95: tuple[float, float]
    items: int
    per_item: list[dict] = field(default_factory=list)


def bootstrap_ci(correct: list[bool], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of 0/1 outcomes, resampling items."""
    if not correct:
        raise ValueError("bootstrap of no items")
    rng = random.Random(seed)
    n = len(correct)
    means = sorted(sum(rng.choices(correct, k=n)) / n for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * n_boot)]
    hi = means[min(n_boot - 1, int((1 + level) / 2 * n_boot))]
    return lo, hi


def mc_picks(scores: list[float], choices: tuple[str, ...]) -> tuple[int, int]:
    """(raw pick, length-normalised pick): argmax of the summed log-probs, and of log-prob / len(choice).

    len(choice) counts characters of the choice without the leading " " delimiter, as lm-eval's acc_norm.
    Choices are validated non-empty; max(1, ...) only keeps a hand-made empty one from dividing by zero.
    """
    per_char = [s / max(1, len(c)) for s, c in zip(scores, choices)]
    first_max = lambda xs: max(range(len(xs)), key=xs.__getitem__)  # noqa: E731 - first index on ties
    return first_max(scores), first_max(per_char)


def mc_accuracy(runner, tokenizer, items: list[MCItem], device: str = "cpu", tick: Tick = _noop,
                seed: int = 0, batch_items: int = 16) -> MCResult:
    """Raw accuracy (highest summed log-prob) and length-normalised accuracy, computed as lm-eval's acc_norm.

    Both score the continuation " " + choice (the space is the target delimiter and its log-prob counts).
    The normalised pick divides that summed log-prob by len(choice): Python characters of the choice
    alone, without the delimiter, not bytes and not tokens, exactly as lm-evaluation-harness 0.4's
    multiple_choice process_results does. Ties go to the first choice, as with np.argmax.
    `runner` is a Runner of any runtime (core.runtimes.base).
    """
    all_scores: list[list[float]] = []
    for start in range(0, len(items), batch_items):
        all_scores += runner.choice_logprobs(tokenizer, items[start : start + batch_items])
        tick(len(all_scores) / len(items))
    per_item, raw, norm = [], [], []
    for i, (item, scores) in enumerate(zip(items, all_scores)):
        pick, pick_norm = mc_picks(scores, item.choices)
        raw.append(pick == item.answer)
        norm.append(pick_norm == item.answer)
        per_item.append({"index": i, "question": item.question, "answer": item.answer, "pick": pick,
                         "pick_norm": pick_norm, "correct": pick == item.answer,
                         "logprobs": [round(s, 4) for s in scores]})
    return MCResult(sum(raw) / len(raw), sum(norm) / len(norm), bootstrap_ci(raw, seed=seed), len(items), per_item)
