"""Records -> rows for a results table: raw numbers with units in the column names; the page formats them."""

from __future__ import annotations

from core.store.records import VariantRecord
from core.techniques import REFERENCE
from core.views.chart_quantities import fmt_nats, kld_rule
from core.words import plural


def summary_rows(records: list[VariantRecord]) -> list[dict]:
    return [
        {
            "variant": r.label,
            "technique": r.technique,
            "runtime": r.runtime,
            "MB held": r.size_mb,
            "peak RSS +MB": r.peak_mem_mb,
            "TTFT ms (median)": r.ttft_ms_median,
            "decode tok/s (median)": r.decode_tokens_per_s_median,
            "decode tok/s p10": r.decode_tokens_per_s_p10,
            "decode tok/s p90": r.decode_tokens_per_s_p90,
            "% of bandwidth limit": r.roofline_pct,
            "perplexity": r.perplexity,
            "KLD vs reference (nats)": r.kld_mean,
            "KLD p99 (nats)": r.kld_p99,
            "top-1 agreement": r.top1_agreement,
            "MC accuracy": r.mc_accuracy,
            "MC 95% CI low": r.mc_accuracy_ci95[0],
            "MC 95% CI high": r.mc_accuracy_ci95[1],
            "$ per 1M tokens": r.usd_per_1m_tokens,
            "measured": r.created_at,
            "measured from": launched_from(r),
        }
        for r in records
    ]


def launched_from(record: VariantRecord) -> str:
    """'CLI' or 'dashboard': where the run that measured this record was started (speeds differ between them)."""
    return "dashboard" if record.settings.get("launched_from") == "dashboard" else "CLI"


RULE_PHRASES = {
    "llama-perplexity": "scored as llama.cpp's llama-perplexity --kl-divergence scores them (the second half of each "
                        "window), so KLD and same-top agreement compare with its published numbers",
    "every-position": "every position scored (KLD runs several percent above llama-perplexity's on the same text)",
}


def rule_phrase(records: list[VariantRecord]) -> str:
    rules = sorted({kld_rule(r) for r in records})
    if len(rules) == 1:
        return RULE_PHRASES.get(rules[0], rules[0])
    counts = ", ".join(f"{rule}: {sum(kld_rule(r) == rule for r in records)}" for rule in rules)
    return f"mixed scoring rules ({counts}): KLD from different rules differs by several percent"


def provenance_lines(records: list[VariantRecord]) -> list[str]:
    """The settings and hardware behind a set of records, one fact a line, for a caption."""
    if not records:
        return []
    r = records[0]
    s = r.settings
    versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
    from_dashboard = [x.label for x in records if launched_from(x) == "dashboard"]
    started = (f"all {len(records)} started from the CLI." if not from_dashboard else
               f"{len(records) - len(from_dashboard)} started from the CLI, {len(from_dashboard)} from the dashboard "
               f"({', '.join(from_dashboard)}): the dashboard's server and browser share the cores with the model, so "
               "those speeds run lower than from the CLI; `python -m core sweep` gives the cleanest numbers.")
    return [
        f"Hardware: {r.hardware}; device {r.device}; {r.threads} threads; of the {plural(len(records), 'result')} shown, "
        + started,
        f"Decode: {s.get('decode', 'greedy')}; prompt {s.get('prompt_tokens', '?')} tokens, "
        f"{s.get('new_tokens', '?')} new tokens, {s.get('warmup_runs', '?')} warm-up + {s.get('repeats', '?')} timed runs; "
        "spread shown is the 10th-90th percentile of the timed runs.",
        f"Quality: perplexity/KLD on {s.get('ppl_tokens', '?')} tokens of {s.get('ppl_text', '?').split('/')[-1]} "
        f"in {s.get('ppl_window_tokens', '?')}-token windows, {rule_phrase(records)}; multiple choice on "
        f"{s.get('mc_items', '?')} questions of {s.get('eval_set', '?').split('/')[-1]} (95% bootstrap CI).",
        f"Memory read bandwidth measured here: {r.bandwidth_gb_s:.1f} GB/s (best of 10 reads of a 512 MB buffer); "
        "the bandwidth limit on tokens/s is this divided by the bytes the model holds.",
        f"Libraries: {versions}.",
    ]


