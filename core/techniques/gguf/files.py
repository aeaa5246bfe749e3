"""The GGUF file a variant loads, built once per (checkpoint, config) into a cache folder named for the
checkpoint's weights: the F32 export first, then llama.cpp's quantizer. A cached file that does not match its
sidecar is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from core.paths import data_dir
from core.runtimes.llamacpp import llama_cpp_problem
from core.techniques.gguf.cache import discard, file_facts, is_intact
from core.techniques.gguf.config import GGUFConfig
from core.techniques.gguf.export import EXPORTER_VERSION, GGUFError, export_f32
from core.techniques.gguf.imatrix import calibration_text_path, importance_matrix
from core.techniques.gguf.quantizer import quantize

ProgressFn = Callable[[str], None]


# ---------------------------------------------------------------- the cache


def checkpoint_tag(checkpoint: Path) -> str:
    """Names the cache folder: the checkpoint's name plus a hash of where it is and which weights it holds."""
    checkpoint = Path(checkpoint).resolve()
    stamp = [str(checkpoint), f"exporter {EXPORTER_VERSION}"] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                 for p in sorted(checkpoint.glob("*.safetensors"))]
    return f"{checkpoint.name}-{hashlib.sha256('|'.join(stamp).encode()).hexdigest()[:10]}"


def cache_dir(checkpoint: Path) -> Path:
    return data_dir() / "gguf" / checkpoint_tag(checkpoint)


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
