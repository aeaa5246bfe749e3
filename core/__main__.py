"""Headless CLI: the same functions the dashboard pages call, JSON out.

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
    python -m core serve-bench --model smollm2-135m-instruct --techniques fp32,gguf-q4_1 --concurrency 1,4,16 \
        --prompt-tokens 128,1024 --new-tokens 64 --json serve.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from core import models, techniques
from core.measure import cost
from core.store import ResultStore, StoreError, open_store


class CliError(Exception):
    """A bad argument: one line on stderr, exit status 2."""


def _existing_file(flag: str, value: str | None) -> str | None:
    if value is not None and not Path(value).is_file():
        raise CliError(f"{flag}: no such file: {value}")
    return value


def cmd_models(_: argparse.Namespace) -> None:
    rows = [
        {"key": s.key, "label": s.label, "source": s.source, "available": models.is_available(s),
         "prepared": models.checkpoint_ready(s.key), "weights_note": s.weights_note,
         "license_note": s.license_note, "install_hint": "" if models.is_available(s) else s.install_hint,
         "for_tests": s.for_tests}
        for s in models.BUNDLED.values()
    ]
    print(json.dumps(rows, indent=2))


def cmd_prepare(args: argparse.Namespace) -> None:
    spec = models.resolve(args.model)
    path = models.prepare(spec, progress=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps({"model": spec.key, "checkpoint": str(path), "weights_note": spec.weights_note}))


def _sweep_settings(args: argparse.Namespace):
    """SweepSettings from the measurement flags that `sweep` and `moe` share (unset flags keep the defaults)."""
    from core.experiments import sweep

    overrides = {k: v for k, v in {
        "eval_set": _existing_file("--eval-set", args.eval_set),
        "ppl_text": _existing_file("--ppl-text", args.ppl_text),
        "new_tokens": args.new_tokens, "repeats": args.repeats, "warmup_runs": args.warmup,
        "threads": args.threads, "device": args.device, "hardware_preset": args.hardware,
        "usd_per_hour": args.usd_per_hour, "mc_max_items": args.mc_max_items, "seed": args.seed,
    }.items() if v is not None}
    settings = sweep.SweepSettings(**overrides)
    _json_folder(args.json)
    return settings


def _show_progress(p) -> None:
    if p.step in ("done", "skipped", "prepare"):
        print(f"[{p.fraction:4.0%}] {p.message}", file=sys.stderr, flush=True)


def cmd_sweep(args: argparse.Namespace) -> None:
    from core.experiments import sweep

    keys = techniques.parse_keys(args.techniques)
    settings = _sweep_settings(args)
    _refuse_unsupported(keys, settings.device)
    store = None if args.no_store else open_store(args.store_url)
    address = args.ray or cluster_address()
    if address:
        return _cluster_sweep(args, keys, settings, store, address)
    if "," in args.model:
        raise CliError("--model: several models need a cluster sweep (--ray); measure one at a time here")
    show = _show_progress

    t0 = time.perf_counter()
    records = sweep.run_sweep(args.model, keys, settings, store=store, progress=show)
    print(f"sweep wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    text = sweep.records_json(records, Path(args.json) if args.json else None)
    if not args.json:
        print(text)


def _refuse_unsupported(keys: list[str], device: str) -> None:
    """A variant asked for by name that cannot run here is an error on the command line, before anything loads."""
    from core import runtimes
    from core.measure import benchmark

    here = benchmark.pick_device(device)
    problems = [f"{k}: {reason}" for k in keys
                if (reason := runtimes.why_not(techniques.get(k), techniques.get(k).runtime, here))]
    if problems:
        raise CliError("cannot measure " + "; ".join(problems))


def cluster_address() -> str | None:
    from core.launch import cluster

    return cluster.configured_address()


def _show_cluster_progress(p) -> None:
    if p.step in ("prepare", "start", "done", "skipped", "retry", "failed", "cancelled"):
        print(f"[{p.fraction:4.0%}] [{p.node}] {p.message}", file=sys.stderr, flush=True)


def _cluster_sweep(args: argparse.Namespace, keys: list[str], settings, store: ResultStore | None, address: str) -> None:
    """The same sweep as Ray tasks over the cluster at `address`, each worker writing into the shared store."""
    from core.experiments import sweep
    from core.launch import cluster

    if store is None:
        raise CliError("--no-store: a cluster sweep's workers write straight into the shared store; drop --no-store")
    model_names = [m.strip() for m in args.model.split(",") if m.strip()]
    devices = [d.strip() for d in (args.devices or settings.device).split(",") if d.strip()]
    t0 = time.perf_counter()
    result = cluster.run_cluster_sweep(model_names, keys, settings, store, address=address, devices=devices,
                                       progress=_show_cluster_progress)
    print(f"cluster sweep {result.run_id} wall time: {time.perf_counter() - t0:.1f} s; "
          f"{len(result.stored())} of {len(result.outcomes)} variants stored in {result.store}", file=sys.stderr)
    records = [r for r in (store.get(o.record_id) for o in result.stored()) if r is not None]
    text = sweep.records_json(records, Path(args.json) if args.json else None)
    if not args.json:
        print(text)
    failed = [o.message for o in result.outcomes if o.status == "failed"]
    if failed:
        raise CliError("; ".join(failed))


def _int_list(flag: str, text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; one clear message for anything else."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CliError(f"{flag}: expected comma-separated whole numbers such as 1,2,4, got {text!r}") from None
    if not values:
        raise CliError(f"{flag}: no values given")
    if len(set(values)) != len(values):
        raise CliError(f"{flag}: a value is listed twice in {text!r}")
    return values


def cmd_moe(args: argparse.Namespace) -> None:
    """Convert once, then measure the dense reference and each top-k with the sweep harness."""
    from core.techniques import moe

    top_ks = _int_list("--top-k", args.top_k)
    settings = _sweep_settings(args)
    store = None if args.no_store else open_store(args.store_url)
    t0 = time.perf_counter()
    records = moe.run_moe_sweep(args.model, args.experts, top_ks, settings, store=store, progress=_show_progress,
                                dense_layers=args.dense_layers)
    print(f"moe wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = [r.to_dict() | r.variant_facts for r in records]  # the structure facts at top level too, as promised
    _write_json(args.json, rows)


def _add_measurement_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", default=models.DEFAULT_MODEL, help="bundled key, local directory or Hugging Face id")
    s.add_argument("--eval-set", help='JSONL of {"question", "choices", "answer"} lines')
    s.add_argument("--ppl-text", help="UTF-8 text file for perplexity and KL divergence")
    s.add_argument("--json", help="write the records to this file (else to stdout)")
    s.add_argument("--new-tokens", type=int)
    s.add_argument("--repeats", type=int)
    s.add_argument("--warmup", type=int)
    s.add_argument("--threads", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--mc-max-items", type=int, help="score only the first N questions (0 = all)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), help="price preset for $ per 1M tokens")
    s.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    s.add_argument("--no-store", action="store_true", help="do not write to the results store")
    s.add_argument("--store", dest="store_url", metavar="URL", default=argparse.SUPPRESS,
                   help="results store URL (as the top-level --store)")


def cmd_lora(args: argparse.Namespace) -> None:
    from core.techniques import lora

    defaults = lora.FinetuneSettings()
    settings = lora.FinetuneSettings(
        method=args.method, rank=args.rank, alpha=args.alpha if args.alpha is not None else 2 * args.rank,
        dropout=args.dropout, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        target_modules=tuple(t.strip() for t in args.targets.split(",") if t.strip()) if args.targets else defaults.target_modules,
    )
    data = Path(_existing_file("--data", args.data)) if args.data else None
    _json_folder(args.json)
    price = args.usd_per_hour if args.usd_per_hour is not None else cost.HARDWARE_PRESETS[args.hardware].usd_per_hour
    lora.load_task(None if data else args.task, data)  # bad data fails before the model loads

    result, model = lora.run_finetune(args.model, settings, None if data else args.task, data, price, _every_tenth_step)
    if not args.no_store:
        lora.store_record(model, result, open_store(args.store_url), price, args.hardware,
                          lambda f, m: None)
    _write_json(args.json, result.to_dict())


def _write_json(path: str | None, payload) -> None:
    """To the file in one rename (a crash leaves the old file or the new one), else to stdout."""
    text = json.dumps(payload, indent=2)
    if not path:
        print(text)
        return
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _json_folder(path: str | None) -> None:
    if path and not Path(path).resolve().parent.is_dir():
        raise CliError(f"--json: the folder of {path} does not exist")


def _every_tenth_step(fraction: float, message: str) -> None:
    if "step" not in message or message.split("/")[0].endswith("0"):
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def cmd_distill(args: argparse.Namespace) -> None:
    """Cut a student from the teacher's layers, distill it, save it, and measure teacher / pruned / distilled."""
    from core.techniques import distillation

    settings = distillation.DistillSettings(
        student_layers=args.layers, layer_choice=args.layer_choice, steps=args.steps, batch_size=args.batch_size,
        seq_len_tokens=args.seq_len, learning_rate=args.lr, temperature=args.temperature, kd_weight=args.kd_weight,
    )
    corpus = Path(_existing_file("--corpus", args.corpus)) if args.corpus else None
    _json_folder(args.json)
    distillation.prepare_run(args.teacher, settings, corpus)  # refuse bad input before anything loads or is written
    price = args.usd_per_hour if args.usd_per_hour is not None else cost.HARDWARE_PRESETS[args.hardware].usd_per_hour
    t0 = time.perf_counter()
    result = distillation.run_distill(args.teacher, settings, corpus, price, _every_tenth_step)
    print(f"distillation (corpus + training) wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    records = distillation.measure(result, None if args.no_store else open_store(args.store_url), price, args.hardware,
                                   lambda f, m: None, mc_max_items=args.mc_max_items or 0)
    print(f"distill wall time, measuring included: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    _write_json(args.json, distillation.summary(result, records))


def cmd_speculate(args: argparse.Namespace) -> None:
    from core.experiments import speculative

    if not (Path(args.draft) / "config.json").is_file():
        raise CliError(f"--draft: {args.draft} is not a saved model directory (no config.json); "
                       "pass a student's folder, e.g. from `python -m core distill`")
    _json_folder(args.json)
    result = speculative.run_speculate(args.model, args.draft, args.draft_tokens, args.max_new_tokens,
                                       report=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True))
    speculative.save_result(result)
    _write_json(args.json, result.to_dict())


