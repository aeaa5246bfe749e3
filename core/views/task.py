"""Your task's results in numbers and words: pass rates with their intervals, the answers that flipped against the
reference, the paired test between two variants, the price of 1,000 answers, the map's quality axis, the Report's
section. A stored task run (core/experiments/task_run.py, as its JSON) in; dataclasses, rows and sentences out.
"""

from __future__ import annotations

import dataclasses
import html
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from core.measure import intervals
from core.measure.intervals import Estimate
from core.store import jsonl
from core.store.records import VariantRecord
from core.views.chart_quantities import TASK_PASS_RATE

CLEAR_P = 0.05  # a paired difference is called clear below this two-sided p-value
FLIPS_SHOWN = 3  # flipped answers the Report shows side by side


@dataclass(frozen=True)
class Score:
    technique: str
    label: str
    runtime: str
    passed: int
    prompts: int
    rate: Estimate  # share passed, with its 95% Wilson interval
    s_per_answer: float  # mean wall seconds per answer (prompt pass and decode)
    tokens_per_answer: float  # mean

    def usd_per_1k_answers(self, usd_per_hour: float) -> float:
        return usd_per_hour / 3600 * self.s_per_answer * 1000


@dataclass(frozen=True)
class Paired:
    """Two variants on the same prompts: how many only one of them passed, and the exact McNemar test on that."""
    variant: str  # label
    reference: str  # label
    only_reference: int  # prompts the reference passes and the variant fails (right -> wrong)
    only_variant: int  # prompts the variant passes and the reference fails (wrong -> right)
    prompts: int
    p_value: float

    @property
    def clear(self) -> bool:
        return self.p_value < CLEAR_P

    def sentence(self) -> str:
        """E.g. "Q4_K_M fails 3 prompts Q8_0 passes and passes 1 it fails: no clear difference on 40 prompts"."""
        said = (f"{self.variant} fails {_prompts(self.only_reference)} {self.reference} passes and passes "
                f"{self.only_variant} it fails")
        if not self.only_reference and not self.only_variant:
            return f"{self.variant} passes and fails the same prompts as {self.reference}, all {self.prompts} of them"
        if not self.clear:
            return (f"{said}: no clear difference on {self.prompts} prompts (exact McNemar test on the "
                    f"{_prompts(self.only_reference + self.only_variant)} where they differ, p = {self.p_value:.2f})")
        better = "worse" if self.only_reference > self.only_variant else "better"
        return (f"{said}: a clear difference on {self.prompts} prompts, {self.variant} does {better} (exact McNemar "
                f"test on the {_prompts(self.only_reference + self.only_variant)} where they differ, "
                f"p = {self.p_value:.3f})")


def _prompts(n: int) -> str:
    return f"{n} prompt{'s' * (n != 1)}"


def _row(result: dict, technique: str) -> dict:
    row = next((v for v in result["variants"] if v["technique"] == technique), None)
    if row is None:
        raise ValueError(f"{technique!r} did not answer this task; it has {', '.join(variant_keys(result))}")
    return row


def variant_keys(result: dict) -> list[str]:
    return [v["technique"] for v in result["variants"]]


def score(row: dict) -> Score:
    n, passed = len(row["passed"]), sum(bool(p) for p in row["passed"])
    rate = intervals.share(passed / n if n else float("nan"), n, unit=f"prompt{'s' * (n != 1)}")
    return Score(row["technique"], row["label"], row["runtime"], passed, n, rate,
                 statistics.fmean(row["seconds"]) if row["seconds"] else float("nan"),
                 statistics.fmean(row["tokens"]) if row["tokens"] else float("nan"))


def scores(result: dict) -> list[Score]:
    return [score(v) for v in result["variants"]]


def flips(result: dict, technique: str) -> tuple[list[int], list[int]]:
    """Prompt indices that went right -> wrong and wrong -> right against the reference."""
    ref, other = _row(result, result["reference"])["passed"], _row(result, technique)["passed"]
    worse = [i for i, (a, b) in enumerate(zip(ref, other)) if a and not b]
    better = [i for i, (a, b) in enumerate(zip(ref, other)) if b and not a]
    return worse, better


def paired(result: dict, technique: str, against: str | None = None) -> Paired:
    """`technique` against `against` (the run's reference by default) on the same prompts."""
    base = against or result["reference"]
    ref, other = _row(result, base)["passed"], _row(result, technique)["passed"]
    only_ref = sum(1 for a, b in zip(ref, other) if a and not b)
    only_other = sum(1 for a, b in zip(ref, other) if b and not a)
    return Paired(_row(result, technique)["label"], _row(result, base)["label"], only_ref, only_other, len(ref),
                  intervals.mcnemar_exact_p(only_ref, only_other))


def verdicts(result: dict) -> list[Paired]:
    """Every variant against the reference."""
    return [paired(result, k) for k in variant_keys(result) if k != result["reference"]]


def score_rows(result: dict, usd_per_hour: float) -> list[dict]:
    """One row per variant, units in the headings."""
    rows = []
    for s in scores(result):
        worse, better = flips(result, s.technique) if s.technique != result["reference"] else ([], [])
        rows.append({"variant": s.label, "runtime": s.runtime, "passed": f"{s.passed}/{s.prompts}",
                     "pass rate": s.rate.value, "95% low": s.rate.low, "95% high": s.rate.high,
                     "right → wrong": len(worse), "wrong → right": len(better),
                     "s per answer": s.s_per_answer, "tokens per answer": s.tokens_per_answer,
                     "$ per 1,000 answers": s.usd_per_1k_answers(usd_per_hour)})
    return rows


