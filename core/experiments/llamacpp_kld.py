"""The lab's KLD beside llama.cpp's own scoreboard: `llama-perplexity --kl-divergence` on the same GGUF files.

llama-perplexity scores a quant against a base's saved log-probs: the base is the lab's F32 GGUF export run by
llama.cpp, the quant the file a GGUF technique builds. The lab scores the same quant (run by its llama.cpp runner)
against its own reference (the FP32 checkpoint in transformers) by the same rule (evaluate rule
"llama-perplexity": n_ctx-token chunks, BOS as llama.cpp adds it, the second half of each chunk scored).
Agreement says the lab's numbers can be read against the numbers people publish for GGUF quants.

    python -m core.experiments.llamacpp_kld --quants q8_0,q4_k_m,q2_k   # prints lab vs llama-perplexity
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core import models, runtimes, techniques
from core.measure import benchmark, evaluate
from core.measure.llamacpp_kld import LlamaKld, read_base_tokens, relative_gap
from core.runtimes import llamacpp_build
from core.runtimes.llamacpp_tools import LAB_FLASH_ATTN, TOOL, tool_base, tool_kld
from core.techniques import gguf

@dataclass(frozen=True)
class Agreement:
    quant: str  # GGUF file type, e.g. "q4_k_m"
    lab: evaluate.TextQuality
    tool: LlamaKld
    tokens_identical: bool  # the lab's tokenizer gave llama.cpp's tokens for every scored chunk

    @property
    def kld_mean_rel_gap(self) -> float:
        return relative_gap(self.lab.kld_mean, self.tool.kld_mean)

    @property
    def same_top_gap_points(self) -> float:
        return 100 * abs(self.lab.top1_agreement - self.tool.same_top)


def compare(model_name: str = models.DEFAULT_MODEL, quants: tuple[str, ...] = ("q8_0", "q4_k_m"),
            text: Path = evaluate.DEFAULT_PPL_TEXT, n_ctx: int = 512, max_tokens: int | None = None,
            threads: int = 2, work_dir: Path | None = None, flash_attn: str = LAB_FLASH_ATTN,
            say=lambda _m: None) -> list[Agreement]:
    """Lab (rule "llama-perplexity") and llama-perplexity on the same quants, text and chunks.

    `max_tokens` caps the text as the sweep's ppl_max_tokens does (None: every whole chunk of the text).
    `flash_attn` is the tool's -fa: "off" runs it as the lab's runner runs, "auto" as its users run it.
    """
    problem = llamacpp_build.why_not_tools()
    if problem is not None:
        raise FileNotFoundError(problem)
    spec = models.resolve(model_name)
    checkpoint = models.prepare(spec, progress=say)
    tokenizer = models.load_tokenizer(checkpoint)
    ids = evaluate.tokenize_text(tokenizer, evaluate.read_text(text))
    bos = evaluate.bos_per_chunk(tokenizer)
    windows = evaluate.perplexity_chunks(ids, n_ctx, max_tokens, bos)
    if len(windows) < 2:
        raise ValueError(f"{text} gives {len(windows)} chunk(s) of {n_ctx} tokens; llama-perplexity needs at least 2")
    with tempfile.TemporaryDirectory(prefix="llama-kld-") as scratch:  # the base file is ~150 MB: not kept
        work = Path(work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        base = work / f"base-{n_ctx}-{len(windows)}.kld"
        say("Exporting the F32 GGUF base")
        f32 = gguf.ensure_file(checkpoint, gguf.GGUFConfig("f32"), threads, say)
        say(f"{TOOL} --kl-divergence-base on {f32.name}")
        tool_base(f32, text, n_ctx, threads, len(windows), base, flash_attn)
        saved = read_base_tokens(base)
        ours = [t for w in windows for t in w[0].tolist()]
        if bos is not None:  # llama.cpp stores each chunk's own first token and writes BOS over it only to read it
            saved_tokens = [bos if i % n_ctx == 0 else t for i, t in enumerate(saved.tokens)]
        else:
            saved_tokens = saved.tokens
        same_tokens = saved.n_chunk == len(windows) and saved_tokens == ours

        say("Reference pass (FP32, transformers)")
        model = techniques.get(techniques.REFERENCE).make(checkpoint, "cpu")
        _, reference = evaluate.text_quality(runtimes.as_runner(model), windows, None, rule="llama-perplexity")
        del model
        benchmark.release_memory()
        out = []
        for quant in quants:
            technique = techniques.get(f"{gguf.PREFIX}{quant}")
            path, _ = technique.artifact(checkpoint, threads, say)  # the file the runner loads, built once
            runner = runtimes.load(technique, "llama.cpp", checkpoint, "cpu", threads, say)
            try:
                say(f"Lab's {quant} pass")
                lab, _ = evaluate.text_quality(runner, windows, reference, rule="llama-perplexity")
            finally:
                runner.close()
            say(f"{TOOL} --kl-divergence on {path.name}")
            tool, _ = tool_kld(path, base, n_ctx, threads, flash_attn)
            out.append(Agreement(quant, lab, tool, same_tokens))
        return out


def table(agreements: list[Agreement]) -> str:
    rows = [f"{'quant':8} {'KLD lab':>9} {'KLD tool':>9} {'gap':>6} {'p99 lab':>8} {'p99 tool':>8} "
            f"{'same-top lab':>12} {'tool':>7} {'Δp lab':>7} {'Δp tool':>7}"]
    for a in agreements:
        rows.append(f"{a.quant:8} {a.lab.kld_mean:9.5f} {a.tool.kld_mean:9.5f} {a.kld_mean_rel_gap:6.1%} "
                    f"{a.lab.kld_p99:8.4f} {a.tool.kld_p99:8.4f} {a.lab.top1_agreement:12.2%} {a.tool.same_top:7.2%} "
                    f"{a.lab.delta_p_mean:7.2%} {a.tool.delta_p_mean:7.2%}")
    if agreements and not agreements[0].tokens_identical:
        rows.append("note: the lab's tokenizer and llama.cpp's gave different tokens for this text")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.experiments.llamacpp_kld", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--quants", default="q8_0,q4_k_m", help="comma-separated GGUF file types")
    p.add_argument("--text", default=str(evaluate.DEFAULT_PPL_TEXT))
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=min(2, len(os.sched_getaffinity(0))))
    p.add_argument("--flash-attn", choices=["off", "on", "auto"], default=LAB_FLASH_ATTN,
                   help="llama-perplexity's -fa (the lab's runner: off; the tool's own default: auto)")
    args = p.parse_args(argv)
    found = compare(args.model, tuple(args.quants.split(",")), Path(args.text), args.ctx, args.max_tokens,
                    args.threads, flash_attn=args.flash_attn, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(table(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
