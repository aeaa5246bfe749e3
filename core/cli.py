"""The headless CLI's commands (`python -m core ...`; usage in core/__main__.py, arguments in core/cli_parser.py):
the same functions the dashboard pages call, JSON out. With --ray ADDRESS (or $LAB_RAY_ADDRESS) a command runs on a
Ray cluster through core/launch/launch.py, as the worker's job of the same kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from core import models, runtimes, techniques
from core.experiments import distill_run, finetune_run, moe_sweep, speculative, sweep
from core.hybrids import prompt_lookup
from core.launch import cluster, roles, worker
from core.launch.job import Job
from core.launch.launch import launch
from core.measure import benchmark, bill, cost
from core.serving import batching, bench, engines, kv
from core.store import ResultStore, open_store
from core.techniques import distillation, lora
from core.views import capacity


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

    overrides = {k: v for k, v in {
        "eval_set": _existing_file("--eval-set", args.eval_set),
        "ppl_text": _existing_file("--ppl-text", args.ppl_text),
        "new_tokens": args.new_tokens, "repeats": args.repeats, "warmup_runs": args.warmup,
        "threads": args.threads, "device": args.device, "hardware_preset": args.hardware,
        "usd_per_hour": args.usd_per_hour, "mc_max_items": args.mc_max_items, "seed": args.seed,
        "kld_rule": args.kld_rule,
    }.items() if v is not None}
    settings = sweep.SweepSettings(**overrides)
    _json_folder(args.json)
    return settings


def _show_progress(p) -> None:
    if p.step in ("done", "skipped", "prepare"):
        print(f"[{p.fraction:4.0%}] {p.message}", file=sys.stderr, flush=True)


def cmd_sweep(args: argparse.Namespace) -> None:
    keys = techniques.parse_keys(args.techniques)
    settings = _sweep_settings(args)
    _refuse_unsupported(keys, settings.device)
    address = args.ray or cluster_address()
    if not address:
        if "," in args.model:
            raise CliError("--model: several models need a cluster sweep (--ray); measure one at a time here")
        models.resolve(args.model)  # a folder that cannot load is refused before the store is opened or created
    store = None if args.no_store else open_store(args.store_url)
    if address:
        return _cluster_sweep(args, keys, settings, store, address)
    show = _show_progress

    t0 = time.perf_counter()
    records = sweep.run_sweep(args.model, keys, settings, store=store, progress=show)
    print(f"sweep wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    text = sweep.records_json(records, Path(args.json) if args.json else None)
    if not args.json:
        print(text)


def _refuse_unsupported(keys: list[str], device: str) -> None:
    """A variant asked for by name that cannot run here is an error on the command line, before anything loads."""

    here = benchmark.pick_device(device)
    problems = [f"{k}: {reason}" for k in keys
                if (reason := runtimes.why_not(techniques.get(k), techniques.get(k).runtime, here))]
    if problems:
        raise CliError("cannot measure " + "; ".join(problems))


def cluster_address() -> str | None:
    return cluster.configured_address()


def _ray_address(args: argparse.Namespace) -> str | None:
    """The cluster a command runs on: --ray, else $LAB_RAY_ADDRESS; None: this machine."""
    return getattr(args, "ray", None) or cluster_address()


def _on_ray(kind: str, job_args: dict, address: str, store: ResultStore | None, needs_store: bool = True):
    """Run one job of `kind` on the cluster through launch(); returns what launch gave back."""
    if needs_store and store is None:
        raise CliError("--no-store: a job on the cluster writes straight into the shared store; drop --no-store")
    t0 = time.perf_counter()
    done = launch(Job(kind, job_args), "ray", store=store, address=address, progress=_show_cluster_progress)
    print(f"{kind} on the cluster ({done.node}) wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return done


def _show_cluster_progress(p) -> None:
    if p.step in ("prepare", "start", "done", "skipped", "retry", "failed", "cancelled"):
        print(f"[{p.fraction:4.0%}] [{p.node}] {p.message}", file=sys.stderr, flush=True)


def _cluster_sweep(args: argparse.Namespace, keys: list[str], settings, store: ResultStore | None, address: str) -> None:
    """The same sweep as Ray tasks over the cluster at `address`, each worker writing into the shared store."""


    if store is None:
        raise CliError("--no-store: a cluster sweep's workers write straight into the shared store; drop --no-store")
    devices = [d.strip() for d in (args.devices or settings.device).split(",") if d.strip()]
    t0 = time.perf_counter()
    job = Job("sweep", {"model": args.model, "techniques": keys, "settings": dataclasses.asdict(settings)})
    result = launch(job, "ray", store=store, address=address, devices=devices, progress=_show_cluster_progress).result
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
    top_ks = _int_list("--top-k", args.top_k)
    settings = _sweep_settings(args)
    store = None if args.no_store else open_store(args.store_url)
    if address := _ray_address(args):
        done = _on_ray("moe", {"model": args.model, "experts": args.experts, "top_ks": top_ks,
                               "dense_layers": args.dense_layers, "settings": dataclasses.asdict(settings)},
                       address, store)
        records = [r for r in map(store.get, done.record_ids) if r is not None]
        return _write_json(args.json, [r.to_dict() | r.variant_facts for r in records])
    t0 = time.perf_counter()
    records = moe_sweep.run_moe_sweep(args.model, args.experts, top_ks, settings, store=store, progress=_show_progress,
                                      dense_layers=args.dense_layers)
    print(f"moe wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = [r.to_dict() | r.variant_facts for r in records]  # the structure facts at top level too, as promised
    _write_json(args.json, rows)


def cmd_lora(args: argparse.Namespace) -> None:
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
    if address := _ray_address(args):
        job = {"model": args.model, "settings": dataclasses.asdict(settings), "task": args.task,
               "data": str(data) if data else None, "usd_per_hour": price, "hardware_preset": args.hardware,
               "launched_from": "cli"}
        store = None if args.no_store else open_store(args.store_url)
        return _write_json(args.json, _on_ray("lora", job, address, store, needs_store=False).result)
    result, model = finetune_run.run_finetune(args.model, settings, None if data else args.task, data, price, _every_tenth_step)
    if not args.no_store:
        finetune_run.store_record(model, result, open_store(args.store_url), price, args.hardware,
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
    settings = distillation.DistillSettings(
        student_layers=args.layers, layer_choice=args.layer_choice, steps=args.steps, batch_size=args.batch_size,
        seq_len_tokens=args.seq_len, learning_rate=args.lr, temperature=args.temperature, kd_weight=args.kd_weight,
    )
    corpus = Path(_existing_file("--corpus", args.corpus)) if args.corpus else None
    _json_folder(args.json)
    distill_run.prepare_run(args.teacher, settings, corpus)  # refuse bad input before anything loads or is written
    price = args.usd_per_hour if args.usd_per_hour is not None else cost.HARDWARE_PRESETS[args.hardware].usd_per_hour
    if address := _ray_address(args):
        job = {"teacher": args.teacher, "settings": dataclasses.asdict(settings),
               "corpus": str(corpus) if corpus else None, "usd_per_hour": price, "hardware_preset": args.hardware,
               "launched_from": "cli", "mc_max_items": args.mc_max_items or 0}
        store = None if args.no_store else open_store(args.store_url)
        return _write_json(args.json, _on_ray("distill", job, address, store, needs_store=False).result)
    t0 = time.perf_counter()
    result = distill_run.run_distill(args.teacher, settings, corpus, price, _every_tenth_step)
    print(f"distillation (corpus + training) wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    records = distill_run.measure(result, None if args.no_store else open_store(args.store_url), price, args.hardware,
                                  lambda f, m: None, mc_max_items=args.mc_max_items or 0)
    print(f"distill wall time, measuring included: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    _write_json(args.json, distill_run.summary(result, records))


def cmd_speculate(args: argparse.Namespace) -> None:
    if not (Path(args.draft) / "config.json").is_file():
        raise CliError(f"--draft: {args.draft} is not a saved model directory (no config.json); "
                       "pass a student's folder, e.g. from `python -m core distill`")
    _json_folder(args.json)
    if address := _ray_address(args):
        job = {"model": args.model, "draft": args.draft, "draft_tokens": args.draft_tokens,
               "max_new_tokens": args.max_new_tokens}
        return _write_json(args.json, _on_ray("speculate", job, address, None, needs_store=False).result)
    result = speculative.run_speculate(args.model, args.draft, args.draft_tokens, args.max_new_tokens,
                                       report=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True))
    speculative.save_result(result)
    _write_json(args.json, result.to_dict())


def cmd_prompt_lookup(args: argparse.Namespace) -> None:
    """Prompt-lookup decoding against plain greedy, per runtime and prompt set; stored, then a table on stdout."""
    settings = prompt_lookup.LookupSettings(
        runtimes=tuple(r.strip() for r in args.runtime.split(",") if r.strip()), technique=args.technique,
        draft_tokens=args.draft_tokens, new_tokens=args.new_tokens, repeats=args.repeats, threads=args.threads,
        prompt_files=tuple(args.prompts.split(",")) if args.prompts else prompt_lookup.LookupSettings.prompt_files)
    _json_folder(args.json)
    prompt_lookup.check_request(settings)  # refuse bad input before a model loads or anything is written
    results = prompt_lookup.run_prompt_lookup(args.model, settings, report=lambda f, m: print(
        f"[{f:4.0%}] {m}", file=sys.stderr, flush=True))
    prompt_lookup.save_results(results)
    print(f"{'runtime':<13}{'prompt set':<12}{'acceptance':>11}{'plain tok/s':>13}{'lookup tok/s':>14}"
          f"{'speed-up':>10}{'identical':>11}")
    for r in results:
        print(f"{r.runtime:<13}{r.prompt_set:<12}{r.acceptance_rate:>11.1%}{r.plain_decode_tokens_per_s:>13.1f}"
              f"{r.lookup_decode_tokens_per_s:>14.1f}{r.speedup:>9.2f}x{r.identical_outputs:>8}/{r.prompts_total}")
    if args.json:
        _write_json(args.json, [r.to_dict() for r in results])


def cmd_worker(args: argparse.Namespace) -> None:
    if args.job is not None:
        raise SystemExit(worker.run_claimed(args.job))
    code = worker.serve(until_idle=args.until_idle, say=lambda m: print(m, file=sys.stderr, flush=True))
    if code:
        raise SystemExit(code)


def cmd_serve(args: argparse.Namespace) -> None:
    """Start the worker, then the dashboard in the foreground. For an audience, print the presenter link here,
    on the presenter's terminal only; the browser pages never show it."""
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
    command = [sys.executable, "-m", "ui.server", "run", "app.py", "--server.address", args.host,
               "--server.port", str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
               *extra]
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execvpe(command[0], command, env)


