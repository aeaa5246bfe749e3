"""The distillation corpus: the text a student learns the teacher on, with a held-out share it never trains on.

By default the teacher's own greedy answers to the bundled prompts (generated once, cached); or the user's text (a
UTF-8 file of paragraphs, or JSONL of {"text"} lines); or both together, which gives a small model's student
both the teacher's chat manner and more varied prose than a few hundred answers hold.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.measure import evaluate, textfile
from core.measure.textfile import FileProblem
from core.paths import ASSETS, Stopped, data_dir
from core.store import jsonl

Report = Callable[[float, str], None]
PROMPTS = ASSETS / "distill" / "prompts.jsonl"


def load_prompts(path: Path = PROMPTS) -> list[dict]:
    rows = [row for _, row in textfile.jsonl_rows(path, '{"id": "...", "prompt": "..."}')]
    if not rows or not all(isinstance(r, dict) and r.get("prompt") for r in rows):
        raise ValueError(f"{path} must hold JSON lines with a non-empty 'prompt'.")
    return rows


def is_heldout(key: str, share: float) -> bool:
    """A stable split by name (not by position), so adding prompts never moves old ones across it."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


@dataclass
class Corpus:
    train: list[list[int]]  # token id sequences
    heldout: list[list[int]]
    source: str
    texts_sample: list[str] = field(default_factory=list)

    @property
    def train_tokens(self) -> int:
        return sum(len(s) for s in self.train)

    @property
    def heldout_tokens(self) -> int:
        return sum(len(s) for s in self.heldout)


def corpus_from_file(path: Path, tokenizer, heldout_share: float) -> Corpus:
    """A .txt file (split at blank lines) or a .jsonl file of {"text": ...} lines; the held-out share is never trained on."""
    path, example = Path(path), '{"text": "..."}'
    if path.suffix == ".jsonl":
        rows = [(where, textfile.object_row(where, row, example)) for where, row in textfile.jsonl_rows(path, example)]
        if bad := next((where for where, row in rows if not isinstance(row.get("text"), str)), None):
            raise bad.problem(f"'text' is missing or is not in quotes. Each line needs {example}.")
        texts = [row["text"] for _, row in rows]
    else:
        text = textfile.read(path, f"{textfile.PLAIN}, paragraphs split by blank lines")
        texts = (untokenize_wikitext(text) if WIKITEXT_MARKS.search(text) else text).split("\n\n")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise FileProblem('holds no text. Use UTF-8 text (paragraphs split by blank lines) or JSONL of {"text": ...} '
                          "lines.", str(path))
    seqs = [(f"{i}:{t[:40]}", tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]) for i, t in enumerate(texts)]
    train = [s for k, s in seqs if not is_heldout(k, heldout_share)]
    heldout = [s for k, s in seqs if is_heldout(k, heldout_share)]
    if len(seqs) >= 2 and not heldout:  # a short file: hold out its last text rather than nothing
        train, heldout = train[:-1], train[-1:]
    corpus = Corpus(train, heldout, str(path), texts[:3])
    if corpus.train_tokens < 256 or not heldout:
        raise FileProblem(f"holds {sum(len(s) for _, s in seqs)} tokens in {len(texts)} texts; give at least two texts "
                          "and a few hundred words so that some can be held out.", str(path))
    return corpus


# WikiText's raw files keep their tokenizer's marks: " @-@ " for a hyphen, spaces before punctuation, headings
# as " = Title = " lines. Trained on as they are, a student would learn the teacher on text no one writes.
WIKITEXT_MARKS = re.compile(r" @[-,.]@ ")
_SPACE_BEFORE = re.compile(r" ([.,;:!?)\]'])(?=\s|$)|( n't\b)|( 's\b)")
_HEADING = re.compile(r"^ *=( =)* .* =( =)* *$", re.MULTILINE)


def untokenize_wikitext(text: str) -> str:
    """WikiText's raw text as it was written: marks joined, stray spaces gone, headings dropped."""
    text = _HEADING.sub("", text)
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    text = _SPACE_BEFORE.sub(lambda m: (m[1] or m[2] or m[3]).lstrip(" "), text)
    return re.sub(r"([(\[]) ", r"\1", text)


