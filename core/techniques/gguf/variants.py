"""The registry's GGUF variants: one entry per llama.cpp file type (gguf-f16 ... gguf-q2_k, and Q4_K_M
with an importance matrix), and GGUF files of the checkpoints the lab saved ("<student>+gguf-q4_k_m").
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.models.saved import saved_checkpoints
from core.runtimes.llamacpp import why_gguf_cannot_run
from core.techniques.gguf.config import GGUFConfig
from core.techniques.gguf.export import GGUFError
from core.techniques.gguf.files import artifact
from core.techniques.registry import TECHNIQUES, Technique, defaults_for, get, register, register_resolver


# ---------------------------------------------------------------- registry entries


def _no_torch_model(_checkpoint: Path, config: GGUFConfig, _device: str):
    raise GGUFError(f"GGUF {config.file_stem} runs on llama.cpp; load it through core.runtimes, not as a torch model")


def _unsupported(_config: GGUFConfig, device: str) -> str | None:
    return why_gguf_cannot_run(device)  # the llama.cpp runtime's own check, so the two never say different things


PREFIX = "gguf-"  # every GGUF variant's key: gguf-<llama.cpp file type>[-imatrix]


def _gguf(quant: str, label: str, explanation: str, surprise: str, imatrix: bool = False,
          default_for: tuple[str, ...] = ()) -> Technique:
    config = GGUFConfig(quant, imatrix=imatrix)  # type: ignore[arg-type]
    return Technique(f"{PREFIX}{config.file_stem}", label, "gguf", config, explanation, surprise,
                     _no_torch_model, _unsupported, runtimes=("llama.cpp",), build_artifact=artifact,
                     default_for=default_for)


K_QUANTS = ("k-quants mix bit widths per tensor: the tensors that hurt most when rounded (attention values, "
            "the feed-forward down projection in some layers, the output table) keep more bits, so the file is larger "
            "than the name's bit count times the parameters. They pack rows in blocks of 256 weights: a model whose "
            "width is not a multiple of 256 (SmolLM2-135M's is 576) gets older 32-weight block types (Q5_0, Q8_0) for "
            "those tensors instead; the record counts them (variant facts: fallback_tensors).")
register(
    _gguf("f16", "GGUF F16 (llama.cpp)",
          "Every weight as a 16-bit float in a GGUF file, run by llama.cpp's CPU kernels.",
          "The same numbers as FP16 in transformers, yet often faster than transformers' FP32 on a CPU: llama.cpp "
          "reads half the bytes and its kernels are written for this one job."),
    _gguf("q8_0", "GGUF Q8_0 (llama.cpp 8-bit)",
          "Weights as 8-bit integers with one scale per block of 32 (8.5 bits per weight), multiplied directly by "
          "llama.cpp's integer kernels.",
          "Near-lossless (KL divergence from FP32 usually below 0.01) and fast, unlike bitsandbytes INT8 on a CPU, "
          "because the int8 blocks are multiplied as they are instead of being turned back into floats.", default_for=("sweep", "saved")),
    _gguf("q6_k", "GGUF Q6_K", "6-bit k-quant: blocks of 16 weights with 8-bit scales inside super-blocks of 256 "
          "(6.56 bits per weight).", "Quality close to Q8_0 at three quarters of its size."),
    _gguf("q5_k_m", "GGUF Q5_K_M", "5-bit k-quant mix (the M recipe): most tensors 5-bit, the most sensitive ones 6-bit.",
          K_QUANTS),
    _gguf("q4_k_m", "GGUF Q4_K_M", "4-bit k-quant mix (the M recipe): most tensors 4-bit in blocks with their own "
          "scales and minimums, the most sensitive ones 6-bit. The usual choice for laptops and phones.",
          K_QUANTS + " And unlike bitsandbytes 4-bit on a CPU, it decodes faster than FP32: the kernels read the packed "
                     "4-bit blocks and never build a float copy of the weights.", default_for=("sweep", "saved")),
    _gguf("q4_0", "GGUF Q4_0 (legacy 4-bit)", "4-bit weights with one 16-bit scale per block of 32, every tensor alike "
          "(4.5 bits per weight).",
          "Often the fastest 4-bit file on a CPU (its simple blocks are repacked for the CPU's vector units at load), "
          "but less accurate than Q4_K_M at nearly the same size."),
    _gguf("q3_k_m", "GGUF Q3_K_M", "3-bit k-quant mix: most tensors 3-bit, sensitive ones 4- or 5-bit.", K_QUANTS),
    _gguf("q2_k", "GGUF Q2_K", "2-bit k-quant: weights on 4 levels per block, with 4-bit scales and minimums.",
          "A 135M-parameter model has little redundancy to lose: 2 bits damage it far more than they damage a 7B model, "
          "where Q2_K is still usable."),
    _gguf("q4_k_m", "GGUF Q4_K_M + importance matrix",
          "Q4_K_M, with rounding steered by an importance matrix: how strongly each weight column is used, measured "
          "on the lab's calibration text (never on the evaluation text).",
          "The same size and speed as Q4_K_M; only which weights round more carefully changes, so the gain is in "
          "KL divergence, and it can be small on text unlike the calibration text.", imatrix=True),
    rank=1)


def gguf_of_saved(base_key: str, gguf_key: str) -> Technique:
    """A GGUF variant exported from a saved student or merged fine-tune, measured against the base model."""
    quant = get(gguf_key)
    if quant.family != "gguf":
        raise ValueError(f"{gguf_key!r} is not a GGUF technique; use one of "
                         f"{', '.join(k for k, t in TECHNIQUES.items() if t.family == 'gguf')}")
    saved = saved_checkpoints()
    if base_key not in saved:
        raise ValueError(f"No finished distilled student or merged fine-tune is saved as {base_key!r}; "
                         f"saved here: {', '.join(saved) or 'none'}")
    label, folder = saved[base_key]
    return replace(quant, key=f"{base_key}+{quant.key}", label=f"{label} · {quant.label}",
                   config=replace(quant.config, source=str(folder)),
                   explanation=f"{label}, exported to GGUF and quantized: {quant.explanation}")


def saved_gguf_keys(model_key: str | None = None) -> list[str]:
    """The GGUF variants offered for each checkpoint the lab saved of this model: "<saved key>+gguf-<quant>"."""
    quants = defaults_for("saved")  # near-lossless Q8_0 and the laptop's Q4_K_M, marked where they register
    return [f"{k}+{q}" for k in saved_checkpoints(model_key) for q in quants]


def _resolve_gguf_of_saved(key: str) -> Technique | None:
    """A GGUF file of a checkpoint the lab made: "<student or fine-tune key>+gguf-<quant>"."""
    return gguf_of_saved(*key.rsplit("+", 1)) if f"+{PREFIX}" in key else None


register_resolver(_resolve_gguf_of_saved)