def cmd_serve_bench(args: argparse.Namespace) -> None:
    """Start each variant's server on 127.0.0.1, load it at each concurrency, one record per point."""
    keys = [k.strip() for k in args.techniques.split(",") if k.strip()]
    if not keys:
        raise CliError("--techniques: no techniques given, e.g. fp32,gguf-q4_1")
    gguf = {}
    if args.gguf:
        path = Path(_existing_file("--gguf", args.gguf))
        gguf = {engines.gguf_key(path): path}
        keys += [k for k in gguf if k not in keys]
    settings = bench.ServeSettings(
        concurrency=tuple(_int_list("--concurrency", args.concurrency)),
        prompt_tokens=tuple(_int_list("--prompt-tokens", args.prompt_tokens)), new_tokens=args.new_tokens,
        repeats=args.repeats, device=args.device, threads=args.threads, hardware_preset=args.hardware,
        usd_per_hour=args.usd_per_hour, port=args.port)
    _json_folder(args.json)
    store = None if args.no_store else open_store(args.store_url)
    if address := _ray_address(args):
        if gguf:
            raise CliError("--gguf: a file on this machine is not served on the cluster; drop --gguf or --ray")
        job = {"model": args.model, "techniques": keys, "settings": dataclasses.asdict(settings)}
        return _write_json(args.json, _on_ray("serve-bench", job, address, store).result)
    t0 = time.perf_counter()
    records = bench.serve_bench(args.model, keys, settings, store=store, gguf_files=gguf,
                                  report=lambda f, m: print(f"[{f:4.0%}] {m}", file=sys.stderr, flush=True))
    print(f"serve-bench wall time: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    _write_json(args.json, [r.to_dict() for r in records])


def cmd_serve_check(args: argparse.Namespace) -> None:
    """Greedy answers alone and in batches on the server that serves the variant; every difference explained."""
    checks = batching.check_variant(args.model, args.technique, _int_list("--concurrency", args.concurrency),
                                    args.new_tokens, args.prompt_tokens, args.threads)
    for c in checks:
        print(f"{c.runtime}, {c.concurrency} at once: {c.same_as_alone}/{c.requests} same as alone, {c.near_ties} "
              f"near-ties (top-2 gap <= {c.tolerance}), {c.drift_explained} within the batched kernels' measured "
              f"drift, {c.mismatches} unexplained")
        for line in c.details:
            print(f"    {line}")
    if args.json:
        _write_json(args.json, [dataclasses.asdict(c) for c in checks])


def cmd_serve_context(args: argparse.Namespace) -> None:
    """KV cache measured vs estimated, and decode speed, as the context grows (in process, one sequence)."""
    contexts = _int_list("--contexts", args.contexts)
    if address := _ray_address(args):
        job = {"model": args.model, "contexts": contexts, "decode_tokens": args.decode_tokens}
        out = _on_ray("serve-context", job, address, None, needs_store=False).result
    else:
        out = kv.measure_context(args.model, contexts, args.decode_tokens, report=lambda f, m: print(
            f"[{f:4.0%}] {m}", file=sys.stderr, flush=True)).to_dict()
    for p in out["points"]:
        p["kv_error_pct"] = 100 * (p["kv_cache_mb_measured"] / p["kv_cache_mb_estimated"] - 1)
    _write_json(args.json, out)


def _bill_text(bills: list[bill.VariantBill]) -> str:
    """The bill table in plain text, one variant a line: the same numbers as Decide's tabs."""
    head = f"{'variant':<28} {'machines':>8} {'req/s/machine':>13} {'busy h/machine':>14} {'$/month':>10} {'interval':>21}  source"
    lines = [head]
    for b in bills:
        x, (low, high) = b.bill, b.bill.usd_per_month_range
        lines.append(f"{b.label[:28]:<28} {x.machines:>8} {x.requests_per_s_per_machine:>13.3f} "
                     f"{x.busy_hours_per_machine_per_month:>14.1f} {x.usd_per_month:>10,.2f} "
                     f"{f'{low:,.2f}-{high:,.2f}':>21}  {b.source}{'' if b.meets_target else ' (misses the target)'}")
    return "\n".join(lines)


def cmd_bill(args: argparse.Namespace) -> None:
    """One bill per measured variant of a model on one machine, from the results store (the Decide page's bills)."""
    spec = models.resolve(args.model)
    store = open_store(args.store_url)
    machine = args.machine or benchmark.hardware_fingerprint(benchmark.pick_device("auto"))
    records = store.latest_per_technique(spec.key, machine)
    if not records:
        seen = store.hardware_seen(spec.key)
        raise CliError(f"nothing measured for {spec.key} on {machine!r}; "
                       + (f"--machine one of {seen}" if seen else "run `python -m core sweep` first"))
    price = args.usd_per_hour if args.usd_per_hour is not None else cost.get_preset(args.hardware).usd_per_hour
    traffic = bill.Traffic(args.requests_per_day, args.answer_tokens, args.prompt_tokens, args.peak_to_average,
                           args.peak_requests_per_s)
    target = bill.LatencyTarget(args.max_ttft_ms_p90, args.min_user_tokens_per_s)
    billing = args.billing.replace("-", "_")
    bills = bill.variant_bills(records, capacity.latest_points(store.serving(spec.key, machine)), traffic, price,
                               billing, target)
    if args.json is None:
        print(f"{spec.key} on {machine}: {traffic.requests_per_day:,.0f} requests a day, {traffic.answer_tokens}-token "
              f"answers, peak {traffic.peak_rps:.3f} requests/s, ${price:.4f}/h, billed {bill.BILLING_WORDS[billing]}")
        print(f"{bill.FORMULA}; machines = max(1, ceil(peak / that), ceil(busy hours / {bill.HOURS_PER_MONTH}))")
        print(_bill_text(bills))
        return
    _json_folder(None if args.json == "-" else args.json)
    _write_json(None if args.json == "-" else args.json, bill.bill_rows(bills))