def chat_text(tokenizer, prompt: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return prompt + "\n"


def corpus_cache_path(teacher_key: str, answer_tokens: int) -> Path:
    tag = hashlib.sha256(f"{teacher_key}|{evaluate.file_sha256(PROMPTS)}|{answer_tokens}".encode()).hexdigest()[:12]
    return data_dir() / "distill" / f"teacher-answers-{tag}.jsonl"


def answers_to_write(teacher_key: str, answer_tokens: int) -> int:
    """How many teacher answers a run must still generate before it trains: 0 once the corpus is cached; a stopped
    first run's finished answers (its partial file) are not written again."""
    final = corpus_cache_path(teacher_key, answer_tokens)
    if final.is_file():
        return 0
    partial = final.with_suffix(".partial")
    kept = len(partial.read_text().splitlines()) if partial.is_file() else 0
    return max(0, len(load_prompts()) - kept)


@torch.inference_mode()
def teacher_answers(teacher, tokenizer, teacher_key: str, answer_tokens: int, device: str, report: Report,
                    stop: Callable[[], bool], batch: int = 24) -> list[dict]:
    """The teacher's greedy answers to every bundled prompt: generated once, batched, cached.

    Finished batches are appended to a partial file as they complete, so a stopped run resumes where it was.
    """
    final = corpus_cache_path(teacher_key, answer_tokens)
    if final.is_file():
        return [json.loads(line) for line in final.read_text().splitlines()]
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_suffix(".partial")
    done = {}
    if partial.is_file():
        for line in partial.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a crash; each batch is one whole write (jsonl.append), the rest are good
    prompts = load_prompts()
    todo = sorted((p for p in prompts if p["id"] not in done), key=lambda p: len(p["prompt"]))  # less padding
    tokenizer.padding_side = "left"
    report(len(done) / len(prompts), f"teacher answers: {len(done)}/{len(prompts)}")  # the count from the start
    try:
        for start in range(0, len(todo), batch):
            if stop():
                raise Stopped(f"Stopped while the teacher wrote the corpus ({len(done)} of {len(prompts)} answers kept for next time).")
            chunk = todo[start : start + batch]
            texts = [chat_text(tokenizer, p["prompt"]) for p in chunk]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            gen = teacher.generate(**enc, max_new_tokens=answer_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
            answers = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            rows = [{"id": p["id"], "prompt": p["prompt"], "text": text + answer.strip() + tokenizer.eos_token}
                    for p, text, answer in zip(chunk, texts, answers)]
            jsonl.append(partial, rows)  # the batch in one write: a kill keeps it whole or not at all
            done.update((row["id"], row) for row in rows)
            report(len(done) / len(prompts), f"teacher answers: {len(done)}/{len(prompts)}")
    finally:
        tokenizer.padding_side = "right"
    rows = [done[p["id"]] for p in prompts]
    done_file = final.with_suffix(".tmp")  # written whole, then renamed: a crash never leaves a cut cache
    done_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done_file.replace(final)
    partial.unlink(missing_ok=True)
    return rows


def corpus_from_answers(rows: list[dict], tokenizer, heldout_share: float) -> Corpus:
    seqs = [(r["id"], tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in rows]
    return Corpus([s for k, s in seqs if not is_heldout(k, heldout_share)],
                  [s for k, s in seqs if is_heldout(k, heldout_share)],
                  f"teacher's answers to {len(rows)} bundled prompts ({PROMPTS.name})", [r["text"] for r in rows[:3]])


def merged(parts: list[Corpus]) -> Corpus:
    """Several corpora as one: training and held-out parts side by side, each source named."""
    if len(parts) == 1:
        return parts[0]
    return Corpus([s for c in parts for s in c.train], [s for c in parts for s in c.heldout],
                  " + ".join(c.source for c in parts), [t for c in parts for t in c.texts_sample][:3])
