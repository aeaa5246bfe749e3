"""Files people upload (eval sets, training examples, text): size-checked, checked as text, validated before anything
loads them, and kept by content hash only once accepted. A refused file is never left on the server.

Every message names the file as its owner named it: never the server's copy (a path and a hash-named file).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import models
from core.measure import evaluate, taskfile, textfile
from core.measure.textfile import FileProblem
from core.paths import data_dir
from core.techniques import lora
from core.techniques.distill_corpus import corpus_from_file
from core.words import plural

MAX_UPLOAD_BYTES = 5_000_000  # as .streamlit/config.toml's maxUploadSize


@dataclass(frozen=True)
class Kept:
    path: Path  # the server's copy: for jobs, never for people
    summary: str  # what was found in it, in words ("120 questions, 4 choices each")


def keep_upload(name: str, body: bytes, validate: Callable[[Path], object]) -> Path:
    """Write `body` under data/uploads (named by its hash) once `validate(path)` accepts it; else ValueError."""
    return accept_upload(name, body, validate).path


def accept_upload(name: str, body: bytes, check: Callable[[Path], object]) -> Kept:
    """Keep `body` once `check(path)` accepts it (a text it returns is the summary); else a ValueError naming `name`."""
    if len(body) > MAX_UPLOAD_BYTES:  # the server's own limit catches this first; this one holds everywhere
        raise ValueError(f"{name} is {len(body) / 1e6:.1f} MB, more than the {MAX_UPLOAD_BYTES / 1e6:.0f} MB an "
                         "eval or training file may have here. Use fewer lines.")
    expected = textfile.JSONL if name.lower().endswith(".jsonl") else textfile.PLAIN
    try:
        textfile.decode(body, expected, name)  # a binary file is refused before it touches the disk
    except FileProblem as e:
        raise ValueError(e.named(name)) from None
    folder = data_dir() / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    # Checked under a name of its own, so that a refusal never removes an accepted copy of the same bytes.
    trial = folder / f".checking-{secrets.token_hex(6)}{Path(name).suffix}"
    trial.write_bytes(body)
    try:
        found = check(trial)
    except ValueError as e:
        trial.unlink(missing_ok=True)
        raise ValueError(_for_owner(e, name, trial)) from None
    except BaseException:  # stopped midway: nothing of it stays either
        trial.unlink(missing_ok=True)
        raise
    path = folder / f"{hashlib.sha256(body).hexdigest()[:16]}{Path(name).suffix}"
    os.replace(trial, path)
    return Kept(path, found if isinstance(found, str) else "")


def _for_owner(error: ValueError, name: str, server_copy: Path) -> str:
    """The check's message with the server's copy replaced by the name its owner knows."""
    if isinstance(error, FileProblem):
        return error.named(name)
    text = str(error).replace(str(server_copy), name).replace(server_copy.name, name)
    return text if name in text else f"{name}: {text}"


# ---------------------------------------------------------------- checks: validate, and say what was found


def mc_set(path: Path) -> str:
    items = evaluate.load_mc_jsonl(path)
    sizes = sorted({len(i.choices) for i in items})
    each = f"{sizes[0]} choices each" if len(sizes) == 1 else f"{sizes[0]} to {sizes[-1]} choices each"
    return f"{len(items):,} question{'s' * (len(items) != 1)}, {each}"


def ppl_text(path: Path) -> str:
    return f"{len(evaluate.read_text(path).split()):,} words of text"


def lora_data(path: Path) -> str:
    train, test = lora.load_task(data=path)
    return (f"{len(train) + len(test):,} examples ({len(train):,} to train on, {len(test):,} held out to test), "
            f"{plural(len(lora.check_labels(train)), 'different completion')}")


def distill_corpus(checkpoint: Path) -> Callable[[Path], str]:
    """The check for a distillation corpus, counted in the teacher's tokens (its tokenizer loads only for a file)."""
    def check(path: Path) -> str:
        corpus = corpus_from_file(path, models.load_tokenizer(checkpoint), 0.1)
        return (f"{len(corpus.train) + len(corpus.heldout):,} texts, {corpus.train_tokens + corpus.heldout_tokens:,} "
                f"tokens ({corpus.heldout_tokens:,} held out)")
    return check


def task_file(path: Path) -> str:
    """A task file (JSONL or CSV: prompts with checks), every problem named by line and field."""
    return taskfile.load_task(path).summary()


def fmt_seconds(s: float | None) -> str:
    """A duration for people: "2 min 05 s", "40 s", or "estimating..." before there is one."""
    if s is None:
        return "estimating..."
    m, sec = divmod(round(s), 60)
    return f"{m} min {sec:02d} s" if m else f"{sec} s"
