"""Prompts cut from real text, so that every request of a run reads different words."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.paths import ASSETS, shared_wikitext


def corpus_path() -> Path:
    """Public WikiText-2 test text when it lies beside the repo (long enough for 8k contexts), else our prose."""
    return shared_wikitext() or ASSETS / "eval" / "prose.txt"


def corpus_token_ids(tokenizer, path: Path | None = None, max_chars: int = 400_000) -> list[int]:
    text = (path or corpus_path()).read_text(encoding="utf-8")[:max_chars]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompts_from_text(ids: Sequence[int], tokenizer, count: int, prompt_tokens: int) -> list[str]:
    """`count` different prompts of `prompt_tokens` tokens each, cut from the text at different places.

    Different prompts, so a server's prefix cache cannot answer one from another's work. When the text is
    shorter than count x length, windows wrap around it (and overlap).
    """
    if len(ids) < prompt_tokens:
        reps = prompt_tokens // max(1, len(ids)) + 1
        ids = list(ids) * reps  # a short text repeated: the note in settings says which text
    stride = max(1, (len(ids) - prompt_tokens) // max(1, count))
    return [tokenizer.decode(list(ids[(i * stride) % (len(ids) - prompt_tokens + 1):][:prompt_tokens]))
            for i in range(count)]
