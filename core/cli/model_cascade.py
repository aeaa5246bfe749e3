"""`python -m core model-cascade`: small model first, large model when unsure (issue #33, item 2): every threshold's
point printed and stored, and whether any beats both ends, in words.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from core import models
from core.cli.common import json_folder, say, write_json
from core.hybrids import curve
from core.hybrids import model_cascade as mc
from core.hybrids.curve import CascadePoint
from core.measure import cost
from core.words import plural

GRID_STEPS = 20  # thresholds printed by default: 0, 0.05, ..., 1 (every point is stored)


def add_parsers(sub) -> None:
    """Registers `model-cascade` on `sub` (argparse's subparsers)."""
    s = sub.add_parser("model-cascade", help="small model first, large model when its confidence is below a "
                       "threshold: accuracy, share escalated, ms and $ per 1,000 requests at every threshold")
    s.add_argument("--first", default=mc.STUDENT, help="the small model: 'student' (the newest distilled student), a "
                   "technique of --model (e.g. gguf-q2_k), or a model in fp32 (bundled key or folder)")
    s.add_argument("--second", default="fp32", help="the large model, named the same way (default: fp32 of --model)")
    s.add_argument("--task", choices=list(mc.TASKS), default="mc",
                   help="mc: the bundled multiple-choice set; support-routing: the routing test split (5 teams)")
    s.add_argument("--data", help="your own file in the task's format instead of the bundled one")
    s.add_argument("--model", default=models.DEFAULT_MODEL, help="the base model whose techniques the stages name")
    s.add_argument("--shots", type=int, help=f"support-routing: worked examples (one per team in turn, from the "
                   f"training split) before each prompt; default {mc.ROUTING_SHOTS}, 0 = zero-shot")
    s.add_argument("--max-items", type=int, default=0, help="only the first N items (0 = all)")
    s.add_argument("--thresholds", help="comma-separated confidences in [0, 1] (default: every 0.05 and every "
                   "confidence seen)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu",
                   help="price preset for $ per 1,000 requests")
    s.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    s.add_argument("--all-points", action="store_true", help="print every stored threshold, not only every 0.05")
    s.add_argument("--json", help="also write the result here as JSON")
    s.add_argument("--no-store", action="store_true", help=f"do not append to {curve.results_path().name}")
    s.set_defaults(func=cmd_model_cascade)


def _thresholds(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--thresholds: {text!r} is not a comma-separated list of numbers between 0 and 1") from None


def settings_of(args: argparse.Namespace) -> mc.ModelCascadeSettings:
    return mc.ModelCascadeSettings(
        first=args.first, second=args.second, task=args.task, data=args.data or "", model=args.model,
        max_items=args.max_items, threads=args.threads, hardware=args.hardware, usd_per_hour=args.usd_per_hour,
        thresholds=_thresholds(args.thresholds), shots=args.shots)


def cmd_model_cascade(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    json_folder(args.json)
    mc.check_request(settings)  # refuse bad input before a model loads or anything is written
    result = mc.run_model_cascade(settings, report=say)
    if not args.no_store:
        curve.save_result(result)
    print_result(result, args.all_points or bool(settings.thresholds))
    if args.json:
        write_json(args.json, result.to_dict())


# ---------------------------------------------------------------- words


def _row(p: CascadePoint, name: str) -> str:
    return (f"{name:<14}{p.share_escalated:>10.0%}{p.accuracy:>10.1%}  [{p.accuracy_low:5.1%}, {p.accuracy_high:5.1%}]"
            f"{p.mean_latency_ms:>10.1f}{p.usd_per_1k_requests:>12.5f}")


def _on_grid(p: CascadePoint) -> bool:
    return abs(p.threshold * GRID_STEPS - round(p.threshold * GRID_STEPS)) < 1e-6


def why_not(v: mc.Verdict) -> str:
    """Why no threshold beats both ends, with the numbers that show it."""
    better = max((v.first, v.second), key=lambda p: (p.accuracy, -p.usd_per_1k_requests))
    top = v.most_accurate
    if better is v.first:
        return (f"the small model alone is already as accurate as the large one ({v.first.accuracy:.1%} against "
                f"{v.second.accuracy:.1%}) and cheaper, so every escalation adds cost")
    if top.accuracy < better.accuracy:
        return (f"the most accurate threshold ({top.threshold:.3f}, {top.share_escalated:.0%} escalated) reaches "
                f"{top.accuracy:.1%}, below the large model alone's {better.accuracy:.1%}: the small model's "
                "confidence does not single out the items it gets wrong")
    return (f"matching the large model alone's {better.accuracy:.1%} takes threshold {top.threshold:.3f} "
            f"({top.share_escalated:.0%} escalated) at ${top.usd_per_1k_requests:.5f} per 1,000 requests, not less "
            f"than its ${better.usd_per_1k_requests:.5f}: the small model's time is paid on every request")


def _thresholds_words(points: Sequence[CascadePoint]) -> str:
    """A few thresholds by name; many as their range, with the accuracy and the share escalated over it."""
    if len(points) <= 6:
        return "thresholds " + ", ".join(f"{p.threshold:.4f}" for p in points)
    lo, hi = min(points, key=lambda p: p.threshold), max(points, key=lambda p: p.threshold)
    accs, shares = [p.accuracy for p in points], [p.share_escalated for p in points]
    return (f"{len(points)} thresholds from {lo.threshold:.4f} to {hi.threshold:.4f} (accuracy {min(accs):.1%} to "
            f"{max(accs):.1%}, {min(shares):.0%} to {max(shares):.0%} escalated)")


def print_result(result: curve.CascadeResult, all_points: bool = False) -> None:
    points = result.curve_points()
    v = mc.verdict(points)
    print(f"{result.task}: {plural(result.n_items, 'item')}; first: {result.first}; second: {result.second}; "
          f"${result.usd_per_hour:.4f}/h ({result.hardware_preset})")
    print(f"{'threshold':<14}{'escalated':>10}{'accuracy':>10}  {'95% interval':<16}{'mean ms':>10}{'$/1k req':>12}")
    print(_row(v.first, "first alone"))
    print(_row(v.second, "second alone"))
    for p in points:
        if p.role == "cascade" and (all_points or _on_grid(p)):
            print(_row(p, f"{p.threshold:.3f}"))
    shown = sum(1 for p in points if p.role == "cascade" and (all_points or _on_grid(p)))
    if shown < len(points) - 2:
        print(f"({len(points) - 2 - shown} more thresholds, at every confidence seen, are stored; --all-points "
              "prints them)")
    if v.best is not None:
        print(f"best: threshold {v.best.threshold:.3f}: {v.best.accuracy:.1%} with {v.best.share_escalated:.0%} "
              f"escalated, {v.best.mean_latency_ms:.1f} ms, ${v.best.usd_per_1k_requests:.5f} per 1,000 requests "
              f"(the cheapest within {curve.MAX_ACCURACY_DROP_POINTS:g} point of the second alone)")
    else:
        print(f"best: none within {curve.MAX_ACCURACY_DROP_POINTS:g} point of the second alone's accuracy")
    if v.beats_both_ends:
        print(f"beats both ends: yes at {_thresholds_words(v.winners)}")
    else:
        print(f"beats both ends: no, because {why_not(v)}")
