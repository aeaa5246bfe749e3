"""`python -m core sweep` and `moe`: technique variants of one model, and the model split into experts at each top-k,
measured with the sweep harness. With --ray a sweep runs one task per variant (and device) on the cluster.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from core import models, runtimes, techniques
from core.cli.common import (
    CliError,
    add_ray_arg,
    existing_file,
    int_list,
    json_folder,
    on_ray,
    ray_address,
    show_cluster_progress,
    write_json,
)
from core.experiments import moe_ceiling, moe_sweep, sweep
from core.techniques.moe import MoEConfig
from core.techniques.moe.healed import HEAL_SCOPES
from core.launch.job import Job
from core.launch.kinds import MoeArgs, SweepArgs
from core.launch.launch import launch
from core.measure import benchmark, cost, evaluate
from core.store import ResultStore, open_store
from core.views import busy
from core.words import plural


def add_measurement_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", default=models.DEFAULT_MODEL, help="bundled key, local directory or Hugging Face id")
    s.add_argument("--eval-set", help='JSONL of {"question", "choices", "answer"} lines')
    s.add_argument("--ppl-text", help="UTF-8 text file for perplexity and KL divergence")
    s.add_argument("--kld-rule", choices=list(evaluate.KLD_RULES),
                   help="which positions score KLD, top-1 and perplexity: llama-perplexity (default; comparable with "
                        "llama.cpp's `llama-perplexity --kl-divergence`) or every-position")
    s.add_argument("--json", help="write the records to this file (else to stdout)")
    s.add_argument("--new-tokens", type=int)
    s.add_argument("--repeats", type=int)
    s.add_argument("--warmup", type=int)
    s.add_argument("--threads", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--mc-max-items", type=int, help="score only the first N questions (0 = all)")
    s.add_argument("--quick", action="store_true", help=f"a quick first look: at most {sweep.QUICK_REPEATS} timed "
                   f"runs, {sweep.QUICK_MC_ITEMS} questions and {sweep.QUICK_PPL_TOKENS} tokens of text per variant "
                   "(wider intervals; the records say so)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), help="price preset for $ per 1M tokens")
    s.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    s.add_argument("--no-store", action="store_true", help="do not write to the results store")
    s.add_argument("--store", dest="store_url", metavar="URL", default=argparse.SUPPRESS,
                   help="results store URL (as the top-level --store)")


def sweep_settings(args: argparse.Namespace) -> sweep.SweepSettings:
    """SweepSettings from the measurement flags that `sweep` and `moe` share (unset flags keep the defaults)."""

    overrides = {k: v for k, v in {
        "eval_set": existing_file("--eval-set", args.eval_set),
        "ppl_text": existing_file("--ppl-text", args.ppl_text),
        "new_tokens": args.new_tokens, "repeats": args.repeats, "warmup_runs": args.warmup,
        "threads": args.threads, "device": args.device, "hardware_preset": args.hardware,
        "usd_per_hour": args.usd_per_hour, "mc_max_items": args.mc_max_items, "seed": args.seed,
        "kld_rule": args.kld_rule,
    }.items() if v is not None}
    settings = sweep.SweepSettings(**overrides)
    settings = settings.quick_look() if getattr(args, "quick", False) else settings
    json_folder(args.json)
    return settings


def show_progress(p) -> None:
    if p.step in ("done", "skipped", "prepare"):
        print(f"[{p.fraction:4.0%}] {p.message}", file=sys.stderr, flush=True)


def cmd_sweep(args: argparse.Namespace) -> None:
    keys = techniques.parse_keys(args.techniques)
    settings = sweep_settings(args)
    refuse_unsupported(keys, settings.device)
    address = ray_address(args)
    if not address:
        if "," in args.model:
            raise CliError("--model: several models need a cluster sweep (--ray); measure one at a time here")
        models.resolve(args.model)  # a folder that cannot load is refused before the store is opened or created
    store = None if args.no_store else open_store(args.store_url)
    if address:
        return cluster_sweep(args, keys, settings, store, address)
    t0 = time.perf_counter()
    records = sweep.run_sweep(args.model, keys, settings, store=store, progress=show_progress)
    print(f"sweep wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    say_if_busy(records)
    text = sweep.records_json(records, Path(args.json) if args.json else None)
    if not args.json:
        print(text)


def say_if_busy(records: list) -> None:
    """One line on stderr naming the variants timed while other processes took the CPU (their records say so too)."""
    if note := busy.note(records):
        print(f"warning: {note}", file=sys.stderr)


def refuse_unsupported(keys: list[str], device: str) -> None:
    """A variant asked for by name that cannot run here is an error on the command line, before anything loads."""

    here = benchmark.pick_device(device)
    problems = [f"{k}: {reason}" for k in keys
                if (reason := runtimes.why_not(techniques.get(k), techniques.get(k).runtime, here))]
    if problems:
        raise CliError("cannot measure " + "; ".join(problems))


def cluster_sweep(args: argparse.Namespace, keys: list[str], settings: sweep.SweepSettings, store: ResultStore | None,
                  address: str) -> None:
    """The same sweep as Ray tasks over the cluster at `address`, each worker writing into the shared store."""
    if store is None:
        raise CliError("--no-store: a cluster sweep's workers write straight into the shared store; drop --no-store")
    devices = [d.strip() for d in (args.devices or settings.device).split(",") if d.strip()]
    t0 = time.perf_counter()
    job = Job(SweepArgs(args.model, tuple(keys), settings, devices=tuple(devices)))
    done = launch(job, "ray", store=store, address=address, progress=show_cluster_progress)
    result = done.result
    print(f"cluster sweep {result.run_id} wall time: {time.perf_counter() - t0:.1f} s; "
          f"{len(result.stored())} of {plural(len(result.outcomes), 'variant')} stored in {result.store}", file=sys.stderr)
    records = [r for r in (store.get(o.record_id) for o in result.stored()) if r is not None]
    text = sweep.records_json(records, Path(args.json) if args.json else None)
    if not args.json:
        print(text)
    failed = [o.message for o in result.outcomes if o.status == "failed"]
    if failed:
        raise CliError("; ".join(failed))


def cmd_moe(args: argparse.Namespace) -> None:
    """Convert once, then measure the dense reference and each top-k with the sweep harness."""
    top_ks = int_list("--top-k", args.top_k)
    settings = sweep_settings(args)
    if args.routing_ceiling:
        return routing_ceilings(args, top_ks, settings)
    corpus = existing_file("--heal-corpus", args.heal_corpus) if args.heal_corpus else None
    job = MoeArgs(args.model, args.experts, tuple(top_ks), args.dense_layers, settings, args.shared, args.heal_minutes,
                  args.heal_scope, corpus)
    store = None if args.no_store else open_store(args.store_url)
    if address := ray_address(args):
        done = on_ray(job, address, store)
        records = [r for r in map(store.get, done.record_ids) if r is not None]
        return write_json(args.json, [r.to_dict() | r.variant_facts for r in records])
    t0 = time.perf_counter()
    if job.heal_minutes:
        config = MoEConfig(experts=args.experts, top_k=top_ks[0], dense_layers=args.dense_layers, shared=args.shared)
        records = moe_sweep.heal_and_measure(args.model, config, job.heal_minutes, settings, store=store,
                                             progress=show_progress, scope=job.heal_scope,
                                             corpus_path=Path(corpus) if corpus else None)
    else:
        records = moe_sweep.run_moe_sweep(args.model, args.experts, top_ks, settings, store=store,
                                          progress=show_progress, dense_layers=args.dense_layers, shared=args.shared)
    print(f"moe wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    say_if_busy(records)
    rows = [r.to_dict() | r.variant_facts for r in records]  # the structure facts at top level too, as promised
    write_json(args.json, rows)


def routing_ceilings(args: argparse.Namespace, top_ks: list[int], settings) -> None:
    """Each carve's divergence with its router and with an oracle router, on the evaluation prose; no timing."""
    rows = []
    for k in top_ks:
        config = MoEConfig(experts=args.experts, top_k=k, dense_layers=args.dense_layers, shared=args.shared)
        c = moe_ceiling.measure_ceiling(args.model, config, settings)
        print(f"{c.technique}: KLD {c.kld_router_nats:.3f} nats with its router, {c.kld_oracle_nats:.3f} with an oracle "
              f"router ({100 * c.routing_share:.0f}% of the loss is routing) over {c.positions} tokens", file=sys.stderr)
        rows.append(asdict(c) | {"routing_share": c.routing_share})
    write_json(args.json, rows)


