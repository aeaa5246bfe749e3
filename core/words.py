"""Counts in words, one rule for every page, table and CLI line: "1 variant", "2 variants", never "1 variants".

It sits beside core/paths.py at the bottom of the import layers, so a technique's explanation can use it as well as
a page.
"""

from __future__ import annotations

_IRREGULAR = {"was": "were", "is": "are", "has": "have", "its": "their", "this": "these", "it": "they"}


def plural_of(word: str) -> str:
    """The plural of an English noun as the lab uses them (variants, experts, files, queries, batches)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    return word + "s"


def plural(n: float, word: str, many: str | None = None, *, number: bool = True) -> str:
    """`n` with `word` agreeing with it: plural(1, "variant") = "1 variant", plural(3, "expert") = "3 experts";
    `many` for a plural the rule misses; number=False gives the word alone ("is"/"are")."""
    form = word if n == 1 else (many or plural_of(word))
    return f"{n:,} {form}" if number and isinstance(n, int) else (f"{n:g} {form}" if number else form)
