"""Missing numbers in a table read "–" or the column's reason, never "None" or "nan"."""

import math
import re

from ui.tables import styled


def cells(rows, formats=None, blanks=None) -> list[str]:
    return re.findall(r">([^<>]*)</td>", styled(rows, formats, blanks).to_html())


def test_missing_values_read_as_a_dash_or_the_reason():
    rows = [{"variant": "A", "$ per month": 12.345, "break-even, months": None, "note": None, "share": math.nan},
            {"variant": "B", "$ per month": None, "break-even, months": 3.0, "note": "x", "share": 0.5}]
    shown = cells(rows, {"$ per month": "$%.2f", "break-even, months": "%.1f", "share": "percent"},
                  {"break-even, months": "never"})
    assert shown == ["A", "$12.35", "never", "–", "–", "B", "–", "3.0", "x", "50.0%"]
    assert not any(c in ("None", "nan", "NaN") for c in shown)
