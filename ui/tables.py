"""Render helper: a results table in which a missing number reads "–" (or the column's reason, such
as "never"), never "None" or "nan"."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import streamlit as st

DASH = "–"


Format = str | Callable[[float], str]


def cell_formatter(spec: Format | None) -> Callable[[object], str]:
    """A printf-style spec ("%.1f", "$%.4f", "%d"), "percent", or a core formatter (chart_quantities.fmt_nats, so a
    table and a sentence show one number alike) as a function of one non-missing cell."""
    def show(value) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or spec is None:
            return str(value)
        if callable(spec):
            return spec(value)
        if spec == "percent":
            return f"{value:.1%}"
        return spec % value
    return show


def styled(rows: Sequence[dict], formats: dict[str, Format] | None = None,
           blanks: dict[str, str] | None = None) -> pd.io.formats.style.Styler:
    """Rows as a styled frame: numbers formatted per column, missing cells as "–" or the column's reason."""
    frame = pd.DataFrame(list(rows))
    styler = frame.style
    for column in frame.columns:
        styler = styler.format(cell_formatter((formats or {}).get(column)), subset=[column],
                               na_rep=(blanks or {}).get(column, DASH))
    return styler


def show_table(rows: Sequence[dict], formats: dict[str, Format] | None = None, blanks: dict[str, str] | None = None,
               **kwargs) -> None:
    """st.dataframe of `rows` (list of dicts) with "–" for what is missing; kwargs go to st.dataframe."""
    if not rows:
        return
    st.dataframe(styled(rows, formats, blanks), hide_index=True, **kwargs)
