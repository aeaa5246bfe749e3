"""Files people give the lab (eval sets, training examples, text): read as UTF-8 text, or refused in plain words.

A problem is worded so that whoever reports it names the file as its owner knows it: the CLI the path that was typed,
the dashboard the uploaded file's own name (never the server's copy, which is named by a hash). Python's own wording
("'utf-8' codec can't decode", "Expecting value: line 1 column 1") never reaches a person: it is translated here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

JSONL = "a JSONL file saved as UTF-8 text, one JSON object per line"
PLAIN = "a plain-text file saved as UTF-8"

# How common files begin, for "it starts like ..." when someone picks the wrong file.
SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive, as Word .docx and Excel .xlsx files do"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office document (.doc or .xls)"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "a program"),
]
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # how UTF-16 text begins, as some Windows editors save "Unicode"

# json's own messages, in words for people who did not write a parser.
JSON_WORDS = {
    "Expecting value": "something here is not a JSON value; text must be in double quotes",
    "Expecting property name enclosed in double quotes": "a key is not in double quotes, or a comma is left over",
    "Expecting ',' delimiter": "a comma is missing between two items",
    "Expecting ':' delimiter": "a colon is missing after a key",
    "Unterminated string starting at": "a text is not closed with a double quote",
    "Extra data": "there is more than one JSON value on the line",
    "Invalid control character at": "a text holds a raw tab or line break; write it as \\t or \\n",
    "Invalid \\escape": "a backslash starts no valid escape; write \\\\ for a backslash",
}


class FileProblem(ValueError):
    """What is wrong with a file, without its name: `named(name)` puts in the name its owner knows it by."""

    def __init__(self, what: str, name: str = "The file", line: int | None = None) -> None:
        self.what, self.name, self.line = what, name, line
        super().__init__(self.named(name))

    def named(self, name: str) -> str:
        return f"{name}, line {self.line}: {self.what}" if self.line else f"{name} {self.what}"


@dataclass(frozen=True)
class Line:
    """Where a row came from, to say which line is wrong."""

    name: str
    number: int

    def problem(self, what: str) -> FileProblem:
        return FileProblem(what, self.name, self.number)


def looks_like(body: bytes) -> str | None:
    """Why `body` is a binary file, in words ("it starts like a PNG image"); None if it may be text."""
    if found := next((words for magic, words in SIGNATURES if body.startswith(magic)), None):
        return f"it starts like {found}"
    if b"\x00" in body[:8192]:
        return "it holds NUL bytes, which text never does"
    return None


def decode(body: bytes, expected: str, name: str = "The file") -> str:
    """`body` as text (a UTF-8 byte-order mark is dropped), or a FileProblem saying what the file is instead."""
    if not body.strip():
        raise FileProblem(f"is empty. Use {expected}.", name)
    if body.startswith(UTF16_MARKS):
        raise FileProblem("is UTF-16 text, not UTF-8. Save it as UTF-8 and try again.", name)
    if why := looks_like(body):
        raise FileProblem(f"is not a text file ({why}). Use {expected}.", name)
    try:
        return body.decode("utf-8").removeprefix("\ufeff")  # so that error positions count from the file's start
    except UnicodeDecodeError as e:
        raise FileProblem(f"is not UTF-8 text (byte 0x{body[e.start]:02x} at position {e.start} is not valid "
                          "UTF-8). Save it as UTF-8 and try again.", name) from None


def read(path: Path, expected: str) -> str:
    """The text of a file named by its owner's path, or a FileProblem naming that path."""
    path = Path(path)
    if not path.is_file():
        raise FileProblem("was not found.", str(path))
    return decode(path.read_bytes(), expected, str(path))


def json_words(error: json.JSONDecodeError) -> str:
    """A JSON syntax error in plain words, with the character where it was found."""
    words = JSON_WORDS.get(error.msg)
    return f"at character {error.colno}" + (f" ({words})" if words else "")


def json_kind(row: object) -> str:
    """What a JSON value is, for "line 3 is a list, not an object"."""
    kinds = {list: "a list", str: "a text in quotes", bool: "true or false", type(None): "null", dict: "an object"}
    return kinds.get(type(row), "a number")


def jsonl_rows(path: Path, example: str) -> list[tuple[Line, object]]:
    """(where, row) for every non-blank line of a JSONL file; bad text, bad JSON or no rows is a FileProblem."""
    name = str(path)
    rows = []
    for n, text in enumerate(read(path, JSONL).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            rows.append((Line(name, n), json.loads(text)))
        except json.JSONDecodeError as e:
            raise FileProblem(f"not valid JSON {json_words(e)}. Each line needs {example}.", name, n) from None
    if not rows:
        raise FileProblem(f"holds no examples. Each line needs {example}.", name)
    return rows


def object_row(where: Line, row: object, example: str) -> dict:
    """`row` if it is a JSON object; else a problem that says what it is instead."""
    if not isinstance(row, dict):
        raise where.problem(f"this is {json_kind(row)}, not a JSON object. Each line needs {example}.")
    return row
