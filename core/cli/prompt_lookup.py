"""`python -m core prompt-lookup`: n-gram drafts copied from the prompt against plain greedy decoding, on transformers
and llama.cpp: acceptance, decode speed-up and whether the answers stay the same.
"""

from __future__ import annotations

import argparse

from core import models
from core.cli.common import json_folder, say, write_json
from core.hybrids import prompt_lookup


def cmd_prompt_lookup(args: argparse.Namespace) -> None:
    """Prompt-lookup decoding against plain greedy, per runtime and prompt set; stored, then a table on stdout."""
    settings = prompt_lookup.LookupSettings(
        runtimes=tuple(r.strip() for r in args.runtime.split(",") if r.strip()), technique=args.technique,
        draft_tokens=args.draft_tokens, new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
        prompt_files=tuple(args.prompts.split(",")) if args.prompts else prompt_lookup.LookupSettings.prompt_files)
    json_folder(args.json)
    prompt_lookup.check_request(settings)  # refuse bad input before a model loads or anything is written
    results = prompt_lookup.run_prompt_lookup(args.model, settings, report=say)
    prompt_lookup.save_results(results)
    print(f"{'runtime':<13}{'prompt set':<12}{'acceptance':>11}{'plain tok/s':>13}{'lookup tok/s':>14}"
          f"{'speed-up':>10}{'identical':>11}")
    for r in results:
        print(f"{r.runtime:<13}{r.prompt_set:<12}{r.acceptance_rate:>11.1%}{r.plain_decode_tokens_per_s:>13.1f}"
              f"{r.lookup_decode_tokens_per_s:>14.1f}{r.speedup:>9.2f}x{r.identical_outputs:>8}/{r.prompts_total}")
    if args.json:
        write_json(args.json, [r.to_dict() for r in results])


def add_parsers(sub) -> None:
    """Registers `prompt-lookup` on `sub` (argparse's subparsers)."""
    pl = sub.add_parser("prompt-lookup", help="prompt-lookup decoding (n-gram drafts from the prompt) against plain "
                        "greedy on transformers and llama.cpp: acceptance, decode speed-up, same output?")
    pl.add_argument("--model", default=models.DEFAULT_MODEL)
    pl.add_argument("--runtime", default="transformers,llama.cpp", help="comma-separated: transformers, llama.cpp")
    pl.add_argument("--technique", default="gguf-q4_k_m", help="the GGUF file llama.cpp runs (gguf-<quant>)")
    pl.add_argument("--draft-tokens", type=int, default=10, help="tokens copied from the prompt per verifying pass")
    pl.add_argument("--new-tokens", type=int, default=64, help="at most, per answer (both modes stop at end of turn)")
    pl.add_argument("--repeats", type=int, default=3, help="timed runs of each mode per prompt; the median is kept")
    pl.add_argument("--threads", type=int, default=2)
    pl.add_argument("--prompts", help="comma-separated prompt set files (default: the bundled grounded and open sets)")
    pl.add_argument("--json", help="also write the results here as JSON")
    pl.set_defaults(func=cmd_prompt_lookup)
