"""llama.cpp's own quantizer (`llama_model_quantize` through the binding): F32 GGUF in, the asked
type out, written atomically; and what the quantizer reports it could not do as asked.
"""

from __future__ import annotations

import ctypes
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.techniques.gguf.cache import atomic_file
from core.techniques.gguf.config import FTYPES
from core.techniques.gguf.export import GGUFError


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
