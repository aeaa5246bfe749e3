"""Stakeholder report: one self-contained HTML file (charts inline, opens offline), plus CSV and JSON of the
results and a manifest of versions, hardware, seeds and settings so that someone else can reproduce them.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from core.paths import repo_root
from core.store.records import VariantRecord
from core.views import busy, capacity, serving_plots, tradeoff_map
from core.views.chart_quantities import cost_interval
from core.views.speed_bars import speed_bars_figure
from core.views.tables import launched_from

MANIFEST_VERSION = 1


# --- provenance ------------------------------------------------------------------------------------


def git_commit(root: Path | None = None) -> str | None:
    """The app's commit, read from .git files (no git process); None outside a checkout."""
    git = (root or repo_root()) / ".git"
    try:
        if git.is_file():  # a worktree or submodule: ".git" holds "gitdir: <path>"
            git = git.parent / git.read_text().split(":", 1)[1].strip()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head or None  # a detached HEAD holds the hash itself
        ref = head[len("ref: "):]
        common = git / (git / "commondir").read_text().strip() if (git / "commondir").is_file() else git
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text().strip()
        packed = common / "packed-refs"
        for line in packed.read_text().splitlines() if packed.is_file() else []:
            if line.endswith(" " + ref):
                return line.split()[0]
    except (OSError, IndexError):
        return None
    return None  # a branch with no commit yet


def manifest(records: Sequence[VariantRecord], settings: dict[str, Any], commit: str | None = None,
             created_at: str | None = None) -> dict[str, Any]:
    """What produced these numbers: per-run settings and seeds, library versions, hardware, the app commit."""
    runs: dict[str, dict[str, Any]] = {}
    for r in records:
        runs.setdefault(r.run_id, {
            "run_id": r.run_id, "hardware": r.hardware, "device": r.device, "threads": r.threads,
            "versions": r.versions, "seed": r.settings.get("seed"), "settings": r.settings, "techniques": []})
        runs[r.run_id]["techniques"].append(r.technique)
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_at": created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        "app_commit": commit,
        "python": platform.python_version(),
        "models": sorted({r.model for r in records}),
        "hardware": sorted({r.hardware for r in records}),
        "seeds": sorted({s for s in (r.settings.get("seed") for r in records) if s is not None}),
        "report_settings": settings,
        "runs": list(runs.values()),
        "variants": [{"technique": r.technique, "label": r.label, "run_id": r.run_id, "created_at": r.created_at}
                     for r in records],
    }


# --- data exports ----------------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON: write them as null so every JSON reader accepts the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def records_json(records: Sequence[VariantRecord], manifest_: dict[str, Any], serving: Sequence = ()) -> str:
    body = {"manifest": manifest_, "results": [r.to_dict() for r in records]}
    if serving:
        body["serving"] = [r.to_dict() for r in serving]
    return json.dumps(_json_safe(body), indent=2)


CSV_SKIP = ("mc_per_item", "ttft_ms_samples", "decode_tokens_per_s_samples")  # long lists: they are in the JSON


def records_csv(records: Sequence[VariantRecord]) -> str:
    """One row per variant; nested fields (versions, settings, facts) as JSON text in their cell."""
    names = [f.name for f in fields(VariantRecord) if f.name not in CSV_SKIP]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names)
    writer.writeheader()
    for r in records:
        row = r.to_dict()
        writer.writerow({n: json.dumps(_json_safe(row[n])) if isinstance(row[n], (dict, list)) else row[n]
                         for n in names})
    return out.getvalue()


# --- the HTML report: tables ----------------------------------------------------------------------

MISSING = "–"  # what a cell shows for a value that was not measured (never "None" or "nan")

TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (  # (field, heading, format): the record fields the page shows
    ("label", "Variant", ""), ("technique", "Technique", ""), ("runtime", "Runtime", ""), ("family", "Family", ""),
    ("size_mb", "MB held", ".0f"), ("decode_tokens_per_s_median", "Decode tok/s", ".1f"),
    ("ttft_ms_median", "TTFT ms", ".0f"), ("usd_per_1m_tokens", "$ / 1M tokens", ".4f"),
    ("top1_agreement", "Top-1 agreement", ".1%"), ("kld_mean", "KLD nats", ".3f"), ("kld_p99", "KLD p99 nats", ".3f"),
    ("perplexity", "Perplexity", ".2f"), ("mc_accuracy", "MC accuracy", ".1%"),
    ("run_id", "Run", ""), ("created_at", "Measured (UTC)", ""), ("device", "Device", ""),
    ("dtype", "Dtype", ""), ("threads", "Threads", ""),
)

_STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem;
overflow-wrap:break-word}
table{border-collapse:collapse;font-size:.85rem;width:100%}th,td{border:1px solid #ccc;padding:.3rem .5rem}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;white-space:nowrap}.note{color:#555;font-size:.9rem}
pre{background:#f6f6f6;padding:1rem;overflow-x:auto;font-size:.8rem}
#variants th:first-child,#variants td:first-child{position:sticky;left:0;background:#fff;min-width:9rem}
#variants th:first-child{background:#f3f3f3}.verdict{font-size:1.15rem}
.warning{background:#fff4e0;border:1px solid #f0b34a;border-left:6px solid #e69500;padding:.6rem .9rem;
margin:.8rem 0;border-radius:4px}
"""

Cell = tuple[str, bool]  # (text, right-aligned)


def _text(value: Any, spec: str = "") -> str:
    """One value as a cell's text; MISSING for None, NaN, infinity and empty text."""
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    if spec and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def _spread(low: Any, high: Any, spec: str) -> str:
    """'low–high', or MISSING unless both ends were measured."""
    ends = [_text(v, spec) for v in (low, high)]
    return MISSING if MISSING in ends else "–".join(ends)


def _ci(record: VariantRecord) -> str:
    bounds = list(record.mc_accuracy_ci95 or [])
    return _spread(*bounds[:2], ".1%") if len(bounds) >= 2 else MISSING


def _cost_spread(record: VariantRecord) -> str:
    cost = cost_interval(record)  # the cheap end comes from the fast (p90) runs
    return _spread(cost.low, cost.high, ".4f")


def _field(name: str, heading: str, spec: str = "") -> tuple[str, Callable[[VariantRecord], Cell]]:
    return heading, lambda r: (_text(getattr(r, name), spec), bool(spec))


def _others_cell(record: VariantRecord) -> Cell:
    """What other processes used of the CPU while the variant was timed: '48% (max 52%), busy machine', or MISSING."""
    r = busy.reading(record)
    if not r.known:
        return MISSING, True
    return (f"{r.cpu_pct_median:.1f}% (max {r.cpu_pct_max:.1f}%)" + (", busy machine" if r.busy else ""), True)


# Every column of the report's variants table: the record's own fields plus the spreads behind each median.
VARIANT_COLUMNS: tuple[tuple[str, Callable[[VariantRecord], Cell]], ...] = (
    _field("label", "Variant"), _field("technique", "Technique"), _field("runtime", "Runtime"),
    _field("family", "Family"), _field("size_mb", "MB held", ".0f"),
    _field("decode_tokens_per_s_median", "Decode tok/s (median)", ".1f"),
    ("Decode tok/s p10–p90", lambda r: (_spread(r.decode_tokens_per_s_p10, r.decode_tokens_per_s_p90, ".1f"), True)),
    _field("ttft_ms_median", "TTFT ms (median)", ".0f"),
    ("TTFT ms p10–p90", lambda r: (_spread(r.ttft_ms_p10, r.ttft_ms_p90, ".0f"), True)),
    _field("usd_per_1m_tokens", "$ / 1M tokens", ".4f"),
    ("$ / 1M tokens at p90–p10 speed", lambda r: (_cost_spread(r), True)),
    _field("top1_agreement", "Top-1 agreement", ".1%"), _field("kld_mean", "KLD nats", ".3f"),
    _field("kld_p99", "KLD p99 nats", ".3f"),
    _field("perplexity", "Perplexity", ".2f"), _field("mc_accuracy", "MC accuracy", ".1%"),
    ("MC accuracy 95% CI", lambda r: (_ci(r), True)),
    ("Other processes' CPU while timed", _others_cell),
    ("Measured from", lambda r: (launched_from(r), False)),
    _field("run_id", "Run"), _field("created_at", "Measured (UTC)"), _field("device", "Device"),
    _field("dtype", "Dtype"), _field("threads", "Threads"),
)


def _table(table_id: str, headings: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """An escaped HTML table in a box that scrolls sideways by itself, so a wide table never widens the page."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f'<td class="num">{html.escape(t)}</td>' if right else f"<td>{html.escape(t)}</td>"
                                    for t, right in row) + "</tr>" for row in rows)
    return (f'<div class="wide" style="overflow-x:auto"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def variants_table_html(records: Sequence[VariantRecord]) -> str:
    rows = [[cell(r) for _, cell in VARIANT_COLUMNS] for r in records]
    return _table("variants", [h for h, _ in VARIANT_COLUMNS], rows)


SERVING_COLUMNS: tuple[tuple[str, str, str], ...] = (  # (field, heading, format)
    ("label", "Variant", ""), ("runtime", "Runtime", ""), ("concurrency", "Concurrency", "d"),
    ("prompt_tokens", "Prompt tokens", "d"), ("new_tokens", "New tokens", "d"),
    ("throughput_tokens_per_s", "Throughput tok/s", ".1f"), ("per_user_tokens_per_s_median", "Per user tok/s", ".1f"),
    ("ttft_ms_p50", "TTFT p50 ms", ".0f"), ("ttft_ms_p90", "TTFT p90 ms", ".0f"), ("itl_ms_p90", "ITL p90 ms", ".0f"),
    ("e2e_ms_p90", "E2E p90 ms", ".0f"), ("kv_cache_mb_measured", "KV MB measured", ".2f"),
    ("kv_cache_mb_estimated", "KV MB estimated", ".2f"), ("peak_mem_mb", "Server peak MB", ".0f"),
    ("usd_per_1m_tokens", "$ / 1M tokens", ".4f"), ("server", "Server", ""), ("created_at", "Measured (UTC)", ""),
)


def serving_table_html(serving: Sequence) -> str:
    rows = [[(_text(getattr(r, f), spec), bool(spec)) for f, _, spec in SERVING_COLUMNS] for r in serving]
    return _table("serving", [h for _, h, _ in SERVING_COLUMNS], rows)


def _bill_cell(value: Any) -> Cell:
    """Money and counts with thousands separators; small amounts keep three significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _text(value), False
    if isinstance(value, int):
        return f"{value:,}", True
    spec = ",.2f" if abs(value) >= 1 or value == 0 else ".3g"
    return _text(value, spec), True


def bill_html(rows: Sequence[dict], note: str) -> str:
    """The monthly bill table (its keys are the headings, units included) and the note that says what it assumes."""
    if not rows and not note:
        return ""
    headings = list(dict.fromkeys(k for row in rows for k in row))
    table = _table("bill", headings, [[_bill_cell(row.get(h)) for h in headings] for row in rows]) if rows else ""
    caption = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f'<section id="monthly-bill"><h2>Monthly bill</h2>{table}{caption}</section>'


# --- the HTML report: the decision, the charts, the page ------------------------------------------

NO_DECISION = ("No decision was asked for when this report was made, so it gives no recommendation: "
               "it shows what was measured.")


def busy_alert(records: Sequence[VariantRecord], decision: Sequence[str]) -> str | None:
    """Which variants were timed on a busy machine, whatever the decision; None if none was, or if the decision
    already says so (once is enough)."""
    note = busy.note(records)
    return note if note and not any(note in line for line in decision) else None


def decision_html(decision: Sequence[str], warning: str | None, summary_lines: Sequence[str],
                  busy_note: str | None = None) -> str:
    """The verdict in bold, the warning (amber) right under it, then its reasons and what each choice gives up.
    `busy_note`: which variants were timed on a busy machine, in amber too."""
    verdict, *reasons = [line for line in decision if line.strip()] or [NO_DECISION]  # blank lines say nothing
    alert = f'<div id="warning" class="warning" role="note">{html.escape(warning)}</div>' if warning else ""
    if busy_note:
        alert += f'<div id="busy" class="warning" role="note">{html.escape(busy_note)}</div>'
    why = "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>" if reasons else ""
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines)
    trade = f"<h3>What the measurements show</h3>{lines}" if lines else ""
    return (f'<section id="decision"><h2>Decision</h2><p class="verdict"><strong>{html.escape(verdict)}</strong></p>'
            f"{alert}{why}{trade}</section>")


def figures_html(figures: Sequence[tuple[str, go.Figure]]) -> str:
    # plotly.js goes inline once, with the first figure, so the file opens with no network at all; each chart
    # takes the page's width and follows it when the window is resized.
    parts = []
    for i, (title, fig) in enumerate(figures):
        body = fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%",
                           config={"displaylogo": False, "responsive": True})
        parts.append(f'<h2>{html.escape(title)}</h2><div class="chart">{body}</div>')
    return "".join(parts)


@dataclass(frozen=True)
class Verdict:
    """What the page decided, already in words: the report only lays it out."""
    decision: Sequence[str] = ()
    warning: str | None = None
    bill_rows: Sequence[dict] = ()
    bill_note: str = ""


SPREAD_NOTE = ("Spreads are the 10th to 90th percentile of the timed runs (the cost range follows the speed: the "
               "fast runs are the cheap end); MC accuracy's is a 95% confidence interval. A dash (–) means not "
               "measured. On a narrow screen the table scrolls sideways.")


def hybrids_html(lines: Sequence[str]) -> str:
    """The hybrids measured on this machine, one sentence each (what they route or speed up, and when they pay)."""
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (f'<section id="hybrids"><h2>Hybrids</h2><p class="note">Cascades are judged on task accuracy, not on '
            f"agreement with the reference; decoding tricks keep the model's answers and change its speed.</p>"
            f"<ul>{items}</ul></section>")


def memory_html(lines: Sequence[str], rows: Sequence[dict]) -> str:
    """Will it fit, in words, and the memory model against llama-server's measured peaks (keys are the headings)."""
    if not lines and not rows:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    headings = list(dict.fromkeys(k for row in rows for k in row))
    table = _table("memory", headings, [[_bill_cell(row.get(h)) for h in headings] for row in rows]) if rows else ""
    return (f'<section id="memory"><h2>Memory at long context and many users</h2><ul>{items}</ul>'
            f'<p class="note">The memory model (weights + KV cache + compute buffers + runtime) against the peak '
            f"resident memory llama-server reached on this machine.</p>{table}</section>")


def html_report(title: str, records: Sequence[VariantRecord], figures: Sequence[tuple[str, go.Figure]],
                summary_lines: Sequence[str], manifest_: dict[str, Any], serving: Sequence = (),
                verdict: Verdict = Verdict(), hybrid_lines: Sequence[str] = (), memory_section: str = "",
                task_section: str = "") -> str:
    served = (f"<h2>Serving at load</h2><p class=\"note\">Concurrent streaming requests against a server on "
              f"127.0.0.1, timed at the client.</p>{serving_table_html(serving)}") if serving else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{decision_html(verdict.decision, verdict.warning, summary_lines, busy_alert(records, verdict.decision))}"
        f"{bill_html(verdict.bill_rows, verdict.bill_note)}{figures_html(figures)}{hybrids_html(hybrid_lines)}"
        f"{memory_section}{task_section}"
        f'<h2>Every variant</h2><p class="note">{html.escape(SPREAD_NOTE)}</p>{variants_table_html(records)}{served}'
        f"<h2>Manifest</h2><p class=\"note\">Versions, hardware, seeds and settings that produced these numbers."
        f"</p><pre>{html.escape(json.dumps(_json_safe(manifest_), indent=2))}</pre></body></html>"
    )