def cmd_worker(args: argparse.Namespace) -> None:
    from core.launch import worker

    if args.job is not None:
        raise SystemExit(worker.run_claimed(args.job))
    code = worker.serve(until_idle=args.until_idle, say=lambda m: print(m, file=sys.stderr, flush=True))
    if code:
        raise SystemExit(code)


def cmd_serve(args: argparse.Namespace) -> None:
    """Start the worker, then the dashboard in the foreground. For an audience, print the presenter link here,
    on the presenter's terminal only; the browser pages never show it."""
    import os

    from core.launch import roles, worker

    env = dict(os.environ)
    extra = []
    if roles.wants_classroom(args.host, args.classroom):
        env[roles.CLASSROOM_ENV] = "1"
        token = os.environ.get(roles.TOKEN_ENV) or roles.new_token()
        print("Classroom mode: everyone who opens the lab is a viewer. Open this link yourself to present",
              "(keep it to yourself; it changes at every start):", file=sys.stderr)
        print(f"    {roles.presenter_link(args.host, args.port, token)}", file=sys.stderr, flush=True)
        # Viewers never see a traceback or the developer menu.
        extra = ["--client.showErrorDetails", "none", "--client.toolbarMode", "viewer"]
    os.environ.update(env)
    worker.ensure_running()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               *extra]
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execvpe(command[0], command, env)


