"""llama.cpp as a runtime, through llama-cpp-python: a GGUF file, the CPU kernels people run on laptops and phones.

The runner feeds llama.cpp token ids made by the checkpoint's own tokenizer (so every runtime reads the
same prompt and the same text windows) and decodes greedily from the logits llama.cpp returns, one token
per step, the way `eager.stream_tokens` does for transformers. It drives the binding's context and
batch objects directly because the high-level `Llama.eval` either keeps every position's logits (slow
decode) or none (no quality measurement); here each call asks for exactly the rows it needs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.measure.evaluate import continuation_pairs
from core.runtimes import llamacpp_build
from core.runtimes.base import Clock, Runtime

CONTEXT_TOKENS = 2048  # llama.cpp's KV cache length: windows, prompts and answers must fit
BATCH_TOKENS = 512  # tokens per llama_decode call; a 512-token text window goes in one call


class LlamaCppRunner:
    runtime = "llama.cpp"

    def __init__(self, path: Path, threads: int, device: str = "cpu", quant: str = "", file_facts: dict | None = None):
        from llama_cpp import Llama  # lazily: the binding is optional, and loading it loads libllama

        self.path, self.device, self.dtype = Path(path), device, quant or "gguf"
        self._file_facts = file_facts or {}  # what the technique recorded when it wrote the file
        t0 = time.perf_counter()
        self._llm = Llama(model_path=str(path), n_ctx=CONTEXT_TOKENS, n_batch=BATCH_TOKENS, n_ubatch=BATCH_TOKENS,
                          n_threads=threads, n_threads_batch=threads, n_gpu_layers=-1 if device.startswith("cuda") else 0,
                          logits_all=False, verbose=False,
                          # as llama-server and llama-perplexity run by default (-fa auto is on for a CPU): the same
                          # numbers in process, at load and on llama.cpp's own scoreboard
                          flash_attn=True)
        self._load_s = time.perf_counter() - t0
        self._n_vocab = self._llm.n_vocab()
        self.threads = threads

    # --- the one primitive: decode tokens after n_past, return the logits rows asked for -------------

    def _decode(self, tokens: Sequence[int], n_past: int, all_rows: bool) -> np.ndarray:
        """[len(tokens) or 1, V] float32 logits; the KV cache after n_past is dropped first."""
        if n_past + len(tokens) > CONTEXT_TOKENS:
            raise ValueError(f"{n_past + len(tokens)} tokens exceed llama.cpp's context of {CONTEXT_TOKENS}")
        ctx, batch = self._llm._ctx, self._llm._batch  # pinned binding version: see requirements.txt
        ctx.kv_cache_seq_rm(-1, n_past, -1)
        rows = []
        for start in range(0, len(tokens), BATCH_TOKENS):
            chunk = list(tokens[start:start + BATCH_TOKENS])
            last_chunk = start + BATCH_TOKENS >= len(tokens)
            batch.set_batch(batch=chunk, n_past=n_past + start, logits_all=all_rows)
            ctx.decode(batch)
            if all_rows or last_chunk:
                n = len(chunk) if all_rows else 1
                rows.append(np.ctypeslib.as_array(ctx.get_logits(), shape=(n, self._n_vocab)).copy())
        return np.concatenate(rows)

    # --- Runner ---------------------------------------------------------------------------------------

    def stream(self, prompt_ids: torch.Tensor, max_new_tokens: int,
               clock: Clock = time.perf_counter) -> Iterator[tuple[int, float]]:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        ids = [int(t) for t in prompt_ids.reshape(-1).tolist()]
        own_s = 0.0
        t0 = clock()
        token = int(self._decode(ids, 0, all_rows=False)[-1].argmax())
        own_s += clock() - t0
        yield token, own_s
        n_past = len(ids)
        for _ in range(max_new_tokens - 1):
            t0 = clock()
            token_next = int(self._decode([token], n_past, all_rows=False)[-1].argmax())
            own_s += clock() - t0
            n_past += 1
            token = token_next
            yield token, own_s

    def window_logprobs(self, window: torch.Tensor) -> torch.Tensor:
        ids = [int(t) for t in window.reshape(-1).tolist()]
        logits = torch.from_numpy(self._decode(ids, 0, all_rows=True))
        return F.log_softmax(logits.float(), dim=-1)

    def choice_logprobs(self, tokenizer, items: Sequence[Any]) -> list[list[float]]:
        """Each question is read once; each choice continues from its cached KV entries."""

        out = []
        for item in items:
            pairs = continuation_pairs(tokenizer, item)
            ctx = pairs[0][0]
            first = F.log_softmax(torch.from_numpy(self._decode(ctx, 0, all_rows=False)[-1]), -1)  # [V]
            scores = []
            for _, cont in pairs:
                total = float(first[cont[0]])
                if len(cont) > 1:
                    lp = F.log_softmax(torch.from_numpy(self._decode(cont[:-1], len(ctx), all_rows=True)), -1)
                    total += float(lp.gather(1, torch.tensor(cont[1:])[:, None]).sum())
                scores.append(total)
            out.append(scores)
        return out

    def bytes_held(self) -> int:
        """Bytes of the GGUF file's tensors, as llama.cpp holds them (llama_model_size)."""
        import llama_cpp  # optional: the binding loads libllama, which may be missing

        return int(llama_cpp.llama_model_size(self._llm.model))

    def bytes_read_per_token(self) -> int:
        return self.bytes_held()

    def facts(self) -> dict[str, Any]:
        import llama_cpp  # optional: the binding loads libllama, which may be missing

        recorded = {k: v for k, v in self._file_facts.items() if k in ("fallback_tensors", "quantized_tensors")}
        return {**recorded, "gguf_file_bytes": self.path.stat().st_size, "gguf_file": self.path.name,
                "gguf_params": int(llama_cpp.llama_model_n_params(self._llm.model)),
                "load_s": self._load_s, "llama_cpp_version": _binding_version(),
                "threads": self.threads, "context_tokens": CONTEXT_TOKENS}

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def _binding_version() -> str:
    return version("llama_cpp_python")


