"""Headless CLI: the same functions the dashboard pages call, JSON out. One module per axis holds its commands and
adds their parsers (`add_parsers(sub)`); COMMANDS lists those modules once, in the order `--help` shows them. What
they share (CliError, JSON written in one rename, lists of whole numbers, progress lines, --ray) is core/cli/common.py.

    python -m core models
    python -m core prepare --model smollm2-135m-instruct
    python -m core sweep --model smollm2-135m-instruct --techniques fp32,bf16,int8,nf4 --json out.json
    python -m core --store postgresql://lab@db:5432/lab sweep --ray auto --techniques fp32,nf4 --devices cpu,cuda
    python -m core moe --model smollm2-135m-instruct --experts 8 --top-k 1,2,4,8 --json moe.json
    python -m core lora --model smollm2-135m-instruct --task support-routing --rank 8 --steps 80
    python -m core distill --teacher smollm2-135m-instruct --layers 15 --steps 150 --json distill.json
    python -m core speculate --model smollm2-135m-instruct --draft PATH --json speculate.json
    python -m core depth --model smollm2-135m-instruct --keep 10,15,20   # layer redundancy; kept layers per depth
    python -m core task --task my_task.jsonl --techniques fp32,gguf-q4_k_m   # your own prompts, each answer checked
    python -m core worker                      # runs queued dashboard jobs, one at a time (one per machine)
    python -m core serve --host 0.0.0.0        # worker + dashboard; prints the presenter link for a classroom
    python -m core serve-bench --model smollm2-135m-instruct --techniques fp32,gguf-q4_1 --concurrency 1,4,16 \\
        --prompt-tokens 128,1024 --new-tokens 64 --json serve.json

moe, lora (finetune), distill, speculate, serve-bench and serve-context take --ray ADDRESS (or $LAB_RAY_ADDRESS) to
run as one task on a Ray cluster, through core/launch/launch.py as the worker's job of the same kind; sweep does too
(one task per variant there).
"""

from __future__ import annotations

import argparse
import sys

from core.cli import (
    budget,
    interrupt,
    cascade,
    decide,
    depth,
    gguf_draft,
    measure,
    model_cascade,
    models,
    processes,
    prompt_lookup,
    serving,
    task,
    train,
)
from core.cli.common import CliError
from core.models import quiet_library_output
from core.store import StoreError

# Each module adds its own commands; a new command goes into the module of its axis, a new axis is one more entry.
COMMANDS = (models, measure, train, depth, prompt_lookup, processes, serving, decide, cascade, model_cascade,
            gguf_draft, budget, task)

__all__ = ["COMMANDS", "CliError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="LLM Trade-off Lab, headless.")
    parser.add_argument("--store", dest="store_url", metavar="URL",
                        help="results store: postgresql://user:password@host:5432/db or sqlite:///path "
                             "(default: $LAB_STORE_URL, else data/results.sqlite)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with one usage line on bad flags
    quiet_library_output()
    interrupt.watch()  # Ctrl-C ends even a command inside a long C call within seconds
    try:
        args.func(args)
    except (CliError, ValueError, StoreError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        interrupt.say_interrupted()
        return interrupt.INTERRUPTED
    return 0
