"""Records -> rows for a results table: raw numbers with units in the column names; the page formats them."""

from __future__ import annotations

from core.records import VariantRecord


def summary_rows(records: list[VariantRecord]) -> list[dict]:
    return [
        {
            "variant": r.label,
            "technique": r.technique,
            "MB held": r.size_mb,
            "peak RSS +MB": r.peak_mem_mb,
            "TTFT ms (median)": r.ttft_ms_median,
            "decode tok/s (median)": r.decode_tokens_per_s_median,
            "decode tok/s p10": r.decode_tokens_per_s_p10,
            "decode tok/s p90": r.decode_tokens_per_s_p90,
            "% of bandwidth limit": r.roofline_pct,
            "perplexity": r.perplexity,
            "KLD vs reference (nats)": r.kld_mean,
            "top-1 agreement": r.top1_agreement,
            "MC accuracy": r.mc_accuracy,
            "MC 95% CI low": r.mc_accuracy_ci95[0],
            "MC 95% CI high": r.mc_accuracy_ci95[1],
            "$ per 1M tokens": r.usd_per_1m_tokens,
            "measured": r.created_at,
        }
        for r in records
    ]


def provenance_lines(records: list[VariantRecord]) -> list[str]:
    """The settings and hardware behind a set of records, one fact a line, for a caption."""
    if not records:
        return []
    r = records[0]
    s = r.settings
    versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
    return [
        f"Hardware: {r.hardware}; device {r.device}; {r.threads} threads.",
        f"Decode: {s.get('decode', 'greedy')}; prompt {s.get('prompt_tokens', '?')} tokens, "
        f"{s.get('new_tokens', '?')} new tokens, {s.get('warmup_runs', '?')} warm-up + {s.get('repeats', '?')} timed runs; "
        "spread shown is the 10th-90th percentile of the timed runs.",
        f"Quality: perplexity/KLD on {s.get('ppl_tokens', '?')} tokens of {s.get('ppl_text', '?').split('/')[-1]} "
        f"in {s.get('ppl_window_tokens', '?')}-token windows; multiple choice on {s.get('mc_items', '?')} questions of "
        f"{s.get('eval_set', '?').split('/')[-1]} (95% bootstrap CI).",
        f"Memory bandwidth measured here: {r.bandwidth_gb_s:.1f} GB/s (buffer copy, median).",
        f"Libraries: {versions}.",
    ]