def cmd_serve_bench(args: argparse.Namespace) -> None:
    """Start each variant's server on 127.0.0.1, load it at each concurrency, one record per point."""
    from core import serving

    keys = [k.strip() for k in args.techniques.split(",") if k.strip()]
    if not keys:
        raise CliError("--techniques: no techniques given, e.g. fp32,gguf-q4_1")
    gguf = {}
    if args.gguf:
        path = Path(_existing_file("--gguf", args.gguf))
        gguf = {serving.GGUF_PREFIX + serving.gguf_quant(path): path}
        keys += [k for k in gguf if k not in keys]
    settings = serving.ServeSettings(
        concurrency=tuple(_int_list("--concurrency", args.concurrency)),
        prompt_tokens=tuple(_int_list("--prompt-tokens", args.prompt_tokens)), new_tokens=args.new_tokens,
        repeats=args.repeats, device=args.device, threads=args.threads, hardware_preset=args.hardware,
        usd_per_hour=args.usd_per_hour, port=args.port)
    _json_folder(args.json)
    store = None if args.no_store else open_store(args.store_url)
    t0 = time.perf_counter()
    records = serving.serve_bench(args.model, keys, settings, store=store, gguf_files=gguf,
                                  report=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True))
    print(f"serve-bench wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    _write_json(args.json, [r.to_dict() for r in records])


def cmd_serve_context(args: argparse.Namespace) -> None:
    """KV cache measured vs estimated, and decode speed, as the context grows (in process, one sequence)."""
    from core import serving

    run = serving.measure_context(args.model, _int_list("--contexts", args.contexts), args.decode_tokens,
                                  report=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True))
    out = run.to_dict()
    for p in out["points"]:
        p["kv_error_pct"] = 100 * (p["kv_cache_mb_measured"] / p["kv_cache_mb_estimated"] - 1)
    _write_json(args.json, out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="LLM Trade-off Lab, headless.")
    parser.add_argument("--store", dest="store_url", metavar="URL",
                        help="results store: postgresql://user:password@host:5432/db or sqlite:///path "
                             "(default: $LAB_STORE_URL, else data/results.sqlite)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the models the lab can use").set_defaults(func=cmd_models)
    p = sub.add_parser("prepare", help="convert a bundled model to a safetensors checkpoint (once)")
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.set_defaults(func=cmd_prepare)
    s = sub.add_parser("sweep", help="measure technique variants of one model")
    s.add_argument("--techniques", required=True,
                   help=f"comma-separated, from: {','.join(techniques.TECHNIQUES)}; KEY@RUNTIME runs a technique on "
                        "another of its runtimes")
    _add_measurement_args(s)
    s.add_argument("--ray", metavar="ADDRESS", help="run the sweep as tasks on a Ray cluster: auto, ray://head:10001 "
                   "or head:6379 (default: $LAB_RAY_ADDRESS; unset = this machine); --model may then list several")
    s.add_argument("--devices", help="with --ray: comma-separated cpu,cuda,auto; each variant is measured on each")
    s.set_defaults(func=cmd_sweep)
    m = sub.add_parser("moe", help="split the model's MLPs into experts; measure the dense model and each top-k")
    m.add_argument("--experts", type=int, default=8, help="experts per MLP layer (E); must divide its neurons")
    m.add_argument("--top-k", default="1,2,4,8", help="comma-separated experts run per token, each from 1 to E")
    m.add_argument("--dense-layers", type=int, default=1, help="keep the first N MLP layers whole (default 1)")
    _add_measurement_args(m)
    m.set_defaults(func=cmd_moe)
    f = sub.add_parser("lora", help="fine-tune with LoRA, QLoRA or fully; compare before/after on held-out data")
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
    f.set_defaults(func=cmd_lora)
    from core.techniques.distillation import LAYER_CHOICES, DistillSettings

    dd = DistillSettings()
    d = sub.add_parser("distill", help="distill a student with fewer layers from the teacher; measure all three")
    d.add_argument("--teacher", default=models.DEFAULT_MODEL, help="bundled key, local directory or Hugging Face id")
    d.add_argument("--layers", type=int, default=dd.student_layers, help="decoder layers the student keeps")
    d.add_argument("--layer-choice", choices=LAYER_CHOICES, default=dd.layer_choice)
    d.add_argument("--steps", type=int, default=dd.steps)
    d.add_argument("--batch-size", type=int, default=dd.batch_size)
    d.add_argument("--seq-len", type=int, default=dd.seq_len_tokens, help="tokens per training sequence")
    d.add_argument("--lr", type=float, default=dd.learning_rate)
    d.add_argument("--temperature", type=float, default=dd.temperature)
    d.add_argument("--kd-weight", type=float, default=dd.kd_weight, help="share of the KL term (the rest: next-token loss)")
    d.add_argument("--corpus", help='UTF-8 text (paragraphs split by blank lines) or JSONL of {"text"} lines; '
                   "default: the teacher's answers to the bundled prompts")
    d.add_argument("--mc-max-items", type=int, help="score only the first N questions when measuring (0 = all)")
    d.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu")
    d.add_argument("--usd-per-hour", type=float)
    d.add_argument("--json", help="write the result here (else to stdout)")
    d.add_argument("--no-store", action="store_true", help="do not write the measurements to the results store")
    d.set_defaults(func=cmd_distill)
    sp = sub.add_parser("speculate", help="the model generates with a draft model; same output? acceptance, speed-up")
    sp.add_argument("--model", default=models.DEFAULT_MODEL)
    sp.add_argument("--draft", required=True, help="the draft's folder (a distilled student)")
    sp.add_argument("--draft-tokens", type=int, default=4, help="tokens the draft proposes per verifying pass")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--json", help="write the result here (else to stdout)")
    sp.set_defaults(func=cmd_speculate)
    w = sub.add_parser("worker", help="run the dashboard's queued jobs one at a time, apart from the web server")
    w.add_argument("--until-idle", action="store_true", help="exit once the queue is empty (tests, scripts)")
    w.add_argument("--job", type=int, help=argparse.SUPPRESS)  # the worker's child process for one claimed job
    w.set_defaults(func=cmd_worker)
    sv = sub.add_parser("serve", help="start the worker and the dashboard (classroom mode off loopback)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8501)
    sv.add_argument("--classroom", action="store_true", help="roles and a presenter link even on 127.0.0.1")
    sv.set_defaults(func=cmd_serve)
    from core import serving

    sv = sub.add_parser("serve-bench", help="load a real server on 127.0.0.1 with concurrent streams; TTFT, ITL, "
                        "throughput and $ per 1M tokens per concurrency")
    sv.add_argument("--model", default=models.DEFAULT_MODEL)
    sv.add_argument("--techniques", default="fp32", help="comma-separated: fp32, bf16, fp16, nf4-dq, int8 "
                    "(transformers serve) or gguf-<quant> (llama.cpp)")
    sv.add_argument("--gguf", help="a GGUF file to serve on llama.cpp as well (technique gguf-<its quant>)")
    sv.add_argument("--concurrency", default="1,2,4,8,16", help=f"comma-separated, each 1..{serving.MAX_CONCURRENCY}")
    sv.add_argument("--prompt-tokens", default="128", help="comma-separated prompt lengths, cut from real text")
    sv.add_argument("--new-tokens", type=int, default=64)
    sv.add_argument("--repeats", type=int, default=2, help="waves per point (the error bars)")
    sv.add_argument("--threads", type=int, default=2, help="the server's compute threads")
    sv.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    sv.add_argument("--port", type=int, help="serve on this 127.0.0.1 port (default: a free one)")
    sv.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu")
    sv.add_argument("--usd-per-hour", type=float)
    sv.add_argument("--json", help="write the records here (else to stdout)")
    sv.add_argument("--no-store", action="store_true", help="do not write to the results store")
    sv.set_defaults(func=cmd_serve_bench)
    sc = sub.add_parser("serve-context", help="KV cache measured vs estimated and decode speed as the context grows")
    sc.add_argument("--model", default=models.DEFAULT_MODEL)
    sc.add_argument("--contexts", default="128,512,2048", help="comma-separated context lengths, tokens")
    sc.add_argument("--decode-tokens", type=int, default=16)
    sc.add_argument("--json", help="write the points here (else to stdout)")
    sc.set_defaults(func=cmd_serve_context)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with one usage line on bad flags
    models.quiet_library_output()
    try:
        args.func(args)
    except (CliError, ValueError, StoreError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; variants already finished are in the results store", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
