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
from typing import Callable

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


# ---------------------------------------------------------------- perplexity and divergence


@dataclass(frozen=True)
class TextQuality:
    perplexity: float
    nll_tokens: int  # tokens predicted (W - 1 per window)
    kld_mean: float  # nats/token, KL(reference || variant)
    kld_p99: float
    top1_agreement: float
    positions: int  # positions compared against the reference


def text_quality(runner, windows: list[torch.Tensor], reference: list[torch.Tensor] | None,
                 device: str = "cpu", tick: Tick = _noop) -> tuple[TextQuality, list[torch.Tensor]]:
    """Perplexity of `model` on the windows and its divergence from `reference` (per-window log-probs).

    With reference=None the model is its own reference (KLD 0, agreement 1) and its log-probs are
    returned so that later variants can be compared against them.
    """
    nll_sum, nll_n = 0.0, 0
    klds: list[torch.Tensor] = []
    agree, positions = 0, 0
    own: list[torch.Tensor] = []
    for i, window in enumerate(windows):
        lp = runner.window_logprobs(window)  # [W, V]
        targets = window[0, 1:]
        nll_sum += -lp[:-1].gather(1, targets[:, None]).sum().item()
        nll_n += len(targets)
        ref = reference[i] if reference is not None else lp
        if reference is None:
            own.append(lp)
        kl = (ref.exp() * (ref - lp)).sum(-1).clamp_min(0)  # [W]; tiny negatives are float noise
        klds.append(kl)
        agree += int((ref.argmax(-1) == lp.argmax(-1)).sum())
        positions += lp.shape[0]
        tick((i + 1) / len(windows))
    kl_all = torch.cat(klds)
    quality = TextQuality(
        perplexity=math.exp(nll_sum / nll_n), nll_tokens=nll_n,
        kld_mean=float(kl_all.mean()), kld_p99=float(torch.quantile(kl_all, 0.99)),
        top1_agreement=agree / positions, positions=positions,
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
