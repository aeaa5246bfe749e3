"""The one registry of techniques. Pages and the CLI iterate it; nothing else branches on technique names.

Each entry says, in plain words, what it does and what a newcomer will be surprised by, and knows how
to build its variant from a checkpoint directory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from core import gguf, moe
from core.quantization import QuantConfig, load_quantized, unsupported_reason


def _all_bytes_held_are_read(_model: torch.nn.Module, bytes_held: int) -> int:
    # A dense model reads every weight it holds once per decoded token.
    return bytes_held


def _no_facts(_model: torch.nn.Module) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Technique:
    key: str
    label: str
    family: str  # "reference", "quantization", ...
    config: Any  # the family's frozen config dataclass
    explanation: str  # one or two plain sentences for a newcomer
    surprise: str  # what a newcomer will see that looks wrong but is not, and why
    build: Callable[[Path, Any, str], torch.nn.Module]  # (checkpoint, config, device) -> model in eval mode
    unsupported: Callable[[Any, str], str | None]  # (config, device) -> why it cannot run here, or None
    # (model, bytes held) -> bytes one decoded token reads: the roofline's denominator. A mixture of experts
    # holds every expert but reads only the chosen ones, so for it this is less than the bytes held.
    bytes_read_per_token: Callable[[torch.nn.Module, int], int] = _all_bytes_held_are_read
    facts: Callable[[torch.nn.Module], dict[str, Any]] = _no_facts  # structure numbers stored with the record
    # The runtimes that can run it (core.runtimes keys); a variant is (technique, runtime), and a registry
    # key "fp32@transformers-compiled" names a technique bound to one runtime. The first is the default.
    runtimes: tuple[str, ...] = ("transformers",)

    @property
    def runtime(self) -> str:
        return self.runtimes[0]

    def make(self, checkpoint: Path, device: str = "cpu") -> torch.nn.Module:
        return self.build(checkpoint, self.config, device)

    def why_not(self, device: str) -> str | None:
        return self.unsupported(self.config, device)

    def on(self, runtime: str) -> "Technique":
        """This technique bound to one runtime, under the key `<key>@<runtime>` (the default keeps its key)."""
        if runtime not in self.runtimes:
            raise ValueError(f"{self.label} runs on {', '.join(self.runtimes)}, not on {runtime!r}")
        if runtime == self.runtime:
            return self
        from core import runtimes as rt

        # The reference is fp32 on the default runtime alone; fp32 elsewhere is a variant like any other.
        family = "quantization" if self.family == "reference" else self.family
        return replace(self, key=f"{self.key}@{runtime}", label=f"{self.label} · {rt.get(runtime).label}",
                       family=family, runtimes=(runtime,))


REFERENCE = "fp32"


def _quant(key: str, label: str, config: QuantConfig, explanation: str, surprise: str = "") -> Technique:
    family = "reference" if key == REFERENCE else "quantization"
    # The reference records its parameter count and FLOPs per token so that MoE variants can be drawn against it.
    facts = moe.dense_facts if key == REFERENCE else _no_facts
    # Only the 32- and 16-bit variants compile into one graph (core/runtimes/transformers_rt.py says why).
    runs_on = ("transformers", "transformers-compiled") if config.weights in ("fp32", "bf16", "fp16") else ("transformers",)
    return Technique(key, label, family, config, explanation, surprise, load_quantized, unsupported_reason, facts=facts,
                     runtimes=runs_on)


def _gguf_has_no_torch_model(_checkpoint: Path, config: gguf.GGUFConfig, _device: str):
    raise gguf.GGUFError(f"GGUF {config.file_stem} runs on llama.cpp; load it through core.runtimes, not as a torch model")


def _gguf_unsupported(_config: gguf.GGUFConfig, device: str) -> str | None:
    if device.startswith("cuda"):
        return "this lab's llama.cpp build is CPU-only; measure GGUF variants with --device cpu."
    return gguf.llama_cpp_problem()


def _gguf(quant: str, label: str, explanation: str, surprise: str, imatrix: bool = False) -> Technique:
    config = gguf.GGUFConfig(quant, imatrix=imatrix)  # type: ignore[arg-type]
    return Technique(f"gguf-{config.file_stem}", label, "gguf", config, explanation, surprise,
                     _gguf_has_no_torch_model, _gguf_unsupported, runtimes=("llama.cpp",))


MOE_EXPLANATION = (
    "Each feed-forward layer's neurons are split into {experts} equal groups (experts) and a small router, fitted "
    "on calibration text, runs only the {top_k} experts that matter most for each token: about {pct:.0f}% of the "
    "feed-forward weights are read per token (the first layer stays whole). With every expert running it "
    "computes exactly the dense model."
)
MOE_SURPRISE = (
    "The model holds as many bytes as the dense one (every expert stays in memory); what shrinks is the bytes "
    "read and the arithmetic per token. This model was trained dense, so its neurons were never taught to work "
    "in groups: quality falls fast as fewer experts run, unlike a model trained as a mixture of experts "
    "(LLaMA-MoE recovered quality by training the converted model further; nothing is trained here)."
)


def moe_technique(experts: int, top_k: int, dense_layers: int = moe.DEFAULT_DENSE_LAYERS) -> Technique:
    """The registry entry for any (E, k); the registry lists a few, `get` builds the rest on demand."""
    config = moe.MoEConfig(experts=experts, top_k=top_k, dense_layers=dense_layers)
    label = f"MoE {top_k} of {experts} experts" + ("" if dense_layers == moe.DEFAULT_DENSE_LAYERS
                                                     else f", first {dense_layers} MLP layers dense")
    return Technique(
        moe.technique_key(experts, top_k, dense_layers), label, "moe", config,
        MOE_EXPLANATION.format(experts=experts, top_k=top_k, pct=100 * top_k / experts), MOE_SURPRISE,
        moe.load_moe, moe.unsupported_reason, bytes_read_per_token=moe.bytes_read_per_token, facts=moe.variant_facts)


TECHNIQUES: dict[str, Technique] = {
    t.key: t
    for t in [
        _quant("fp32", "FP32 (reference)", QuantConfig("fp32"),
               "Every weight is a 32-bit float: the reference every other variant is compared against.",
               "On a CPU it is often the fastest, because CPU kernels are most optimised for float32."),
        _quant("bf16", "BF16", QuantConfig("bf16"),
               "Weights in 16-bit brain-float: half the memory, nearly the same numbers (same range, fewer digits).",
               "On CPUs without native bf16 instructions it is no faster than fp32 at decoding, and reading the "
               "prompt (time to first token) is slower: every multiply converts back to fp32."),
        _quant("fp16", "FP16", QuantConfig("fp16"),
               "Weights in 16-bit half precision: half the memory; fast on GPUs, often slow on CPUs.",
               "CPUs without fp16 arithmetic emulate it: decoding may keep pace with fp32 (it is memory-bound), "
               "but reading a prompt, which is compute-bound, can take several times longer."),
        _quant("int8", "INT8 (bitsandbytes LLM.int8)", QuantConfig("int8"),
               "Weights stored as 8-bit integers with a scale per row; rare large activations stay in 16-bit.",
               "At this size it decodes slower than fp32 on a CPU: every step converts int8 weights back to "
               "16-bit floats, and that work costs more than the memory it saves for a model this small."),
        _quant("nf4", "NF4 (bitsandbytes 4-bit)", QuantConfig("nf4"),
               "Weights in 4 bits on a 'normal float' grid matched to how weights are distributed, one scale per 64 weights.",
               "The embedding table stays in full precision, so the model shrinks less than 8x."),
        _quant("fp4", "FP4 (bitsandbytes 4-bit float)", QuantConfig("fp4"),
               "Weights in a tiny 4-bit floating-point format, one scale per 64 weights.",
               "Usually a little worse than NF4 at the same size: its grid fits real weights less well."),
        _quant("nf4-dq", "NF4 + double quantization", QuantConfig("nf4", double_quant=True),
               "NF4, with the per-block scales themselves quantized to 8 bits (the QLoRA recipe).",
               "Saves only about 0.4 bits per weight; at 135M parameters that is a few MB."),
        _quant("dyn-int8", "Dynamic INT8 (torch)", QuantConfig("dyn-int8"),
               "torch quantizes Linear weights to int8 once and activations to int8 at run time, then uses fast int8 kernels.",
               "It can be the fastest variant on a CPU and still damage quality badly: quantizing activations "
               "of a model this small loses much more than quantizing weights alone."),
    ]
}
K_QUANTS = ("k-quants mix bit widths per tensor: the tensors that hurt most when rounded (attention values, "
            "the feed-forward down projection in some layers, the output table) keep more bits, so the file is larger "
            "than the name's bit count times the parameters. They pack rows in blocks of 256 weights: a model whose "
            "width is not a multiple of 256 (SmolLM2-135M's is 576) gets older 32-weight block types (Q5_0, Q8_0) for "
            "those tensors instead; the record counts them (variant facts: fallback_tensors).")
TECHNIQUES |= {t.key: t for t in [
    _gguf("f16", "GGUF F16 (llama.cpp)",
          "Every weight as a 16-bit float in a GGUF file, run by llama.cpp's CPU kernels.",
          "The same numbers as FP16 in transformers, yet often faster than transformers' FP32 on a CPU: llama.cpp "
          "reads half the bytes and its kernels are written for this one job."),
    _gguf("q8_0", "GGUF Q8_0 (llama.cpp 8-bit)",
          "Weights as 8-bit integers with one scale per block of 32 (8.5 bits per weight), multiplied directly by "
          "llama.cpp's integer kernels.",
          "Near-lossless (KL divergence from FP32 usually below 0.01) and fast, unlike bitsandbytes INT8 on a CPU, "
          "because the int8 blocks are multiplied as they are instead of being turned back into floats."),
    _gguf("q6_k", "GGUF Q6_K", "6-bit k-quant: blocks of 16 weights with 8-bit scales inside super-blocks of 256 "
          "(6.56 bits per weight).", "Quality close to Q8_0 at three quarters of its size."),
    _gguf("q5_k_m", "GGUF Q5_K_M", "5-bit k-quant mix (the M recipe): most tensors 5-bit, the most sensitive ones 6-bit.",
          K_QUANTS),
    _gguf("q4_k_m", "GGUF Q4_K_M", "4-bit k-quant mix (the M recipe): most tensors 4-bit in blocks with their own "
          "scales and minimums, the most sensitive ones 6-bit. The usual choice for laptops and phones.",
          K_QUANTS + " And unlike bitsandbytes 4-bit on a CPU, it decodes faster than FP32: the kernels read the packed "
                     "4-bit blocks and never build a float copy of the weights."),
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
]}
# The 32- and 16-bit variants with compiled decode (static KV cache + torch.compile): the GPU user's path.
TECHNIQUES |= {t.key: t for t in (TECHNIQUES[k].on("transformers-compiled") for k in ("fp32", "bf16", "fp16"))}
# k < E only: with every expert running (moe-8x8) the model reads more than the dense one (routers too), so it
# is a correctness check, not an optimisation; `get("moe-8x8")` still builds it for the MoE page and CLI.
TECHNIQUES |= {t.key: t for t in (moe_technique(8, k) for k in (1, 2, 4))}


def get(key: str) -> Technique:
    if key in TECHNIQUES:
        return TECHNIQUES[key]
    if "+gguf-" in key:  # a GGUF file of a checkpoint the lab made: "<student or fine-tune key>+gguf-<quant>"
        return gguf_of_saved(*key.rsplit("+", 1))
    if "@" in key:  # any technique on any of its runtimes: "<key>@<runtime>"
        base, runtime = key.split("@", 1)
        return get(base).on(runtime)
    if (moe_shape := moe.parse_technique_key(key)) is not None:  # any moe-<E>x<k>, validated by MoEConfig
        return moe_technique(*moe_shape)
    raise ValueError(f"Unknown technique {key!r}; choose from {', '.join(TECHNIQUES)} (or moe-<experts>x<top_k>)")


def saved_checkpoints(model_key: str | None = None) -> dict[str, tuple[str, Path]]:
    """key -> (label, folder) of every finished student and merged fine-tune the lab saved (of one base model)."""
    from core import distillation, lora

    found = {distillation.student_key(s.facts["student_layers"], s.facts["run"]):
             (distillation.student_label(s.facts["student_layers"], s.facts["run"]), s.path)
             for s in distillation.saved_students()
             if s.facts.get("complete") and model_key in (None, s.facts.get("teacher"))}
    for merged in lora.saved_merged():
        if model_key in (None, merged.facts.get("model")):
            found.setdefault(merged.facts["technique_key"], (merged.facts["label"], merged.path))
    return found


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


def parse_keys(text: str) -> list[str]:
    """'fp32, nf4' -> ['fp32', 'nf4'], validating each key and refusing duplicates."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise ValueError(f"No techniques given; choose from {', '.join(TECHNIQUES)}")
    for k in keys:
        get(k)
    if len(set(keys)) != len(keys):
        raise ValueError(f"A technique is listed twice in {text!r}")
    return keys
