"""Records timed on a busy machine: the words that say so, and the sweep that measures them again.

A record whose kept timed runs were disturbed by other processes (core/measure/others.py) has an unreliable speed,
and so an unreliable cost: the map draws it hollow, its hover gives the others' share, and Decide and the Report say
to measure it again before deciding. Records in, words and job arguments out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from core import techniques
from core.experiments.sweep import SweepSettings
from core.measure import others
from core.store.records import VariantRecord

UNRELIABLE = "busy machine: timings unreliable"  # the map's legend entry for hollow markers
AGAIN = "measure again before deciding"


def reading(record: VariantRecord) -> others.OthersReading:
    return others.read(record.settings or {})


def is_busy(record: VariantRecord) -> bool:
    return reading(record).busy is True


def busy_records(records: Sequence[VariantRecord]) -> list[VariantRecord]:
    return [r for r in records if is_busy(r)]


def _pct(value: float) -> str:
    return f"{value:.1f}%" if value < 10 else f"{value:.0f}%"


def share_words(record: VariantRecord) -> str:
    """'other processes used 48% of the CPU (median of 10 timed runs, at most 52%)', or that it is unknown."""
    r = reading(record)
    if not r.known:
        return "what other processes used of the CPU is unknown"
    runs = f" of {r.runs} timed runs" if r.runs else ""
    return f"other processes used {_pct(r.cpu_pct_median)} of the CPU (median{runs}, at most {_pct(r.cpu_pct_max)})"


def hover_line(record: VariantRecord) -> str:
    """The map's hover line: the others' share for every record, and the verdict for a busy one."""
    r = reading(record)
    if not r.known:
        return "Other processes' CPU while timed: unknown"
    line = (f"Other processes' CPU while timed: {_pct(r.cpu_pct_median)} median, {_pct(r.cpu_pct_max)} max; "
            f"{r.disturbed} of {r.runs} runs disturbed")
    return line + (f"<br><b>{UNRELIABLE}</b>: {AGAIN}" if r.busy else "")


def _listed(records: Sequence[VariantRecord]) -> str:
    return "; ".join(f"{r.label} ({share_words(r)})" for r in records)


def note(records: Sequence[VariantRecord]) -> str | None:
    """One paragraph naming every variant timed on a busy machine, with the share; None when there is none."""
    busy = busy_records(records)
    if not busy:
        return None
    one = len(busy) == 1
    return (f"Measured on a busy machine: {_listed(busy)}. Other processes took the CPU while "
            f"{'it was' if one else 'they were'} timed, so {'its' if one else 'their'} speed and cost are unreliable "
            f"(probably too slow and too expensive): {AGAIN}.")


def decision_note(records: Sequence[VariantRecord], chosen: VariantRecord | None,
                  reference: VariantRecord | None) -> str | None:
    """What a recommendation must add when any variant it chose from was timed on a busy machine."""
    text = note(records)
    if text is None:
        return None
    rests_on = [r.label for r in (chosen, reference) if r is not None and is_busy(r)]
    if rests_on:
        return f"This choice rests on timings from a busy machine ({' and '.join(rests_on)}). {text}"
    return f"{text} The choice may change once they are measured on a quiet machine."


@dataclass(frozen=True)
class Remeasure:
    """A sweep of just the busy variants, with the settings they were measured with (a "sweep" job's arguments)."""
    techniques: tuple[str, ...]
    labels: tuple[str, ...]
    settings: SweepSettings
    why: str = "busy machine"

    def job_label(self, model: str) -> str:
        return f"Measure again ({self.why}): {', '.join(self.labels)} of {model}"


def _sweepable(key: str) -> bool:
    try:
        techniques.get(key)
        return True
    except ValueError:
        return False


def quick_records(records: Sequence[VariantRecord]) -> list[VariantRecord]:
    return [r for r in records if (r.settings or {}).get("quick")]


def quick_note(records: Sequence[VariantRecord]) -> str:
    """Words for records from a quick first look ("" when none): fewer timed runs and questions, wider intervals."""
    quick = quick_records(records)
    if not quick:
        return ""
    s = quick[0].settings
    which = ", ".join(r.label for r in quick)
    return (f"{which}: from a quick first look ({s.get('repeats')} timed runs, {s.get('mc_items')} questions, "
            f"{s.get('ppl_tokens')} tokens of text), so their intervals are wider than a full pass's. Measure them "
            "fully when there is time; the full numbers replace these.")


def refine(records: Sequence[VariantRecord]) -> Remeasure | None:
    """The full pass of the variants measured only by a quick look, or None when there is none."""
    quick = [r for r in quick_records(records) if _sweepable(r.technique)]
    if not quick:
        return None
    settings = _settings_of(max(quick, key=lambda r: r.created_at)).full()
    return Remeasure(tuple(r.technique for r in quick), tuple(r.label for r in quick), settings, "full pass")


def _settings_of(record: VariantRecord) -> SweepSettings:
    names = {f.name for f in fields(SweepSettings)}
    kept = {k: v for k, v in (record.settings or {}).items() if k in names}
    return SweepSettings(**(kept | {"launched_from": "dashboard"}))


def remeasure(records: Sequence[VariantRecord]) -> Remeasure | None:
    """The sweep that measures the busy variants again (those a sweep can measure), or None when there is none.
    Settings come from the newest busy record, so the new numbers are timed as the old ones were."""
    busy = [r for r in busy_records(records) if _sweepable(r.technique)]
    if not busy:
        return None
    settings = _settings_of(max(busy, key=lambda r: r.created_at))
    return Remeasure(tuple(r.technique for r in busy), tuple(r.label for r in busy), settings)