# ---------------------------------------------------------------- registry entry


def llama_cpp_problem() -> str | None:
    """Why llama.cpp cannot run here, or None when the binding imports and its library loads."""
    # before the import: a library compiled for another CPU's instructions can crash the process as it loads
    if (other_cpu := llamacpp_build.why_not_binding()) is not None:
        return other_cpu
    try:
        import llama_cpp  # noqa: F401  (loads libllama: a broken build fails here, not at first use)
    except ImportError:
        return ("llama.cpp is not installed (the Python package llama-cpp-python). `make setup` compiles it; "
                "if that failed on this machine, its log says why. The other runtimes work without it.")
    except (OSError, RuntimeError) as e:
        return f"llama.cpp is installed but its native library does not load here ({type(e).__name__}: {e})."
    return None


def why_gguf_cannot_run(device: str) -> str | None:
    """Why a GGUF file cannot run on `device` here, or None. The one check: the GGUF techniques call it too
    (techniques may import runtimes, not the reverse), so the runtime and the registry never word it twice."""
    if device.startswith("cuda"):
        return "this lab's llama.cpp build is CPU-only; measure GGUF variants with --device cpu."
    return llama_cpp_problem()


def _unsupported(technique, device: str) -> str | None:
    if technique.family != "gguf":
        return f"llama.cpp runs GGUF files; {technique.label} is a transformers variant."
    return why_gguf_cannot_run(device)


def _load(technique, checkpoint: Path, device: str, threads: int, progress) -> LlamaCppRunner:
    # The technique builds (or finds) the file; this runtime only loads what it is handed.
    path, recorded = technique.artifact(checkpoint, threads, progress)
    progress(f"Loading {path.name} into llama.cpp")
    return LlamaCppRunner(path, threads, device, technique.config.file_stem, recorded)


RUNTIME = Runtime(
    "llama.cpp", "llama.cpp",
    "llama.cpp runs GGUF files with hand-written CPU kernels that multiply quantized weights directly, without "
    "turning them back into floats first: what people run on laptops, phones and Raspberry Pis.",
    _unsupported, _load)
