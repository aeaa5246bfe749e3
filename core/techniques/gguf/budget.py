"""A GGUF file that fits a size budget with the least estimated damage: a type chosen per tensor.

1. The sensitivity table: llama.cpp's quantizer writes the whole model once per candidate type (`--pure`); each
   tensor of each file is read back with the `gguf` library and its importance-weighted rounding error measured
   against the F32 export (core.measure.quant_error). The importance is the lab's importance matrix from the
   calibration text (never the evaluation text). The type a tensor really got is recorded: SmolLM2-135M's rows are
   576 wide, not a multiple of the k-quants' 256-weight block, so most tensors fall back to 32-block types.
   The table is cached, keyed by the F32 file's hash, the llama.cpp version and the candidate list.
2. The recipe: one type per tensor under the byte budget (quant_error.solve), and the file written by llama.cpp's
   quantizer with per-tensor overrides (the same `llama_model_quantize` that `llama-quantize --tensor-type` calls,
   through the binding so the lab's in-memory importance matrix can be handed over as the preset does).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf as gguflib
import numpy as np
import torch
from transformers import AutoConfig

from core.measure import quant_error
from core.measure.evaluate import token_windows, tokenize_text
from core.measure.quant_error import Option
from core.models import load_model, load_tokenizer
from core.runtimes import llamacpp_build
from core.runtimes.llamacpp import llama_cpp_problem
from core.techniques.gguf.cache import atomic_file, file_facts
from core.techniques.gguf.config import GGUFConfig
from core.techniques.gguf.export import GGUFError, check_exportable
from core.techniques.gguf.files import cache_dir, ensure_file
from core.techniques.gguf.imatrix import calibration_text_path, importance_matrix
from core.techniques.gguf.quantizer import _captured_llama_log, attach_imatrix, quantizer_facts

# ggml type asked for -> the llama_ftype whose `--pure` file asks for it in every tensor (llama.h). k-types fall back
# on rows that are not a multiple of 256 wide (q6_k -> q8_0, q5_k -> q5_1, q4_k -> q5_0, q3_k and q2_k -> q4_0).
CANDIDATES: dict[str, int] = {"q8_0": 7, "q6_k": 18, "q5_k": 16, "q5_0": 8, "q4_k": 14, "iq4_nl": 25, "q4_0": 2,
                              "q3_k": 11, "q2_k": 10}
FTYPE_OF = {**CANDIDATES, "q5_1": 9, "q4_1": 3}  # the realised types too: a file's base type
ESTIMATOR_VERSION = 2  # part of the table's key: a changed estimate is never read from an old table
ESTIMATORS = ("relative", "absolute")
KIND_WORDS = {"attn_q": "attention Q", "attn_k": "attention K", "attn_v": "attention V",
              "attn_output": "attention output", "ffn_gate": "MLP gate", "ffn_up": "MLP up", "ffn_down": "MLP down",
              "token_embd": "token embedding (tied: also the output table)", "output": "output table"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


@dataclass(frozen=True)
class Choice:
    """One realised type for one tensor: bytes in the file and both error estimates."""
    qtype: str
    bytes: int
    err_absolute: float
    err_relative: float


@dataclass(frozen=True)
class TensorRow:
    name: str
    layer: int  # -1 outside the blocks (token embedding, output)
    kind: str  # attn_q, ..., ffn_down, token_embd, output
    n_weights: int
    choices: tuple[Choice, ...]


@dataclass(frozen=True)
class SensitivityTable:
    key: str
    imatrix: bool
    rows: tuple[TensorRow, ...]
    overhead_bytes: int  # the file's bytes outside the quantized matrices: header, vocabulary, norms
    f16_bytes: int  # the whole file with every matrix in F16: the largest budget that makes sense

    def options(self, estimator: str = "relative", scale: dict[str, float] | None = None) -> dict[str, list[Option]]:
        """Each tensor's ways to be stored; `scale` (tensor name -> nats per unit of estimate, measured per group)
        turns the estimate into predicted KLD, so tensors of different kinds compare in one currency."""
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose from {', '.join(ESTIMATORS)}")
        s = scale or {}
        return {r.name: [Option(c.qtype, c.bytes, s.get(r.name, 1.0) * getattr(c, f"err_{estimator}"))
                         for c in r.choices] for r in self.rows}

    def size_bounds(self) -> tuple[int, int]:
        """(smallest file any recipe makes, F16 file) in bytes."""
        low, _ = quant_error.bounds(self.options())
        return low + self.overhead_bytes, self.f16_bytes

    def predicted(self, types: dict[str, str], estimator: str = "relative",
                  scale: dict[str, float] | None = None) -> float:
        """The recipe's summed estimate (times each tensor's scale, where given)."""
        by_name = {r.name: {c.qtype: c for c in r.choices} for r in self.rows}
        s = scale or {}
        return sum(s.get(n, 1.0) * getattr(by_name[n][t], f"err_{estimator}") for n, t in types.items())

    def file_bytes(self, types: dict[str, str]) -> int:
        by_name = {r.name: {c.qtype: c for c in r.choices} for r in self.rows}
        return self.overhead_bytes + sum(by_name[n][t].bytes for n, t in types.items())


def group_of(name: str) -> tuple[int, str]:
    """(layer, kind) of a GGUF weight name: "blk.3.attn_q.weight" -> (3, "attn_q"); (-1, ...) outside blocks."""
    if (found := _BLOCK.match(name)) is not None:
        return int(found.group(1)), found.group(2)
    if name in ("token_embd.weight", "output.weight"):
        return -1, name.removesuffix(".weight")
    raise ValueError(f"{name!r} is not a weight matrix the budget search knows (blk.N.<kind>.weight, token_embd, "
                     "output)")


# ---------------------------------------------------------------- the recipe in llama.cpp's terms and in words


def tensor_type_args(types: dict[str, str]) -> list[str]:
    """`llama-quantize --tensor-type` values for a recipe: one anchored regex per (kind, type), layers listed."""
    grouped: dict[tuple[str, str], list[int]] = {}
    for name, qtype in types.items():
        layer, kind = group_of(name)
        grouped.setdefault((kind, qtype), []).append(layer)
    out = []
    for (kind, qtype), layers in sorted(grouped.items()):
        if layers == [-1]:
            out.append(rf"^{kind}\.weight$={qtype}")
        else:
            out.append(rf"^blk\.({'|'.join(str(i) for i in sorted(layers))})\.{kind}\.weight$={qtype}")
    return out


def _runs(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans, start = [], layers[0]
    for prev, cur in zip(layers, layers[1:] + [None]):
        if cur != prev + 1:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(spans)


def describe(types: dict[str, str]) -> list[str]:
    """One line per kind: "MLP down: Q6_K in layers 0-3, 29; Q4_K in layers 4-28"."""
    by_kind: dict[str, dict[str, list[int]]] = {}
    for name, qtype in types.items():
        layer, kind = group_of(name)
        by_kind.setdefault(kind, {}).setdefault(qtype, []).append(layer)
    lines = []
    for kind in sorted(by_kind, key=lambda k: list(KIND_WORDS).index(k) if k in KIND_WORDS else 99):
        parts = []
        for qtype, layers in sorted(by_kind[kind].items(), key=lambda kv: min(kv[1])):
            parts.append(qtype.upper() if layers == [-1] else f"{qtype.upper()} in layers {_runs(sorted(layers))}")
        lines.append(f"{KIND_WORDS.get(kind, kind)}: {'; '.join(parts)}")
    return lines


def base_ftype(types: dict[str, str], table: SensitivityTable) -> int:
    """The file's nominal type: that of its smallest-per-weight tensor type."""
    per_weight = {}
    for row in table.rows:
        for c in row.choices:
            per_weight[c.qtype] = c.bytes / row.n_weights
    lowest = min(set(types.values()), key=lambda t: per_weight[t])
    return FTYPE_OF[lowest]