def moe_view(records: list[VariantRecord], experts: int, dense_layers: int | None = None,
             reference_technique: str = REFERENCE) -> tuple[VariantRecord | None, list[VariantRecord]]:
    """From newest-first records: the newest MoE record per (shared experts, healed or not, k) for E experts (and, if given, that
    many MLP layers left dense), sorted, and the dense reference, preferably from the same run as the newest."""
    latest: dict[tuple[int, bool, int], VariantRecord] = {}
    for r in records:
        facts = r.variant_facts
        if dense_layers is not None and facts.get("dense_layers") != dense_layers:
            continue
        if r.family == "moe" and facts.get("experts") == experts and facts.get("top_k"):
            latest.setdefault((facts.get("shared_experts", 0), bool(facts.get("healed")), facts["top_k"]), r)
    chosen = [latest[key] for key in sorted(latest)]
    references = [r for r in records if r.technique == reference_technique]
    newest_run = max(chosen, key=lambda r: r.created_at).run_id if chosen else None
    same_run = [r for r in references if r.run_id == newest_run]
    return (same_run or references or [None])[0], chosen


def moe_work_pct(facts: dict) -> float:
    """Share of a converted MLP's neurons one token runs, shared experts included (nan for the dense model)."""
    if not facts.get("top_k") or not facts.get("experts"):
        return float("nan")
    return 100 * (facts.get("shared_experts", 0) + facts["top_k"]) / facts["experts"]


def moe_rows(records: list[VariantRecord], reference: VariantRecord | None) -> list[dict]:
    """One row per k (and the dense reference first): structure, speed and quality with units in the names."""
    base = reference.decode_tokens_per_s_median if reference else float("nan")
    rows = []
    for r in ([reference] if reference else []) + records:
        facts = r.variant_facts
        rows.append({
            "variant": r.label,
            "shared experts": facts.get("shared_experts", 0) if facts.get("top_k") else None,
            "experts per token (k)": facts.get("top_k"),
            "share of MLP work %": moe_work_pct(facts),
            "active params (M)": facts.get("active_params", float("nan")) / 1e6,
            "active params %": facts.get("active_params_pct", float("nan")),
            "GFLOPs per token": facts.get("flops_per_token", float("nan")) / 1e9,
            "decode tok/s (median)": r.decode_tokens_per_s_median,
            "speed-up vs dense": r.decode_tokens_per_s_median / base if base else float("nan"),
            "TTFT ms (median)": r.ttft_ms_median,
            "KLD vs dense (nats)": r.kld_mean,
            "KLD p99 (nats)": r.kld_p99,
            "top-1 agreement": r.top1_agreement,
            "perplexity": r.perplexity,
            "MC accuracy": r.mc_accuracy,
            "MC 95% CI low": r.mc_accuracy_ci95[0],
            "MC 95% CI high": r.mc_accuracy_ci95[1],
        })
    return rows


DISTILL_FORMATS = {  # distill_rows' columns as the page shows them; KLD as every sentence writes it
    "MB held": "%.1f", "decode tok/s (median)": "%.1f", "speed-up vs teacher": "%.2fx", "TTFT ms (median)": "%.0f",
    "perplexity": "%.2f", "KLD vs teacher (nats)": fmt_nats, "KLD p99 (nats)": fmt_nats, "top-1 agreement": "percent",
    "MC accuracy": "percent", "$ per 1M tokens": "$%.4f"}


