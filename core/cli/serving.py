"""`python -m core serve-bench`, `serve-check`, `serve-context` and `serve-memory`: a real server on 127.0.0.1 loaded
with concurrent streams, whether batching changes its answers, the KV cache as the context grows, and the KV cache type
as a lever on llama-server (memory against the memory model, speed, KLD). serve-bench and serve-context take --ray to
run as one task on a cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from core import models, techniques
from core.cli.common import (
    CliError,
    add_ray_arg,
    existing_file,
    int_list,
    json_folder,
    on_ray,
    ray_address,
    say,
    write_json,
)
from core.launch.kinds import ServeBenchArgs, ServeContextArgs
from core.measure import cost
from core.measure import memory
from core.serving import batching, bench, engines, kv, memory_bench
from core.serving.limits import MAX_CONCURRENCY
from core.store import open_store


def cmd_serve_bench(args: argparse.Namespace) -> None:
    """Start each variant's server on 127.0.0.1, load it at each concurrency, one record per point."""
    keys = [k.strip() for k in args.techniques.split(",") if k.strip()]
    if not keys:
        raise CliError("--techniques: no techniques given, e.g. fp32,gguf-q4_1")
    gguf = {}
    if args.gguf:
        path = Path(existing_file("--gguf", args.gguf))
        gguf = {engines.gguf_key(path): path}
        keys += [k for k in gguf if k not in keys]
    settings = bench.ServeSettings(
        concurrency=tuple(int_list("--concurrency", args.concurrency)),
        prompt_tokens=tuple(int_list("--prompt-tokens", args.prompt_tokens)), new_tokens=args.new_tokens,
        repeats=args.repeats, device=args.device, threads=args.threads, hardware_preset=args.hardware,
        usd_per_hour=args.usd_per_hour, port=args.port, cache_type=args.cache_type, context_tokens=args.context)
    json_folder(args.json)
    store = None if args.no_store else open_store(args.store_url)
    if address := ray_address(args):
        if gguf:
            raise CliError("--gguf: a file on this machine is not served on the cluster; drop --gguf or --ray")
        return write_json(args.json, on_ray(ServeBenchArgs(args.model, tuple(keys), settings), address, store).result)
    t0 = time.perf_counter()
    records = bench.serve_bench(args.model, keys, settings, store=store, gguf_files=gguf, report=say)
    print(f"serve-bench wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    write_json(args.json, [r.to_dict() for r in records])


def cmd_serve_check(args: argparse.Namespace) -> None:
    """Greedy answers alone and in batches on the server that serves the variant; every difference explained."""
    checks = batching.check_variant(args.model, args.technique, int_list("--concurrency", args.concurrency),
                                    args.new_tokens, args.prompt_tokens, args.threads)
    for c in checks:
        print(f"{c.runtime}, {c.concurrency} at once: {c.same_as_alone}/{c.requests} same as alone, {c.near_ties} "
              f"near-ties (top-2 gap <= {c.tolerance}), {c.drift_explained} within the batched kernels' measured "
              f"drift, {c.mismatches} unexplained")
        for line in c.details:
            print(f"    {line}")
    if args.json:
        write_json(args.json, [dataclasses.asdict(c) for c in checks])


def cmd_serve_context(args: argparse.Namespace) -> None:
    """KV cache measured vs estimated, and decode speed, as the context grows (in process, one sequence)."""
    contexts = int_list("--contexts", args.contexts)
    if address := ray_address(args):
        job = ServeContextArgs(args.model, tuple(contexts), args.decode_tokens)
        out = on_ray(job, address, None, needs_store=False).result
    else:
        out = kv.measure_context(args.model, contexts, args.decode_tokens, report=say).to_dict()
    for p in out["points"]:
        p["kv_error_pct"] = 100 * (p["kv_cache_mb_measured"] / p["kv_cache_mb_estimated"] - 1)
    write_json(args.json, out)


def cmd_serve_memory(args: argparse.Namespace) -> None:
    """Each GGUF variant x cache type x context x slots on llama-server: KV bytes it reports, peak memory against the
    memory model, speed; then llama-perplexity's KLD of each cache type against F16."""
    keys = tuple(k.strip() for k in (args.techniques or "").split(",") if k.strip())
    settings = memory_bench.MemorySettings(
        cache_types=tuple(t.strip() for t in args.cache_types.split(",") if t.strip()),
        contexts=tuple(int_list("--contexts", args.contexts)), slots=tuple(int_list("--slots", args.slots)),
        kld_contexts=tuple(int_list("--kld-contexts", args.kld_contexts)),
        torch_contexts=tuple(int_list("--torch-contexts", args.torch_contexts)) if args.torch_contexts else (),
        threads=args.threads)
    t0 = time.perf_counter()
    run = memory_bench.serve_memory(args.model, keys, settings, report=say)
    print(f"serve-memory wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for p in run.points:
        predicted = run.predicted(p).total_mb
        print(f"{p.label:10} {p.cache_type:5} {p.slots:2} x {p.context_tokens:5}: KV {p.kv_mb_reported:8.2f} MB, "
              f"peak {p.peak_mb:7.1f} MB, model {predicted:7.1f} MB ({memory.error_pct(predicted, p.peak_mb):+.1f}%), "
              f"{p.per_user_tokens_per_s:.1f} tok/s per user, {p.total_tokens_per_s:.1f} in all, TTFT "
              f"{p.ttft_ms_p50:.0f} ms", file=sys.stderr)
    for t in run.torch_points:
        predicted = run.torch_predicted(t).total_mb
        print(f"FP32 transformers 1 x {t.context_tokens:5}: peak {t.peak_mb:7.1f} MB, model {predicted:7.1f} MB "
              f"({memory.error_pct(predicted, t.peak_mb):+.1f}%)", file=sys.stderr)
    for q in run.quality:
        print(f"{q.label:10} {q.cache_type:5} n_ctx {q.n_ctx}: KLD {q.kld_mean:.5f} ± {q.kld_mean_uncertainty:.5f} nats, "
              f"same top {q.same_top:.2%}", file=sys.stderr)
    write_json(args.json, run.to_dict())


def add_parsers(sub) -> None:
    """Registers `serve-bench`, `serve-check`, `serve-context` and `serve-memory` on `sub` (argparse's subparsers)."""
    sv = sub.add_parser("serve-bench", help="load a real server on 127.0.0.1 with concurrent streams; TTFT, ITL, "
                        "throughput and $ per 1M tokens per concurrency")
    sv.add_argument("--model", default=models.DEFAULT_MODEL)
    sv.add_argument("--techniques", default=techniques.REFERENCE,
                    help="comma-separated technique keys: the 32- and 16-bit ones and bitsandbytes int8 / NF4 with double "
                         "quantization (transformers serve), or gguf-<quant> (llama.cpp)")
    sv.add_argument("--gguf", help="a GGUF file to serve on llama.cpp as well (technique gguf-<its quant>)")
    sv.add_argument("--concurrency", default="1,2,4,8,16", help=f"comma-separated, each 1..{MAX_CONCURRENCY}")
    sv.add_argument("--prompt-tokens", default="128", help="comma-separated prompt lengths, cut from real text")
    sv.add_argument("--new-tokens", type=int, default=64)
    sv.add_argument("--cache-type", default="f16", help="llama-server's KV cache type, K and V alike: "
                    f"{', '.join(memory.CACHE_TYPE_BYTES)} (a quantized one runs with flash attention on)")
    sv.add_argument("--context", type=int, default=0, help="tokens of context per slot on llama-server (0: the "
                    "longest prompt + new tokens); -c is this x the highest concurrency, one slot per request")
    sv.add_argument("--repeats", type=int, default=2, help="waves per point (the error bars)")
    sv.add_argument("--threads", type=int, default=2, help="the server's compute threads")
    sv.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    sv.add_argument("--port", type=int, help="serve on this 127.0.0.1 port (default: a free one)")
    sv.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu")
    sv.add_argument("--usd-per-hour", type=float)
    sv.add_argument("--json", help="write the records here (else to stdout)")
    sv.add_argument("--no-store", action="store_true", help="do not write to the results store")
    add_ray_arg(sv)
    sv.set_defaults(func=cmd_serve_bench)
    ck = sub.add_parser("serve-check", help="does batching change answers? greedy answers alone and in batches on the "
                        "variant's server, every difference explained")
    ck.add_argument("--model", default=models.DEFAULT_MODEL)
    ck.add_argument("--technique", default=techniques.REFERENCE, help="fp32, bf16, fp16 or gguf-<quant>")
    ck.add_argument("--concurrency", default="2,4,8,16,32", help=f"comma-separated, each 1..{MAX_CONCURRENCY}")
    ck.add_argument("--new-tokens", type=int, default=24)
    ck.add_argument("--prompt-tokens", type=int, default=64)
    ck.add_argument("--threads", type=int, default=2)
    ck.add_argument("--json", help="also write the checks here as JSON")
    ck.set_defaults(func=cmd_serve_check)
    sc = sub.add_parser("serve-context", help="KV cache measured vs estimated and decode speed as the context grows")
    sc.add_argument("--model", default=models.DEFAULT_MODEL)
    sc.add_argument("--contexts", default="128,512,2048", help="comma-separated context lengths, tokens")
    sc.add_argument("--decode-tokens", type=int, default=16)
    sc.add_argument("--json", help="write the points here (else to stdout)")
    add_ray_arg(sc)
    sc.set_defaults(func=cmd_serve_context)
    sm = sub.add_parser("serve-memory", help="the KV cache type as a lever on llama-server: KV bytes, peak memory "
                        "against the memory model, speed, and llama-perplexity's KLD against an F16 cache")
    sm.add_argument("--model", default=models.DEFAULT_MODEL)
    sm.add_argument("--techniques", default="", help="comma-separated GGUF technique keys (default: gguf-q8_0 and "
                    "the file the model ships as)")
    sm.add_argument("--cache-types", default=",".join(memory.OFFERED_CACHE_TYPES),
                    help=f"comma-separated, of {', '.join(memory.CACHE_TYPE_BYTES)}")
    sm.add_argument("--contexts", default="512,2048,8192", help="tokens per slot, comma-separated")
    sm.add_argument("--slots", default="1,4", help="parallel slots (users), comma-separated")
    sm.add_argument("--kld-contexts", default="2048", help="llama-perplexity's n_ctx for the KLD, comma-separated")
    sm.add_argument("--torch-contexts", default="512,2048", help="contexts at which a transformers process (FP32) is "
                    "checked against the memory model too ('' for none)")
    sm.add_argument("--threads", type=int, default=2)
    sm.add_argument("--json", help="write the run here (else to stdout)")
    sm.set_defaults(func=cmd_serve_memory)
