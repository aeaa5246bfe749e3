"""Headless CLI: the same functions the dashboard pages call, JSON out. The commands are core/cli.py,
their arguments core/cli_parser.py.

    python -m core models
    python -m core prepare --model smollm2-135m-instruct
    python -m core sweep --model smollm2-135m-instruct --techniques fp32,bf16,int8,nf4 --json out.json
    python -m core --store postgresql://lab@db:5432/lab sweep --ray auto --techniques fp32,nf4 --devices cpu,cuda
    python -m core moe --model smollm2-135m-instruct --experts 8 --top-k 1,2,4,8 --json moe.json
    python -m core lora --model smollm2-135m-instruct --task support-routing --rank 8 --steps 80
    python -m core distill --teacher smollm2-135m-instruct --layers 15 --steps 150 --json distill.json
    python -m core speculate --model smollm2-135m-instruct --draft PATH --json speculate.json
    python -m core worker                      # runs queued dashboard jobs, one at a time (one per machine)
    python -m core serve --host 0.0.0.0        # worker + dashboard; prints the presenter link for a classroom
    python -m core serve-bench --model smollm2-135m-instruct --techniques fp32,gguf-q4_1 --concurrency 1,4,16 \\
        --prompt-tokens 128,1024 --new-tokens 64 --json serve.json

moe, lora (finetune), distill, speculate, serve-bench and serve-context take --ray ADDRESS (or $LAB_RAY_ADDRESS) to
run as one task on a Ray cluster, as sweep does (one task per variant there).
"""

from __future__ import annotations

import sys

from core.cli import CliError
from core.cli_parser import build_parser, main

__all__ = ["CliError", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
