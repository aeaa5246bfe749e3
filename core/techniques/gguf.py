"""GGUF files for llama.cpp: export a lab checkpoint to F32 GGUF, quantize it with llama.cpp's own quantizer.

Pure arithmetic and naming first, then the exporter (transformers safetensors -> GGUF via the `gguf`
library's writer and tensor-name map), then the quantizer (llama.cpp's `llama_model_quantize` through the
binding), then the cache: every file is written to a temporary name and renamed into place, with a sidecar
holding its size and sha256; a cached file that does not match its sidecar is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from core.models.saved import saved_checkpoints
from core.paths import ASSETS, data_dir
from core.runtimes.llamacpp import llama_cpp_problem
from core.techniques.registry import TECHNIQUES, Technique, get, register, register_resolver

ProgressFn = Callable[[str], None]
QuantType = Literal["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]

# llama.cpp's `enum llama_ftype` values (llama.h): the whole-file type the quantizer aims at.
FTYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q2_k": 10, "q3_k_m": 12, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18,
}
# Architectures this exporter writes. llama.cpp itself knows many more, but each needs its own tensor layout
# and metadata; SmolLM, Llama and the students the lab distils from them are all "llama".
EXPORTABLE = ("llama",)
SIDECAR = ".lab.json"
EXPORTER_VERSION = 2  # part of every cache folder's name: files written by an older exporter are never reused


class GGUFError(ValueError):
    """A GGUF variant that cannot be built or loaded, with what to do about it."""


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


# ---------------------------------------------------------------- llama.cpp availability


# ---------------------------------------------------------------- export: safetensors -> F32 GGUF


def _permute_for_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF Llama stores each head's rotary pairs as two halves; llama.cpp's "llama" rope expects them interleaved.

    [out, in] with out = heads * head_dim: split each head's rows into (2, head_dim/2), swap to (head_dim/2, 2).
    """
    out, cols = weight.shape
    return weight.reshape(heads, 2, out // heads // 2, cols).swapaxes(1, 2).reshape(out, cols)


def check_exportable(config) -> None:
    if config.model_type not in EXPORTABLE:
        raise GGUFError(
            f"The lab cannot convert a {config.model_type!r} model to GGUF: its exporter writes "
            f"{', '.join(EXPORTABLE)}-architecture models (SmolLM, Llama and students distilled from them). "
            "Measure this model on the transformers runtimes instead.")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GGUFError("This llama model has bias terms, which the lab's GGUF exporter does not write.")


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _write_metadata(writer, config, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(FTYPES["f32"])


def _write_vocab(writer, checkpoint: Path, vocab_size: int) -> None:
    """The tokenizer as llama.cpp reads it: GPT-2 style byte-level BPE from the checkpoint's tokenizer.json."""
    import gguf

    try:
        vocab = gguf.vocab.BpeVocab(checkpoint)
    except FileNotFoundError:
        raise GGUFError("The GGUF exporter needs a byte-level BPE tokenizer (tokenizer.json), which this "
                        "checkpoint does not have.") from None
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text if isinstance(text, (bytes, bytearray)) else str(text).encode())
        types.append(kind)
    tokens += [f"[PAD{i}]".encode() for i in range(len(tokens), vocab_size)]  # the table may be padded wider
    types += [gguf.TokenType.UNUSED] * (vocab_size - len(types))
    added = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens") or []
    for entry in added:  # special tokens (chat markers, end of text) are control tokens to llama.cpp
        if entry.get("special") and 0 <= entry["id"] < vocab_size:
            types[entry["id"]] = gguf.TokenType.CONTROL
    writer.add_tokenizer_model("gpt2")
    # The pre-tokenizer (how text is split before BPE) matters only when llama.cpp tokenizes text itself, as its
    # server does; the lab's own runner feeds it token ids. A vocabulary the lab ships as GGUF keeps that file's
    # name for it (SmolLM2: "smollm"), anything else gets llama.cpp's generic GPT-2 split.
    writer.add_tokenizer_pre(_known_pre_tokenizer(tuple(tokens)) or "default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.vocab.SpecialVocab(checkpoint, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        # A byte-level vocabulary with no merges (the tiny test model's) is valid BPE, but llama.cpp refuses a
        # file without the merges key and the writer refuses an empty array. One merge of two control tokens is
        # inert: BPE merges symbols built from the text's characters, which never form a control token.
        controls = [t for t, k in zip(tokens, types) if k == gguf.TokenType.CONTROL]
        if len(controls) < 2:
            raise GGUFError("This tokenizer has no BPE merges, which llama.cpp cannot load.")
        writer.add_token_merges([controls[0].decode() + " " + controls[1].decode()])
    special.load_merges = False  # written above when absent; no warning about it
    special.add_to_gguf(writer, quiet=True)


def _known_pre_tokenizer(tokens: tuple[bytes, ...]) -> str | None:
    """The pre-tokenizer name of a bundled GGUF file whose vocabulary is exactly `tokens`."""
    from core import models

    for spec in models.BUNDLED.values():
        if spec.source != "bundled-gguf" or spec.chunked:
            continue
        path = models.gguf_path(spec)
        if path is not None and (found := _vocab_of(str(path))) and found[0] == tokens:
            return found[1]
    return None


@lru_cache(maxsize=4)
def _vocab_of(path: str) -> tuple[tuple[bytes, ...], str] | None:
    import gguf

    fields = gguf.GGUFReader(path).fields
    if "tokenizer.ggml.tokens" not in fields or "tokenizer.ggml.pre" not in fields:
        return None
    listed = fields["tokenizer.ggml.tokens"]
    tokens = tuple(bytes(listed.parts[i]) for i in listed.data)
    return tokens, str(fields["tokenizer.ggml.pre"].contents())


def export_f32(checkpoint: Path, target: Path, progress: ProgressFn | None = None) -> Path:
    """Write the checkpoint's weights, unchanged, as an F32 GGUF file (atomically)."""
    import gguf
    from safetensors.torch import load_file
    from transformers import AutoConfig

    say = progress or (lambda _m: None)
    config = AutoConfig.from_pretrained(checkpoint)
    check_exportable(config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(checkpoint).glob("*.safetensors")):
        state.update(load_file(shard))
    if not state:
        raise GGUFError(f"{Path(checkpoint).name} holds no safetensors weights to export.")
    say(f"Exporting {Path(checkpoint).name} to an F32 GGUF file")

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch="llama")
        _write_metadata(writer, config, Path(checkpoint).name)
        _write_vocab(writer, Path(checkpoint), config.vocab_size)
        for hf_name, tensor in state.items():
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # llama.cpp reads the output projection from token_embd when output.weight is absent
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise GGUFError(f"The GGUF exporter does not know where tensor {hf_name!r} goes.")
            data = tensor.to(torch.float32).numpy()
            if hf_name.endswith("q_proj.weight"):
                data = _permute_for_rope(data, config.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                data = _permute_for_rope(data, config.num_key_value_heads)
            writer.add_tensor(gguf_name, np.ascontiguousarray(data))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return _atomic_file(target, write)


# ---------------------------------------------------------------- quantize with llama.cpp


def quantize(source: Path, target: Path, quant: str, threads: int = 0,
             imatrix: dict[str, np.ndarray] | None = None) -> Path:
    """llama.cpp's quantizer, F32 GGUF in, `quant` GGUF out (atomically). imatrix: tensor name -> [in] floats."""
    import ctypes

    import llama_cpp

    if quant not in FTYPES:
        raise GGUFError(f"Unknown GGUF quant type {quant!r}; choose from {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = threads
    keep = []  # the ctypes buffers must outlive the call
    if imatrix:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # NULL-name terminated
        for i, (name, values) in enumerate(sorted(imatrix.items())):
            buf = np.ascontiguousarray(values, dtype=np.float32)
            keep += [buf, name.encode()]
            entries[i].name = keep[-1]
            entries[i].data = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entries[i].size = buf.size
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)

    log: list[str] = []

    def write(tmp: Path) -> None:
        with _captured_llama_log(log):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            tail = "".join(log).strip().splitlines()[-1:] or ["no log"]
            raise GGUFError(f"llama.cpp could not quantize {source.name} to {quant} (status {status}): {tail[0]}")

    return _atomic_file(target, write, lambda: quantizer_facts("".join(log)))


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
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

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
    import gguf
    from transformers import AutoConfig

    from core.measure.evaluate import token_windows, tokenize_text
    from core.models import load_model, load_tokenizer

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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_file(target: Path, write: Callable[[Path], None], extra: Callable[[], dict] | None = None) -> Path:
    """write(tmp) into a sibling temp file, record size and hash (and `extra()`) beside it, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        facts = {**(extra() if extra else {}), "size_bytes": tmp.stat().st_size, "sha256": _sha256(tmp)}
        sidecar_tmp = tmp.with_name(tmp.name + SIDECAR)
        sidecar_tmp.write_text(json.dumps(facts))
        os.replace(tmp, target)  # the file first: a crash between the two renames leaves no valid sidecar
        os.replace(sidecar_tmp, target.with_name(target.name + SIDECAR))
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + SIDECAR).unlink(missing_ok=True)
        raise
    return target


def is_intact(path: Path) -> bool:
    """The file exists and matches the size and sha256 recorded when it was written."""
    sidecar = path.with_name(path.name + SIDECAR)
    if not path.is_file() or not sidecar.is_file():
        return False
    try:
        facts = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return path.stat().st_size == facts.get("size_bytes") and _sha256(path) == facts.get("sha256")


def file_facts(path: Path) -> dict:
    """What was recorded beside a cached file when it was written (size, sha256, quantizer facts)."""
    try:
        return json.loads(path.with_name(path.name + SIDECAR).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + SIDECAR).unlink(missing_ok=True)


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
        _discard(target)
    base = folder / "f32.gguf"
    if not is_intact(base):
        _discard(base)
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
    if device.startswith("cuda"):
        return "this lab's llama.cpp build is CPU-only; measure GGUF variants with --device cpu."
    return llama_cpp_problem()


PREFIX = "gguf-"  # every GGUF variant's key: gguf-<llama.cpp file type>[-imatrix]


def _gguf(quant: str, label: str, explanation: str, surprise: str, imatrix: bool = False) -> Technique:
    config = GGUFConfig(quant, imatrix=imatrix)  # type: ignore[arg-type]
    return Technique(f"{PREFIX}{config.file_stem}", label, "gguf", config, explanation, surprise,
                     _no_torch_model, _unsupported, runtimes=("llama.cpp",), build_artifact=artifact)


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




def _resolve_gguf_of_saved(key: str) -> Technique | None:
    """A GGUF file of a checkpoint the lab made: "<student or fine-tune key>+gguf-<quant>"."""
    return gguf_of_saved(*key.rsplit("+", 1)) if f"+{PREFIX}" in key else None


register_resolver(_resolve_gguf_of_saved)