# ---------------------------------------------------------------- llama.cpp's quantizer, with overrides


def quantize_file(source: Path, target: Path, ftype: int, threads: int = 0, pure: bool = False,
                  overrides: list[str] | None = None, imatrix: dict | None = None) -> Path:
    """llama_model_quantize (what llama-quantize calls) with `--pure` and `--tensor-type PATTERN=TYPE` overrides."""
    import llama_cpp  # optional: the binding loads libllama, which may be missing

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.pure = ftype, threads, pure
    keep: list = []  # the ctypes buffers must outlive the call
    if overrides:
        table = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()  # NULL-pattern terminated
        for i, arg in enumerate(overrides):
            pattern, qtype = arg.rsplit("=", 1)
            keep.append(pattern.encode())
            table[i].pattern = keep[-1]
            table[i].type = gguflib.GGMLQuantizationType[qtype.upper()].value
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
        keep.append(table)
    if imatrix:
        attach_imatrix(llama_cpp, params, imatrix, keep)
    log: list[str] = []

    def write(tmp: Path) -> None:
        with _captured_llama_log(log):  # the quantizer's own log, kept for its fallback count
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            tail = "".join(log).strip().splitlines()[-1:] or ["no log"]
            raise GGUFError(f"llama.cpp could not quantize {source.name} (status {status}): {tail[0]}")

    return atomic_file(target, write, lambda: quantizer_facts("".join(log)))


