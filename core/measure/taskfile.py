"""A task file a product manager can write: prompts, each with what a right answer must satisfy, and the checks.

JSONL (one object a line) or CSV (a header row, one prompt a row). Each prompt names its checks by field; a prompt
passes when its answer passes every one of them:

    exact         the whole answer, ignoring case, surrounding spaces, quotes and a final full stop
    contains      words or phrases the answer must contain (each as whole words, any case)
    not_contains  words or phrases it must not contain
    regex         a regular expression found anywhere in the answer (Python syntax)
    one_of        a list of labels: the whole answer (as for exact) must be one of them
    json_keys     the answer holds a JSON object with these keys (the first {...} in it)
    number        the first number in the answer equals this, within `tolerance` (default 0)

In CSV a list is written with "|" between its items ("billing|invoice"). Optional fields: `id` (how the prompt is
named in tables) and `tolerance`. Every problem names the line and the field, and says what to write instead.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.measure import textfile
from core.measure.textfile import FileProblem, Line

CHECK_KINDS = ("exact", "contains", "not_contains", "regex", "one_of", "json_keys", "number")
LIST_KINDS = ("contains", "not_contains", "one_of", "json_keys")  # a list, or one text that counts as a list of one
OTHER_FIELDS = ("prompt", "id", "tolerance")
EXAMPLE = '{"prompt": "Which team handles a refund?", "contains": ["billing"]}'
CSV_SEPARATOR = "|"  # between the items of a list in a CSV cell
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
MAX_PROMPTS = 2000  # a task run generates one answer per prompt and variant: more would take hours here


@dataclass(frozen=True)
class Check:
    kind: str  # one of CHECK_KINDS
    expected: str | tuple[str, ...] | float
    tolerance: float = 0.0  # for "number" only: how far the answer's number may be from `expected`

    def describe(self) -> str:
        """The check in words, for tables and the Report."""
        value = ", ".join(self.expected) if isinstance(self.expected, tuple) else f"{self.expected}"
        extra = f" ± {self.tolerance:g}" if self.kind == "number" and self.tolerance else ""
        return f"{self.kind.replace('_', ' ')}: {value}{extra}"


@dataclass(frozen=True)
class TaskItem:
    id: str
    prompt: str
    checks: tuple[Check, ...]
    line: int  # where it is in the file, to say which prompt a problem is about


@dataclass(frozen=True)
class Task:
    name: str  # the file's own name, without its folder
    items: tuple[TaskItem, ...]
    sha256: str  # of the file's bytes: a result names exactly which task it answered

    def summary(self) -> str:
        kinds = sorted({c.kind for item in self.items for c in item.checks})
        one = " One prompt tells very little: its pass rate is 0% or 100% with a very wide interval." \
            if len(self.items) == 1 else ""
        return f"{len(self.items):,} prompt{'s' * (len(self.items) != 1)}, checks: {', '.join(kinds)}.{one}"


# ---------------------------------------------------------------- judging one answer


def _plain(text: str) -> str:
    """An answer or label as compared by exact and one_of: case, spaces, quotes and a final full stop ignored."""
    return " ".join(text.strip().strip("\"'`").rstrip(".!").split()).casefold()


def _has(answer: str, phrase: str) -> bool:
    """The phrase as whole words, any case ("bill" is not found in "billing")."""
    return re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", answer, re.IGNORECASE) is not None


def _first_number(answer: str) -> float | None:
    found = NUMBER.search(answer)
    return float(found.group().replace(",", "")) if found else None


def _json_object(answer: str) -> dict | None:
    """The first {...} in the answer as a JSON object (a model often wraps it in words or a code fence)."""
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(answer[start:end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def passes(answer: str, check: Check) -> bool:
    """Does one answer pass one check?"""
    e = check.expected
    if check.kind == "exact":
        return _plain(answer) == _plain(str(e))
    if check.kind == "contains":
        return all(_has(answer, p) for p in e)
    if check.kind == "not_contains":
        return not any(_has(answer, p) for p in e)
    if check.kind == "regex":
        return re.search(str(e), answer) is not None
    if check.kind == "one_of":
        return _plain(answer) in {_plain(label) for label in e}
    if check.kind == "json_keys":
        found = _json_object(answer)
        return found is not None and all(k in found for k in e)
    if check.kind == "number":
        number = _first_number(answer)
        return number is not None and abs(number - float(e)) <= check.tolerance + 1e-9
    raise ValueError(f"unknown check kind {check.kind!r}; known: {', '.join(CHECK_KINDS)}")


def failed_checks(answer: str, item: TaskItem) -> list[str]:
    """The checks this answer fails, in words; [] when it passes."""
    return [c.describe() for c in item.checks if not passes(answer, c)]


# ---------------------------------------------------------------- reading a file, every problem named


def _list_field(where: Line, field: str, value: object, from_csv: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        items = value.split(CSV_SEPARATOR) if from_csv else [value]
    elif isinstance(value, list):
        items = value
    else:
        raise where.problem(f"'{field}' must be a list of texts such as [\"billing\", \"refund\"], got "
                            f"{textfile.json_kind(value)}.")
    if not items or not all(isinstance(i, str) and i.strip() for i in items):
        raise where.problem(f"'{field}' must hold at least one non-empty text.")
    return tuple(i.strip() for i in items)


def _number_field(where: Line, field: str, value: object) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise where.problem(f"'{field}' must be a number such as 42 or 3.5, got {value!r}.")
    return number


def _regex_field(where: Line, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise where.problem("'regex' must be a non-empty text such as \"^(yes|no)\\\\b\".")
    try:
        re.compile(value)
    except re.error as e:
        raise where.problem(f"'regex' does not compile: {e.msg} at character {e.pos} of {value!r}. Fix the "
                            "expression (a literal ( [ . * + ? needs a backslash before it).") from None
    return value


def _check(where: Line, kind: str, value: object, tolerance: float, from_csv: bool) -> Check:
    if kind in LIST_KINDS:
        return Check(kind, _list_field(where, kind, value, from_csv))
    if kind == "regex":
        return Check(kind, _regex_field(where, value))
    if kind == "number":
        return Check(kind, _number_field(where, kind, value), tolerance)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value).strip():
        raise where.problem("'exact' must be the answer as a non-empty text.")
    return Check(kind, str(value).strip())


def _item(where: Line, row: object, index: int, from_csv: bool) -> TaskItem:
    row = textfile.object_row(where, row, EXAMPLE)
    given = {k: v for k, v in row.items() if not (from_csv and (v is None or str(v).strip() == ""))}
    unknown = [k for k in given if k not in CHECK_KINDS + OTHER_FIELDS]
    if unknown:
        raise where.problem(f"unknown field '{unknown[0]}'. A check is one of {', '.join(CHECK_KINDS)}; other fields "
                            f"may be {', '.join(OTHER_FIELDS)}.")
    prompt = given.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise where.problem(f"'prompt' must be a non-empty text. Each line needs {EXAMPLE}.")
    kinds = [k for k in CHECK_KINDS if k in given]
    if not kinds:
        raise where.problem(f"no check: add one of {', '.join(CHECK_KINDS)} (e.g. \"contains\": [\"billing\"]).")
    if "tolerance" in given and "number" not in given:
        raise where.problem("'tolerance' applies to a 'number' check only; add \"number\" or remove it.")
    tolerance = _number_field(where, "tolerance", given["tolerance"]) if "tolerance" in given else 0.0
    if tolerance < 0:
        raise where.problem(f"'tolerance' must be 0 or more, got {tolerance:g}.")
    checks = tuple(_check(where, k, given[k], tolerance, from_csv) for k in kinds)
    return TaskItem(str(given.get("id") or f"#{index}"), prompt.strip(), checks, where.number)


def _csv_rows(path: Path) -> list[tuple[Line, dict]]:
    text = textfile.read(path, "a CSV file saved as UTF-8 text with a header row")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in [f.strip() for f in reader.fieldnames]:
        raise FileProblem(f"needs a header row naming its columns, with 'prompt' and a check ({', '.join(CHECK_KINDS)}).",
                          str(path))
    rows = []
    for row in reader:
        if None in row:
            raise FileProblem("has more cells than the header has columns (a comma inside a text needs the text in "
                              "double quotes).", str(path), reader.line_num)
        rows.append((Line(str(path), reader.line_num), {k.strip(): v for k, v in row.items()}))
    return rows


def load_task(path: str | Path) -> Task:
    """The task in a .jsonl or .csv file, or a FileProblem naming the line and field that is wrong."""
    path = Path(path)
    from_csv = path.suffix.lower() == ".csv"
    rows = _csv_rows(path) if from_csv else textfile.jsonl_rows(path, EXAMPLE)
    if not rows:
        raise FileProblem(f"holds no prompts. Each line needs {EXAMPLE}.", str(path))
    if len(rows) > MAX_PROMPTS:
        raise FileProblem(f"has {len(rows):,} prompts; a task here takes at most {MAX_PROMPTS:,}. Use a sample.",
                          str(path))
    items = tuple(_item(where, row, i, from_csv) for i, (where, row) in enumerate(rows, start=1))
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        twice = next(item for item in items if ids.count(item.id) > 1)
        raise FileProblem(f"'id' {twice.id!r} is used twice; each prompt needs its own id.", str(path), twice.line)
    return Task(path.name, items, hashlib.sha256(path.read_bytes()).hexdigest())


def too_long(items: Sequence[TaskItem], prompt_tokens: Sequence[int], new_tokens: int, context_tokens: int,
             runtime: str) -> str | None:
    """Why a prompt cannot be answered within the context a runtime holds (prompt + answer), or None."""
    for item, n in zip(items, prompt_tokens):
        if n + new_tokens > context_tokens:
            return (f"line {item.line} ({item.id}): the prompt is {n:,} tokens; with {new_tokens} answer tokens that "
                    f"is more than the {context_tokens:,} tokens {runtime} holds. Shorten the prompt or lower the "
                    "answer's token limit.")
    return None
