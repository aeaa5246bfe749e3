"""A transformers process's peak memory after reading a context, beside the memory model's prediction for it.

Each point runs in a fresh process (`python -m core.serving.torch_peak CHECKPOINT CONTEXT`), so one point's peak
never carries the last one's: it reports the process's resident memory once torch and transformers are imported (the
runtime, measured), the bytes the model's tensors hold, the KV cache's bytes, the high-water mark (VmHWM) of loading,
and, the mark reset, that of one prefill of CONTEXT tokens with the cache on and logits for the last position only
(as generation asks). The memory model (core/measure/memory.py) adds the runtime, the weights, the KV cache and the prefill's
largest live activations; as for llama-server, the runtime is calibrated on the smallest point and the others check it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from core.measure import fit, memory
from core.models import load_model
from core.paths import repo_root
from core.serving.kv import cache_tensor_bytes
from core.serving.limits import ServingError

TIMEOUT_S = 300.0


@dataclass(frozen=True)
class TorchPoint:
    context_tokens: int
    runtime_mb: float  # resident after importing torch, transformers and the lab, before the model
    weights_mb: float  # bytes the model's parameters and buffers hold
    kv_mb_measured: float  # bytes of the cache's key/value tensors after the prefill
    activations_mb: float  # the prefill's largest live activations, by memory.prefill_activation_bytes
    peak_mb: float  # VmHWM of the prefill (the mark reset after loading)
    load_peak_mb: float = float("nan")  # VmHWM right after loading (mapped weights not yet read)


def _rss_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s*(\d+)\s*kB", Path("/proc/self/status").read_text()).group(1))


def _measure(checkpoint: Path, context_tokens: int) -> dict:
    runtime = _rss_kb("VmRSS") * 1024  # torch, transformers and the lab imported, no model yet
    model = load_model(checkpoint)
    held = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    load_peak = _rss_kb("VmHWM") * 1024
    # Writing 5 to clear_refs resets the high-water mark (Linux >= 4.0): VmHWM below is the prefill's alone, whatever
    # loading did (here loading stays low: the weights are mapped from the file and read on first use).
    Path("/proc/self/clear_refs").write_text("5")
    ids = torch.randint(100, 1000, (1, context_tokens), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return {"runtime": runtime, "weights": held, "kv": cache_tensor_bytes(out.cache),
            "peak": _rss_kb("VmHWM") * 1024, "load_peak": load_peak}


def measure_point(checkpoint: Path, context_tokens: int, threads: int = 2) -> TorchPoint:
    """One context in a fresh process; its numbers, and the activation formula for it."""
    done = subprocess.run([sys.executable, "-m", "core.serving.torch_peak", str(checkpoint), str(context_tokens)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, cwd=repo_root(),
                          env=os.environ | {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                                            "TRANSFORMERS_OFFLINE": "1"})
    if done.returncode != 0:
        raise ServingError(f"measuring a transformers process at {context_tokens} tokens failed: "
                           f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    return TorchPoint(context_tokens, got["runtime"] / fit.MB, got["weights"] / fit.MB, got["kv"] / fit.MB,
                      memory.prefill_activation_bytes(config, context_tokens) / fit.MB, got["peak"] / fit.MB,
                      got["load_peak"] / fit.MB)


def calibrated_runtime_mb(first: TorchPoint, shape: fit.KVShape) -> float:
    """What a transformers process holds besides weights, KV cache and activations, from its smallest point: torch's
    libraries, the model's structure and what loading leaves behind (about 110 MB more than after the imports alone
    here), and the kernels a first forward pass touches."""
    kv = memory.predict_transformers(first.weights_mb, shape, first.context_tokens, 4).kv_cache_mb
    return first.peak_mb - first.weights_mb - kv - first.activations_mb


if __name__ == "__main__":
    print(json.dumps(_measure(Path(sys.argv[1]), int(sys.argv[2]))))