@dataclass(frozen=True)
class ReportBundle:
    html: str
    csv: str
    json: str
    manifest: dict[str, Any]


def build_report(records: Sequence[VariantRecord], model_label: str, metric_key: str, settings: dict[str, Any],
                 commit: str | None = None, serving: Sequence = (), *, decision: Sequence[str] = (),
                 warning: str | None = None, bill_rows: Sequence[dict] = (), bill_note: str = "",
                 hybrid_lines: Sequence[str] = (), hybrid_figures: Sequence[tuple[str, go.Figure]] = (),
                 memory_lines: Sequence[str] = (), memory_figures: Sequence[tuple[str, go.Figure]] = (),
                 memory_rows: Sequence[dict] = (), task_section: str = "") -> ReportBundle:
    """Every export of one model on one machine, built from the records the Trade-off Map shows.

    `serving`: load-benchmark points (ServingRecord) of the same model and machine, if any were measured.
    `decision`: the verdict sentence, then its reasons, in plain words; `warning`: shown in amber under the verdict;
    `bill_rows`/`bill_note`: the monthly bill (keys are headings with units) and what it assumes; `hybrid_lines` and
    `hybrid_figures`: the hybrids measured on this machine, in words and as curves; `memory_*`: will it fit at the
    context, users and cache type asked, the memory chart, and the memory model against measured peaks; `task_section`:
    the user's own task as HTML (core/views/task.py report_html). The caller decides
    (see recommend.py); the report only lays out what it is given, and says so when no decision was asked for.
    """
    if not records:
        raise ValueError("nothing to report: measure some variants first")
    figures = [
        ("Trade-off Map: quality vs decode latency", tradeoff_map.tradeoff_figure(records, metric_key, "latency")),
        ("Trade-off Map: quality vs cost", tradeoff_map.tradeoff_figure(records, metric_key, "cost")),
        ("Speed against the memory-bandwidth limit", speed_bars_figure(records)),
        *hybrid_figures,
        *memory_figures,
    ]
    summary = [tradeoff_map.what_you_give_up(records, metric_key, "latency"),
               tradeoff_map.what_you_give_up(records, metric_key, "cost"),
               (f"Hardware: {records[0].hardware}. Priced at ${records[0].usd_per_hour:.4f}/hour "
               f"({records[0].hardware_preset}).")]
    if serving:
        for n in sorted({r.prompt_tokens for r in serving}):
            figures.append((f"Serving frontier, {n}-token prompts", serving_plots.frontier_figure(serving, n)))
        curves: dict[tuple, list] = {}
        for r in serving:
            curves.setdefault((r.technique, r.runtime, r.prompt_tokens), []).append(r)
        summary += [story.sentence() for story in map(capacity.scaling_story, curves.values()) if story]
    meta = manifest(records, settings, commit if commit is not None else git_commit())
    verdict = Verdict(tuple(decision), warning, tuple(bill_rows), bill_note)
    page = html_report(f"LLM Trade-off Lab report: {model_label}", records, figures, summary, meta, serving, verdict,
                       hybrid_lines, memory_html(memory_lines, memory_rows), task_section)
    return ReportBundle(page, records_csv(records), records_json(records, meta, serving), meta)
