"""GGUF files for llama.cpp: export a lab checkpoint to F32 GGUF (gguf_export.py), quantize it with llama.cpp's own
quantizer, and the registry's GGUF variants.

Pure naming first, then the quantizer (llama.cpp's `llama_model_quantize` through the
binding), then the cache: every file is written to a temporary name and renamed into place, with a sidecar
holding its size and sha256; a cached file that does not match its sidecar is rebuilt, never loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import gguf
import numpy as np
import torch
from transformers import AutoConfig

from core.measure.evaluate import token_windows, tokenize_text
from core.models import load_model, load_tokenizer
from core.models.saved import saved_checkpoints
from core.paths import ASSETS, data_dir
from core.runtimes.llamacpp import llama_cpp_problem, why_gguf_cannot_run
from core.techniques.gguf_cache import SIDECAR, atomic_file, discard, file_facts, is_intact  # noqa: F401
from core.techniques.gguf_export import EXPORTER_VERSION, GGUFError, check_exportable, export_f32  # noqa: F401
from core.techniques.registry import TECHNIQUES, Technique, defaults_for, get, register, register_resolver

ProgressFn = Callable[[str], None]
QuantType = Literal["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]

# llama.cpp's `enum llama_ftype` values (llama.h): the whole-file type the quantizer aims at.
FTYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q2_k": 10, "q3_k_m": 12, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18,
}


@dataclass(frozen=True)
class GGUFConfig:
    quant: QuantType
    imatrix: bool = False  # weigh the quantizer's rounding error by activations seen on calibration text
    # Export this checkpoint instead of the model's own (a distilled student, a merged fine-tune), so the
    # variant is measured against the model it came from: "" = the model's own checkpoint.
    source: str = ""

    def __post_init__(self) -> None:
        if self.quant not in FTYPES:
            raise GGUFError(f"Unknown GGUF quant type {self.quant!r}; choose from {', '.join(FTYPES)}")
        if self.imatrix and self.quant in ("f32", "f16", "q8_0"):
            raise GGUFError(f"an importance matrix changes nothing for {self.quant}: it has no rounding to steer")

    @property
    def file_stem(self) -> str:
        return self.quant + ("-imatrix" if self.imatrix else "")


# ---------------------------------------------------------------- quantize with llama.cpp


def attach_imatrix(llama_cpp, params, imatrix: dict[str, np.ndarray], keep: list) -> None:
    """Points the quantizer's `params` at an importance matrix (tensor name -> [in] floats), NULL-name terminated;
    `keep` receives the ctypes buffers, which must outlive the quantize call."""
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        buf = np.ascontiguousarray(values, dtype=np.float32)
        keep += [buf, name.encode()]
        entries[i].name = keep[-1]
        entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = buf.size
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    keep.append(entries)


def quantize(source: Path, target: Path, quant: str, threads: int = 0,
             imatrix: dict[str, np.ndarray] | None = None) -> Path:
    """llama.cpp's quantizer, F32 GGUF in, `quant` GGUF out (atomically). imatrix: tensor name -> [in] floats."""
    import llama_cpp  # optional: the binding loads libllama, which may be missing

    if quant not in FTYPES:
        raise GGUFError(f"Unknown GGUF quant type {quant!r}; choose from {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads
    keep = []  # the ctypes buffers must outlive the call
    if imatrix:
        attach_imatrix(llama_cpp, params, imatrix, keep)

    log: list[str] = []

    def write(tmp: Path) -> None:
        with _captured_llama_log(log):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            tail = "".join(log).strip().splitlines()[-1:] or ["no log"]
            raise GGUFError(f"llama.cpp could not quantize {source.name} to {quant} (status {status}): {tail[0]}")

    return atomic_file(target, write, lambda: quantizer_facts("".join(log)))


_FALLBACK = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")


def quantizer_facts(log: str) -> dict[str, int]:
    """What llama.cpp's quantizer could not do as asked, from its log.

    k-quants pack weights in blocks of 256 along a row; a tensor whose rows are not a multiple of 256 wide
    (SmolLM2-135M's are 576) gets a legacy 32-block type instead (q5_0, q8_0, ...), so the file's mix differs
    from what its name says.
    """
    found = _FALLBACK.search(log)
    return {"fallback_tensors": int(found.group(1)), "quantized_tensors": int(found.group(2))} if found else \
        {"fallback_tensors": 0}


@contextmanager
def _captured_llama_log(lines: list[str]):
    """Route llama.cpp's log lines into `lines` (not the terminal) for the duration, then restore the binding's."""
    import llama_cpp  # optional: the binding loads libllama, which may be missing
    from llama_cpp import _logger  # with llama_cpp, lazily

    @llama_cpp.llama_log_callback
    def keep(_level, text, _user):
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


# ---------------------------------------------------------------- importance matrix from calibration text


def importance_matrix(checkpoint: Path, text: str, max_tokens: int = 4096, window: int = 512) -> dict[str, np.ndarray]:
    """Mean squared input activation per input column of every linear layer, on calibration text.

    The quantizer then rounds the weights that meet large activations more carefully. The text must be
    calibration text, never the evaluation text, or the quality measured afterwards flatters the variant.
    """


    config = AutoConfig.from_pretrained(checkpoint)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(_module, inputs, _output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])  # [tokens, in]
            sums[name] = sums.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module_name.startswith("model.layers."):
            gguf_name = names.get_name(module_name + ".weight", try_suffixes=(".weight",))
            if gguf_name:
                handles.append(module.register_forward_hook(hook(gguf_name)))
    try:
        with torch.inference_mode():
            for w in token_windows(tokenize_text(tokenizer, text), window, max_tokens):
                model(input_ids=w)
    finally:
        for h in handles:
            h.remove()
    return {name: (sums[name] / counts[name]).numpy() for name in sums}


