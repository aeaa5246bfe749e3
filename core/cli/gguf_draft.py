"""`python -m core gguf-draft`: a GGUF draft model on llama-server against the target alone (issue #33, item 4):
acceptance, decode speed-up and whether the answers stay the same.
"""

from __future__ import annotations

import argparse

from core import models
from core.cli.common import json_folder, say, write_json
from core.hybrids import gguf_draft as gd


def add_parsers(sub) -> None:
    """Registers `gguf-draft` on `sub` (argparse's subparsers)."""
    s = sub.add_parser("gguf-draft", help="speculative decoding on llama-server with a GGUF draft (the distilled "
                       "student by default) against the GGUF target alone: acceptance, decode speed-up, same output?")
    s.add_argument("--model", default=models.DEFAULT_MODEL)
    s.add_argument("--target", default=gd.DraftSettings.target, help="the GGUF technique the target runs as")
    s.add_argument("--draft", default=gd.STUDENT, help=f"{gd.STUDENT!r} (the newest distilled student, exported to "
                   "GGUF), a GGUF technique key (gguf-q2_k, <student>+gguf-q8_0) or a .gguf file with the target's "
                   "vocabulary")
    s.add_argument("--student-quant", default=gd.DraftSettings.student_quant,
                   help="how the student is exported when --draft is student")
    s.add_argument("--draft-max", default=",".join(map(str, gd.DraftSettings.draft_max_tokens)),
                   help="comma-separated: most tokens drafted per target pass; one drafted server per value")
    s.add_argument("--draft-min", type=int, default=0, help="draft nothing when fewer tokens would be proposed")
    s.add_argument("--draft-p-min", type=float, default=0.0,
                   help="the draft stops proposing below this probability of its own top token")
    s.add_argument("--new-tokens", type=int, default=gd.DraftSettings.new_tokens,
                   help="at most, per answer (every server stops at end of turn)")
    s.add_argument("--repeats", type=int, default=gd.DraftSettings.repeats,
                   help="timed runs of each server per prompt; the median is kept")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--prompts", help="comma-separated prompt set files (default: the bundled grounded and open sets)")
    s.add_argument("--json", help="also write the results here as JSON")
    s.add_argument("--no-store", action="store_true", help=f"do not append to {gd.results_path().name}")
    s.set_defaults(func=cmd_gguf_draft)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{flag}: {text!r} is not a comma-separated list of whole numbers, e.g. 3,8") from None


def settings_of(args: argparse.Namespace) -> gd.DraftSettings:
    return gd.DraftSettings(
        target=args.target, draft=args.draft, student_quant=args.student_quant,
        draft_max_tokens=_ints(args.draft_max, "--draft-max"), draft_min_tokens=args.draft_min,
        draft_p_min=args.draft_p_min, new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
        prompt_files=tuple(args.prompts.split(",")) if args.prompts else gd.DraftSettings.prompt_files)


def cmd_gguf_draft(args: argparse.Namespace) -> None:
    settings = settings_of(args)
    json_folder(args.json)
    gd.check_request(settings, args.model)  # refuse bad input before a file is built or a server starts
    results = gd.run_gguf_draft(args.model, settings, report=say)
    if not args.no_store:
        gd.save_results(results)
    print_results(results)
    if args.json:
        write_json(args.json, [r.to_dict() for r in results])


def print_results(results: list[gd.GGUFDraftResult]) -> None:
    if results:
        r = results[0]
        print(f"target {r.technique} ({r.target_file}); draft {r.draft_technique or r.draft} ({r.draft_file}); "
              f"{r.settings.get('server')}; measured on {r.hardware}")
    print(f"{'draft max':>9}  {'prompt set':<12}{'acceptance':>11}{'alone tok/s':>13}{'drafted tok/s':>15}"
          f"{'speed-up':>10}{'p10-p90':>14}{'identical':>11}")
    for r in results:
        q = r.speedup_per_prompt
        spread = f"{q['p10']:.2f}-{q['p90']:.2f}x" if q else "-"
        print(f"{r.draft_max_tokens:>9}  {r.prompt_set:<12}{r.acceptance_rate:>11.1%}"
              f"{r.plain_decode_tokens_per_s:>13.1f}"
              f"{r.drafted_decode_tokens_per_s:>15.1f}{r.speedup:>9.2f}x{spread:>14}"
              f"{r.identical_outputs:>8}/{r.prompts_total}")
