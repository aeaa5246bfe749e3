"""llama.cpp's own command-line tools run as their users run them: `llama-perplexity` saving a base's log-probs and
scoring a quant (or a KV cache type) against it. Reading what it printed is core.measure.llamacpp_kld's job.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from core.measure.llamacpp_kld import LlamaKld, parse_kld_output
from core.runtimes import llamacpp_build

TOOL = "llama-perplexity"
TOOL_TIMEOUT_S = 1800
# The lab's llama.cpp runner runs with flash attention, as llama-perplexity and llama-server do by default ("auto" is
# on for a CPU). Its f16 accumulation moves near-ties: run one side without it and, on the bundled model's Q4_K_M,
# same-top-p moves by about a point and the KLD p99 by about 9% (the mean by 1%). Comparing the rule means running
# both alike, so the tool runs with its own default.
LAB_FLASH_ATTN = "auto"


def run_tool(args: list[str], timeout_s: float = TOOL_TIMEOUT_S) -> str:
    """Run llama-perplexity; its stdout and stderr together (its statistics go to either, by version)."""
    done = subprocess.run([str(llamacpp_build.tool(TOOL)), *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", timeout=timeout_s)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-5:])
        raise RuntimeError(f"{TOOL} exited with status {done.returncode}:\n{tail}")
    return done.stdout


def tool_base(f32_gguf: Path, text: Path, n_ctx: int, threads: int, chunks: int, out: Path,
              flash_attn: str = LAB_FLASH_ATTN, cache_type: str = "f16") -> str:
    """Save the base's log-probs over `chunks` n_ctx-token chunks of `text` (--kl-divergence-base), its KV cache
    in `cache_type` (-ctk/-ctv)."""
    return run_tool(["-m", str(f32_gguf), "-f", str(text), "-c", str(n_ctx), "-t", str(threads), "-fa", flash_attn,
                     "-ctk", cache_type, "-ctv", cache_type, "--chunks", str(chunks), "--kl-divergence-base", str(out)])


def tool_kld(quant_gguf: Path, base: Path, n_ctx: int, threads: int,
             flash_attn: str = LAB_FLASH_ATTN, cache_type: str = "f16") -> tuple[LlamaKld, str]:
    """llama-perplexity's statistics for a quant (its KV cache in `cache_type`) against a saved base
    (--kl-divergence); parsed, and its output."""
    output = run_tool(["-m", str(quant_gguf), "-c", str(n_ctx), "-t", str(threads), "-fa", flash_attn,
                       "-ctk", cache_type, "-ctv", cache_type,
                       "--kl-divergence-base", str(base), "--kl-divergence"])
    return parse_kld_output(output), output
