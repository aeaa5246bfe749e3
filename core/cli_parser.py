"""The CLI's arguments (`build_parser`) and its entry point (`main`); the commands are core/cli.py."""

from __future__ import annotations

import argparse
import sys

from core import cli_budget, cli_cascade, cli_gguf_draft, cli_model_cascade, models, techniques
from core.cli import (
    CliError,
    cmd_bill,
    cmd_distill,
    cmd_lora,
    cmd_models,
    cmd_moe,
    cmd_prepare,
    cmd_prompt_lookup,
    cmd_serve,
    cmd_serve_bench,
    cmd_serve_check,
    cmd_serve_context,
    cmd_speculate,
    cmd_sweep,
    cmd_worker,
)
from core.measure import bill, cost, evaluate
from core.serving.limits import MAX_CONCURRENCY
from core.store import StoreError
from core.techniques.distillation import LAYER_CHOICES, DistillSettings


def _add_measurement_args(s: argparse.ArgumentParser) -> None:
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
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), help="price preset for $ per 1M tokens")
    s.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    s.add_argument("--no-store", action="store_true", help="do not write to the results store")
    s.add_argument("--store", dest="store_url", metavar="URL", default=argparse.SUPPRESS,
                   help="results store URL (as the top-level --store)")


def _add_ray_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("--ray", metavar="ADDRESS", help="run the job as one task on a Ray cluster: auto, ray://head:10001 "
                   "or head:6379 (default: $LAB_RAY_ADDRESS; unset = this machine)")


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
    _add_ray_arg(m)
    m.set_defaults(func=cmd_moe)
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
    _add_ray_arg(f)
    f.set_defaults(func=cmd_lora)

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
    _add_ray_arg(d)
    d.set_defaults(func=cmd_distill)
    sp = sub.add_parser("speculate", help="the model generates with a draft model; same output? acceptance, speed-up")
    sp.add_argument("--model", default=models.DEFAULT_MODEL)
    sp.add_argument("--draft", required=True, help="the draft's folder (a distilled student)")
    sp.add_argument("--draft-tokens", type=int, default=4, help="tokens the draft proposes per verifying pass")
    sp.add_argument("--max-new-tokens", type=int, default=64)
    sp.add_argument("--json", help="write the result here (else to stdout)")
    _add_ray_arg(sp)
    sp.set_defaults(func=cmd_speculate)
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
    w = sub.add_parser("worker", help="run the dashboard's queued jobs one at a time, apart from the web server")
    w.add_argument("--until-idle", action="store_true", help="exit once the queue is empty (tests, scripts)")
    w.add_argument("--job", type=int, help=argparse.SUPPRESS)  # the worker's child process for one claimed job
    w.set_defaults(func=cmd_worker)
    sv = sub.add_parser("serve", help="start the worker and the dashboard (classroom mode off loopback)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8501)
    sv.add_argument("--classroom", action="store_true", help="roles and a presenter link even on 127.0.0.1")
    sv.set_defaults(func=cmd_serve)

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
    sv.add_argument("--repeats", type=int, default=2, help="waves per point (the error bars)")
    sv.add_argument("--threads", type=int, default=2, help="the server's compute threads")
    sv.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    sv.add_argument("--port", type=int, help="serve on this 127.0.0.1 port (default: a free one)")
    sv.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu")
    sv.add_argument("--usd-per-hour", type=float)
    sv.add_argument("--json", help="write the records here (else to stdout)")
    sv.add_argument("--no-store", action="store_true", help="do not write to the results store")
    _add_ray_arg(sv)
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
    _add_ray_arg(sc)
    sc.set_defaults(func=cmd_serve_context)
    _add_bill(sub)
    for hybrid in (cli_cascade, cli_model_cascade, cli_gguf_draft, cli_budget):
        hybrid.add_parser(sub)
    return parser


def _add_bill(sub) -> None:
    b = sub.add_parser("bill", help="machines, busy hours and the monthly bill per measured variant for a traffic "
                       "profile, from the results store (the Decide page's numbers)")
    b.add_argument("--model", default=models.DEFAULT_MODEL)
    b.add_argument("--machine", help="hardware fingerprint the results were measured on (default: this machine)")
    b.add_argument("--requests-per-day", type=float, required=True)
    b.add_argument("--answer-tokens", type=int, default=200, help="typical answer length")
    b.add_argument("--prompt-tokens", type=int, default=128, help="typical prompt length (picks the load points)")
    b.add_argument("--peak-to-average", type=float, default=bill.PEAK_TO_AVERAGE,
                   help="busiest hour vs the day's average")
    b.add_argument("--peak-requests-per-s", type=float, help="the peak itself, instead of --peak-to-average")
    b.add_argument("--max-ttft-ms-p90", type=float, help="latency target: p90 time to first token at most")
    b.add_argument("--min-user-tokens-per-s", type=float, help="latency target: each user gets at least")
    b.add_argument("--hardware", choices=list(cost.HARDWARE_PRESETS), default="laptop-cpu", help="price preset")
    b.add_argument("--usd-per-hour", type=float, help="override the preset's price")
    b.add_argument("--billing", choices=[k.replace("_", "-") for k in bill.BILLINGS], default="always-on",
                   help="the headline bill: always on (live traffic) or busy only (per-second billing, scale to zero)")
    b.add_argument("--json", nargs="?", const="-", help="JSON rows instead of the table: to this file, or stdout")
    b.set_defaults(func=cmd_bill)


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