# ---------------------------------------------------------------- the cache


def checkpoint_tag(checkpoint: Path) -> str:
    """Names the cache folder: the checkpoint's name plus a hash of where it is and which weights it holds."""
    checkpoint = Path(checkpoint).resolve()
    stamp = [str(checkpoint), f"exporter {EXPORTER_VERSION}"] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                 for p in sorted(checkpoint.glob("*.safetensors"))]
    return f"{checkpoint.name}-{hashlib.sha256('|'.join(stamp).encode()).hexdigest()[:10]}"


def cache_dir(checkpoint: Path) -> Path:
    return data_dir() / "gguf" / checkpoint_tag(checkpoint)


def calibration_text_path() -> Path:
    return ASSETS / "eval" / "moe_calibration.txt"  # calibration text, kept apart from the evaluation prose


def artifact(checkpoint: Path, config: GGUFConfig, threads: int, progress: ProgressFn) -> tuple[Path, dict]:
    """What a GGUF technique hands the llama.cpp runtime: its checked file and the facts recorded beside it."""
    source = Path(config.source) if config.source else checkpoint
    path = ensure_file(source, config, threads, progress)
    return path, file_facts(path)


def ensure_file(checkpoint: Path, config: GGUFConfig, threads: int = 0, progress: ProgressFn | None = None) -> Path:
    """The GGUF file for (checkpoint, config), built once; a file that fails its check is rebuilt."""
    say = progress or (lambda _m: None)
    if config.quant != "f32" and (problem := llama_cpp_problem()):
        raise GGUFError(problem)
    folder = cache_dir(checkpoint)
    target = folder / f"{config.file_stem}.gguf"
    if is_intact(target):
        return target
    if target.exists():
        say(f"{target.name} does not match its recorded size and hash; rebuilding it")
        discard(target)
    base = folder / "f32.gguf"
    if not is_intact(base):
        discard(base)
        export_f32(checkpoint, base, say)
    if config.quant == "f32":
        return base
    imatrix = None
    if config.imatrix:
        say("Computing an importance matrix on the calibration text")
        imatrix = importance_matrix(checkpoint, calibration_text_path().read_text(encoding="utf-8"))
    say(f"Quantizing to {config.file_stem} with llama.cpp")
    return quantize(base, target, config.quant, threads, imatrix)


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