# ---------------------------------------------------------------- the sensitivity table


def check_model(checkpoint: Path) -> None:
    """Refuse, before anything is written, a model whose architecture the lab cannot hand to llama.cpp."""
    check_exportable(AutoConfig.from_pretrained(checkpoint))
    if (problem := llama_cpp_problem()) is not None:
        raise GGUFError(problem)


def budget_dir(checkpoint: Path) -> Path:
    """Where a model's budget search keeps its tables, calibration and searched files, beside its GGUF presets."""
    return cache_dir(checkpoint) / "budget"


def table_path(checkpoint: Path, f32: Path, imatrix: bool) -> Path:
    stamp = json.dumps([file_facts(f32).get("sha256"), llamacpp_build.VERSION, list(CANDIDATES), ESTIMATOR_VERSION,
                        imatrix])
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return budget_dir(checkpoint) / f"sensitivity-{'imatrix' if imatrix else 'plain'}-{key}.json"


def cached_table(checkpoint: Path, imatrix: bool) -> SensitivityTable | None:
    """The newest table already built for this model (for checking a budget before a job is queued), or None."""
    found = sorted(budget_dir(checkpoint).glob(f"sensitivity-{'imatrix' if imatrix else 'plain'}-*.json"),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    return next((t for t in map(load_table, found) if t is not None), None)


def load_table(path: Path) -> SensitivityTable | None:
    try:
        raw = json.loads(path.read_text())
        rows = tuple(TensorRow(**{**r, "choices": tuple(Choice(**c) for c in r["choices"])}) for r in raw.pop("rows"))
        return SensitivityTable(rows=rows, **raw)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def output_importance(checkpoint: Path, text: str, max_tokens: int = 4096, window: int = 512) -> np.ndarray:
    """[hidden] mean squared input of the output projection on calibration text.

    The lab's importance matrix covers the blocks' linear layers only. SmolLM2 ties its output table to the token
    embedding, so that tensor's rounding error reaches every logit: E[(dE_v . h)^2] ~ sum_c dE_vc^2 E[h_c^2], the
    same weighting as a linear layer with the final hidden state h as its input.
    """
    model, tokenizer = load_model(checkpoint), load_tokenizer(checkpoint)
    found: dict[str, torch.Tensor | int] = {"sum": 0, "count": 0}

    def record(_module, inputs, _output):
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])  # [tokens, hidden]
        found["sum"] = found["sum"] + (x * x).sum(0)
        found["count"] = found["count"] + x.shape[0]

    handle = model.get_output_embeddings().register_forward_hook(record)
    try:
        with torch.inference_mode():
            for w in token_windows(tokenize_text(tokenizer, text), window, max_tokens):
                model(input_ids=w)
    finally:
        handle.remove()
    return (found["sum"] / found["count"]).numpy()


def _errors(reader: gguflib.GGUFReader, reference: dict, importance: dict) -> dict[str, Choice]:
    out = {}
    for t in reader.tensors:
        if t.name not in reference:
            continue
        ref = reference[t.name]
        q = gguflib.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)  # [out, in]
        absolute, relative = quant_error.weighted_error(ref, q, importance.get(t.name))
        out[t.name] = Choice(t.tensor_type.name.lower(), int(t.n_bytes), absolute, relative)
    return out


