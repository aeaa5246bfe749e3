"""`python -m core cascade`: a TF-IDF + logistic regression classifier in front of an LLM (core/hybrids/classical.py),
measured once on every test item, every threshold's point printed and stored, and the issue's bar checked in words.
"""

from __future__ import annotations

import argparse

from core import models
from core.cli.common import json_folder, say, write_json
from core.hybrids import classical, curve
from core.measure import cost


def add_parsers(sub) -> None:
    """Registers `cascade` on `sub` (argparse's subparsers)."""
    c = sub.add_parser("cascade", help="a TF-IDF + logistic regression classifier answers when sure and sends the "
                       "rest to an LLM: every threshold's accuracy, share sent on, ms and $ per 1,000 requests")
    c.add_argument("--second", default="fp32", help="the LLM stage: fp32 (the base model few-shot), lora (the saved "
                   "LoRA-tuned model) or gguf-<quant> on llama.cpp (e.g. gguf-q4_k_m)")
    c.add_argument("--model", default=models.DEFAULT_MODEL, help="the base model of the LLM stage")
    c.add_argument("--task", default="support-routing", help="bundled task (ignored with --train/--test or --data)")
    c.add_argument("--train", help='your training JSONL of {"prompt", "completion"} lines (with --test)')
    c.add_argument("--test", help="your test JSONL, in the same format")
    c.add_argument("--data", help="one JSONL file split 80/20 into train and test (the split `lora --data` uses)")
    c.add_argument("--shots", type=int, default=classical.ClassicalSettings.shots,
                   help="worked examples before each question for the base model, one per label in turn")
    c.add_argument("--seed", type=int, default=0, help="picks the shots and splits --data")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--threshold", type=float, help="also report the cascade at this confidence (0 to 1)")
    c.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu", help="price preset")
    c.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    c.add_argument("--json", help="also write the result here as JSON")
    c.set_defaults(func=cmd_cascade)


def settings_from(args: argparse.Namespace) -> classical.ClassicalSettings:
    return classical.ClassicalSettings(
        second=args.second, task=args.task, train_file=args.train or "", test_file=args.test or "",
        data_file=args.data or "", shots=args.shots, seed=args.seed, threads=args.threads, model=args.model,
        hardware_preset=args.hardware, usd_per_hour=args.usd_per_hour, threshold=args.threshold)


def cmd_cascade(args: argparse.Namespace) -> None:
    settings = settings_from(args)
    json_folder(args.json)
    classical.check_request(settings)  # bad input is refused before a model loads or anything is written
    result = classical.run_classical(settings, report=say)
    curve.save_result(result)
    print_result(result, settings.threshold)
    if args.json:
        write_json(args.json, result.to_dict())


def _row(p: curve.CascadePoint) -> str:
    where = {"first alone": "classifier alone", "second alone": "LLM alone"}.get(p.role, f"{p.threshold:.4f}")
    return (f"{where:<17}{p.share_escalated:>8.0%}{p.accuracy:>9.1%}  [{p.accuracy_low:5.1%}, {p.accuracy_high:5.1%}]"
            f"{p.mean_latency_ms:>11.2f}{p.usd_per_1k_requests:>12.6f}")


def print_result(result: curve.CascadeResult, threshold: float | None = None) -> None:
    points = result.curve_points()
    print(f"{result.first} -> {result.second} on {result.task} ({result.n_items} test items), "
          f"{result.hardware_preset} at ${result.usd_per_hour:.4f}/h")
    print(f"{'threshold':<17}{'to LLM':>8}{'accuracy':>9}  {'95% interval':<16}{'mean ms':>11}{'$ / 1k req':>12}")
    shown = None  # the escalated set only grows with the threshold: an equal share is the same point again
    for p in points:
        if p.role != "cascade" or p.share_escalated != shown:
            print(_row(p))
        shown = p.share_escalated if p.role == "cascade" else shown
    print(f"({len(points) - 2} thresholds stored; thresholds that send the same requests on are shown once)")
    if threshold is not None:
        print("at your threshold:")
        print(_row(curve.at_threshold([curve.ItemOutcome(**o) for o in result.outcomes], threshold,
                                      result.usd_per_hour)))
    for line in verdict_lines(classical.verdict(points)):
        print(line)


def verdict_lines(v: classical.Verdict) -> list[str]:
    c, llm, u = v.classifier, v.llm, v.best_under_share
    lines = [f"Ends: the classifier alone {c.accuracy:.1%} at {c.mean_latency_ms:.2f} ms; the LLM alone "
             f"{llm.accuracy:.1%} at {llm.mean_latency_ms:.1f} ms."]
    if v.best is None:
        lines.append(f"Best threshold: none comes within {v.max_drop_points:g} point of the LLM alone.")
    else:
        b = v.best
        lines.append(f"Best threshold {b.threshold:.4f}: {b.accuracy:.1%} [{b.accuracy_low:.1%}, {b.accuracy_high:.1%}]"
                     f", {b.share_escalated:.0%} sent to the LLM, {b.mean_latency_ms:.2f} ms, "
                     f"${b.usd_per_1k_requests:.6f} per 1,000 requests (the cheapest point within "
                     f"{v.max_drop_points:g} point of the LLM alone).")
    bar = (f"accuracy at least {max(0.0, llm.accuracy - v.max_drop_points / 100):.1%} (the LLM alone less {v.max_drop_points:g} "
           f"point) with at most {v.max_share_escalated:.0%} sent to the LLM")
    if v.meets:
        lines.append(f"Meets the bar ({bar}): threshold {u.threshold:.4f} gives {u.accuracy:.1%} sending "
                     f"{u.share_escalated:.0%}.")
    else:
        lines.append(f"Does not meet the bar ({bar}): the most accurate point sending at most "
                     f"{v.max_share_escalated:.0%} (threshold {u.threshold:.4f}, {u.share_escalated:.0%} sent) reaches "
                     f"{u.accuracy:.1%}, {(llm.accuracy - u.accuracy) * 100:.1f} points below the LLM alone.")
    return lines