def add_parsers(sub) -> None:
    """Registers `sweep` and `moe` on `sub` (argparse's subparsers)."""
    s = sub.add_parser("sweep", help="measure technique variants of one model")
    s.add_argument("--techniques", required=True,
                   help=f"comma-separated, from: {','.join(techniques.TECHNIQUES)}; KEY@RUNTIME runs a technique on "
                        "another of its runtimes")
    add_measurement_args(s)
    s.add_argument("--ray", metavar="ADDRESS", help="run the sweep as tasks on a Ray cluster: auto, ray://head:10001 "
                   "or head:6379 (default: $LAB_RAY_ADDRESS; unset = this machine); --model may then list several")
    s.add_argument("--devices", help="with --ray: comma-separated cpu,cuda,auto; each variant is measured on each")
    s.set_defaults(func=cmd_sweep)
    m = sub.add_parser("moe", help="split the model's MLPs into experts; measure the dense model and each top-k")
    m.add_argument("--experts", type=int, default=8, help="experts per MLP layer (E); must divide its neurons")
    m.add_argument("--top-k", default="1,2,4,8", help="comma-separated experts run per token, each from 1 to E")
    m.add_argument("--dense-layers", type=int, default=1, help="keep the first N MLP layers whole (default 1)")
    m.add_argument("--shared", type=int, default=0, help="of the E experts, how many always run (the neurons that fire "
                   "on most tokens); --top-k then counts the routed experts among the rest (default 0)")
    m.add_argument("--heal-minutes", type=float, default=0.0, help="train the carve's experts to match the dense model "
                   "for this many minutes (one --top-k only), then measure the healed carve beside it (default 0: no "
                   "training)")
    m.add_argument("--heal-scope", choices=list(HEAL_SCOPES), default="experts", help="with --heal-minutes: what "
                   "trains; experts (the default) or all (attention and norms too; router and embeddings stay)")
    m.add_argument("--heal-corpus", help="with --heal-minutes: a UTF-8 text (paragraphs split by blank lines) or JSONL "
                   'of {"text"} lines to heal on beside the teacher\'s answers')
    m.add_argument("--routing-ceiling", action="store_true", help="measure only how far each carve is from the dense "
                   "model with its router and with an oracle router that knew each token's best experts (no timing)")
    add_measurement_args(m)
    add_ray_arg(m)
    m.set_defaults(func=cmd_moe)
