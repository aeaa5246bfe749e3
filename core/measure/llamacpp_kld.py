"""llama.cpp's KLD scoreboard as numbers: the statistics `llama-perplexity --kl-divergence` prints, and the tokens
its `--kl-divergence-base` file holds.

The field compares GGUF quants by that tool's "KL divergence statistics" and "Same top p". The lab scores text
quality by the same rule (core.measure.evaluate, rule "llama-perplexity"); this module reads what the tool printed
so the two can be set side by side. Running the tool is core.experiments.llamacpp_kld's job (it needs the
runtimes layer, which sits above this one).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path


class ScoreboardError(ValueError):
    """llama-perplexity's output holds no KL divergence statistics (it failed, or scored too few positions)."""


@dataclass(frozen=True)
class LlamaKld:
    """One quant against its base, as llama-perplexity reports it. Fractions, not percent; KLD in nats."""
    kld_mean: float
    kld_mean_uncertainty: float
    kld_median: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    same_top: float  # "Same top p": share of scored positions whose argmax token equals the base's
    same_top_uncertainty: float
    delta_p_mean: float  # mean of p_quant - p_base of the text's next token
    delta_p_rms: float
    ppl_quant: float
    ppl_base: float
    chunks: int  # chunks scored, from the per-chunk table
    n_ctx: int


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf))"
_PATTERNS = {
    "kld_mean": rf"Mean\s+KLD:\s*{_NUMBER}\s*±\s*{_NUMBER}",
    "kld_max": rf"Maximum KLD:\s*{_NUMBER}",
    "kld_p999": rf"99\.9%\s+KLD:\s*{_NUMBER}",
    "kld_p99": rf"99\.0%\s+KLD:\s*{_NUMBER}",
    "kld_median": rf"Median\s+KLD:\s*{_NUMBER}",
    "delta_p_mean": rf"Mean\s+Δp:\s*{_NUMBER}\s*±\s*{_NUMBER}\s*%",
    "delta_p_rms": rf"RMS Δp\s*:\s*{_NUMBER}\s*±\s*{_NUMBER}\s*%",
    "same_top": rf"Same top p:\s*{_NUMBER}\s*±\s*{_NUMBER}\s*%",
    "ppl_quant": rf"Mean PPL\(Q\)\s*:\s*{_NUMBER}",
    "ppl_base": rf"Mean PPL\(base\)\s*:\s*{_NUMBER}",
}
_CHUNKS = re.compile(rf"computing over (\d+) chunks, n_ctx=(\d+)")
_ERROR = re.compile(r"^.*(?:you need at least|failed|error|does not look like).*$", re.IGNORECASE | re.MULTILINE)


def parse_kld_output(text: str) -> LlamaKld:
    """The final statistics of `llama-perplexity --kl-divergence` (its stdout and stderr together)."""
    found: dict[str, tuple[float, ...]] = {}
    for name, pattern in _PATTERNS.items():
        match = re.search(pattern, text)
        if match:
            found[name] = tuple(float(g) for g in match.groups())
    missing = [name for name in _PATTERNS if name not in found]
    if missing:
        errors = [line.strip() for line in _ERROR.findall(text)][-2:]
        why = "; ".join(errors) if errors else \
            "the output ends before its statistics (it prints none below 100 positions)"
        raise ScoreboardError(f"llama-perplexity printed no {', '.join(missing)}: {why}")
    chunks = _CHUNKS.search(text)
    return LlamaKld(
        kld_mean=found["kld_mean"][0], kld_mean_uncertainty=found["kld_mean"][1],
        kld_median=found["kld_median"][0], kld_p99=found["kld_p99"][0], kld_p999=found["kld_p999"][0],
        kld_max=found["kld_max"][0],
        same_top=found["same_top"][0] / 100, same_top_uncertainty=found["same_top"][1] / 100,
        delta_p_mean=found["delta_p_mean"][0] / 100, delta_p_rms=found["delta_p_rms"][0] / 100,
        ppl_quant=found["ppl_quant"][0], ppl_base=found["ppl_base"][0],
        chunks=int(chunks.group(1)) if chunks else 0, n_ctx=int(chunks.group(2)) if chunks else 0,
    )


@dataclass(frozen=True)
class BaseFile:
    """The head of a `--kl-divergence-base` file: the tokens llama-perplexity scored, before its log-probs."""
    n_ctx: int
    n_vocab: int
    n_chunk: int
    tokens: list[int]  # n_chunk * n_ctx text tokens as llama.cpp tokenized them (BOS first when it adds one)


def read_base_tokens(path: Path) -> BaseFile:
    """Read "_logits_", n_ctx (u32), n_vocab, n_chunk (i32), then n_chunk*n_ctx int32 tokens (perplexity.cpp)."""
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic != b"_logits_":
            raise ScoreboardError(f"{path} is not a llama-perplexity --kl-divergence-base file")
        n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", f.read(12))
        count = n_ctx * n_chunk
        raw = f.read(4 * count)
    if len(raw) != 4 * count:
        raise ScoreboardError(f"{path} ends inside its token list ({len(raw) // 4} of {count} tokens)")
    return BaseFile(n_ctx, n_vocab, n_chunk, list(struct.unpack(f"<{count}i", raw)))


def relative_gap(ours: float, theirs: float) -> float:
    """|ours - theirs| / |theirs| (inf when theirs is 0 and ours is not)."""
    if theirs == 0:
        return 0.0 if ours == 0 else math.inf
    return abs(ours - theirs) / abs(theirs)
