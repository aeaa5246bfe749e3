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
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from core.paths import repo_root
from core.store.records import VariantRecord
from core.views import capacity, plots, serving_plots
from core.views.figures import speed_bars_figure

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
        "created_at": created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
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


# --- the HTML report -------------------------------------------------------------------------------

TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (  # (field, heading, format)
    ("label", "Variant", ""), ("technique", "Technique", ""), ("runtime", "Runtime", ""), ("family", "Family", ""),
    ("size_mb", "MB held", ".0f"), ("decode_tokens_per_s_median", "Decode tok/s", ".1f"),
    ("ttft_ms_median", "TTFT ms", ".0f"), ("usd_per_1m_tokens", "$ / 1M tokens", ".4f"),
    ("top1_agreement", "Top-1 agreement", ".1%"), ("kld_mean", "KLD nats", ".3f"),
    ("perplexity", "Perplexity", ".2f"), ("mc_accuracy", "MC accuracy", ".1%"),
    ("run_id", "Run", ""), ("created_at", "Measured (UTC)", ""), ("device", "Device", ""),
    ("dtype", "Dtype", ""), ("threads", "Threads", ""),
)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
table{border-collapse:collapse;font-size:.85rem;width:100%}th,td{border:1px solid #ccc;padding:.3rem .5rem}
th{background:#f3f3f3;text-align:left}td.num{text-align:right}.note{color:#555;font-size:.9rem}
pre{background:#f6f6f6;padding:1rem;overflow-x:auto;font-size:.8rem}
"""


def _cell(value: Any, spec: str) -> str:
    if spec and isinstance(value, (int, float)):
        return f'<td class="num">{html.escape(format(value, spec) if math.isfinite(value) else "n/a")}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def variants_table_html(records: Sequence[VariantRecord]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in TABLE_COLUMNS)
    rows = "".join("<tr>" + "".join(_cell(getattr(r, f), spec) for f, _, spec in TABLE_COLUMNS) + "</tr>"
                   for r in records)
    return f'<table id="variants"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


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
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in SERVING_COLUMNS)
    rows = "".join("<tr>" + "".join(_cell(getattr(r, f), spec) for f, _, spec in SERVING_COLUMNS) + "</tr>"
                   for r in serving)
    return f'<table id="serving"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def figures_html(figures: Sequence[tuple[str, go.Figure]]) -> str:
    # plotly.js goes inline once, with the first figure, so the file opens with no network at all.
    parts = []
    for i, (title, fig) in enumerate(figures):
        body = fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    return "".join(parts)


def html_report(title: str, records: Sequence[VariantRecord], figures: Sequence[tuple[str, go.Figure]],
                summary_lines: Sequence[str], manifest_: dict[str, Any], serving: Sequence = ()) -> str:
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in summary_lines)
    served = (f"<h2>Serving at load</h2><p class=\"note\">Concurrent streaming requests against a server on 127.0.0.1, "
              f"timed at the client.</p>{serving_table_html(serving)}") if serving else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{lines}"
        f"{figures_html(figures)}<h2>Every variant</h2>{variants_table_html(records)}{served}"
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
                 commit: str | None = None, serving: Sequence = ()) -> ReportBundle:
    """Every export of one model on one machine, built from the records the Trade-off Map shows.

    `serving`: load-benchmark points (ServingRecord) of the same model and machine, if any were measured.
    """
    if not records:
        raise ValueError("nothing to report: measure some variants first")
    figures = [
        ("Trade-off Map: quality vs decode latency", plots.tradeoff_figure(records, metric_key, "latency")),
        ("Trade-off Map: quality vs cost", plots.tradeoff_figure(records, metric_key, "cost")),
        ("Speed against the memory-bandwidth limit", speed_bars_figure(records)),
    ]
    summary = [plots.what_you_give_up(records, metric_key, "latency"), plots.what_you_give_up(records, metric_key, "cost"),
               f"Hardware: {records[0].hardware}. Priced at ${records[0].usd_per_hour:.4f}/hour "
               f"({records[0].hardware_preset})."]
    if serving:
        for n in sorted({r.prompt_tokens for r in serving}):
            figures.append((f"Serving frontier, {n}-token prompts", serving_plots.frontier_figure(serving, n)))
        curves: dict[tuple, list] = {}
        for r in serving:
            curves.setdefault((r.technique, r.runtime, r.prompt_tokens), []).append(r)
        summary += [story.sentence() for story in map(capacity.scaling_story, curves.values()) if story]
    meta = manifest(records, settings, commit if commit is not None else git_commit())
    page = html_report(f"LLM Trade-off Lab report: {model_label}", records, figures, summary, meta, serving)
    return ReportBundle(page, records_csv(records), records_json(records, meta, serving), meta)