def sensitivity(checkpoint: Path, imatrix: bool, threads: int = 0, say=lambda _m: None,
                importance: dict | None = None) -> SensitivityTable:
    """The cached table for (model, with or without importance matrix); built once (a few minutes on 2 cores)."""
    check_model(checkpoint)
    f32 = ensure_file(checkpoint, GGUFConfig("f32"), threads, say)
    path = table_path(checkpoint, f32, imatrix)
    if (found := load_table(path)) is not None:
        return found
    if importance is None:
        say("Computing an importance matrix on the calibration text")
        importance = importance_matrix(checkpoint, calibration_text_path().read_text(encoding="utf-8"))
    base = gguflib.GGUFReader(f32)
    reference = {t.name: t.data for t in base.tensors if len(t.shape) == 2}  # [out, in] F32, memory-mapped
    output_table = "output.weight" if "output.weight" in reference else "token_embd.weight"  # tied: the embedding
    weighting = {**importance, output_table: output_importance(
        checkpoint, calibration_text_path().read_text(encoding="utf-8"))}
    choices: dict[str, dict[str, Choice]] = {name: {} for name in reference}
    overhead = 0
    with tempfile.TemporaryDirectory(dir=f32.parent, prefix=".budget-") as tmp:
        for qtype, ftype in CANDIDATES.items():
            say(f"Quantizing every tensor to {qtype} and reading back its error")
            out = quantize_file(f32, Path(tmp) / f"{qtype}.gguf", ftype, threads, pure=True,
                                imatrix=importance if imatrix else None)
            reader = gguflib.GGUFReader(out)
            for name, c in _errors(reader, reference, weighting).items():
                choices[name].setdefault(c.qtype, c)
            if qtype == "q8_0":
                overhead = out.stat().st_size - sum(int(t.n_bytes) for t in reader.tensors if t.name in reference)
            del reader
            out.unlink()
    rows = tuple(TensorRow(name, *group_of(name), int(reference[name].size),
                           tuple(sorted(choices[name].values(), key=lambda c: c.bytes)))
                 for name in sorted(reference, key=lambda n: (group_of(n)[0], n)))
    f16 = overhead + sum(2 * r.n_weights for r in rows)
    table = SensitivityTable(path.stem, imatrix, rows, overhead, f16)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_file(path, lambda tmp: tmp.write_text(json.dumps(asdict(table))))
    return table


def heat_rows(table: SensitivityTable, scale: dict[str, float] | None = None) -> list[dict]:
    """One row per (tensor, type) for a layers x kinds heat map per type: the bytes, the relative estimate, and with
    measured scales the predicted extra KLD over Q8_0 (nats) of that tensor alone at that type."""
    out = []
    for r in table.rows:
        q8 = next((c.err_relative for c in r.choices if c.qtype == "q8_0"), 0.0)
        for c in r.choices:
            row = {"layer": r.layer, "kind": r.kind, "qtype": c.qtype, "bytes": c.bytes, "err": c.err_relative}
            if scale is not None:
                row["extra_kld"] = scale.get(r.name, 1.0) * (c.err_relative - q8)
            out.append(row)
    return out


# ---------------------------------------------------------------- the search and the file


@dataclass(frozen=True)
class Recipe:
    budget_bytes: int
    types: dict  # tensor name -> ggml type
    file_bytes: int  # predicted: overhead + the chosen tensors
    estimate: float  # summed estimate, unscaled
    imatrix: bool

    @property
    def key(self) -> str:
        mb = self.budget_bytes / 1e6
        return f"gguf-auto-{round(mb) if mb >= 10 else round(mb, 2)}" + ("-imatrix" if self.imatrix else "")


def check_budget(table: SensitivityTable, budget_bytes: int) -> None:
    """A budget no recipe can meet, refused with the sizes that can."""
    low, high = table.size_bounds()
    if budget_bytes < low:
        raise ValueError(f"a budget of {budget_bytes / 1e6:.1f} MB is below the smallest file the candidate types make "
                         f"({low / 1e6:.1f} MB): raise the budget to at least that")
    if budget_bytes > high:
        raise ValueError(f"a budget of {budget_bytes / 1e6:.1f} MB is above the F16 file ({high / 1e6:.1f} MB): "
                         "nothing needs quantizing; use gguf-f16 or a smaller budget")


def plan(table: SensitivityTable, budget_bytes: int, estimator: str = "relative",
         scale: dict[str, float] | None = None) -> Recipe:
    """The least-damage recipe whose file fits the budget; ValueError for a budget no recipe can meet."""
    check_budget(table, budget_bytes)
    choice = quant_error.solve(table.options(estimator, scale), budget_bytes - table.overhead_bytes)
    types = {name: o.qtype for name, o in choice.items()}
    return Recipe(budget_bytes, types, table.file_bytes(types), table.predicted(types, estimator, scale),
                  table.imatrix)


def write(checkpoint: Path, recipe: Recipe, table: SensitivityTable, threads: int = 0,
          importance: dict | None = None) -> Path:
    """The recipe's GGUF file, in the model's cache folder beside the presets, with the recipe beside it."""
    f32 = ensure_file(checkpoint, GGUFConfig("f32"), threads)
    digest = hashlib.sha256(json.dumps([recipe.types, table.key], sort_keys=True).encode()).hexdigest()[:8]
    target = budget_dir(checkpoint) / f"{recipe.key}-{digest}.gguf"
    if target.is_file() and file_facts(target).get("size_bytes") == target.stat().st_size:
        return target
    quantize_file(f32, target, base_ftype(recipe.types, table), threads, overrides=tensor_type_args(recipe.types),
                  imatrix=importance if recipe.imatrix else None)
    return target