def distill_rows(records: list[VariantRecord], teacher: VariantRecord | None) -> list[dict]:
    """Teacher, pruned and distilled student side by side; speed-up against the teacher where it was measured."""
    return [
        {
            "model": r.label,
            "MB held": r.size_mb,
            "decode tok/s (median)": r.decode_tokens_per_s_median,
            "decode tok/s p10–p90": f"{r.decode_tokens_per_s_p10:.1f}–{r.decode_tokens_per_s_p90:.1f}",
            "speed-up vs teacher": r.decode_tokens_per_s_median / teacher.decode_tokens_per_s_median if teacher else None,
            "TTFT ms (median)": r.ttft_ms_median,
            "perplexity": r.perplexity,
            "KLD vs teacher (nats)": r.kld_mean,
            "KLD p99 (nats)": r.kld_p99,
            "top-1 agreement": r.top1_agreement,
            "MC accuracy": r.mc_accuracy,
            "MC 95% CI": f"{r.mc_accuracy_ci95[0]:.2f}–{r.mc_accuracy_ci95[1]:.2f}",
            "$ per 1M tokens": r.usd_per_1m_tokens,
        }
        for r in records
    ]


def speculative_rows(result: dict) -> list[dict]:
    return [
        {
            "prompt": p["title"] or p["prompt"][:40],
            "identical": p["identical"],
            "tokens": p["tokens"],
            "drafted": p["drafted"],
            "accepted": p["accepted"],
            "teacher passes": p["target_passes"],
            "alone s": p["plain_s"],
            "with draft s": p["assisted_s"],
            "speed-up": p["speedup"],
        }
        for p in result["prompts"]
    ]


def sweep_comparison_rows(compared: list, names: dict[str, str]) -> list[dict]:
    """The Arena's live speeds against the sweep's medians (core/experiments/arena.py, SweepComparison)."""
    return [{"variant": names[c.technique], "live decode tok/s": c.live_tokens_per_s,
             "sweep median tok/s": c.sweep_tokens_per_s, "live / sweep": c.ratio,
             "same prompt length and token count": c.like_for_like} for c in compared]


def sweep_comparison_note(compared: list) -> str:
    """What the live and sweep speeds each are, and when they should agree."""
    return ("Live: one greedy run of this prompt (after one warm-up at load). Sweep: median of its timed runs "
            f"on its own prompt ({compared[0].sweep_prompt_tokens} tokens, {compared[0].sweep_new_tokens} new). "
            "The numbers agree closely only for the same prompt length and token count.")


def tally_rows(tally: list, label) -> list[dict]:
    """Blind-vote tallies (core/store, Tally), each variant under `label(technique key)`."""
    return [{"variant": label(t.technique), "wins": t.wins, "losses": t.losses, "ties": t.ties,
             "win rate": t.win_rate} for t in tally]


def sparsity_rows(records: list[VariantRecord], reference: VariantRecord | None) -> list[dict]:
    """The newest activation-sparsity record per target, by target: quality, speed against the dense reference, and
    the share of feed-forward weights one decoded token really read."""
    newest: dict[int, VariantRecord] = {}
    for r in sorted(records, key=lambda r: r.created_at, reverse=True):
        target = r.variant_facts.get("sparsity_target_pct") if r.family == "sparsity" else None
        if target is not None and r.variant_facts.get("decode_path") == "gather":
            newest.setdefault(target, r)
    base = reference.decode_tokens_per_s_median if reference else float("nan")
    return [{"activations zeroed %": target, "seen while decoding %": r.variant_facts.get("sparsity_decode_pct_mean"),
             "MLP weights read %": r.variant_facts.get("mlp_weights_read_pct"), "KLD vs dense (nats)": r.kld_mean,
             "top-1 agreement": r.top1_agreement, "MC accuracy": r.mc_accuracy, "decode tok/s": r.decode_tokens_per_s_median,
             "speed-up vs dense": r.decode_tokens_per_s_median / base if reference and r.hardware == reference.hardware
             else float("nan")} for target, r in sorted(newest.items())]
