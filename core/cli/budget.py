"""`python -m core budget`: the GGUF file that fits a size budget with the least damage, measured beside the presets.

    python -m core budget --match-presets q3_k_m,q4_k_m,q5_k_m     # one searched file per preset size
    python -m core budget --budgets-mb 80,95,110 --imatrix --json out.json
"""

from __future__ import annotations

import json
import time

from core import models
from core.cli.common import say
from core.experiments import budget_search
from core.launch import kinds
from core.launch.kinds import BudgetArgs
from core.measure import quant_error
from core.views import budget


def _numbers(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} takes comma-separated numbers, e.g. 80,95,110; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"--{what} needs one or more positive sizes in MB; got {text!r}")
    return values


def cmd_budget(args) -> None:
    if bool(args.budgets_mb) == bool(args.match_presets):
        raise ValueError("give exactly one of --budgets-mb or --match-presets")
    budgets = [round(v * 1e6) for v in _numbers(args.budgets_mb, "budgets-mb")] if args.budgets_mb else None
    presets = [p.strip() for p in args.match_presets.split(",") if p.strip()] if args.match_presets else None
    if budgets:  # refused as the page and the queue refuse it (core/launch/kinds), before anything is built
        kinds.check(BudgetArgs(args.model, tuple(budgets), args.imatrix))
    result = budget_search.run(budgets, presets, args.imatrix, args.model, args.threads, say)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(report(result))
    chart = budget_search.results_path().parent / f"budget-frontier-{time.strftime('%Y%m%d-%H%M%S')}.html"
    budget.figure(result).write_html(chart, include_plotlyjs=True)  # self-contained: opens with no network
    print(f"size-against-KLD chart: {chart} (and on the Quantize page, under Fit my budget)")


def report(result: dict) -> str:
    c = result["calibration"]
    lines = [(f"calibration ({len(c['groups'])} groups, each dropped alone from Q8_0; calibration text): all Q8_0 "
             f"KLD {c['base_kld']:.4f}; nats per unit of estimate from "
             f"{min(g['scale'] for g in c['groups']):.3g} to {max(g['scale'] for g in c['groups']):.3g}"),
             (f"held-out check ({len(c['held_out'])} files at other types and spans): Spearman {c['spearman']:.2f}, "
             f"mean |predicted - measured| {c['mean_abs_error']:.4f} nats")]
    lines += [f"  {h['label']}: predicted {h['predicted']:.4f}, measured {h['kld']:.4f}" for h in c["held_out"]]
    for row in result["rows"]:
        if row["role"] != "searched":
            continue
        lines += ["", (f"{row['key']}: {row['size_bytes'] / 1e6:.2f} MB (budget {row['budget_bytes'] / 1e6:.2f} MB), "
                      f"KLD predicted {row['predicted_kld']:.4f}, measured {row['kld_mean']:.4f} "
                      f"± {row['kld_mean_uncertainty']:.4f}, decode {row['decode_tokens_per_s']:.1f} tok/s")]
        lines += [f"  {w}" for w in row["recipe_words"]]
        near = budget_search.nearest_preset(result, row["size_bytes"])
        if near:
            lines.append(f"  nearest preset {near['key']}: {near['size_bytes'] / 1e6:.2f} MB, KLD {near['kld_mean']:.4f} "
                         f"± {near['kld_mean_uncertainty']:.4f}, decode {near['decode_tokens_per_s']:.1f} tok/s")
    lines += ["", "presets:"] + [f"  {r['key']}: {r['size_bytes'] / 1e6:.2f} MB, KLD {r['kld_mean']:.4f}, decode "
                                 f"{r['decode_tokens_per_s']:.1f} tok/s" for r in result["rows"] if r["role"] == "preset"]
    searched = [r for r in result["rows"] if r["role"] == "searched"]
    if len(searched) >= 2:
        rho = quant_error.spearman([r["predicted_kld"] for r in searched], [r["kld_mean"] for r in searched])
        lines.append(f"searched files, predicted against measured KLD (evaluation text): Spearman {rho:.2f}")
    lines.append(f"took {result['elapsed_s']:.0f} s; stored in {budget_search.results_path()}")
    return "\n".join(lines)


def add_parsers(sub) -> None:
    """Registers the `budget` subcommand on `sub` (argparse's subparsers)."""
    b = sub.add_parser("budget", help="the GGUF file that fits a size budget with the least damage: a type per "
                       "tensor, searched, written by llama.cpp and measured beside the presets")
    b.add_argument("--model", default=models.DEFAULT_MODEL)
    b.add_argument("--budgets-mb", help="comma-separated file sizes in MB (1 MB = 10^6 bytes)")
    b.add_argument("--match-presets", help="comma-separated presets whose file sizes are the budgets, e.g. "
                   "q3_k_m,q4_k_m,q5_k_m")
    b.add_argument("--imatrix", action="store_true", help="quantize with the importance matrix (calibration text)")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--json", help="also write the full result here")
    b.set_defaults(func=cmd_budget)