def flip_rows(result: dict, technique: str, limit: int | None = None) -> list[dict]:
    """The flipped prompts side by side: the prompt, the reference's answer and this variant's, which way it went."""
    worse, better = flips(result, technique)
    ref, other = _row(result, result["reference"]), _row(result, technique)
    picked = [(i, "right → wrong") for i in worse] + [(i, "wrong → right") for i in better]
    return [{"prompt": result["prompts"][i]["id"], "flip": way, "checks": "; ".join(result["prompts"][i]["checks"]),
             f"{ref['label']} says": ref["answers"][i], f"{other['label']} says": other["answers"][i],
             "failed check": "; ".join(other["failed"][i] or ref["failed"][i])}
            for i, way in picked[:limit]]


def interval_note(result: dict) -> str:
    """How much the number of prompts pins a pass rate down, in words (a one-prompt task says how little)."""
    n = len(result["prompts"])
    if n == 1:
        return ("This task has one prompt: each variant's pass rate is 0% or 100%, and its 95% interval spans most "
                "of 0-100%. It shows very little; add prompts (30 or more give intervals about ±15 points).")
    half = max((s.rate.high - s.rate.low) / 2 for s in scores(result))
    return (f"Intervals are 95% Wilson intervals over {n} prompts (up to ±{half * 100:.0f} points here); more prompts "
            "narrow them.")


# --- the map's and Decide's quality axis ----------------------------------------------------------------------


@dataclass
class TaskRecord(VariantRecord):
    """A measured variant with its pass rate on the user's task (drawn and filtered, never stored)."""
    task_pass_rate: float | None = None
    task_pass_rate_ci95: list[float] | None = None
    task_name: str = ""


def with_task(records: Sequence[VariantRecord], result: dict) -> tuple[list[TaskRecord], list[str]]:
    """The records of variants the task run answered with, each with its pass rate; and the labels left out (the
    task ran variants the sweep never measured here, or the other way round)."""
    by_key = {s.technique: s for s in scores(result)}
    kept = [TaskRecord(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)},
                       task_pass_rate=by_key[r.technique].rate.value,
                       task_pass_rate_ci95=[by_key[r.technique].rate.low, by_key[r.technique].rate.high],
                       task_name=result["task_name"])
            for r in records if r.technique in by_key]
    measured = {r.technique for r in records}
    left_out = [r.label for r in records if r.technique not in by_key] + \
        [f"{s.label} (no speed measured by a sweep here)" for s in by_key.values() if s.technique not in measured]
    return kept, left_out


METRIC_KEY = TASK_PASS_RATE.key


# --- stored runs ------------------------------------------------------------------------------------------------


def runs_of(rows: Sequence[dict], model: str, hardware: str) -> list[dict]:
    """Task runs of this model on this machine, newest first (`rows` newest first, as jsonl reads them)."""
    return [r for r in rows if r.get("model") == model and r.get("hardware") == hardware]


def saved_runs(path) -> list[dict]:
    return jsonl.read_newest_first(path)


def run_label(result: dict) -> str:
    return (f"{result['task_name']} · {len(result['prompts'])} prompts · {', '.join(variant_keys(result))} · "
            f"{result['created_at'][:16].replace('T', ' ')}")


# --- the Report's section -------------------------------------------------------------------------------------


def _cells(cells: Sequence[str], tag: str = "td") -> str:
    return "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells)


def report_html(result: dict, usd_per_hour: float) -> str:
    """The Report's section: the task, pass rates with intervals, the paired verdicts, three flips side by side."""
    head = ["variant", "runtime", "passed", "pass rate (95% interval)", "right → wrong", "wrong → right",
            "s per answer", "$ per 1,000 answers"]
    body = "".join(f"<tr>{_cells(_rate_cells(r))}</tr>" for r in score_rows(result, usd_per_hour))
    said = "".join(f"<li>{html.escape(p.sentence())}.</li>" for p in verdicts(result))
    shown = [row for k in variant_keys(result) if k != result["reference"] for row in flip_rows(result, k)]
    flipped = "".join(f"<tr>{_cells(_flip_cells(row))}</tr>" for row in shown[:FLIPS_SHOWN])
    heads = _cells(["prompt", "flip", "reference says", "variant says", "failed check"], "th")
    flip_table = (f'<table id="task-flips"><tr>{heads}</tr>{flipped}</table>' if flipped
                  else "<p>No answer flipped against the reference.</p>")
    return (f'<section id="my-task"><h2>My task: {html.escape(result["task_name"])}</h2>'
            f'<p class="note">{len(result["prompts"])} prompts, each answer checked (greedy, at most '
            f'{result["new_tokens"]} tokens, the chat template); task file sha256 {result["task_sha256"][:12]}, '
            f'measured {html.escape(result["created_at"][:16])} on {html.escape(result["hardware"])}. '
            f'{html.escape(interval_note(result))} Priced at ${usd_per_hour:.4f}/hour.</p>'
            f'<table id="task-rates"><tr>{_cells(head, "th")}</tr>{body}</table><ul>{said}</ul>'
            f"<h3>Answers that flipped against {html.escape(_row(result, result['reference'])['label'])}</h3>"
            f"{flip_table}</section>")


def _rate_cells(r: dict) -> list[str]:
    rate = f"{r['pass rate']:.0%} ({r['95% low']:.0%}–{r['95% high']:.0%})"
    seconds, usd = r["s per answer"], r["$ per 1,000 answers"]
    return [r["variant"], r["runtime"], r["passed"], rate, r["right → wrong"], r["wrong → right"], f"{seconds:.2f}",
            f"${usd:.4f}"]


def _flip_cells(row: dict) -> list[str]:
    """prompt, flip, the two answers (whatever the variants are called), the failed check."""
    values = list(row.values())
    return [values[0], values[1], values[3], values[4], values[5]]
