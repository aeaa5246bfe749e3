"""`python -m core lora` (alias `finetune`), `distill` and `speculate`: a model trained on a task, a smaller student
distilled from it, and that student drafting for its teacher. Each takes --ray to run as one task on a cluster.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core import models
from core.cli.common import (
    CliError,
    add_ray_arg,
    every_tenth_step,
    existing_file,
    json_folder,
    on_ray,
    part,
    ray_address,
    say,
    write_json,
)
from core.experiments import distill_run, finetune_run, speculative
from core.launch.kinds import DistillArgs, LoraArgs, SpeculateArgs
from core.launch.kinds.train import TRAIN_SHARE
from core.measure import cost
from core.store import open_store
from core.techniques import distillation, lora


def _price(args: argparse.Namespace) -> float:
    """--usd-per-hour, else the --hardware preset's price."""
    return args.usd_per_hour if args.usd_per_hour is not None else cost.HARDWARE_PRESETS[args.hardware].usd_per_hour


def cmd_lora(args: argparse.Namespace) -> None:
    defaults = lora.FinetuneSettings()
    settings = lora.FinetuneSettings(
        method=args.method, rank=args.rank, alpha=args.alpha if args.alpha is not None else 2 * args.rank,
        dropout=args.dropout, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else defaults.target_modules,
    )
    data = Path(existing_file("--data", args.data)) if args.data else None
    json_folder(args.json)
    price = _price(args)
    lora.load_task(None if data else args.task, data)  # bad data fails before the model loads
    if address := ray_address(args):
        job = LoraArgs(args.model, settings, args.task, str(data) if data else None, price, args.hardware, "cli")
        store = None if args.no_store else open_store(args.store_url)
        return write_json(args.json, on_ray(job, address, store, needs_store=False).result)
    share = 1.0 if args.no_store else TRAIN_SHARE  # the rest: measuring the merged model for the Trade-off Map
    result, model = finetune_run.run_finetune(args.model, settings, None if data else args.task, data, price,
                                              part(0.0, share))
    if not args.no_store:
        finetune_run.store_record(model, result, open_store(args.store_url), price, args.hardware,
                                  part(share, 1 - share, say))
    write_json(args.json, result.to_dict())


def cmd_distill(args: argparse.Namespace) -> None:
    """Cut a student from the teacher's layers, distill it, save it, and measure teacher / pruned / distilled."""
    settings = distillation.DistillSettings(
        student_layers=args.layers, layer_choice=args.layer_choice, steps=args.steps, batch_size=args.batch_size,
        seq_len_tokens=args.seq_len, learning_rate=args.lr, temperature=args.temperature, kd_weight=args.kd_weight,
        budget_minutes=args.budget_minutes, train_last_layers=args.train_last_layers, checkpoints=args.checkpoints,
        answers_with_text=args.with_answers, mixed_precision=args.mixed_precision,
    )
    corpus = Path(existing_file("--corpus", args.corpus)) if args.corpus else None
    if args.with_answers and corpus is None:
        raise CliError("--with-answers adds the teacher's answers to your --corpus; give --corpus too (without "
                         "either, the teacher's answers alone are the corpus).")
    json_folder(args.json)
    distill_run.prepare_run(args.teacher, settings, corpus)  # refuse bad input before anything loads or is written
    price = _price(args)
    if address := ray_address(args):
        job = DistillArgs(args.teacher, settings, str(corpus) if corpus else None, price, args.hardware, "cli",
                          args.mc_max_items or 0)
        store = None if args.no_store else open_store(args.store_url)
        return write_json(args.json, on_ray(job, address, store, needs_store=False).result)
    t0 = time.perf_counter()
    result = distill_run.run_distill(args.teacher, settings, corpus, price, part(0.0, TRAIN_SHARE))
    print(f"distillation (corpus + training) wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    records = distill_run.measure(result, None if args.no_store else open_store(args.store_url), price, args.hardware,
                                  part(TRAIN_SHARE, 1 - TRAIN_SHARE, say), mc_max_items=args.mc_max_items or 0)
    print(f"distill wall time, measuring included: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    write_json(args.json, distill_run.summary(result, records))


def cmd_speculate(args: argparse.Namespace) -> None:
    if not (Path(args.draft) / "config.json").is_file():
        raise CliError(f"--draft: {args.draft} is not a saved model directory (no config.json); "
                       "pass a student's folder, e.g. from `python -m core distill`")
    json_folder(args.json)
    job = SpeculateArgs(args.model, args.draft, args.draft_tokens, args.max_new_tokens, args.prompts)
    if address := ray_address(args):
        return write_json(args.json, on_ray(job, address, None, needs_store=False).result)
    result = speculative.run_speculate(args.model, args.draft, args.draft_tokens, args.max_new_tokens,
                                       speculative.bundled_prompts()[: job.prompts], report=say)
    speculative.save_result(result)
    write_json(args.json, result.to_dict())


def add_parsers(sub) -> None:
    """Registers `lora` (alias `finetune`), `distill` and `speculate` on `sub` (argparse's subparsers)."""
    f = sub.add_parser("lora", aliases=["finetune"], help="fine-tune with LoRA, QLoRA or fully; compare before/after on held-out data")
    f.add_argument("--model", default=models.DEFAULT_MODEL)
    f.add_argument("--task", default="support-routing", help="bundled task (ignored with --data)")
    f.add_argument("--data", help='your JSONL of {"prompt", "completion"} lines; 20%% is held out')
    f.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    f.add_argument("--rank", type=int, default=8)
    f.add_argument("--alpha", type=int, help="LoRA alpha (default 2 x rank)")
    f.add_argument("--dropout", type=float, default=0.05)
    f.add_argument("--targets", help="comma-separated module names (default: every linear layer of the blocks)")
    f.add_argument("--steps", type=int, default=80)
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--lr", type=float, default=0.0, help="learning rate (0 = the method's default)")
    f.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu")
    f.add_argument("--usd-per-hour", type=float)
    f.add_argument("--json", help="write the result here (else to stdout)")
    f.add_argument("--no-store", action="store_true", help="do not measure and store the result for the Trade-off Map")
    add_ray_arg(f)
    f.set_defaults(func=cmd_lora)

    dd = distillation.DistillSettings()
    d = sub.add_parser("distill", help="distill a student with fewer layers from the teacher; measure all three")
    d.add_argument("--teacher", default=models.DEFAULT_MODEL, help="bundled key, local directory or Hugging Face id")
    d.add_argument("--layers", type=int, default=dd.student_layers, help="decoder layers the student keeps")
    d.add_argument("--layer-choice", choices=distillation.LAYER_CHOICES, default=dd.layer_choice)
    d.add_argument("--steps", type=int, default=dd.steps, help="training steps (ignored with --budget-minutes)")
    d.add_argument("--budget-minutes", type=float, default=dd.budget_minutes,
                   help="heal for this many minutes of wall time instead of --steps (at least 1; checkpoints and the "
                        "learning-rate schedule follow the clock)")
    d.add_argument("--checkpoints", type=int, default=dd.checkpoints,
                   help="complete saves along the way, each measured on the held-out text: the points of the heal curve")
    d.add_argument("--train-last-layers", type=int, default=dd.train_last_layers,
                   help="train only the student's last N layers and the final norm (0 = every layer)")
    d.add_argument("--batch-size", type=int, default=dd.batch_size)
    d.add_argument("--mixed-precision", choices=["auto", "off"], default=dd.mixed_precision,
                   help="auto: training steps in bfloat16 where the hardware has it natively (about 1.5x the steps "
                        "per minute on a CPU with AVX-512 BF16); off: float32 steps")
    d.add_argument("--seq-len", type=int, default=dd.seq_len_tokens, help="tokens per training sequence")
    d.add_argument("--lr", type=float, default=dd.learning_rate)
    d.add_argument("--temperature", type=float, default=dd.temperature)
    d.add_argument("--kd-weight", type=float, default=dd.kd_weight, help="share of the KL term (the rest: next-token loss)")
    d.add_argument("--corpus", help='UTF-8 text (paragraphs split by blank lines) or JSONL of {"text"} lines; '
                   "default: the teacher's answers to the bundled prompts")
    d.add_argument("--with-answers", action="store_true",
                   help="train on --corpus and the teacher's answers together (each keeps its held-out share)")
    d.add_argument("--mc-max-items", type=int, help="score only the first N questions when measuring (0 = all)")
    d.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu")
    d.add_argument("--usd-per-hour", type=float)
    d.add_argument("--json", help="write the result here (else to stdout)")
    d.add_argument("--no-store", action="store_true", help="do not write the measurements to the results store")
    add_ray_arg(d)
    d.set_defaults(func=cmd_distill)

    sp = sub.add_parser("speculate", help="the model generates with a draft model; same output? acceptance, speed-up")
    sp.add_argument("--model", default=models.DEFAULT_MODEL)
    sp.add_argument("--draft", required=True, help="the draft's folder (a distilled student)")
    sp.add_argument("--draft-tokens", type=int, default=4, help="tokens the draft proposes per verifying pass")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--prompts", type=int, default=10, help="how many of the bundled prompts to time (default 10)")
    sp.add_argument("--json", help="write the result here (else to stdout)")
    add_ray_arg(sp)
    sp.set_defaults(func=cmd_speculate)
